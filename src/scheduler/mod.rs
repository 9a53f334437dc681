//! The scheduler: every request waits here for a slot in a budget.
//!
//! Requests are grouped into *lanes*. A lane is one class (general or
//! telephony) and, with `limits.scope = "egress_ip_and_account"`, one tenant;
//! it owns a fair queue and one [`Budget`] per outbound IP. A single
//! dispatcher task per lane sleeps until the earliest budget has a free slot,
//! takes the next request in fair order (tenant by weight, then priority
//! band, then client) and hands it a [`Permit`] naming the outbound IP. So
//! the CRM never sees more than a budget allows, a request leaves through
//! whichever IP frees first, and ordering is decided here rather than by
//! whoever wakes first. A request that finds its lane's queue empty and a
//! budget free is granted at once, in its own task (`fast`): the
//! dispatcher would have made the same choice, one hand-off later.
//!
//! Waiting is bounded: by total and per-tenant capacity, by a deadline, and
//! by the caller going away (a dropped waiter is skipped, never sent). This
//! module never sees keys or bodies.
//!
//! This file owns the [`Scheduler`] handle and the enqueue path; the
//! caller's types (`ticket`), the granted slot (`permit`), the fast path
//! (`fast`), budgets, adaptation to the CRM's 503s (`adapt`), the fair
//! queue, lanes, the queue's room (`room`), the dispatcher and the Redis
//! budget each have their own file.

pub mod adapt;
mod budget;
mod dispatch;
mod fair;
mod fast;
mod lane;
mod lift;
mod permit;
mod room;
mod shared;
mod ticket;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dashmap::DashMap;
use serde::Serialize;
use tokio::sync::Notify;
use tokio::time::{sleep_until, Instant};
use tokio_util::sync::CancellationToken;

pub use budget::{Budget, BudgetShape};
pub use fair::{Level, Wfq};
pub use lift::Lift;
pub use permit::Permit;
pub use shared::{RedisBudget, Reservation};
pub use ticket::{Priority, QueueError, Ticket};

use dispatch::dispatch;
use fast::{grant_now, wait_short};
use lane::{Lane, LaneState, Queue, Withdraw, DISPLACED_GRANT};
use room::TenantRoom;

use crate::classify::Class;
use crate::config::{Backend, Config, Scope};

type LaneKey = (Class, Option<Arc<str>>);

struct Inner {
    lanes: DashMap<LaneKey, Arc<Lane>>,
    egress_count: usize,
    shapes: Mutex<[BudgetShape; 2]>,
    scope: Scope,
    capacity: AtomicUsize,
    queued_total: AtomicUsize,
    tenant_queued: DashMap<Arc<str>, Arc<TenantRoom>>,
    /// Waiters dropped while queued (the caller went away).
    withdrawn: AtomicU64,
    /// Grants made at once, without queueing (`grant_now`).
    granted_at_once: AtomicU64,
    /// New requests are refused once this is cancelled.
    closing: CancellationToken,
    /// Waiting requests are answered (503) once this is cancelled.
    cut_off: CancellationToken,
    /// Dispatchers exit once this is cancelled.
    stop: CancellationToken,
    /// The Redis budget, with `limits.backend = "redis"`.
    shared: Option<Arc<RedisBudget>>,
    /// The runtime the scheduler was made on, where every lane's
    /// dispatcher runs: a lane first used by a request on a worker runtime
    /// must not depend on that worker (its timers, its life).
    runtime: tokio::runtime::Handle,
}

/// The scheduler. Cheap to clone; all clones share the queues and budgets.
#[derive(Clone)]
pub struct Scheduler {
    inner: Arc<Inner>,
}

/// The local budgets' shapes. With the Redis backend they are the fallback
/// budgets, used while Redis is unreachable: `limit / expected_replicas`.
fn shapes(config: &Config) -> [BudgetShape; 2] {
    let share = match config.limits.backend {
        Backend::Local => 1,
        Backend::Redis => config.redis.expected_replicas.get(),
    };
    Class::ALL.map(|class| BudgetShape {
        limit: (config.rate(class).get() / share).max(1),
        window: Duration::from_secs(1) + config.limits.jitter_allowance,
        adaptive: config.limits.adaptive.clone(),
    })
}

