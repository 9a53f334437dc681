//! What the status page remembers: a fixed ring of per-second samples (the
//! last five minutes). Per-tenant queue-wait windows are metrics'
//! ([`crate::metrics::WaitWindows`]).
//!
//! Memory is bounded whatever the uptime: the ring holds [`CAPACITY`]
//! samples, each one row per budget and per configured tenant. Rows hold
//! names (from config), rates and counts: never a key, a path or a body.
//! This module never blocks the request path, and the sampler only reads
//! the gateway's counters.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use prometheus::core::Collector;
use serde::Serialize;

use crate::classify::Class;
use crate::gateway::Gateway;

/// Samples kept: one per second for five minutes.
pub const CAPACITY: usize = 300;

/// One budget (egress × class) during one second.
#[derive(Debug, Clone)]
struct BudgetPoint {
    egress: Arc<str>,
    class: Class,
    sends: u64,
    throttled: u64,
    limit: f64,
    configured: f64,
}

/// One tenant during one second.
#[derive(Debug, Clone)]
struct TenantPoint {
    name: Arc<str>,
    waiting: u64,
    inflight: u64,
    /// Answers finished this second, by status class 1xx..5xx.
    answers: [u64; 5],
}

/// One second of the whole gateway.
#[derive(Debug, Clone)]
struct Sample {
    uptime_seconds: u64,
    budgets: Vec<BudgetPoint>,
    tenants: Vec<TenantPoint>,
}

/// The outcome of the last config reload seen by the sampler.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct LastReload {
    /// `success` or `failure`.
    pub outcome: &'static str,
    /// Uptime when the sampler saw it (to the second).
    pub uptime_seconds: u64,
}

/// Reload counts and the last outcome.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Reloads {
    /// Reloads put in force since start.
    pub succeeded: u64,
    /// Reloads refused since start.
    pub failed: u64,
    /// The most recent one; `null` before any.
    pub last: Option<LastReload>,
}

/// The ring of per-second samples behind `/status/history`.
pub struct History {
    ring: Mutex<VecDeque<Sample>>,
    reloads: Mutex<Reloads>,
}

/// The `/status/history` document: per-second series, oldest first, all of
/// the same length as `uptime_seconds`. A series is `null` at a second where
/// its budget or tenant did not exist (before or after a reload).
#[derive(Debug, Clone, Serialize)]
pub struct HistoryDoc {
    /// Seconds between samples.
    pub interval_seconds: u64,
    /// Samples kept at most.
    pub capacity: usize,
    /// The gateway's uptime at each sample: the time axis.
    pub uptime_seconds: Vec<u64>,
    /// One entry per budget (egress × class), in config order.
    pub budgets: Vec<BudgetSeries>,
    /// One entry per tenant, sorted by name.
    pub tenants: Vec<TenantSeries>,
    /// Config reloads.
    pub reloads: Reloads,
}

/// The last minutes of one budget.
#[derive(Debug, Clone, Serialize)]
pub struct BudgetSeries {
    /// Egress label: its IP, or `default`.
    pub egress: String,
    /// `general` or `telephony`.
    pub class: Class,
    /// Sends to the CRM per second (any answer, or none).
    pub sends: Vec<Option<u64>>,
    /// CRM 503 and 429 answers per second.
    pub throttled: Vec<Option<u64>>,
    /// Effective rate (the adaptive limit) at each second, requests/s; with
    /// per-account budgets the sum over accounts.
    pub limit: Vec<Option<f64>>,
    /// Configured rate at each second, requests/s (summed likewise).
    pub configured: Vec<Option<f64>>,
}

/// The last minutes of one tenant.
#[derive(Debug, Clone, Serialize)]
pub struct TenantSeries {
    /// Tenant name from config.
    pub name: String,
    /// Requests waiting for a slot at each second.
    pub waiting: Vec<Option<u64>>,
    /// Requests being forwarded at each second.
    pub inflight: Vec<Option<u64>>,
    /// Answers finished per second, by status class (`2xx`, `4xx`, …).
    pub answers: HashMap<&'static str, Vec<Option<u64>>>,
}

