//! The `/status` document: its shape, and its assembly from the gateway;
//! and the scrape-time gauges ([`refresh_gauges`]), read from the same state.
//!
//! The types here are the JSON operators and tests read, field for field;
//! renaming a field changes the admin API. They hold names, rates, counts and
//! ages only: never a key (tenant keys and client keys are not even
//! reachable from these types) and never a request's path or body.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use serde::Serialize;

use crate::classify::Class;
use crate::gateway::Gateway;
use crate::metrics::WaitQuantiles;

/// The whole `/status` document.
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    /// crmgate's version.
    pub version: &'static str,
    /// Whole seconds since start.
    pub uptime_seconds: u64,
    /// Checksum of the config file in force.
    pub config_checksum: String,
    /// What `/readyz` says.
    pub ready: bool,
    /// Shutting down: finishing what it holds (`/readyz` says not ready).
    pub draining: bool,
    /// `local`, `connecting`, `shared` or `fallback` (see
    /// [`Gateway::backend_state`]).
    pub budget_backend: &'static str,
    /// Why Redis is not in use, while `fallback` (redacted); else `null`.
    pub budget_backend_cause: Option<String>,
    /// Calls made to Redis so far; `null` without a shared budget.
    pub redis_calls: Option<u64>,
    /// Requests waiting, in all lanes.
    pub queued_total: usize,
    /// `limits.queue_capacity`.
    pub queue_capacity: usize,
    /// Exports (`X-Crmgate-Export`) streaming now.
    pub exports_in_progress: u64,
    /// One row per lane and egress.
    pub budgets: Vec<BudgetRow>,
    /// One row per tenant, sorted by name.
    pub tenants: Vec<TenantRow>,
}

/// One budget: a lane (class, and tenant with per-account budgets) on one
/// egress.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetRow {
    /// Egress label: its IP, or `default`.
    pub egress: String,
    /// `general` or `telephony`.
    pub class: Class,
    /// The tenant, when budgets are per account; else `null`.
    pub tenant: Option<String>,
    /// Configured requests per second.
    pub configured_rate: u32,
    /// Current adaptive rate.
    pub effective_rate: f64,
    /// Adaptation's phase: `free`, `observing`, `testing` or `limited`
    /// (docs/architecture.md, "Adaptation"). The local budget's.
    pub adaptation: &'static str,
    /// Sends within the last window.
    pub sent_last_window: usize,
    /// Time until the next slot (0 = free now).
    pub next_free_in_ms: u64,
    /// Requests waiting in the lane (shared by its egresses).
    pub queued: usize,
    /// Age of the lane's oldest waiting request.
    pub oldest_wait_ms: u64,
}

/// One tenant's queue and outcomes.
#[derive(Debug, Clone, Serialize)]
pub struct TenantRow {
    /// Tenant name from config.
    pub name: String,
    /// Fair-share weight.
    pub weight: u32,
    /// Requests waiting for a slot.
    pub queued: usize,
    /// Requests being forwarded now.
    pub inflight: u64,
    /// Waiting requests that gave their place to a shorter line when the
    /// queue was full, since start (`crmgate_queue_drops_total{reason="displaced"}`).
    pub displaced: u64,
    /// Pages fetched by exports (`X-Crmgate-Export`) since start
    /// (`crmgate_export_pages_total`).
    pub export_pages: u64,
    /// Finished requests by final HTTP status (keys are status codes).
    pub totals_by_status: BTreeMap<String, u64>,
    /// Queue wait p50/p95 over the last minute; `null` when nothing waited
    /// for a slot in that minute.
    pub queue_wait_last_minute: Option<WaitQuantiles>,
    /// The cache stage over the last minute: GETs, slots saved, hit ratio.
    pub cache_last_minute: crate::cache::stats::CacheStatus,
}

impl Status {
    /// Reads the gateway's state now.
    pub fn collect(gw: &Gateway) -> Status {
        let snap = gw.snapshot();
        let egress = gw.egress_all();
        let lanes = gw.scheduler.snapshot();
        let budgets = lanes
            .iter()
            .flat_map(|lane| {
                egress
                    .iter()
                    .zip(&lane.budgets)
                    .map(move |(e, b)| BudgetRow {
                        egress: e.label.clone(),
                        class: lane.class,
                        tenant: lane.tenant.clone(),
                        configured_rate: b.configured_rate,
                        effective_rate: b.effective_rate,
                        adaptation: b.adaptation,
                        sent_last_window: b.sent_last_window,
                        next_free_in_ms: b.next_free_in_ms,
                        queued: lane.queued,
                        oldest_wait_ms: lane.oldest_wait_ms,
                    })
            })
            .collect();
        let mut tenants: Vec<TenantRow> = snap
            .tenants
            .iter()
            .map(|t| {
                let s = gw.stats(&t.name);
                let totals_by_status = gw
                    .totals_by_status(&t.name)
                    .into_iter()
                    .map(|(code, n)| (code.to_string(), n))
                    .collect();
                TenantRow {
                    name: t.name.to_string(),
                    weight: t.config.weight.get(),
                    queued: gw.scheduler.tenant_queued(&t.name),
                    inflight: s.inflight.load(Ordering::Relaxed),
                    displaced: gw.scheduler.displaced(&t.name),
                    export_pages: gw.metrics.export_pages.with_label_values(&[&t.name]).get(),
                    totals_by_status,
                    queue_wait_last_minute: gw.metrics.tenant_queue_wait.quantiles(&t.name),
                    cache_last_minute: gw.cache.stats.status(&t.name),
                }
            })
            .collect();
        tenants.sort_by(|a, b| a.name.cmp(&b.name));
        Status {
            version: env!("CARGO_PKG_VERSION"),
            uptime_seconds: gw.uptime().as_secs(),
            config_checksum: snap.config.checksum.clone(),
            ready: gw.is_ready(),
            draining: gw.drain.is_draining(),
            budget_backend: gw.backend_state(),
            budget_backend_cause: gw.backend_cause(),
            redis_calls: gw.scheduler.shared_state().map(|(_, calls)| calls),
            queued_total: gw.scheduler.queued(),
            queue_capacity: snap.config.limits.queue_capacity.get(),
            exports_in_progress: gw.metrics.exports_in_progress.get().max(0) as u64,
            budgets,
            tenants,
        }
    }
}

