//! Per-tenant queue waits over the last minute: a ring of per-second
//! histograms per tenant, so p50/p95 cost a fixed amount of memory and old
//! seconds fall out without a sweeping task. It must never block a request
//! on more than one tenant's short lock, and holds only counts.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use dashmap::DashMap;
use serde::Serialize;

/// The span of the queue-wait quantiles, in seconds.
pub const WAIT_WINDOW_SECS: u64 = 60;

/// Upper bounds (ms) of the wait histogram's buckets; one more bucket holds
/// what is above the last. Log-spaced so p50 and p95 stay within ~30% from
/// a fast-path 0 ms to the 30 s queue deadline.
const WAIT_BOUNDS_MS: [f64; 27] = [
    1.0, 2.0, 3.0, 5.0, 7.0, 10.0, 15.0, 20.0, 30.0, 50.0, 70.0, 100.0, 150.0, 200.0, 300.0, 500.0,
    700.0, 1000.0, 1500.0, 2000.0, 3000.0, 5000.0, 7000.0, 10000.0, 15000.0, 20000.0, 30000.0,
];
const WAIT_BUCKETS: usize = WAIT_BOUNDS_MS.len() + 1;

/// One second of one tenant's waits.
#[derive(Clone, Copy)]
struct WaitSlot {
    /// Which second (since the windows were created) the counts belong to.
    second: u64,
    counts: [u32; WAIT_BUCKETS],
}

/// Queue waits of every tenant over the last [`WAIT_WINDOW_SECS`] seconds.
///
/// Fed where the scheduler hands out a slot ([`crate::forward`]); read by
/// `/status`. A tenant's window is a ring of per-second histograms, so old
/// seconds fall out without any sweeping task.
pub struct WaitWindows {
    origin: Instant,
    tenants: DashMap<Arc<str>, Mutex<Box<[WaitSlot]>>>,
}

/// Queue-wait quantiles of one tenant over the last minute.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct WaitQuantiles {
    /// Median wait, milliseconds.
    pub p50_ms: f64,
    /// 95th percentile wait, milliseconds.
    pub p95_ms: f64,
    /// Waits counted.
    pub count: u64,
}

impl Default for WaitWindows {
    fn default() -> Self {
        WaitWindows::new()
    }
}

impl WaitWindows {
    /// Empty windows.
    pub fn new() -> WaitWindows {
        WaitWindows {
            origin: Instant::now(),
            tenants: DashMap::new(),
        }
    }

    /// Records that a request of `tenant` waited `waited` for its slot.
    pub fn observe(&self, tenant: &Arc<str>, waited: Duration) {
        self.observe_at(tenant, waited, Instant::now());
    }

    /// Quantiles of `tenant`'s waits in the last minute; `None` without any.
    pub fn quantiles(&self, tenant: &str) -> Option<WaitQuantiles> {
        self.quantiles_at(tenant, Instant::now())
    }

    fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }

    fn observe_at(&self, tenant: &Arc<str>, waited: Duration, now: Instant) {
        let second = self.second(now);
        let ms = waited.as_secs_f64() * 1000.0;
        let bucket = WAIT_BOUNDS_MS.partition_point(|b| *b < ms);
        let window = match self.tenants.get(tenant) {
            Some(w) => w,
            None => self
                .tenants
                .entry(tenant.clone())
                .or_insert_with(|| {
                    let empty = WaitSlot {
                        second: u64::MAX,
                        counts: [0; WAIT_BUCKETS],
                    };
                    Mutex::new(vec![empty; WAIT_WINDOW_SECS as usize].into_boxed_slice())
                })
                .downgrade(),
        };
        let mut slots = window.lock().unwrap_or_else(|p| p.into_inner());
        let slot = &mut slots[(second % WAIT_WINDOW_SECS) as usize];
        if slot.second != second {
            *slot = WaitSlot {
                second,
                counts: [0; WAIT_BUCKETS],
            };
        }
        slot.counts[bucket] = slot.counts[bucket].saturating_add(1);
    }

    fn quantiles_at(&self, tenant: &str, now: Instant) -> Option<WaitQuantiles> {
        let window = self.tenants.get(tenant)?;
        let second = self.second(now);
        let mut counts = [0u64; WAIT_BUCKETS];
        let slots = window.lock().unwrap_or_else(|p| p.into_inner());
        for slot in slots.iter() {
            // Slots still holding a second older than the window are stale.
            if slot.second <= second && second - slot.second < WAIT_WINDOW_SECS {
                for (sum, n) in counts.iter_mut().zip(slot.counts) {
                    *sum += u64::from(n);
                }
            }
        }
        let count: u64 = counts.iter().sum();
        (count > 0).then(|| WaitQuantiles {
            p50_ms: quantile(&counts, count, 0.50),
            p95_ms: quantile(&counts, count, 0.95),
            count,
        })
    }
}

