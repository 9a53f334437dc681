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
//! budget free is granted at once, in its own task (see `grant_now`): the
//! dispatcher would have made the same choice, one hand-off later.
//!
//! Waiting is bounded: by total and per-tenant capacity, by a deadline, and
//! by the caller going away (a dropped waiter is skipped, never sent). This
//! module never sees keys or bodies.
//!
//! Over 500 lines on purpose: the public types (`Ticket`, `Permit`,
//! `Scheduler`) and the enqueue path, fast path included, share the lane's
//! invariants and read best together; budgets, adaptation to the CRM's
//! 503s (`adapt`), the fair queue, lanes, the dispatcher and the Redis
//! budget each have their own file.

pub mod adapt;
mod budget;
mod dispatch;
mod fair;
mod lane;
mod lift;
mod room;
mod shared;

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
pub use shared::Shared;

use dispatch::dispatch;
use lane::{Lane, LaneState, Queue, Withdraw, DISPLACED_GRANT};
use room::TenantRoom;

use crate::classify::Class;
use crate::config::{Backend, Config, Scope};

/// How urgent a request is, from the `X-Crmgate-Priority` header.
///
/// Priority orders requests *within* a tenant's share: high is served about
/// twice as often as normal and four times as often as low while all three
/// wait, so nothing starves and no tenant can take another's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Interactive work.
    High,
    /// The default.
    Normal,
    /// Batch work that can wait.
    Low,
}

impl Priority {
    /// Parses a header value (`high`, `normal`, `low`, any case).
    pub fn parse(value: &str) -> Option<Priority> {
        match value.trim().to_ascii_lowercase().as_str() {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    fn weight(self) -> u32 {
        match self {
            Priority::High => 4,
            Priority::Normal => 2,
            Priority::Low => 1,
        }
    }
}

/// What a request asks the scheduler for.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Tenant name (from config).
    pub tenant: Arc<str>,
    /// The tenant's share relative to others.
    pub weight: u32,
    /// The tenant's cap on waiting requests.
    pub max_queued: usize,
    /// Who inside the tenant is asking (client key or source address): the
    /// unit of fairness within a tenant. Never logged.
    pub client: Arc<str>,
    /// Urgency within the tenant's share.
    pub priority: Priority,
    /// Which budget.
    pub class: Class,
    /// Give up (503) if no slot is granted by then.
    pub deadline: Instant,
}

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Total or per-tenant capacity is used up.
    #[error("the queue is full ({0})")]
    Full(&'static str, Duration),
    /// The queue filled up and this request, the newest of the longest
    /// line, gave up its place to a request from a shorter one.
    #[error("the queue is full; this request gave its place to a shorter line")]
    Displaced(Duration),
    /// The deadline passed while waiting.
    #[error("no slot within the allowed wait")]
    Deadline(Duration),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl QueueError {
    /// A sensible `Retry-After` for the caller.
    pub fn retry_after(&self) -> Duration {
        match self {
            QueueError::Full(_, d) | QueueError::Deadline(d) | QueueError::Displaced(d) => *d,
            QueueError::ShuttingDown => Duration::from_secs(1),
        }
    }
}

/// A granted slot: send now, through egress number `egress`.
pub struct Permit {
    /// Index into the configured egress IPs (0 when there is only the default).
    pub egress: usize,
    /// The class of the budget used.
    pub class: Class,
    /// Time spent queued for this slot.
    pub waited: Duration,
    /// The slot's time as the budget recorded it (the send's time, for
    /// adaptation and [`Permit::departed`]).
    at: Instant,
    lane: Arc<Lane>,
}

impl std::fmt::Debug for Permit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Permit")
            .field("egress", &self.egress)
            .field("class", &self.class)
            .field("waited", &self.waited)
            .finish()
    }
}