fn class_index(class: Class) -> usize {
    match class {
        Class::General => 0,
        Class::Telephony => 1,
    }
}

impl Scheduler {
    /// A scheduler for `config`, with one budget per egress IP (one in all
    /// when no egress IPs are configured). Must be created inside a tokio
    /// runtime: dispatchers are spawned on it as lanes come into use, also
    /// for requests served on other runtimes.
    pub fn new(config: &Config) -> Scheduler {
        let scheduler = Scheduler {
            inner: Arc::new(Inner {
                lanes: DashMap::new(),
                egress_count: config.upstream.egress_ips.len().max(1),
                shapes: Mutex::new(shapes(config)),
                scope: config.limits.scope,
                capacity: AtomicUsize::new(config.limits.queue_capacity.get()),
                queued_total: AtomicUsize::new(0),
                tenant_queued: DashMap::new(),
                withdrawn: AtomicU64::new(0),
                granted_at_once: AtomicU64::new(0),
                closing: CancellationToken::new(),
                cut_off: CancellationToken::new(),
                stop: CancellationToken::new(),
                shared: (config.limits.backend == Backend::Redis)
                    .then(|| Arc::new(RedisBudget::new(config))),
                runtime: tokio::runtime::Handle::current(),
            }),
        };
        if let Some(shared) = &scheduler.inner.shared {
            tokio::spawn(shared.clone().probe(scheduler.inner.stop.clone()));
        }
        // Lanes exist from the start, so /status and the metrics show every
        // budget before the first request.
        for class in Class::ALL {
            for tenant in &config.tenants {
                scheduler.lane(class, &tenant.name.as_str().into());
            }
        }
        scheduler
    }

    /// Applies a reloaded config: rates, window, adaptation and capacity.
    /// Queued requests keep their places. The scope and the number of egress
    /// IPs cannot change without a restart; the caller checks that.
    pub fn reconfigure(&self, config: &Config) {
        let new = shapes(config);
        if let Some(shared) = &self.inner.shared {
            shared.reconfigure(config);
        }
        *self.inner.shapes.lock().unwrap_or_else(|p| p.into_inner()) = new.clone();
        self.inner
            .capacity
            .store(config.limits.queue_capacity.get(), Ordering::Relaxed);
        for lane in self.inner.lanes.iter() {
            let shape = new[class_index(lane.class)].clone();
            for b in lane.lock().budgets.iter_mut() {
                b.reshape(shape.clone());
            }
            lane.reshaped.notify_one();
        }
    }

    fn lane(&self, class: Class, tenant: &Arc<str>) -> Arc<Lane> {
        let key: LaneKey = match self.inner.scope {
            Scope::EgressIp => (class, None),
            Scope::EgressIpAndAccount => (class, Some(tenant.clone())),
        };
        if let Some(lane) = self.inner.lanes.get(&key) {
            return lane.clone();
        }
        self.inner
            .lanes
            .entry(key.clone())
            .or_insert_with(|| {
                let shape = self.inner.shapes.lock().unwrap_or_else(|p| p.into_inner())
                    [class_index(class)]
                .clone();
                let lane = Arc::new(Lane {
                    class,
                    tenant: key.1.clone(),
                    state: Mutex::new(LaneState {
                        queue: Queue::default(),
                        budgets: (0..self.inner.egress_count)
                            .map(|_| Budget::new(shape.clone()))
                            .collect(),
                        waiting: BTreeMap::new(),
                        lines: Default::default(),
                        garbage: 0,
                        next_id: 0,
                    }),
                    work: Notify::new(),
                    reshaped: Notify::new(),
                    shared: self.inner.shared.clone(),
                });
                self.inner.runtime.spawn(dispatch(
                    lane.clone(),
                    self.inner.stop.clone(),
                    self.inner.shared.clone(),
                ));
                lane
            })
            .clone()
    }