/// The `q` quantile of a bucketed distribution, interpolated linearly inside
/// its bucket, rounded to 0.1 ms. Above the last bound it is that bound.
fn quantile(counts: &[u64; WAIT_BUCKETS], total: u64, q: f64) -> f64 {
    let rank = q * total as f64;
    let mut below = 0u64;
    for (i, &n) in counts.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            let lower = if i == 0 { 0.0 } else { WAIT_BOUNDS_MS[i - 1] };
            let Some(&upper) = WAIT_BOUNDS_MS.get(i) else {
                return lower;
            };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return ((lower + (upper - lower) * within) * 10.0).round() / 10.0;
        }
        below += n;
    }
    WAIT_BOUNDS_MS[WAIT_BOUNDS_MS.len() - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn quantiles_interpolate_inside_a_bucket() {
        let w = WaitWindows::new();
        let t: Arc<str> = Arc::from("acme");
        let at = w.origin;
        // All in (7, 10] ms: the median sits half way, p95 near the top.
        for _ in 0..100 {
            w.observe_at(&t, ms(9), at);
        }
        let q = w.quantiles_at("acme", at).unwrap();
        assert_eq!(q.count, 100);
        assert_eq!(q.p50_ms, 8.5);
        assert_eq!(q.p95_ms, 9.9);
        assert_eq!(w.quantiles_at("nobody", at), None);
    }

    #[test]
    fn quantiles_separate_fast_and_slow_waits() {
        let w = WaitWindows::new();
        let t: Arc<str> = Arc::from("acme");
        let at = w.origin;
        for _ in 0..90 {
            w.observe_at(&t, Duration::ZERO, at);
        }
        for _ in 0..10 {
            w.observe_at(&t, ms(2500), at);
        }
        let q = w.quantiles_at("acme", at).unwrap();
        assert!(q.p50_ms <= 1.0, "{q:?}");
        assert!((2000.0..=3000.0).contains(&q.p95_ms), "{q:?}");
        // Above the last bound, the last bound (the queue deadline caps waits).
        w.observe_at(&t, Duration::from_secs(120), at);
        let q = w.quantiles_at("acme", at).unwrap();
        assert!(q.p95_ms <= 30_000.0, "{q:?}");
    }

    #[test]
    fn waits_older_than_a_minute_fall_out() {
        let w = WaitWindows::new();
        let t: Arc<str> = Arc::from("acme");
        let start = w.origin;
        w.observe_at(&t, ms(500), start);
        let s = |n: u64| start + Duration::from_secs(n);
        assert_eq!(w.quantiles_at("acme", s(59)).unwrap().count, 1);
        assert_eq!(w.quantiles_at("acme", s(60)), None, "a minute later");
        // Second 60 reuses second 0's slot: only the new wait counts.
        w.observe_at(&t, ms(5), s(60));
        let q = w.quantiles_at("acme", s(60)).unwrap();
        assert_eq!(q.count, 1);
        assert!(q.p95_ms <= 5.0, "{q:?}");
    }
}
