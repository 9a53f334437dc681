//! Scheduler behaviour under paused tokio time, by topic: `budgets` (the
//! window bound, classes, egress IPs, connects, late sends), `fairness`
//! (the fair queue, priorities, deadlines), `capacity` (refusals and room
//! at the limits), `fast` (grants without the dispatcher). This file: the
//! helpers they share.

mod budgets;
mod capacity;
mod fairness;
mod fast;

use std::time::Duration;

use futures_util::FutureExt;

use tokio::task::JoinHandle;
use tokio::time::Instant;

use super::*;
use crate::config::Config;

pub(super) fn config(extra: &str) -> Config {
    let text = format!(
        "{extra}\n[[tenants]]\nname = \"a\"\nsubdomain = \"a\"\napi_key = \"k\"\n\
         [[tenants]]\nname = \"b\"\nsubdomain = \"b\"\napi_key = \"k2\"\n"
    );
    Config::from_toml(&text, "test", &|_| None).unwrap()
}

pub(super) fn ticket(tenant: &str, client: &str, class: Class) -> Ticket {
    Ticket {
        tenant: tenant.into(),
        weight: 1,
        max_queued: 10_000,
        client: client.into(),
        priority: Priority::Normal,
        class,
        deadline: Instant::now() + Duration::from_secs(3600),
    }
}

/// A scheduler on the Redis backend at a port nobody listens on (bound,
/// read and released), so its lanes run on their fallback share;
/// `redis_extra` adds keys to `[redis]`.
pub(super) fn unreachable_redis(redis_extra: &str) -> Scheduler {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    Scheduler::new(&config(&format!(
        "[limits]\nbackend = \"redis\"\n[redis]\nurl = \"redis://127.0.0.1:{port}\"\n{redis_extra}"
    )))
}

/// Spawns a waiter that returns when it was granted, relative to `t0`.
pub(super) fn spawn(s: &Scheduler, t: Ticket) -> JoinHandle<Result<(Duration, usize), QueueError>> {
    let s = s.clone();
    let t0 = Instant::now();
    tokio::spawn(async move { s.acquire(t).await.map(|p| (t0.elapsed(), p.egress)) })
}

/// Largest count of grant times within any window of length `w`.
pub(super) fn max_in_window(times: &mut [Duration], w: Duration) -> usize {
    times.sort();
    super::budget::tests::max_in_window(times, w)
}

pub(super) async fn grant_times(
    waiters: Vec<JoinHandle<Result<(Duration, usize), QueueError>>>,
) -> Vec<Duration> {
    let mut out = Vec::new();
    for w in waiters {
        out.push(w.await.unwrap().unwrap().0);
    }
    out
}