    /// Waits for a slot. Returns when the request may be sent, or with a
    /// [`QueueError`] when it must not be. Dropping the future withdraws the
    /// request: it is never sent and its slot goes to the next one.
    pub async fn acquire(&self, ticket: Ticket) -> Result<Permit, QueueError> {
        if self.inner.closing.is_cancelled() {
            return Err(QueueError::ShuttingDown);
        }
        self.enqueue(ticket, None, false).await
    }

    /// Like [`Scheduler::acquire`], for a request several callers share
    /// (coalescing): while it waits, `lift` may raise its priority and
    /// extend its deadline; at the grant the lift is closed. It is queued
    /// and counted once, whoever joins it.
    pub async fn acquire_lifted(&self, ticket: Ticket, lift: &Lift) -> Result<Permit, QueueError> {
        if self.inner.closing.is_cancelled() {
            return Err(QueueError::ShuttingDown);
        }
        let granted = self.enqueue(ticket, Some(lift), false).await;
        // Closed whatever the outcome: a request that stopped waiting can
        // no longer be joined.
        lift.close();
        granted
    }

    /// Whether a request of `class` for `tenant` would be granted at once
    /// now (its lane's queue empty and a local budget free). A hint only:
    /// another request may take the slot first.
    pub fn free_now(&self, class: Class, tenant: &Arc<str>) -> bool {
        let lane = self.lane(class, tenant);
        if lane.shared.is_some() {
            return false;
        }
        let now = Instant::now();
        let st = lane.lock();
        // Any free budget will do: no need to find the earliest of all.
        st.waiting.is_empty() && st.budgets.iter().any(|b| b.next_free(now) <= now)
    }

    /// Like [`Scheduler::acquire`], for a request already admitted (a retry):
    /// it may still queue while the gateway drains, until the cut-off, and
    /// it goes first in its client's line (it arrived before everything
    /// queued behind it), so a request the CRM refused several times does
    /// not wait a whole queue per attempt.
    pub async fn reacquire(&self, ticket: Ticket) -> Result<Permit, QueueError> {
        self.enqueue(ticket, None, true).await
    }

    async fn enqueue(
        &self,
        mut ticket: Ticket,
        lift: Option<&Lift>,
        retry: bool,
    ) -> Result<Permit, QueueError> {
        let inner = &self.inner;
        if inner.cut_off.is_cancelled() {
            return Err(QueueError::ShuttingDown);
        }
        if let Some(lift) = lift {
            (ticket.priority, ticket.deadline) = lift.current();
        }
        let lane = self.lane(ticket.class, &ticket.tenant);
        if let Some(permit) = grant_now(&lane, &ticket) {
            inner.granted_at_once.fetch_add(1, Ordering::Relaxed);
            wait_short(permit.at).await;
            return Ok(permit);
        }
        let tenant_count = inner
            .tenant_queued
            .entry(ticket.tenant.clone())
            .or_default()
            .clone();
        tenant_count.weight.store(ticket.weight, Ordering::Relaxed);
        // Full: a request from a shorter line still gets in, and the newest
        // of the longest line makes room (`room`).
        let capacity = inner.capacity.load(Ordering::Relaxed);
        if inner.queued_total.fetch_add(1, Ordering::AcqRel) >= capacity
            && !room::within_total(inner, &ticket)
        {
            inner.queued_total.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueError::Full("total", estimate_wait(&lane)));
        }
        if tenant_count.count.fetch_add(1, Ordering::AcqRel) >= ticket.max_queued
            && !room::within_tenant(inner, &ticket)
        {
            tenant_count.count.fetch_sub(1, Ordering::AcqRel);
            inner.queued_total.fetch_sub(1, Ordering::AcqRel);
            return Err(QueueError::Full("tenant", estimate_wait(&lane)));
        }

        let enqueued = Instant::now();
        let (id, state, mut rx) = {
            let mut st = lane.lock();
            let queued = st.enqueue(&ticket, enqueued, retry);
            if st.garbage > st.waiting.len().max(1024) {
                st.compact();
            }
            queued
        };
        lane.work.notify_one();
        let mut guard = Withdraw {
            lane: lane.clone(),
            id,
            state,
            tenant_count,
            inner: inner.clone(),
            resolved: false,
        };

