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
pub enum CacheOutcome {
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
    /// Answered from the fleet's cache in Redis (another replica, or this
    /// one before its local entry expired, read it from the CRM).
    Shared,
}

impl CacheOutcome {
    /// Every outcome, in label order.
    pub const ALL: [CacheOutcome; 6] = [
        CacheOutcome::Hit,
        CacheOutcome::Miss,
        CacheOutcome::Coalesced,
        CacheOutcome::Stale,
        CacheOutcome::Bypass,
        CacheOutcome::Shared,
    ];

    /// The header value and label.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheOutcome::Hit => "hit",
            CacheOutcome::Miss => "miss",
            CacheOutcome::Coalesced => "coalesced",
            CacheOutcome::Stale => "stale",
            CacheOutcome::Bypass => "bypass",
            CacheOutcome::Shared => "shared",
        }
    }

    /// Whether the CRM was spared a request (a slot saved).
    pub fn saved(self) -> bool {
        matches!(
            self,
            CacheOutcome::Hit
                | CacheOutcome::Coalesced
                | CacheOutcome::Stale
                | CacheOutcome::Shared
        )
    }

    fn index(self) -> usize {
        self as usize
    }
}

/// One tenant's counters: exported handles and the last minute.
pub struct TenantCache {
    by_outcome: [IntCounter; 6],
    coalesced: IntCounter,
    fill_waits: IntCounter,
    minute: Mutex<Minute>,
}

/// One second's counts.
#[derive(Clone, Copy, Default)]
struct Counts {
    requests: u64,
    saved: u64,
    l1: u64,
    shared: u64,
    fill_waits: u64,
}

impl Counts {
    fn plus(self, o: Counts) -> Counts {
        Counts {
            requests: self.requests + o.requests,
            saved: self.saved + o.saved,
            l1: self.l1 + o.l1,
            shared: self.shared + o.shared,
            fill_waits: self.fill_waits + o.fill_waits,
        }
    }
}

/// Per-second buckets of the last 60 seconds.
struct Minute {
    origin: Instant,
    buckets: [(u64, Counts); 60],
}

impl Minute {
    fn add(&mut self, now: Instant, f: impl FnOnce(&mut Counts)) {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        let b = &mut self.buckets[(sec % 60) as usize];
        if b.0 != sec {
            *b = (sec, Counts::default());
        }
        f(&mut b.1);
    }

    fn sum(&self, now: Instant) -> Counts {
        let sec = now.saturating_duration_since(self.origin).as_secs();
        self.buckets
            .iter()
            .filter(|b| b.0 + 60 > sec && b.0 <= sec)
            .fold(Counts::default(), |n, b| n.plus(b.1))
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
    /// Answered from this replica's own (L1) cache.
    pub l1_hits_last_minute: u64,
    /// Answered from the fleet's cache in Redis.
    pub shared_hits_last_minute: u64,
    /// Reads that waited for another replica's fill instead of reading the CRM.
    pub fill_waits_last_minute: u64,
}

/// Every tenant's counters.
pub struct Stats {
    requests: IntCounterVec,
    coalesced: IntCounterVec,
    fill_waits: IntCounterVec,
    tenants: DashMap<Arc<str>, Arc<TenantCache>>,
}

impl Stats {
    /// Counters over the registered metric families.
    pub fn new(
        requests: IntCounterVec,
        coalesced: IntCounterVec,
        fill_waits: IntCounterVec,
    ) -> Stats {
        Stats {
            requests,
            coalesced,
            fill_waits,
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
                    by_outcome: CacheOutcome::ALL
                        .map(|o| self.requests.with_label_values(&[name, o.as_str()])),
                    coalesced: self.coalesced.with_label_values(&[name]),
                    fill_waits: self.fill_waits.with_label_values(&[name]),
                    minute: Mutex::new(Minute {
                        origin: Instant::now(),
                        buckets: [(u64::MAX - 60, Counts::default()); 60],
                    }),
                })
            })
            .clone()
    }

    /// Counts one GET's outcome for `tenant`.
    pub fn count(&self, tenant: &Arc<str>, outcome: CacheOutcome) {
        self.tenant(tenant).count(outcome);
    }

    /// The last minute of `tenant`.
    pub fn status(&self, tenant: &Arc<str>) -> CacheStatus {
        let c = self
            .tenant(tenant)
            .minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sum(Instant::now());
        let (requests, saved) = (c.requests, c.saved);
        CacheStatus {
            l1_hits_last_minute: c.l1,
            shared_hits_last_minute: c.shared,
            fill_waits_last_minute: c.fill_waits,
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
    pub fn count(&self, outcome: CacheOutcome) {
        self.by_outcome[outcome.index()].inc();
        if outcome == CacheOutcome::Coalesced {
            self.coalesced.inc();
        }
        self.minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(Instant::now(), |c| {
                c.requests += 1;
                c.saved += u64::from(outcome.saved());
                c.l1 += u64::from(outcome == CacheOutcome::Hit);
                c.shared += u64::from(outcome == CacheOutcome::Shared);
            });
    }

    /// Counts a read that waited for another replica's fill.
    pub fn fill_waited(&self) {
        self.fill_waits.inc();
        self.minute
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .add(Instant::now(), |c| c.fill_waits += 1);
    }
}
