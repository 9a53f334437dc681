//! The gateway's shared state: the config in force, the scheduler, the
//! egress clients, metrics, per-tenant counters and drain bookkeeping.
//!
//! The config and tenant index sit behind one `ArcSwap`, and the egress
//! clients behind another, so a reload ([`crate::reload`]) swaps each in one
//! step: a request sees either the old config or the new one, never a mix,
//! and a send uses whole clients, old or new. Queued requests keep their
//! places across a reload (the scheduler is reshaped, not replaced). The
//! `/status` document is assembled in [`crate::status`], the scrape-time
//! gauges in [`crate::metrics`]. Nothing here logs a key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use dashmap::DashMap;

use crate::classify::Class;
use crate::config::Config;
use crate::drain::Drain;
use crate::egress::{self, Egress};
use crate::inbound::body::BodyPool;
use crate::metrics::Metrics;
use crate::redis_link::LinkState;
use crate::reload::Reloader;
use crate::scheduler::Scheduler;
use crate::tenant::Tenants;

/// The config in force and what is derived from it.
pub struct Runtime {
    /// The validated config.
    pub config: Config,
    /// Tenants indexed by name and client key.
    pub tenants: Tenants,
}

/// Per-tenant counters for `/status`.
#[derive(Default)]
pub struct TenantStats {
    /// Requests being forwarded now.
    pub inflight: AtomicU64,
    /// Finished requests by final HTTP status.
    pub by_status: Mutex<BTreeMap<u16, u64>>,
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
    runtime: ArcSwap<Runtime>,
    /// The scheduler all requests wait in.
    pub scheduler: Scheduler,
    /// Outbound clients, indexed like the scheduler's budgets. Replaced as a
    /// whole when a reload changes client settings (timeouts).
    egress: ArcSwap<Vec<Egress>>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Readiness and the counts a graceful shutdown reports.
    pub drain: Drain,
    /// Request bodies held now (bounded by `limits.max_buffered_bytes`).
    pub bodies: Arc<BodyPool>,
    /// The cache stage: stored answers, shared requests, counters.
    pub cache: crate::cache::Cache,
    stats: DashMap<Arc<str>, Arc<TenantStats>>,
    started: Instant,
    /// Where reloads read from, and their one-at-a-time lock.
    pub(crate) reloader: Reloader,
}

impl Gateway {
    /// Builds the gateway for a validated config. `config_path` is where a
    /// reload re-reads from. Must run inside a tokio runtime.
    pub fn new(
        config: Config,
        config_path: Option<PathBuf>,
    ) -> Result<Arc<Gateway>, reqwest::Error> {
        let scheduler = Scheduler::new(&config);
        let metrics = Metrics::new();
        let egress = egress::build(&config, &scheduler, &metrics.upstream_connections)?;
        let tenants = Tenants::new(&config.tenants);
        // Counters exist from the start at 0, so `increase()` in alerts sees
        // the very first 503 or rejection.
        for e in &egress {
            for class in Class::ALL {
                for status in ["503", "429"] {
                    metrics.upstream_throttled.with_label_values(&[
                        &e.label,
                        class.as_str(),
                        status,
                    ]);
                }
            }
        }
        for reason in crate::error::REJECTION_REASONS {
            metrics.rejections.with_label_values(&[reason]);
        }
        let labels: Vec<&str> = egress.iter().map(|e| e.label.as_str()).collect();
        metrics.init_series(&config, &labels);
        let cache = crate::cache::Cache::new(&config, &metrics);
        let gw = Gateway {
            cache,
            runtime: ArcSwap::from_pointee(Runtime { config, tenants }),
            scheduler,
            egress: ArcSwap::from_pointee(egress),
            metrics,
            drain: Drain::new(),
            bodies: Arc::default(),
            stats: DashMap::new(),
            started: Instant::now(),
            reloader: Reloader::new(config_path),
        };
        Ok(Arc::new(gw))
    }

    /// The config in force (a snapshot: keep it for one request).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Egress `i` as it is now (the scheduler's permit names `i`). Take it
    /// per send: a request keeps the client it sent on until its answer is
    /// streamed, even if a reload replaces the clients meanwhile.
    pub fn egress(&self, i: usize) -> Egress {
        self.egress.load()[i].clone()
    }

    /// Every egress as it is now, in budget order.
    pub fn egress_all(&self) -> Arc<Vec<Egress>> {
        self.egress.load_full()
    }

    /// Puts a new config in force, and new egress clients first if given, so
    /// a request that reads the new config also finds the new clients.
    /// Only [`crate::reload`] calls this, under its lock.
    pub(crate) fn put_in_force(&self, runtime: Runtime, egress: Option<Vec<Egress>>) {
        if let Some(egress) = egress {
            self.egress.store(Arc::new(egress));
        }
        self.runtime.store(Arc::new(runtime));
    }

    /// Counters of one tenant.
    pub fn stats(&self, tenant: &Arc<str>) -> Arc<TenantStats> {
        if let Some(s) = self.stats.get(tenant) {
            return s.clone();
        }
        self.stats.entry(tenant.clone()).or_default().clone()
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
            && (!self.runtime().config.redis.required
                || self
                    .scheduler
                    .redis_state()
                    .is_none_or(|s| s == LinkState::Up))
    }
}