        let class = ticket.class;
        let permit = |(egress, slot, shared_slot): lane::Grant| Permit {
            egress,
            shared_slot,
            class,
            waited: enqueued.elapsed(),
            // The slot as recorded: a waiter that wakes late is late
            // against it (`Permit::departed`).
            at: slot,
            lane: lane.clone(),
        };
        let outcome = loop {
            let changed = async {
                match lift {
                    Some(l) => l.changed.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                // A grant that is ready wins over a deadline that is too.
                biased;
                granted = &mut rx => break match granted {
                    Ok((DISPLACED_GRANT, _, _)) => Err(QueueError::Displaced(estimate_wait(&lane))),
                    Ok(grant) => Ok(permit(grant)),
                    // The dispatcher only drops a sender when it is stopping.
                    Err(_) => Err(QueueError::ShuttingDown),
                },
                _ = sleep_until(ticket.deadline) => {
                    break Err(QueueError::Deadline(estimate_wait(&lane)))
                }
                _ = inner.cut_off.cancelled() => break Err(QueueError::ShuttingDown),
                _ = changed => {
                    let Some(lift) = lift else { continue };
                    let (priority, deadline) = lift.current();
                    ticket.deadline = deadline;
                    if priority < ticket.priority {
                        ticket.priority = priority;
                        if let Some(moved) = lane::requeue(&mut guard, &ticket) {
                            rx = moved;
                        }
                    }
                }
            }
        };
        guard.resolved = true;
        // A slot granted in the instant the wait ended is used, not wasted:
        // the budget already counted it.
        match (outcome, rx.try_recv()) {
            (Err(_), Ok(grant)) if grant.0 != DISPLACED_GRANT => Ok(permit(grant)),
            (outcome, _) => outcome,
        }
    }

    /// With the Redis backend: whether the local fallback budget is in use
    /// (`Some(true)`), and how many Redis round trips were made.
    pub fn shared_state(&self) -> Option<(bool, u64)> {
        self.inner
            .shared
            .as_ref()
            .map(|s| (s.in_fallback(), s.calls()))
    }

    /// With the Redis backend: the link to Redis (the fleet cache uses it too).
    pub fn redis_link(&self) -> Option<Arc<crate::redis_link::RedisLink>> {
        self.inner.shared.as_ref().map(|s| s.link().clone())
    }

    /// With the Redis backend: what is known about Redis now.
    pub fn redis_state(&self) -> Option<crate::redis_link::LinkState> {
        self.inner.shared.as_ref().map(|s| s.state())
    }

    /// Requests withdrawn while queued because their caller went away.
    pub fn withdrawn(&self) -> u64 {
        self.inner.withdrawn.load(Ordering::Relaxed)
    }

    /// Grants made at once, without queueing or a dispatcher hand-off (a
    /// lane with nobody waiting and a budget free), since start.
    pub fn granted_at_once(&self) -> u64 {
        self.inner.granted_at_once.load(Ordering::Relaxed)
    }

    /// A connection to the CRM starts opening through egress `egress`.
    /// Returns the start time to pass to [`Scheduler::connect_finished`].
    pub fn connect_started(&self, egress: usize) -> Instant {
        let now = Instant::now();
        for lane in self.inner.lanes.iter() {
            if let Some(b) = lane.lock().budgets.get_mut(egress) {
                b.connect_started(now);
            }
        }
        now
    }

    /// The connection that started at `started` is open (or failed): the
    /// sends that waited for it count from now (see [`Budget::connect_finished`]).
    pub fn connect_finished(&self, egress: usize, started: Instant) {
        let now = Instant::now();
        for lane in self.inner.lanes.iter() {
            if let Some(b) = lane.lock().budgets.get_mut(egress) {
                b.connect_finished(started, now);
            }
            lane.reshaped.notify_one();
            // Called from a connector's drop: only spawn inside a runtime.
            if let (Some(shared), Ok(rt)) = (
                self.inner.shared.clone(),
                tokio::runtime::Handle::try_current(),
            ) {
                let (class, tenant, took) = (lane.class, lane.tenant.clone(), now - started);
                rt.spawn(
                    async move { shared.delayed(egress, class, tenant.as_deref(), took).await },
                );
            }
        }
    }

