//! Prometheus metrics: what is counted, and the text exposition.
//!
//! Labels are bounded and come from config only: tenant name, class, egress
//! label (IP from config, or "default"), status code, reason. Never a path,
//! a client key or a request id. Every label value crmgate defines itself is
//! listed here, so the series exist at 0 from the start. Gauges that
//! describe queues and budgets are refreshed at scrape time
//! (`crate::status::refresh_gauges`) rather than on every change.
//!
//! A leaf: the stages write into it, and it imports none of them.

mod wait;

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use crate::classify::Class;
use crate::config::Config;
pub use wait::{WaitQuantiles, WaitWindows, WAIT_WINDOW_SECS};

/// Every metric crmgate exports.
pub struct Metrics {
    registry: Registry,
    /// Client requests by tenant, class and final status.
    pub requests: IntCounterVec,
    /// Sends to the CRM by egress, class and status ("error" for no answer).
    pub upstream_attempts: IntCounterVec,
    /// Connections opened to the CRM for a request, by egress.
    pub upstream_connections: IntCounterVec,
    /// Connections opened to the CRM ahead of need (warm), by egress.
    pub upstream_warm_connections: IntCounterVec,
    /// Upstream 503/429 answers.
    pub upstream_throttled: IntCounterVec,
    /// Retries by class and reason.
    pub retries: IntCounterVec,
    /// Requests crmgate answered itself, by reason.
    pub rejections: IntCounterVec,
    /// Waiting requests dropped from the queue to make room, by tenant and
    /// reason (`displaced`: for a shorter line, see `scheduler::room`).
    pub queue_displaced: IntCounterVec,
    /// Waiting requests by tenant and class.
    pub queue_depth: IntGaugeVec,
    /// Configured total queue capacity.
    pub queue_capacity: IntGauge,
    /// Time spent queued.
    pub queue_wait: HistogramVec,
    /// Time to upstream response headers.
    pub upstream_latency: HistogramVec,
    /// Configured rate per egress and class.
    pub rate_limit: GaugeVec,
    /// Adaptive rate per egress and class.
    pub effective_rate: GaugeVec,
    /// Requests being forwarded, by tenant.
    pub inflight: IntGaugeVec,
    /// Config reloads by outcome.
    pub config_reloads: IntCounterVec,
    /// 1 while the Redis budget is unreachable and the local fallback is used.
    pub redis_fallback: IntGauge,
    /// Time since start.
    pub uptime: prometheus::Gauge,
    /// Queue waits per tenant over the last minute, for `/status` and the
    /// status page (not exported: quantiles per tenant belong to the page).
    pub tenant_queue_wait: WaitWindows,
    /// Open client connections, by listener (`api`, `admin`).
    pub connections_open: IntGaugeVec,
    /// Connections closed at once because the listener was full, by listener.
    pub connections_refused: IntCounterVec,
    /// Connections accepted and served (not refused at the cap), by
    /// listener and worker runtime (`control` for the admin port).
    pub connections_accepted: IntCounterVec,
    /// Open API connections (cleartext and HTTPS) on each worker runtime:
    /// what the acceptor balances.
    pub worker_connections: IntGaugeVec,
    /// Exports streaming now.
    pub exports_in_progress: IntGauge,
    /// Exports by how they ended ([`EXPORT_OUTCOMES`]).
    pub exports: IntCounterVec,
    /// Export pages fetched, by tenant.
    pub export_pages: IntCounterVec,
    /// Export items written, by tenant.
    pub export_items: IntCounterVec,
    /// Creates that failed after sending, by tenant and how they ended
    /// ([`RECONCILE_OUTCOMES`]).
    pub reconciled: IntCounterVec,
    /// GETs through the cache stage, by tenant and result (hit, miss,
    /// coalesced, stale, bypass).
    pub cache_requests: IntCounterVec,
    /// GETs answered by joining another caller's request, by tenant.
    pub coalesced: IntCounterVec,
    /// Reads that waited for another replica's fill of the fleet cache, by tenant.
    pub cache_fill_waits: IntCounterVec,
    /// Bytes the cache holds (keys and answers, as weighed).
    pub cache_bytes: IntGauge,
    /// Entries the cache holds.
    pub cache_entries: IntGauge,
    _build: IntGaugeVec,
}

