//! Fault injection: what a flaky RetailCRM (or the nginx in front of it) does
//! to a request, settable from tests while the server runs.
//!
//! Each counter is consumed by one request at a time. Which counters a
//! request consumes, and in what order, is described in the parent module
//! ("Order of checks"); requests rejected by the rate limit consume none.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use rand::Rng;

use super::lock::lock;

/// What happens to a request before it is processed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Before {
    /// Drop the connection with a TCP reset; do not process.
    Reset,
    /// Answer 503 HTML, optionally with this `Retry-After` value.
    Fail(Option<String>),
    /// Carry on as usual.
    Process,
}

/// What happens to a processed request's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum After {
    /// Drop the connection with a TCP reset instead of answering.
    Reset,
    /// Answer 200 with a truncated, non-JSON body.
    Garbage,
    /// Send the real answer.
    Answer,
}

/// Fault switches. All methods take `&self`; settings replace earlier ones.
#[derive(Debug, Default)]
pub struct Faults {
    fail: Mutex<(u32, Option<String>)>,
    /// `f64` bits of the random-503 probability.
    random_503: AtomicU64,
    /// `a` of every `b` requests answered 503, evenly spread; and how many
    /// requests that rule has seen.
    share_503: Mutex<(u64, u64, u64)>,
    reset_before: AtomicU32,
    reset_after: AtomicU32,
    stall: Mutex<(u32, Duration)>,
    garbage: AtomicU32,
}

impl Faults {
    /// The next `n` requests get 503 with an HTML body, and a `Retry-After`
    /// header with this value if given (`"2"` or an HTTP date). They are not
    /// processed.
    pub fn fail_next(&self, n: u32, retry_after: Option<String>) {
        *lock(&self.fail) = (n, retry_after);
    }

    /// Each request independently gets 503 HTML with probability `ratio`
    /// (clamped to `[0, 1]`) and is not processed.
    pub fn set_random_503(&self, ratio: f64) {
        let ratio = if ratio.is_nan() {
            0.0
        } else {
            ratio.clamp(0.0, 1.0)
        };
        self.random_503.store(ratio.to_bits(), Ordering::Relaxed);
    }

    /// The next `n` requests are processed fully (an order is created), then
    /// their connection is reset without an answer.
    pub fn reset_after_processing_next(&self, n: u32) {
        self.reset_after.store(n, Ordering::Relaxed);
    }

    /// Exactly `a` of every `b` requests get 503 HTML, evenly spread (for
    /// `3, 10`: the 4th, 7th and 10th of each ten), whatever the rate: noise
    /// without chance, for tests that must not depend on luck. `b = 0` or
    /// `a = 0` turns it off.
    pub fn set_share_503(&self, a: u64, b: u64) {
        *lock(&self.share_503) = (a.min(b), b, 0);
    }

    /// The next `n` requests have their connection reset without processing.
    pub fn reset_before_processing_next(&self, n: u32) {
        self.reset_before.store(n, Ordering::Relaxed);
    }

    /// The next `n` requests wait `d` before they are processed and answered.
    pub fn stall_next(&self, n: u32, d: Duration) {
        *lock(&self.stall) = (n, d);
    }

    /// The next `n` requests are processed, then answered 200 with a
    /// truncated non-JSON body.
    pub fn garbage_next(&self, n: u32) {
        self.garbage.store(n, Ordering::Relaxed);
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.fail_next(0, None);
        self.set_random_503(0.0);
        self.set_share_503(0, 0);
        self.reset_after_processing_next(0);
        self.reset_before_processing_next(0);
        self.stall_next(0, Duration::ZERO);
        self.garbage_next(0);
    }

    /// Decides the pre-processing fault for one request, consuming a counter.
    pub(crate) fn before(&self) -> Before {
        if take(&self.reset_before) {
            return Before::Reset;
        }
        {
            let mut fail = lock(&self.fail);
            if fail.0 > 0 {
                fail.0 -= 1;
                return Before::Fail(fail.1.clone());
            }
        }
        let ratio = f64::from_bits(self.random_503.load(Ordering::Relaxed));
        if ratio > 0.0 && rand::thread_rng().gen_bool(ratio) {
            return Before::Fail(None);
        }
        {
            let mut share = lock(&self.share_503);
            let (a, b, i) = *share;
            if b > 0 && a > 0 {
                share.2 = i + 1;
                // Bresenham: the count of refusals reaches ⌊(i+1)·a/b⌋.
                if (i + 1) * a / b > i * a / b {
                    return Before::Fail(None);
                }
            }
        }
        Before::Process
    }

    /// How long to stall this request, if at all; consumes a stall.
    pub(crate) fn stall(&self) -> Option<Duration> {
        let mut stall = lock(&self.stall);
        if stall.0 == 0 {
            return None;
        }
        stall.0 -= 1;
        Some(stall.1)
    }

    /// Decides the post-processing fault for one request, consuming a counter.
    pub(crate) fn after(&self) -> After {
        if take(&self.reset_after) {
            After::Reset
        } else if take(&self.garbage) {
            After::Garbage
        } else {
            After::Answer
        }
    }
}

/// Decrements a counter if it is positive; true if it did.
fn take(counter: &AtomicU32) -> bool {
    counter
        .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1))
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_consumed_in_documented_order() {
        let f = Faults::default();
        f.reset_before_processing_next(1);
        f.fail_next(2, Some("2".into()));
        assert_eq!(f.before(), Before::Reset);
        assert_eq!(f.before(), Before::Fail(Some("2".into())));
        assert_eq!(f.before(), Before::Fail(Some("2".into())));
        assert_eq!(f.before(), Before::Process);

        f.reset_after_processing_next(1);
        f.garbage_next(1);
        assert_eq!(f.after(), After::Reset);
        assert_eq!(f.after(), After::Garbage);
        assert_eq!(f.after(), After::Answer);

        f.stall_next(1, Duration::from_millis(5));
        assert_eq!(f.stall(), Some(Duration::from_millis(5)));
        assert_eq!(f.stall(), None);
    }

    #[test]
    fn a_share_of_503s_is_exact_and_evenly_spread() {
        let f = Faults::default();
        f.set_share_503(3, 10);
        let pattern: Vec<bool> = (0..20).map(|_| f.before() == Before::Fail(None)).collect();
        let at: Vec<usize> = (0..20).filter(|i| pattern[*i]).collect();
        assert_eq!(at, [3, 6, 9, 13, 16, 19]);
        f.clear();
        assert!((0..20).all(|_| f.before() == Before::Process));
    }

    #[test]
    fn random_503_extremes_are_deterministic_and_clear_resets() {
        let f = Faults::default();
        f.set_random_503(1.0);
        assert!((0..50).all(|_| f.before() == Before::Fail(None)));
        f.set_random_503(7.0); // clamped to 1
        assert_eq!(f.before(), Before::Fail(None));
        f.garbage_next(3);
        f.clear();
        assert!((0..50).all(|_| f.before() == Before::Process));
        assert_eq!(f.after(), After::Answer);
    }
}