    /// Refuses new requests from now on; queued ones keep waiting.
    pub fn close(&self) {
        self.inner.closing.cancel();
    }

    /// Answers every queued request with [`QueueError::ShuttingDown`].
    pub fn cut_off(&self) {
        self.inner.closing.cancel();
        self.inner.cut_off.cancel();
    }

    /// Requests waiting, in all lanes.
    pub fn queued(&self) -> usize {
        self.inner.queued_total.load(Ordering::Acquire)
    }

    /// Requests of one tenant waiting, in all lanes.
    pub fn tenant_queued(&self, tenant: &str) -> usize {
        self.inner
            .tenant_queued
            .get(tenant)
            .map_or(0, |c| c.count.load(Ordering::Acquire))
    }

    /// Waiting requests of one tenant that gave up their place to a
    /// shorter line (see `room`), since start.
    pub fn displaced(&self, tenant: &str) -> u64 {
        self.inner
            .tenant_queued
            .get(tenant)
            .map_or(0, |c| c.displaced.load(Ordering::Relaxed))
    }

    /// A point-in-time view of every lane, for `/status` and metrics.
    pub fn snapshot(&self) -> Vec<LaneStatus> {
        let now = Instant::now();
        let mut lanes: Vec<LaneStatus> = self
            .inner
            .lanes
            .iter()
            .map(|lane| {
                let st = lane.lock();
                let mut per_tenant: BTreeMap<String, usize> = BTreeMap::new();
                for w in st.waiting.values() {
                    *per_tenant.entry(w.tenant.to_string()).or_default() += 1;
                }
                LaneStatus {
                    class: lane.class,
                    tenant: lane.tenant.as_ref().map(|t| t.to_string()),
                    queued: st.waiting.len(),
                    queued_by_tenant: per_tenant,
                    oldest_wait_ms: st
                        .waiting
                        .values()
                        .next()
                        .map_or(0, |w| now.duration_since(w.enqueued).as_millis() as u64),
                    budgets: st
                        .budgets
                        .iter()
                        .map(|b| BudgetStatus {
                            configured_rate: b.shape().limit,
                            effective_rate: (b.effective_rate(now) * 100.0).round() / 100.0,
                            sent_last_window: b.recent(now),
                            adaptation: b.adaptation(now).label(),
                            next_free_in_ms: b
                                .next_free(now)
                                .saturating_duration_since(now)
                                .as_millis() as u64,
                        })
                        .collect(),
                }
            })
            .collect();
        lanes.sort_by(|a, b| (a.class, &a.tenant).cmp(&(b.class, &b.tenant)));
        lanes
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Status of one lane.
#[derive(Debug, Clone, Serialize)]
pub struct LaneStatus {
    /// The class.
    pub class: Class,
    /// The tenant, when budgets are per account.
    pub tenant: Option<String>,
    /// Requests waiting.
    pub queued: usize,
    /// Requests waiting, by tenant.
    pub queued_by_tenant: BTreeMap<String, usize>,
    /// Age of the oldest waiting request.
    pub oldest_wait_ms: u64,
    /// One per egress IP, in config order.
    pub budgets: Vec<BudgetStatus>,
}

/// Status of one budget.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetStatus {
    /// Configured requests per second.
    pub configured_rate: u32,
    /// Current adaptive rate.
    pub effective_rate: f64,
    /// Sends within the last window.
    pub sent_last_window: usize,
    /// Time until the next slot (0 = free now).
    pub next_free_in_ms: u64,
    /// Where adaptation stands (see [`adapt::Adapt::label`]).
    pub adaptation: &'static str,
}

/// Rough time until a newcomer would be served: queue length over the
/// lane's current rate, at least one second (a `Retry-After` is in seconds).
fn estimate_wait(lane: &Lane) -> Duration {
    let now = Instant::now();
    let st = lane.lock();
    let rate: f64 = st.budgets.iter().map(|b| b.effective_rate(now)).sum();
    let secs = (st.waiting.len() as f64 / rate.max(0.1)).ceil().max(1.0);
    Duration::from_secs_f64(secs.min(3600.0))
}

#[cfg(test)]
mod tests;