/// Sets the gauges that describe queues and budgets from the gateway's
/// state now (called per scrape), and catches `client_gone` rejections up
/// with the scheduler's count of withdrawn waiters.
pub fn refresh_gauges(gw: &Gateway) {
    let m = &gw.metrics;
    let snap = gw.snapshot();
    m.uptime.set(gw.uptime().as_secs_f64());
    let fallback = gw.scheduler.shared_state().is_some_and(|(f, _)| f);
    m.redis_fallback.set(i64::from(fallback));
    let gone = m.rejections.with_label_values(&["client_gone"]);
    gone.inc_by(gw.scheduler.withdrawn().saturating_sub(gone.get()));
    m.queue_capacity
        .set(snap.config.limits.queue_capacity.get() as i64);
    let (bytes, entries) = gw.cache.usage();
    m.cache_bytes.set(bytes as i64);
    m.cache_entries.set(entries as i64);
    for t in snap.tenants.iter() {
        for class in Class::ALL {
            m.queue_depth
                .with_label_values(&[&t.name, class.as_str()])
                .set(0);
        }
        m.inflight
            .with_label_values(&[&t.name])
            .set(gw.stats(&t.name).inflight.load(Ordering::Relaxed) as i64);
        let displaced = m.queue_displaced.with_label_values(&[&t.name, "displaced"]);
        displaced.inc_by(
            gw.scheduler
                .displaced(&t.name)
                .saturating_sub(displaced.get()),
        );
    }
    // With per-account budgets a class has several lanes; the effective
    // rate shown is the most reduced one.
    let lanes = gw.scheduler.snapshot();
    for lane in &lanes {
        for (tenant, n) in &lane.queued_by_tenant {
            m.queue_depth
                .with_label_values(&[tenant, lane.class.as_str()])
                .add(*n as i64);
        }
    }
    for (i, egress) in gw.egress_all().iter().enumerate() {
        for class in Class::ALL {
            let labels = [egress.label.as_str(), class.as_str()];
            let configured = f64::from(snap.config.rate(class).get());
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const KEY: &str = "real-key-status-0001";
    const CLIENT_KEY: &str = "client-key-status-0002";

    fn keys(v: &serde_json::Value) -> Vec<&str> {
        let mut k: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
        k.sort_unstable();
        k
    }

    #[tokio::test]
    async fn the_document_keeps_its_field_names_and_holds_no_key() {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
             [[tenants]]\nname = \"zeta\"\nbase_url = \"https://zeta.retailcrm.ru\"\n\
             api_key = \"{KEY}\"\nclient_keys = [\"{CLIENT_KEY}\"]\nweight = 3\n\
             [[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
             api_key = \"{KEY}\"\n"
        );
        let config = Config::from_toml(&text, "test config", &|_| None).unwrap();
        let gw = Gateway::new(config, None).unwrap();
        let doc = serde_json::to_value(Status::collect(&gw)).unwrap();
        let text = doc.to_string();
        assert!(!text.contains(KEY) && !text.contains(CLIENT_KEY), "{text}");

        assert_eq!(
            keys(&doc),
            [
                "budget_backend",
                "budget_backend_cause",
                "budgets",
                "config_checksum",
                "draining",
                "exports_in_progress",
                "queue_capacity",
                "queued_total",
                "ready",
                "redis_calls",
                "tenants",
                "uptime_seconds",
                "version"
            ]
        );
        assert_eq!(doc["budget_backend"], "local");
        assert_eq!(doc["redis_calls"], serde_json::Value::Null);
        assert_eq!(doc["ready"], false, "not ready until the server runs");
        assert_eq!(doc["draining"], false);

        let budgets = doc["budgets"].as_array().unwrap();
        assert_eq!(budgets.len(), 2, "one egress, two classes: {doc}");
        assert_eq!(
            keys(&budgets[0]),
            [
                "adaptation",
                "class",
                "configured_rate",
                "effective_rate",
                "egress",
                "next_free_in_ms",
                "oldest_wait_ms",
                "queued",
                "sent_last_window",
                "tenant"
            ]
        );
        assert_eq!(budgets[0]["egress"], "default");
        assert!(budgets
            .iter()
            .any(|b| b["class"] == "telephony" && b["configured_rate"] == 40));

        let tenants = doc["tenants"].as_array().unwrap();
        let names: Vec<&str> = tenants
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["acme", "zeta"], "sorted by name");
        assert_eq!(
            keys(&tenants[1]),
            [
                "cache_last_minute",
                "displaced",
                "export_pages",
                "inflight",
                "name",
                "queue_wait_last_minute",
                "queued",
                "totals_by_status",
                "weight"
            ]
        );
        assert_eq!(tenants[1]["weight"], 3);
        assert_eq!(
            keys(&tenants[1]["cache_last_minute"]),
            [
                "fill_waits_last_minute",
                "hit_ratio",
                "l1_hits_last_minute",
                "requests_last_minute",
                "shared_hits_last_minute",
                "slots_saved_last_minute"
            ]
        );
        assert_eq!(
            tenants[1]["queue_wait_last_minute"],
            serde_json::Value::Null
        );
    }
}
