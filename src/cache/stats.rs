//! What the cache did, per tenant: Prometheus counters and a one-minute
//! window for `/status` (hit ratio, slots saved).
//!
//! Labels are tenant names from config and the five results; never a path
//! or a key. Every labelled series exists from the first scrape.

use std::sync::{Arc, Mutex};

use dashmap::DashMap;
use prometheus::{IntCounter, IntCounterVec};
use serde::Serialize;
use tokio::time::Instant;

/// What happened to a GET, as `X-Crmgate-Cache` and the `result` label say.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Answered from a fresh entry.
    Hit,
    /// Sent to the CRM as its own request.
    Miss,
    /// Answered by a request another caller started (no slot of its own).
    Coalesced,
    /// Answered from an expired entry because the CRM failed or the queue
    /// deadline passed.
    Stale,
    /// Not cached and not coalesced (`Cache-Control: no-store`).
    Bypass,
}

impl Outcome {
    /// Every outcome, in label order.
    pub const ALL: [Outcome; 5] = [
        Outcome::Hit,
        Outcome::Miss,
        Outcome::Coalesced,
        Outcome::Stale,
        Outcome::Bypass,
    ];

    /// The header value and label.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Hit => "hit",
            Outcome::Miss => "miss",
            Outcome::Coalesced => "coalesced",
            Outcome::Stale => "stale",
            Outcome::Bypass => "bypass",
        }
    }

    /// Whether the CRM was spared a request (a slot saved).
    pub fn saved(self) -> bool {
        matches!(self, Outcome::Hit | Outcome::Coalesced | Outcome::Stale)
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One tenant's counters: exported handles and the last minute.
pub struct TenantCache {
    by_outcome: [IntCounter; 5],
    coalesced: IntCounter,
    minute: Mutex<Minute>,
}

/// Per-second buckets of the last 60 seconds: (second, GETs, saved).
struct Minute {
    origin: Instant,
    buckets: [(u64, u64, u64); 60],
}

impl Minute {
    fn add(&mut self, now: Instant, saved: bool) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, 0, 0);
        }
        b.1 += 1;
        b.2 += u64::from(saved);
    }

    fn sum(&self, now: Instant) -> (u64, u64) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        self.buckets
            .iter()
            .filter(|b| b.0 + 60 > sec && b.0 <= sec && (b.1 > 0))
            .fold((0, 0), |(n, s), b| (n + b.1, s + b.2))
    }
}

/// `/status`: one tenant's cache over the last minute.
#[derive(Debug, Clone, Serialize)]
pub struct CacheStatus {
    /// GETs that went through the cache stage.
    pub requests_last_minute: u64,
    /// Of those, answered without a slot of their own (hit, coalesced, stale).
    pub slots_saved_last_minute: u64,
    /// `slots_saved / requests`, 0 when there were none.
    pub hit_ratio: f64,
}

/// Every tenant's counters.
pub struct Stats {
    requests: IntCounterVec,
    coalesced: IntCounterVec,
    tenants: DashMap<Arc<str>, Arc<TenantCache>>,
}

impl Stats {
    /// Counters over the registered metric families.
    pub fn new(requests: IntCounterVec, coalesced: IntCounterVec) -> Stats {
        Stats {
            requests,
            coalesced,
            tenants: DashMap::new(),
        }
    }

    /// One tenant's counters, created (at 0) on first use.
    pub fn tenant(&self, name: &Arc<str>) -> Arc<TenantCache> {
        if let Some(t) = self.tenants.get(name) {
            return t.clone();
        }
        self.tenants
            .entry(name.clone())
            .or_insert_with(|| {
                Arc::new(TenantCache {
                    by_outcome: Outcome::ALL
                        .map(|o| self.requests.with_label_values(&[name, o.as_str()])),
                    coalesced: self.coalesced.with_label_values(&[name]),
                    minute: Mutex::new(Minute {
                        origin: Instant::now(),
                        buckets: [(u64::MAX - 60, 0, 0); 60],
                    }),
                })
            })
            .clone()
    }

    /// Counts one GET's outcome for `tenant`.
    pub fn count(&self, tenant: &Arc<str>, outcome: Outcome) {
        self.tenant(tenant).count(outcome);
    }

    /// The last minute of `tenant`.
    pub fn status(&self, tenant: &Arc<str>) -> CacheStatus {
        let (requests, saved) = self
            .tenant(tenant)
            .minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sum(Instant::now());
        CacheStatus {
            requests_last_minute: requests,
            slots_saved_last_minute: saved,
            hit_ratio: if requests == 0 {
                0.0
            } else {
                ((saved as f64 / requests as f64) * 1000.0).round() / 1000.0
            },
        }
    }
}

impl TenantCache {
    /// Counts one outcome.
    pub fn count(&self, outcome: Outcome) {
        self.by_outcome[outcome.index()].inc();
        if outcome == Outcome::Coalesced {
            self.coalesced.inc();
        }
        self.minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(Instant::now(), outcome.saved());
    }
}
