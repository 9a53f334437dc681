//! Waiting for something observable instead of sleeping: the one polling
//! loop of the integration tests.
//!
//! Tests order events by what they can see (a queue length, a count at the
//! simulator, a `/status` field), never by how long they slept. The limits
//! here only turn a hang into a clear failure; they never decide an
//! outcome, so they are generous. Never used to measure anything: a timing
//! asserted by a test is taken from the simulator's records.

use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// How long [`wait_until`] and [`wait_for`] wait before failing the test.
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);

/// How often a condition is checked: short against the 100 ms pacing of a
/// 10/s budget, long enough to leave the two cores to the gateway.
const POLL: Duration = Duration::from_millis(5);

/// Polls `probe` until it gives a value, for at most `limit`; `None` if it
/// never did. The building block of the waits below, and of a test that
/// wants to fail with its own message (or only report, for a diagnostic).
pub async fn poll_until<T, F, Fut>(limit: Duration, mut probe: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = probe().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Polls the async `probe` until it gives a value and returns it; fails the
/// test, naming `what`, after `limit`.
pub async fn wait_for_within<T, F, Fut>(what: &str, limit: Duration, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    poll_until(limit, probe)
        .await
        .unwrap_or_else(|| panic!("timed out after {limit:?} waiting for {what}"))
}

/// [`wait_for_within`] with [`WAIT_LIMIT`].
pub async fn wait_for<T, F, Fut>(what: &str, probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    wait_for_within(what, WAIT_LIMIT, probe).await
}

/// Polls `cond` until it holds; fails the test, naming `what`, after
/// [`WAIT_LIMIT`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    wait_for(what, || std::future::ready(cond().then_some(()))).await
}