/// The client statuses created at 0 per tenant and class: success, and
/// the three crmgate answers itself when the CRM cannot be used.
pub const CLIENT_STATUSES: [&str; 4] = ["200", "502", "503", "504"];

/// The upstream statuses created at 0 per egress and class.
pub const UPSTREAM_STATUSES: [&str; 4] = ["200", "503", "429", "error"];

/// Every value of the `listener` label.
pub const LISTENERS: [&str; 2] = ["api", "admin"];

/// Every value of the `reason` label of `crmgate_rejections_total`
/// (`GatewayError::rejection`).
pub const REJECTION_REASONS: [&str; 16] = [
    "unknown_tenant",
    "bad_key",
    "body_too_large",
    "bad_request",
    "queue_full",
    "displaced",
    "buffers_full",
    "deadline",
    "shutdown",
    "client_gone",
    "browser",
    "host",
    "headers_too_large",
    "body_timeout",
    "unauthorized",
    "batch_too_large",
];

/// Every value of the `reason` label of `crmgate_retries_total`
/// (`forward::retry::RetryReason`).
pub const RETRY_REASONS: [&str; 4] = ["throttled", "connect", "reset", "timeout"];

/// Every value of the `outcome` label of `crmgate_exports_total`.
pub const EXPORT_OUTCOMES: [&str; 4] = ["complete", "failed", "hung_up", "refused"];

/// Every value of the `outcome` label of `crmgate_reconciled_total`
/// (`reconcile::Reconciled`).
pub const RECONCILE_OUTCOMES: [&str; 5] = [
    "found",
    "resent",
    "lookup_failed",
    "exhausted",
    "no_external_id",
];

