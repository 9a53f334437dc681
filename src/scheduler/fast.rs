//! The fast path: a request that finds its lane's queue empty and a budget
//! free (or free within [`SHORT_WAIT`]) takes its slot at once, without the
//! dispatcher. It decides exactly what the dispatcher would, and it never
//! serves a lane whose slots come from Redis.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};

use super::lane::Lane;
use super::{Permit, Ticket};

/// The fast path: a request that finds the lane's queue empty and a budget
/// free takes its slot here, under the lane lock, instead of queueing and
/// waking the dispatcher to hand it over (two task wake-ups per request,
/// most of the pass-through cost when the limit is far away).
///
/// It decides exactly what the dispatcher would: the slot is recorded at
/// its paced time in the budget that frees first, so pacing and the window
/// bound hold; nobody is waiting in this lane, so no one is overtaken, and a
/// grant to the only request in the queue would end a busy period of the
/// fair queue anyway (every flow starts even afterwards), so skipping the
/// fair queue changes no later order. A request granted here never waits in
/// the queue, so it never counts against `queue_capacity` or `max_queued`.
/// A request whose deadline has passed, and every request of a lane whose
/// slots come from Redis, go through the queue.
///
/// A slot due within [`SHORT_WAIT`] is taken too and waited for by the
/// caller ([`wait_short`]): the dispatcher would sleep for it on tokio's
/// timer, which rounds up to the next whole millisecond, so a caller asking
/// again right after its grant at a sub-millisecond pace would wait a
/// thousand times longer than the budget asks (a single task at 1,000,000/s
/// got 6,000–10,000 grants/s, every second one through the queue).
pub(super) fn grant_now(lane: &Arc<Lane>, ticket: &Ticket) -> Option<Permit> {
    if lane.shared.is_some() {
        // Redis reservations, fallback holds and rejoin transitions live in
        // the dispatcher; a slot taken here would bypass them.
        return None;
    }
    let now = Instant::now();
    let mut st = lane.lock();
    if !st.waiting.is_empty() {
        return None;
    }
    let (egress, at) = st.earliest(now);
    let at = at.max(now);
    if at > now + SHORT_WAIT || ticket.deadline <= at {
        return None;
    }
    st.budgets[egress].record(at);
    drop(st);
    Some(Permit {
        egress,
        class: ticket.class,
        waited: at - now,
        at,
        shared_slot: None,
        lane: lane.clone(),
    })
}

/// The longest wait for a slot that the fast path takes on (see
/// [`grant_now`]): well under a timer tick, so yielding costs less than the
/// dispatcher's hand-off would.
const SHORT_WAIT: Duration = Duration::from_micros(50);

/// Waits until `at` (at most [`SHORT_WAIT`] away) by yielding to the
/// runtime rather than on its millisecond timer; never returns before `at`,
/// so a send never leaves before its slot. After a bounded number of yields
/// (a busy runtime, or paused time in tests, where the clock does not move
/// while a task is runnable) it falls back to the timer. A caller that goes
/// away meanwhile leaves its slot unused: the budget loses at most that one
/// slot, and never its bound.
pub(super) async fn wait_short(at: Instant) {
    for _ in 0..256 {
        if Instant::now() >= at {
            return;
        }
        tokio::task::yield_now().await;
    }
    sleep_until(at).await;
}
