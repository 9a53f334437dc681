//! A lane's state: its fair queue of waiting requests and its budgets.
//!
//! A lane is one class (and, with per-account scope, one tenant). Everything
//! here is mutated under the lane's mutex, in single steps, by the waiters
//! (enqueue, withdraw) and the lane's dispatcher (grant).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::{oneshot, Notify};
use tokio::time::Instant;

use super::{Budget, Inner, Level, Priority, RedisBudget, Ticket, Wfq};
use crate::classify::Class;

/// A waiter's state: waiting, granted a slot, or gone (skipped when popped).
pub(super) const QUEUED: u8 = 0;
/// Granted: the dispatcher won the race against withdrawal.
pub(super) const DISPATCHED: u8 = 1;
/// Withdrawn: the caller gave up or went away before a grant.
pub(super) const ABANDONED: u8 = 2;
/// Displaced: it gave up its place to a request from a shorter line (see
/// `room`); whoever displaced it released the capacity it held.
pub(super) const DISPLACED: u8 = 3;
/// What a displaced waiter receives instead of an egress.
pub(super) const DISPLACED_GRANT: usize = usize::MAX;

/// A grant: the egress, the slot's time as the local budget recorded it,
/// and the shared log's slot when Redis reserved it.
pub(super) type Grant = (usize, Instant, Option<SharedSlot>);

/// A slot reserved in the shared log: where the log holds it (Redis µs),
/// and the earliest local instant it could have been due (the wait counted
/// from when the reservation was asked). A send leaving after `due` is late
/// against the shared log by at least the difference.
#[derive(Clone, Copy, Debug)]
pub(super) struct SharedSlot {
    pub(super) at_us: u64,
    pub(super) due: Instant,
}

/// A waiting request as the queue holds it.
pub(super) struct Entry {
    pub(super) id: u64,
    pub(super) state: Arc<AtomicU8>,
    pub(super) tenant: Arc<str>,
    pub(super) weight: u32,
    pub(super) priority: Priority,
    pub(super) client: Arc<str>,
}

/// A live waiter, by id: when it queued, whose it is, and how to answer it.
pub(super) struct Waiter {
    pub(super) enqueued: Instant,
    pub(super) tenant: Arc<str>,
    pub(super) client: Arc<str>,
    pub(super) state: Arc<AtomicU8>,
    pub(super) tx: oneshot::Sender<Grant>,
}

/// Tenants by weight, then priority bands, then clients.
pub(super) type Queue = Wfq<Arc<str>, Wfq<Priority, Wfq<Arc<str>, VecDeque<Entry>>>>;

/// What the lane's mutex guards.
pub(super) struct LaneState {
    pub(super) queue: Queue,
    pub(super) budgets: Vec<Budget>,
    /// Live waiters by id (oldest first).
    pub(super) waiting: BTreeMap<u64, Waiter>,
    /// Live waiters per (tenant, client): the lines that share the room.
    pub(super) lines: HashMap<(Arc<str>, Arc<str>), usize>,
    /// Abandoned entries still in `queue`.
    pub(super) garbage: usize,
    pub(super) next_id: u64,
}