const WAIT_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0,
];
const LATENCY_BUCKETS: [f64; 12] = [
    0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0,
];

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        fn reg<T: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: T) -> T {
            r.register(Box::new(m.clone()))
                .expect("metric names are unique");
            m
        }
        let counter = |name: &str, help: &str, labels: &[&str]| {
            reg(
                &registry,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid counter"),
            )
        };
        let requests = counter(
            "crmgate_requests_total",
            "Client requests by tenant, class and final HTTP status.",
            &["tenant", "class", "status"],
        );
        let upstream_attempts = counter(
            "crmgate_upstream_attempts_total",
            "Requests sent to the CRM, by egress, class and status (error = no answer).",
            &["egress", "class", "status"],
        );
        let upstream_connections = counter(
            "crmgate_upstream_connections_total",
            "Connections opened to the CRM while a request waited, by egress.",
            &["egress"],
        );
        let upstream_warm_connections = counter(
            "crmgate_upstream_warm_connections_total",
            "Connections opened to the CRM ahead of need (warm), by egress.",
            &["egress"],
        );
        let upstream_throttled = counter(
            "crmgate_upstream_throttled_total",
            "CRM answers 503 or 429 (rate limited).",
            &["egress", "class", "status"],
        );
        let retries = counter(
            "crmgate_retries_total",
            "Retries by class and reason (throttled, connect, timeout, reset).",
            &["class", "reason"],
        );
        let rejections = counter(
            "crmgate_rejections_total",
            "Requests answered by crmgate itself, by reason.",
            &["reason"],
        );
        let queue_displaced = counter(
            "crmgate_queue_drops_total",
            "Waiting requests dropped to make room in a full queue, by tenant and reason (displaced: the newest of the longest line, for a request from a shorter one).",
            &["tenant", "reason"],
        );
        let config_reloads = counter(
            "crmgate_config_reloads_total",
            "Config reloads by outcome.",
            &["outcome"],
        );
        let reconciled = counter(
            "crmgate_reconciled_total",
            "Creates that failed after sending, by tenant and outcome (found, resent, lookup_failed, exhausted, no_external_id).",
            &["tenant", "outcome"],
        );
        let connections_refused = counter(
            "crmgate_connections_refused_total",
            "Client connections accepted and closed at once because the listener was at its cap, by listener.",
            &["listener"],
        );
        let connections_accepted = counter(
            "crmgate_connections_accepted_total",
            "Client connections accepted and served (not refused at the cap), by listener and worker runtime (control: the admin port's).",
            &["listener", "worker"],
        );
        let worker_connections = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "crmgate_worker_connections",
                    "Open API connections (cleartext and HTTPS) on each worker runtime; a new connection goes to the worker with the fewest.",
                ),
                &["worker"],
            )
            .expect("valid gauge"),
        );
        let connections_open = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "crmgate_connections_open",
                    "Open client connections, by listener.",
                ),
                &["listener"],
            )
            .expect("valid gauge"),
        );
        let exports = counter(
            "crmgate_exports_total",
            "Exports (X-Crmgate-Export) by how they ended: complete, failed, hung_up, refused.",
            &["outcome"],
        );
        for outcome in EXPORT_OUTCOMES {
            exports.with_label_values(&[outcome]);
        }
        let export_pages = counter(
            "crmgate_export_pages_total",
            "Pages fetched by exports, by tenant.",
            &["tenant"],
        );
        let export_items = counter(
            "crmgate_export_items_total",
            "Items written by exports (after de-duplication), by tenant.",
            &["tenant"],
        );
        let exports_in_progress = reg(
            &registry,
            IntGauge::new("crmgate_exports_in_progress", "Exports streaming now.")
                .expect("valid gauge"),
        );
        let cache_requests = counter(
            "crmgate_cache_requests_total",
            "GETs through the cache stage, by tenant and result (hit: this replica's cache, shared: the fleet's cache in Redis, miss, coalesced, stale, bypass).",
            &["tenant", "result"],
        );
        let coalesced = counter(
            "crmgate_coalesced_total",
            "GETs answered by another caller's identical request (no slot of their own), by tenant.",
            &["tenant"],
        );
        let cache_fill_waits = counter(
            "crmgate_cache_fill_waits_total",
            "Reads that waited for another replica's read of the same answer (fleet cache fill lock) instead of reading the CRM, by tenant.",
            &["tenant"],
        );
        let gauge = |name: &str, help: &str| {
            reg(
                &registry,
                IntGauge::with_opts(Opts::new(name, help)).expect("valid gauge"),
            )
        };
        let cache_bytes = gauge(
            "crmgate_cache_bytes",
            "Bytes the cache holds (keys and answers).",
        );
        let cache_entries = gauge("crmgate_cache_entries", "Entries the cache holds.");
        // Both listeners exist from the start, so their series do too.
        for listener in LISTENERS {
            connections_open.with_label_values(&[listener]);
            connections_refused.with_label_values(&[listener]);
        }
        let queue_depth = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "crmgate_queue_depth",
                    "Requests waiting for a slot, by tenant and class.",
                ),
                &["tenant", "class"],
            )
            .expect("valid gauge"),
        );
        let inflight = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new(
                    "crmgate_inflight_requests",
                    "Requests being forwarded, by tenant.",
                ),
                &["tenant"],
            )
            .expect("valid gauge"),
        );
        let queue_capacity = reg(
            &registry,
            IntGauge::new("crmgate_queue_capacity", "Configured total queue capacity.")
                .expect("valid gauge"),
        );
        let redis_fallback = reg(&registry, IntGauge::new("crmgate_redis_fallback", "1 while the shared Redis budget is unreachable and a local fallback budget is used.").expect("valid gauge"));
        let uptime = reg(
            &registry,
            prometheus::Gauge::new("crmgate_uptime_seconds", "Seconds since crmgate started.")
                .expect("valid gauge"),
        );
        let rate_limit = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "crmgate_rate_limit",
                    "Configured requests per second, by egress and class.",
                ),
                &["egress", "class"],
            )
            .expect("valid gauge"),
        );
        let effective_rate = reg(
            &registry,
            GaugeVec::new(
                Opts::new(
                    "crmgate_effective_rate",
                    "Current adaptive requests per second, by egress and class.",
                ),
                &["egress", "class"],
            )
            .expect("valid gauge"),
        );
        let queue_wait = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "crmgate_queue_wait_seconds",
                    "Time requests spent waiting for a slot.",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
                &["class"],
            )
            .expect("valid histogram"),
        );
        let upstream_latency = reg(
            &registry,
            HistogramVec::new(
                HistogramOpts::new(
                    "crmgate_upstream_latency_seconds",
                    "Time from send to CRM response headers.",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["egress", "class"],
            )
            .expect("valid histogram"),
        );
        let build = reg(
            &registry,
            IntGaugeVec::new(
                Opts::new("crmgate_build_info", "Build information; always 1."),
                &["version"],
            )
            .expect("valid gauge"),
        );
        build.with_label_values(&[env!("CARGO_PKG_VERSION")]).set(1);
        Metrics {
            registry,
            requests,
            upstream_attempts,
            upstream_connections,
            upstream_warm_connections,
            upstream_throttled,
            retries,
            rejections,
            queue_displaced,
            queue_depth,
            queue_capacity,
            queue_wait,
            upstream_latency,
            rate_limit,
            effective_rate,
            inflight,
            config_reloads,
            redis_fallback,
            uptime,
            tenant_queue_wait: WaitWindows::new(),
            connections_open,
            connections_refused,
            connections_accepted,
            worker_connections,
            exports_in_progress,
            exports,
            export_pages,
            export_items,
            reconciled,
            cache_requests,
            coalesced,
            cache_fill_waits,
            cache_bytes,
            cache_entries,
            _build: build,
        }
    }

    /// Creates at 0 every labelled series whose label values the config
    /// names (tenants, classes, egress labels) or crmgate defines (reasons,
    /// outcomes, the statuses it answers itself), so `rate()` and
    /// `increase()` see a healthy gateway as 0, not as "no data". Called
    /// when the gateway is built and after every reload (a tenant may be
    /// new). Series of a tenant a reload removed stay, frozen.
    pub fn init_series(&self, config: &Config, egress_labels: &[&str]) {
        for reason in REJECTION_REASONS {
            self.rejections.with_label_values(&[reason]);
        }
        for outcome in ["success", "failure"] {
            self.config_reloads.with_label_values(&[outcome]);
        }
        for class in Class::ALL {
            let class = class.as_str();
            self.queue_wait.with_label_values(&[class]);
            for reason in RETRY_REASONS {
                self.retries.with_label_values(&[class, reason]);
            }
            for egress in egress_labels {
                self.upstream_latency.with_label_values(&[egress, class]);
                for status in UPSTREAM_STATUSES {
                    self.upstream_attempts
                        .with_label_values(&[egress, class, status]);
                }
                for status in ["503", "429"] {
                    self.upstream_throttled
                        .with_label_values(&[egress, class, status]);
                }
            }
            for tenant in &config.tenants {
                for status in CLIENT_STATUSES {
                    self.requests
                        .with_label_values(&[&tenant.name, class, status]);
                }
            }
        }
        for tenant in &config.tenants {
            for outcome in RECONCILE_OUTCOMES {
                self.reconciled.with_label_values(&[&tenant.name, outcome]);
            }
            self.export_pages.with_label_values(&[&tenant.name]);
            self.export_items.with_label_values(&[&tenant.name]);
            self.queue_displaced
                .with_label_values(&[&tenant.name, "displaced"]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        TextEncoder::new()
            .encode(&self.registry.gather(), &mut out)
            .expect("text encoding cannot fail");
        String::from_utf8(out).expect("exposition is UTF-8")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
