//! The composition root: builds every part once and wires them, so the
//! stages never have to know each other.
//!
//! A [`Gateway`] holds the config in force ([`Live`]), the scheduler, the
//! egress clients ([`Clients`]), metrics, the body pool, the cache stage's
//! state, the [`Forwarder`] the stages send through, per-tenant counters
//! and drain bookkeeping. Only the top (proxy, admin, server, status,
//! history, page) takes a `Gateway`; a stage takes the narrow handles it
//! needs, never this. A reload ([`reload`]) swaps the config and the
//! clients each in one step: a request sees either the old config or the
//! new one, never a mix, and a send uses whole clients, old or new. Queued
//! requests keep their places (the scheduler is reshaped, not replaced).
//! Nothing here logs a key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::bodies::BodyPool;
use crate::cache::Cache;
use crate::config::Config;
use crate::drain::Drain;
use crate::egress::{self, Clients, Egress};
use crate::forward::Forwarder;
use crate::live::{Live, Snapshot};
use crate::metrics::Metrics;
use crate::redis_link::LinkState;
use crate::scheduler::Scheduler;
use reload::Reloader;

pub mod reload;

/// Per-tenant counters for `/status`.
#[derive(Default)]
pub struct TenantStats {
    /// Requests being forwarded now.
    pub inflight: AtomicU64,
}

impl TenantStats {
    /// Counts one request in flight until the returned guard is dropped
    /// (also when the caller goes away mid-request).
    pub fn inflight(self: Arc<Self>) -> InFlight {
        self.inflight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }
}