const STATUS_CLASSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// An empty ring.
    pub fn new() -> History {
        History {
            ring: Mutex::new(VecDeque::with_capacity(CAPACITY)),
            reloads: Mutex::new(Reloads::default()),
        }
    }

    /// A ring sampled once a second from `gateway` by a task spawned on the
    /// current tokio runtime. The task stops when the gateway or the ring is
    /// dropped; without a runtime (a router built outside one) the ring
    /// stays empty.
    pub fn start(gateway: &Arc<Gateway>) -> Arc<History> {
        let history = Arc::new(History::new());
        if let Ok(snap) = tokio::runtime::Handle::try_current() {
            snap.spawn(sample_every_second(
                Arc::downgrade(gateway),
                Arc::downgrade(&history),
            ));
        }
        history
    }

    fn push(&self, sample: Sample) {
        let mut ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        if ring.len() == CAPACITY {
            ring.pop_front();
        }
        ring.push_back(sample);
    }

    /// Samples held now.
    pub fn len(&self) -> usize {
        self.ring.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// True before the first sample.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Reload counts and the last outcome.
    pub fn reloads(&self) -> Reloads {
        *self.reloads.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The ring as per-second series.
    pub fn doc(&self) -> HistoryDoc {
        let ring = self.ring.lock().unwrap_or_else(|p| p.into_inner());
        let n = ring.len();
        let mut budgets: Vec<BudgetSeries> = Vec::new();
        let mut tenants: Vec<TenantSeries> = Vec::new();
        for (i, s) in ring.iter().enumerate() {
            for b in &s.budgets {
                let at = match budgets
                    .iter()
                    .position(|x| *x.egress == *b.egress && x.class == b.class)
                {
                    Some(at) => at,
                    None => {
                        budgets.push(BudgetSeries {
                            egress: b.egress.to_string(),
                            class: b.class,
                            sends: vec![None; n],
                            throttled: vec![None; n],
                            limit: vec![None; n],
                            configured: vec![None; n],
                        });
                        budgets.len() - 1
                    }
                };
                let series = &mut budgets[at];
                series.sends[i] = Some(b.sends);
                series.throttled[i] = Some(b.throttled);
                series.limit[i] = Some(b.limit);
                series.configured[i] = Some(b.configured);
            }
            for t in &s.tenants {
                let at = match tenants.iter().position(|x| *x.name == *t.name) {
                    Some(at) => at,
                    None => {
                        tenants.push(TenantSeries {
                            name: t.name.to_string(),
                            waiting: vec![None; n],
                            inflight: vec![None; n],
                            answers: STATUS_CLASSES.iter().map(|c| (*c, vec![None; n])).collect(),
                        });
                        tenants.len() - 1
                    }
                };
                let series = &mut tenants[at];
                series.waiting[i] = Some(t.waiting);
                series.inflight[i] = Some(t.inflight);
                for (class, count) in STATUS_CLASSES.iter().zip(t.answers) {
                    if let Some(v) = series.answers.get_mut(class) {
                        v[i] = Some(count);
                    }
                }
            }
        }
        tenants.sort_by(|a, b| a.name.cmp(&b.name));
        HistoryDoc {
            interval_seconds: 1,
            capacity: CAPACITY,
            uptime_seconds: ring.iter().map(|s| s.uptime_seconds).collect(),
            budgets,
            tenants,
            reloads: self.reloads(),
        }
    }
}

/// Counter readings of the previous tick: samples hold per-second deltas.
#[derive(Default)]
struct Sampler {
    sends: HashMap<(String, Class), u64>,
    throttled: HashMap<(String, Class), u64>,
    answers: HashMap<Arc<str>, [u64; 5]>,
    reloads: (u64, u64),
    last_reload: Option<LastReload>,
}

impl Sampler {
    /// Reads the gateway now and records one sample.
    fn tick(&mut self, gw: &Gateway, history: &History) {
        let (sample, reloads) = self.read(gw);
        history.push(sample);
        *history.reloads.lock().unwrap_or_else(|p| p.into_inner()) = reloads;
    }

    fn read(&mut self, gw: &Gateway) -> (Sample, Reloads) {
        let uptime_seconds = gw.uptime().as_secs();
        let m = &gw.metrics;
        let snap = gw.snapshot();

        let mut sends_now: HashMap<(String, Class), u64> = HashMap::new();
        for family in m.upstream_attempts.collect() {
            for metric in family.get_metric() {
                let (mut egress, mut class) = (None, None);
                for pair in metric.get_label() {
                    match pair.name() {
                        "egress" => egress = Some(pair.value().to_string()),
                        "class" => {
                            class = Class::ALL.into_iter().find(|c| c.as_str() == pair.value())
                        }
                        _ => {}
                    }
                }
                if let (Some(e), Some(c)) = (egress, class) {
                    *sends_now.entry((e, c)).or_default() +=
                        metric.get_counter().get_value() as u64;
                }
            }
        }

        let lanes = gw.scheduler.snapshot();
        let mut budgets = Vec::new();
        for (i, egress) in gw.egress_all().iter().enumerate() {
            for class in Class::ALL {
                let key = (egress.label.clone(), class);
                let sent = sends_now.get(&key).copied().unwrap_or(0);
                let throttled: u64 = ["503", "429"]
                    .iter()
                    .map(|s| {
                        m.upstream_throttled
                            .with_label_values(&[&egress.label, class.as_str(), s])
                            .get()
                    })
                    .sum();
                let (mut limit, mut configured) = (0.0, 0.0);
                for b in lanes
                    .iter()
                    .filter(|l| l.class == class)
                    .filter_map(|l| l.budgets.get(i))
                {
                    limit += b.effective_rate;
                    configured += f64::from(b.configured_rate);
                }
                let sends = delta(&mut self.sends, key.clone(), sent);
                let throttled = delta(&mut self.throttled, key, throttled);
                budgets.push(BudgetPoint {
                    egress: Arc::from(egress.label.as_str()),
                    class,
                    sends,
                    throttled,
                    limit: (limit * 100.0).round() / 100.0,
                    configured,
                });
            }
        }

        let mut tenants = Vec::new();
        for t in snap.tenants.iter() {
            let mut totals = [0u64; 5];
            for (code, n) in &gw.totals_by_status(&t.name) {
                let class = usize::from(code / 100).clamp(1, 5) - 1;
                totals[class] += n;
            }
            let previous = self.answers.entry(t.name.clone()).or_insert(totals);
            let mut answers = [0u64; 5];
            for ((a, now), before) in answers.iter_mut().zip(totals).zip(previous.iter()) {
                *a = now.saturating_sub(*before);
            }
            *previous = totals;
            tenants.push(TenantPoint {
                name: t.name.clone(),
                waiting: gw.scheduler.tenant_queued(&t.name) as u64,
                inflight: gw.stats(&t.name).inflight.load(Ordering::Relaxed),
                answers,
            });
        }

        let succeeded = m.config_reloads.with_label_values(&["success"]).get();
        let failed = m.config_reloads.with_label_values(&["failure"]).get();
        let (ok_before, failed_before) = self.reloads;
        // A failure seen in the same second as a success is reported as the
        // last outcome: it is the one that needs a look.
        let last = if failed > failed_before {
            Some("failure")
        } else if succeeded > ok_before {
            Some("success")
        } else {
            None
        };
        self.reloads = (succeeded, failed);
        if let Some(outcome) = last {
            self.last_reload = Some(LastReload {
                outcome,
                uptime_seconds,
            });
        }
        let reloads = Reloads {
            succeeded,
            failed,
            last: self.last_reload,
        };
        (
            Sample {
                uptime_seconds,
                budgets,
                tenants,
            },
            reloads,
        )
    }
}

/// Per-second increase of a counter; a counter first seen counts from its
/// current value (the baseline), so a sampler started late shows no spike.
fn delta<K: std::hash::Hash + Eq>(previous: &mut HashMap<K, u64>, key: K, now: u64) -> u64 {
    let before = previous.insert(key, now).unwrap_or(now);
    now.saturating_sub(before)
}

async fn sample_every_second(gateway: Weak<Gateway>, history: Weak<History>) {
    let mut sampler = Sampler::default();
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    // After a stall, one sample late beats a burst of samples at one instant.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let (Some(gw), Some(history)) = (gateway.upgrade(), history.upgrade()) else {
            return;
        };
        sampler.tick(&gw, &history);
    }
}

#[cfg(test)]
mod tests;