impl Permit {
    /// The request leaves now. If that is later than its slot (a busy
    /// machine, a slow pool checkout), the budget counts the send from now,
    /// so the next slot moves with it and no window at the CRM holds more
    /// than the limit ([`Budget::left_late`]; the local budget only, see
    /// below). On time (within the timer granularity): nothing.
    pub fn departed(&self) {
        let now = Instant::now();
        let late = now.saturating_duration_since(self.at);
        if late < dispatch::TIMER_GRANULARITY {
            return;
        }
        self.lane.lock().budgets[self.egress].left_late(self.at, now);
        self.lane.reshaped.notify_one();
        // Not told to Redis: the shared log's `delayed` moves every send in
        // the last `late` + 100 ms (the connect slack) to now, other
        // replicas' on-time sends included, which pushed the fleet's later
        // slots back (0.76 of the limit in one run of tests/redis.rs). A
        // shared late departure needs its own, narrower rule.
    }

    /// Reports that the CRM answered 503/429 to the request sent with this
    /// permit: the budget slows down and honours `retry_after`.
    pub fn throttled(&self, retry_after: Option<Duration>) {
        let now = Instant::now();
        self.lane.lock().budgets[self.egress].throttled(now, self.at, retry_after);
        if let Some(shared) = self.lane.shared.clone() {
            // Every replica slows down through the shared state; best effort,
            // off the request path. Only the send's age crosses the wire.
            let (egress, class, tenant) = (self.egress, self.class, self.lane.tenant.clone());
            let age = now.saturating_duration_since(self.at);
            tokio::spawn(async move {
                shared
                    .throttled(egress, class, tenant.as_deref(), age, retry_after)
                    .await
            });
        }
    }
}

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
    /// New requests are refused once this is cancelled.
    closing: CancellationToken,
    /// Waiting requests are answered (503) once this is cancelled.
    cut_off: CancellationToken,
    /// Dispatchers exit once this is cancelled.
    stop: CancellationToken,
    /// The Redis budget, with `limits.backend = "redis"`.
    shared: Option<Arc<Shared>>,
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
                closing: CancellationToken::new(),
                cut_off: CancellationToken::new(),
                stop: CancellationToken::new(),
                shared: (config.limits.backend == Backend::Redis)
                    .then(|| Arc::new(Shared::new(config))),
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
        st.waiting.is_empty() && st.earliest(now).1 <= now
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
        let permit = |(egress, slot): lane::Grant| Permit {
            egress,
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
                    Ok((DISPLACED_GRANT, _)) => Err(QueueError::Displaced(estimate_wait(&lane))),
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

/// The fast path: a request that finds the lane's queue empty and a budget
/// free takes its slot here, under the lane lock, instead of queueing and
/// waking the dispatcher to hand it over (two task wake-ups per request,
/// most of the pass-through cost when the limit is far away).
///
/// It decides exactly what the dispatcher would: the slot is recorded at
/// `now` in the budget that is free, so pacing and the window bound hold;
/// nobody is waiting in this lane, so no one is overtaken, and a grant to
/// the only request in the queue would end a busy period of the fair queue
/// anyway (every flow starts even afterwards), so skipping the fair queue
/// changes no later order. A request granted here never waits, so it never
/// counts against `queue_capacity` or `max_queued`, and it cannot be
/// withdrawn (this runs before the caller's first `.await`). A request whose
/// deadline has passed, and every request of a lane whose slots come from
/// Redis, take the queue as before.
fn grant_now(lane: &Arc<Lane>, ticket: &Ticket) -> Option<Permit> {
    if lane.shared.is_some() {
        // Redis reservations, fallback holds and rejoin transitions live in
        // the dispatcher; a slot taken here would bypass them.
        return None;
    }
    let now = Instant::now();
    if ticket.deadline <= now {
        return None;
    }
    let mut st = lane.lock();
    if !st.waiting.is_empty() {
        return None;
    }
    let (egress, at) = st.earliest(now);
    if at > now {
        return None;
    }
    st.budgets[egress].record(now);
    drop(st);
    Some(Permit {
        egress,
        class: ticket.class,
        waited: Duration::ZERO,
        at: now,
        lane: lane.clone(),
    })
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