impl LaneState {
    /// The egress whose budget frees first, and when.
    pub(super) fn earliest(&self, now: Instant) -> (usize, Instant) {
        self.budgets
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.next_free(now)))
            .min_by_key(|(_, at)| *at)
            .expect("a lane has at least one budget")
    }

    /// Queues a new entry for `ticket`, waiting since `enqueued` (see
    /// [`Self::push`] for `first`): returns its id, its state and the
    /// receiver of its grant.
    pub(super) fn enqueue(
        &mut self,
        ticket: &Ticket,
        enqueued: Instant,
        first: bool,
    ) -> (u64, Arc<AtomicU8>, oneshot::Receiver<Grant>) {
        self.next_id += 1;
        let id = self.next_id;
        let (tx, rx) = oneshot::channel();
        let state = Arc::new(AtomicU8::new(QUEUED));
        self.waiting.insert(
            id,
            Waiter {
                enqueued,
                tenant: ticket.tenant.clone(),
                client: ticket.client.clone(),
                state: state.clone(),
                tx,
            },
        );
        *self
            .lines
            .entry((ticket.tenant.clone(), ticket.client.clone()))
            .or_default() += 1;
        self.push(
            Entry {
                id,
                state: state.clone(),
                tenant: ticket.tenant.clone(),
                weight: ticket.weight,
                priority: ticket.priority,
                client: ticket.client.clone(),
            },
            first,
        );
        (id, state, rx)
    }

    /// Queues `e` last in its client's line, or first with `first` (a
    /// retry: it arrived before everything queued behind it).
    pub(super) fn push(&mut self, e: Entry, first: bool) {
        let (tenant, weight, priority, client) =
            (e.tenant.clone(), e.weight, e.priority, e.client.clone());
        self.queue.push_with(tenant, weight, |t| {
            t.push_with(priority, priority.weight(), |b| {
                b.push_with(client, 1, |c| {
                    if first {
                        c.push_front(e)
                    } else {
                        c.push_back(e)
                    }
                })
            })
        });
    }

    /// Removes a live waiter (granted, withdrawn, displaced), returning it.
    pub(super) fn take(&mut self, id: u64) -> Option<Waiter> {
        let w = self.waiting.remove(&id)?;
        let key = (w.tenant.clone(), w.client.clone());
        if let Some(n) = self.lines.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.lines.remove(&key);
            }
        }
        Some(w)
    }

    /// Rebuilds the queue without abandoned entries, so callers that give up
    /// cannot grow it without bound while the budget is exhausted.
    pub(super) fn compact(&mut self) {
        let mut live = Vec::with_capacity(self.waiting.len());
        while let Some(e) = self.queue.pop() {
            if e.state.load(Ordering::Acquire) == QUEUED {
                live.push(e);
            }
        }
        for e in live {
            self.push(e, false);
        }
        self.garbage = 0;
    }
}

pub(super) struct Lane {
    pub(super) class: Class,
    pub(super) tenant: Option<Arc<str>>,
    pub(super) state: Mutex<LaneState>,
    /// Work arrived while the lane was empty.
    pub(super) work: Notify,
    /// Budgets changed (reload, 503): recompute the wake-up time.
    pub(super) reshaped: Notify,
    /// The Redis budget, with `limits.backend = "redis"`.
    pub(super) shared: Option<Arc<RedisBudget>>,
}

impl Lane {
    pub(super) fn lock(&self) -> MutexGuard<'_, LaneState> {
        // A panic while holding the lock leaves consistent data (every
        // mutation is a single step), so poisoning is ignored.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Ends a wait: releases the capacity it held and, if it gives up
/// (deadline, disconnect, shutdown) before a grant, marks it so the
/// dispatcher skips it.
pub(super) struct Withdraw {
    pub(super) lane: Arc<Lane>,
    pub(super) id: u64,
    pub(super) state: Arc<AtomicU8>,
    pub(super) tenant_count: Arc<super::room::TenantRoom>,
    pub(super) inner: Arc<Inner>,
    /// The wait ended with an answer (grant, deadline, shutdown), not by the
    /// caller dropping it.
    pub(super) resolved: bool,
}

impl Drop for Withdraw {
    fn drop(&mut self) {
        // Under the lane lock, so the dispatcher never sees the entry
        // abandoned while `waiting` still lists it.
        let mut st = self.lane.lock();
        if self
            .state
            .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
        {
            if !self.resolved {
                self.inner.withdrawn.fetch_add(1, Ordering::Relaxed);
            }
            st.take(self.id);
            st.garbage += 1;
        }
        drop(st);
        if self.state.load(Ordering::Acquire) == DISPLACED {
            // Whoever displaced it released its capacity already.
            return;
        }
        self.tenant_count.count.fetch_sub(1, Ordering::AcqRel);
        self.inner.queued_total.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Moves a waiting request to the priority band of `ticket` (a raise, see
/// [`super::Lift`]): its entry is abandoned (skipped when popped, like a
/// withdrawn one) and a new one is queued under the same capacity, keeping
/// its enqueue time. Returns the new grant receiver, or `None` when the
/// dispatcher granted the old entry first (the grant is in the old one).
pub(super) fn requeue(guard: &mut Withdraw, ticket: &Ticket) -> Option<oneshot::Receiver<Grant>> {
    let mut st = guard.lane.lock();
    if guard
        .state
        .compare_exchange(QUEUED, ABANDONED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return None;
    }
    let enqueued = st.take(guard.id).map_or_else(Instant::now, |w| w.enqueued);
    st.garbage += 1;
    let (id, state, rx) = st.enqueue(ticket, enqueued, false);
    drop(st);
    guard.id = id;
    guard.state = state;
    Some(rx)
}
