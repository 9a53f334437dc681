//! The lane's dispatcher: the one task that decides who is sent next.
//!
//! It sleeps until the earliest budget of its lane has a free slot (or, with
//! the Redis backend, until the slot Redis reserved for it), then grants that
//! slot to the next live waiter in fair order. Deciding in one task avoids
//! races between callers and makes the order the scheduler's choice.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

use super::lane::{Lane, LaneState, SharedSlot, DISPATCHED, QUEUED};
use super::{Level, RedisBudget};

/// How late a timer may fire and still count as on time: tokio's wheel
/// ticks in milliseconds, and a busy machine adds about one more (measured
/// p95 ≈ 1.9 ms on 2 loaded cores, see docs/performance.md).
pub(super) const TIMER_GRANULARITY: Duration = Duration::from_millis(3);

/// Where a lane's slots come from, with the Redis backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// From Redis, since `since` (in transition for [`TRANSITION`] after it).
    Shared { since: Instant },
    /// From the local fallback budget.
    Fallback,
}

/// How long after returning to Redis a replica also keeps within its
/// fallback share: long enough for every other replica to have probed Redis
/// again (each does every second) and for their fallback sends to leave the
/// window.
pub(super) const TRANSITION: Duration = Duration::from_millis(2500);

/// The lane's dispatcher: grants one slot at a time, in fair order, as soon
/// as a budget allows it.
pub(super) async fn dispatch(
    lane: Arc<Lane>,
    stop: CancellationToken,
    shared: Option<Arc<RedisBudget>>,
) {
    // Start careful: other replicas may be in fallback right now.
    let mut mode = Mode::Fallback;
    loop {
        let work = lane.work.notified();
        let reshaped = lane.reshaped.notified();
        tokio::pin!(work, reshaped);
        work.as_mut().enable();
        reshaped.as_mut().enable();

        if let Some(shared) = &shared {
            if !lane.lock().waiting.is_empty() {
                let now = Instant::now();
                // Until the shared budget is known to hold every replica's
                // sends (fallback, or just after it), this replica also keeps
                // within its fallback share. Checked before reserving: a send
                // later than its reserved slot could break the window bound.
                // A lane that sat idle through an outage rejoins with the
                // rest of the replica, not when it last reserved.
                let steady = match mode {
                    Mode::Shared { since } => {
                        now >= shared.rejoined_at().map_or(since, |r| since.max(r)) + TRANSITION
                    }
                    Mode::Fallback => false,
                };
                // In transition only egresses whose local budget is free may
                // be used; Redis picks among them.
                let mut allowed = u64::MAX;
                if !steady {
                    let earliest;
                    (allowed, earliest) = free_egresses(&lane, now);
                    if allowed == 0 {
                        let at = earliest;
                        tokio::select! {
                            _ = sleep_until(at) => {}
                            // A finished connect or a reload moves `at`.
                            _ = &mut reshaped => {}
                            _ = &mut work => {}
                            _ = stop.cancelled() => return,
                        }
                        continue;
                    }
                }
                let asked = Instant::now();
                if let Some(reserved) = shared
                    .reserve(lane.class, lane.tenant.as_deref(), allowed)
                    .await
                {
                    let (egress, wait) = (reserved.egress, reserved.wait);
                    // Redis measured `wait` from when the script ran, which
                    // was somewhere between asking and the reply: counting
                    // from the reply is never early (early could break the
                    // window bound); the lateness, at most a round trip, is
                    // reported below when it matters.
                    let due = Instant::now() + wait;
                    let earliest_slot = asked + wait;
                    if mode == Mode::Fallback {
                        mode = Mode::Shared {
                            since: Instant::now(),
                        };
                    }
                    tokio::select! {
                        _ = sleep_until(due) => {}
                        _ = stop.cancelled() => return,
                    }
                    // The slot was reserved for whoever is next now; if the
                    // queue emptied meanwhile it goes unused. A slow Redis or
                    // a late wake-up makes the send late against the shared
                    // log: its permit tells the log when it actually leaves
                    // (`Permit::departed`), measured from `earliest_slot`.
                    let now = Instant::now();
                    let slot = SharedSlot {
                        at_us: reserved.slot_us,
                        due: earliest_slot,
                    };
                    if !grant_one(&mut lane.lock(), egress, now, Some(slot)) {
                        tracing::debug!(class = %lane.class, "a reserved shared slot went unused");
                    }
                    continue;
                }
                if mode != Mode::Fallback {
                    // Slots reserved before Redis went away may still be
                    // arriving: start the fallback budget a window later.
                    let mut st = lane.lock();
                    for b in st.budgets.iter_mut() {
                        let window = b.shape().window;
                        b.hold_until(now + window);
                    }
                    mode = Mode::Fallback;
                }
            }
        }

        let now = Instant::now();
        let wake = {
            let mut st = lane.lock();
            if st.waiting.is_empty() {
                None
            } else {
                let (egress, at) = st.earliest(now);
                // Timers fire late (whole milliseconds, plus a busy machine);
                // count the slot at its planned time when the wake-up was only
                // that late, so the pace does not slip by the lateness on every
                // slot. The ≤ 3 ms this shifts a send comes out of the jitter
                // allowance.
                let slot = if now.saturating_duration_since(at) < TIMER_GRANULARITY {
                    at
                } else {
                    now
                };
                if at <= now && grant_one(&mut st, egress, slot, None) {
                    continue;
                }
                if at <= now {
                    // Nothing live to grant: `waiting` and the queue disagree,
                    // which must not happen; resynchronise rather than spin.
                    tracing::error!(class = %lane.class, "scheduler lane out of sync; clearing stale waiters");
                    st.waiting.clear();
                    st.lines.clear();
                    None
                } else {
                    Some(at)
                }
            }
        };
        match wake {
            None => tokio::select! {
                _ = work => {}
                _ = stop.cancelled() => return,
            },
            Some(at) => tokio::select! {
                _ = sleep_until(at) => {}
                _ = reshaped => {}
                _ = stop.cancelled() => return,
            },
        }
    }
}

/// Which egresses' local budgets are free now (a bit each), and when the
/// first one frees.
fn free_egresses(lane: &Lane, now: Instant) -> (u64, Instant) {
    let st = lane.lock();
    let mut allowed = 0u64;
    let mut earliest = None::<Instant>;
    for (i, b) in st.budgets.iter().enumerate().take(64) {
        let at = b.next_free(now);
        if at <= now {
            allowed |= 1 << i;
        }
        earliest = Some(earliest.map_or(at, |e: Instant| e.min(at)));
    }
    (allowed, earliest.unwrap_or(now))
}

/// Hands the free slot on `egress` to the next live waiter; false if there
/// was none.
pub(super) fn grant_one(
    st: &mut LaneState,
    egress: usize,
    now: Instant,
    shared: Option<SharedSlot>,
) -> bool {
    while let Some(entry) = st.queue.pop() {
        if entry
            .state
            .compare_exchange(QUEUED, DISPATCHED, Ordering::AcqRel, Ordering::Acquire)
            .is_err()
        {
            st.garbage = st.garbage.saturating_sub(1);
            continue;
        }
        let Some(waiter) = st.take(entry.id) else {
            continue;
        };
        let dropped = st.budgets[egress].record(now);
        if waiter.tx.send((egress, now, shared)).is_err() {
            // The waiter vanished between the check and the send: give the
            // slot to the next one.
            st.budgets[egress].unrecord(now, dropped);
            continue;
        }
        return true;
    }
    false
}
