//! The gateway's shared state: config in force, scheduler, egress clients,
//! metrics and per-tenant counters, and hot reload.
//!
//! The config and tenant index sit behind one `ArcSwap`, so a reload swaps
//! tenants, keys, client keys and limits in one step: a request sees either
//! the old config or the new one, never a mix. Queued requests keep their
//! places across a reload (the scheduler is reshaped, not replaced) and pick
//! up a rotated key when they are sent. Nothing here logs a key.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use arc_swap::ArcSwap;
use dashmap::DashMap;
use serde_json::{json, Value};

use crate::classify::Class;
use crate::config::{Config, ConfigError};
use crate::egress::{self, Egress};
use crate::metrics::Metrics;
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
    /// Outbound clients, indexed like the scheduler's budgets.
    pub egress: Vec<Egress>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    stats: DashMap<Arc<str>, Arc<TenantStats>>,
    started: Instant,
    config_path: Option<PathBuf>,
    /// Requests that finished (any outcome), for the drain report.
    pub finished: AtomicU64,
    /// Requests answered 503 because of shutdown.
    pub cut_off: AtomicU64,
    /// True once the listeners are up and until shutdown begins.
    pub ready: AtomicBool,
    reload_lock: Mutex<()>,
}

/// A reload that was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// There is no file to re-read (the gateway was started from memory).
    #[error("no config file to reload from")]
    NoFile,
    /// The new file is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
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
        let gw = Gateway {
            runtime: ArcSwap::from_pointee(Runtime { config, tenants }),
            scheduler,
            egress,
            metrics,
            stats: DashMap::new(),
            started: Instant::now(),
            config_path,
            finished: AtomicU64::new(0),
            cut_off: AtomicU64::new(0),
            ready: AtomicBool::new(false),
            reload_lock: Mutex::new(()),
        };
        Ok(Arc::new(gw))
    }

    /// The config in force (a snapshot: keep it for one request).
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Counters of one tenant.
    pub fn stats(&self, tenant: &Arc<str>) -> Arc<TenantStats> {
        if let Some(s) = self.stats.get(tenant) {
            return s.clone();
        }
        self.stats.entry(tenant.clone()).or_default().clone()
    }

    /// Re-reads the config file and applies it, or keeps the old config and
    /// returns every problem. Counted in `crmgate_config_reloads_total`.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = match &self.config_path {
            None => Err(ReloadError::NoFile),
            Some(path) => Config::load(path)
                .map_err(ReloadError::from)
                .map(|c| self.apply(c)),
        };
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        match &result {
            Ok(()) => tracing::info!(checksum = %self.runtime().config.checksum, "config reloaded"),
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(
                        problem = line,
                        "config reload rejected; keeping the old config"
                    );
                }
            }
        }
        result
    }

    /// Puts a validated config in force. Settings that need a restart
    /// (listeners, egress IPs, connect timeout, scope) keep their old values
    /// and are logged.
    pub fn apply(&self, mut new: Config) {
        let _one_at_a_time = self.reload_lock.lock().unwrap_or_else(|p| p.into_inner());
        let old = self.runtime();
        let o = &old.config;
        if new.server.listen != o.server.listen || new.server.admin_listen != o.server.admin_listen
        {
            tracing::warn!(
                "listener addresses cannot change on reload; restart to use the new ones"
            );
            new.server.listen = o.server.listen;
            new.server.admin_listen = o.server.admin_listen;
        }
        let (nr, or) = (&new.redis, &o.redis);
        if new.upstream.egress_ips != o.upstream.egress_ips
            || new.upstream.egress_id != o.upstream.egress_id
            || new.upstream.connect_timeout != o.upstream.connect_timeout
            || new.limits.scope != o.limits.scope
            || new.limits.backend != o.limits.backend
            || nr.url != or.url
            || nr.key_prefix != or.key_prefix
            || nr.timeout != or.timeout
            || nr.expected_replicas != or.expected_replicas
        {
            tracing::warn!("egress IPs and id, connect timeout, limits.scope, limits.backend and [redis] cannot change on reload; restart to use the new ones");
            new.upstream.egress_ips = o.upstream.egress_ips.clone();
            new.upstream.egress_id = o.upstream.egress_id.clone();
            new.upstream.connect_timeout = o.upstream.connect_timeout;
            new.limits.scope = o.limits.scope;
            new.limits.backend = o.limits.backend;
            new.redis = o.redis.clone();
        }
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        self.scheduler.reconfigure(&new);
        let tenants = Tenants::new(&new.tenants);
        self.runtime.store(Arc::new(Runtime {
            config: new,
            tenants,
        }));
    }

    /// Sets the gauges that describe queues and budgets (called per scrape).
    pub fn refresh_gauges(&self) {
        let m = &self.metrics;
        let rt = self.runtime();
        m.uptime.set(self.started.elapsed().as_secs_f64());
        let fallback = self.scheduler.shared_state().is_some_and(|(f, _)| f);
        m.redis_fallback.set(i64::from(fallback));
        let gone = m.rejections.with_label_values(&["client_gone"]);
        gone.inc_by(self.scheduler.withdrawn().saturating_sub(gone.get()));
        m.queue_capacity
            .set(rt.config.limits.queue_capacity.get() as i64);
        for t in rt.tenants.iter() {
            for class in Class::ALL {
                m.queue_depth
                    .with_label_values(&[&t.name, class.as_str()])
                    .set(0);
            }
            m.inflight
                .with_label_values(&[&t.name])
                .set(self.stats(&t.name).inflight.load(Ordering::Relaxed) as i64);
        }
        // With per-account budgets a class has several lanes; the effective
        // rate shown is the most reduced one.
        let lanes = self.scheduler.snapshot();
        for lane in &lanes {
            for (tenant, n) in &lane.queued_by_tenant {
                m.queue_depth
                    .with_label_values(&[tenant, lane.class.as_str()])
                    .add(*n as i64);
            }
        }
        for (i, egress) in self.egress.iter().enumerate() {
            for class in Class::ALL {
                let labels = [egress.label.as_str(), class.as_str()];
                let configured = f64::from(rt.config.rate(class).get());
                let effective = lanes
                    .iter()
                    .filter(|l| l.class == class)
                    .filter_map(|l| l.budgets.get(i))
                    .map(|b| b.effective_rate)
                    .fold(configured, f64::min);
                m.rate_limit.with_label_values(&labels).set(configured);
                m.effective_rate.with_label_values(&labels).set(effective);
            }
        }
    }

    /// Where budgets are kept right now: `local`, `shared` (Redis) or
    /// `fallback` (Redis configured but unreachable).
    pub fn backend_state(&self) -> &'static str {
        match self.scheduler.shared_state() {
            None => "local",
            Some((false, _)) => "shared",
            Some((true, _)) => "fallback",
        }
    }

    /// The `/status` document. Never contains a key.
    pub fn status(&self) -> Value {
        let rt = self.runtime();
        let lanes = self.scheduler.snapshot();
        let budgets: Vec<Value> = lanes
            .iter()
            .flat_map(|lane| {
                self.egress.iter().zip(&lane.budgets).map(move |(e, b)| {
                    json!({
                        "egress": e.label,
                        "class": lane.class,
                        "tenant": lane.tenant,
                        "configured_rate": b.configured_rate,
                        "effective_rate": b.effective_rate,
                        "sent_last_window": b.sent_last_window,
                        "next_free_in_ms": b.next_free_in_ms,
                        "queued": lane.queued,
                        "oldest_wait_ms": lane.oldest_wait_ms,
                    })
                })
            })
            .collect();
        let mut tenants: Vec<Value> = rt
            .tenants
            .iter()
            .map(|t| {
                let s = self.stats(&t.name);
                let by_status: BTreeMap<String, u64> = s
                    .by_status
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect();
                json!({
                    "name": t.name.as_ref(),
                    "weight": t.config.weight.get(),
                    "queued": self.scheduler.tenant_queued(&t.name),
                    "inflight": s.inflight.load(Ordering::Relaxed),
                    "totals_by_status": by_status,
                })
            })
            .collect();
        tenants.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
        json!({
            "version": env!("CARGO_PKG_VERSION"),
            "uptime_seconds": self.started.elapsed().as_secs(),
            "config_checksum": rt.config.checksum,
            "ready": self.ready.load(Ordering::Relaxed),
            "budget_backend": self.backend_state(),
            "redis_calls": self.scheduler.shared_state().map(|(_, calls)| calls),
            "queued_total": self.scheduler.queued(),
            "queue_capacity": rt.config.limits.queue_capacity.get(),
            "budgets": budgets,
            "tenants": tenants,
        })
    }
}