/// One request in flight; see [`TenantStats::inflight`].
pub struct InFlight(Arc<TenantStats>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.inflight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Everything a request handler needs.
pub struct Gateway {
    /// The config in force.
    pub live: Arc<Live>,
    /// The scheduler all requests wait in.
    pub scheduler: Scheduler,
    /// Outbound clients, indexed like the scheduler's budgets.
    pub clients: Arc<Clients>,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Readiness and the counts a graceful shutdown reports.
    pub drain: Drain,
    /// Request bodies held now (bounded by `limits.max_buffered_bytes`).
    pub bodies: Arc<BodyPool>,
    /// The cache stage: stored answers, shared requests, counters.
    pub cache: Arc<Cache>,
    /// The last stage, as the stages before it take it.
    pub forwarder: Forwarder,
    stats: DashMap<Arc<str>, Arc<TenantStats>>,
    started: Instant,
    /// Where reloads read from, and their one-at-a-time lock.
    pub(crate) reloader: Reloader,
}

impl Gateway {
    /// Builds the gateway for a validated config, for threads that are not
    /// worker runtimes (the CLI's checks, tests). `config_path` is where a
    /// reload re-reads from. Must run inside a tokio runtime.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Gateway>, egress::BuildError> {
        Gateway::with_workers(config, config_path, 0)
    }

    /// As [`Gateway::new`], with outbound pools for `workers` worker
    /// runtimes besides (each enters with [`Clients::enter_worker`]).
    pub fn with_workers(
        config: Config,
        config_path: Option<PathBuf>,
        workers: usize,
    ) -> Result<Arc<Gateway>, egress::BuildError> {
        let scheduler = Scheduler::new(&config);
        let metrics = Arc::new(Metrics::new());
        let egress = egress::build(
            &config,
            workers,
            &scheduler,
            &metrics.upstream_connections,
            &metrics.upstream_warm_connections,
        )?;
        // Counters exist from the start at 0, so `increase()` in alerts sees
        // the very first 503 or rejection.
        let labels: Vec<&str> = egress[0].iter().map(|e| e.label.as_str()).collect();
        metrics.init_series(&config, &labels);
        let cache = Arc::new(Cache::new(&config, &metrics, scheduler.redis_link()));
        let live = Arc::new(Live::new(config));
        let clients = Arc::new(Clients::new(egress, crm_origins(&live)));
        let forwarder = Forwarder::new(
            scheduler.clone(),
            clients.clone(),
            live.clone(),
            metrics.clone(),
        );
        let gw = Gateway {
            cache,
            forwarder,
            live,
            scheduler,
            clients,
            metrics,
            drain: Drain::new(),
            bodies: Arc::default(),
            stats: DashMap::new(),
            started: Instant::now(),
            reloader: Reloader::new(config_path),
        };
        Ok(Arc::new(gw))
    }

    /// The config in force (keep it for one request).
    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.live.snapshot()
    }

    /// The config in force, for a read that ends before the next `.await`
    /// (see [`Live::peek`]).
    pub fn peek(&self) -> arc_swap::Guard<Arc<Snapshot>> {
        self.live.peek()
    }

    /// Every egress as it is now, in budget order.
    pub fn egress_all(&self) -> Vec<Arc<Egress>> {
        self.clients.all()
    }

    /// Puts a new config in force, and new egress clients first if given, so
    /// a request that reads the new config also finds the new clients.
    /// Only [`reload`] calls this, under its lock.
    fn put_in_force(&self, snapshot: Snapshot, egress: Option<Vec<Vec<Egress>>>) {
        if let Some(egress) = egress {
            self.clients.replace(egress);
        }
        self.live.put(snapshot);
    }

    /// Counters of one tenant.
    pub fn stats(&self, tenant: &Arc<str>) -> Arc<TenantStats> {
        if let Some(s) = self.stats.get(tenant) {
            return s.clone();
        }
        self.stats.entry(tenant.clone()).or_default().clone()
    }

    /// `tenant`'s finished requests by final HTTP status, summed over
    /// classes: read from `crmgate_requests_total`, the one count of them
    /// (an answer no longer also takes a per-tenant lock to add to a map).
    pub fn totals_by_status(&self, tenant: &str) -> BTreeMap<u16, u64> {
        use prometheus::core::Collector;
        let mut totals = BTreeMap::new();
        for family in self.metrics.requests.collect() {
            for m in family.get_metric() {
                let label = |name: &str| {
                    m.get_label()
                        .iter()
                        .find(|l| l.name() == name)
                        .map(|l| l.value())
                };
                if label("tenant") != Some(tenant) {
                    continue;
                }
                let n = m.get_counter().get_value() as u64;
                // Series made ahead at 0 (for alerts) are no answers.
                if let Some(code) = label("status").and_then(|s| s.parse::<u16>().ok()) {
                    if n > 0 {
                        *totals.entry(code).or_default() += n;
                    }
                }
            }
        }
        totals
    }

    /// Time since the gateway was built.
    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    /// Where budgets are kept right now: `local`, `connecting` (Redis
    /// configured, no call answered yet), `shared` (the last Redis call
    /// succeeded) or `fallback` (it failed: local shares meanwhile).
    pub fn backend_state(&self) -> &'static str {
        match self.scheduler.redis_state() {
            None => "local",
            Some(LinkState::Connecting) => "connecting",
            Some(LinkState::Up) => "shared",
            Some(LinkState::Down(_)) => "fallback",
        }
    }

    /// Why Redis is not in use, while `fallback` (redacted: no URL, no
    /// password).
    pub fn backend_cause(&self) -> Option<String> {
        match self.scheduler.redis_state() {
            Some(LinkState::Down(why)) => Some(why),
            _ => None,
        }
    }

    /// What `/readyz` says: listeners up and not draining, and, with
    /// `redis.required = true`, Redis in use (the fallback budget is safe,
    /// so without it a Redis outage keeps crmgate ready).
    pub fn is_ready(&self) -> bool {
        self.drain.is_ready()
            && (!self.snapshot().config.redis.required
                || self
                    .scheduler
                    .redis_state()
                    .is_none_or(|s| s == LinkState::Up))
    }
}

/// The CRM origins (`scheme://host:port`) of the tenants in force, for the
/// warm-connection keepers, which read them each round: a reload that adds
/// a tenant on a new host, or sets `upstream.warm_connections = false`, is
/// followed without new keepers.
fn crm_origins(live: &Arc<Live>) -> Arc<dyn Fn() -> Vec<hyper::Uri> + Send + Sync> {
    let live = Arc::downgrade(live);
    Arc::new(move || {
        let Some(live) = live.upgrade() else {
            return Vec::new();
        };
        let snap = live.snapshot();
        if !snap.config.upstream.warm_connections {
            return Vec::new();
        }
        let mut seen = std::collections::BTreeSet::new();
        snap.config
            .tenants
            .iter()
            .map(|t| &t.base_url[..url::Position::BeforePath])
            .filter(|origin| seen.insert(*origin))
            .filter_map(|origin| origin.parse().ok())
            .collect()
    })
}
