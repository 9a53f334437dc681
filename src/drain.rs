//! Drain bookkeeping: readiness, and the counts a graceful shutdown reports.
//!
//! [`Drain`] owns the readiness flag that `/readyz` shows and the two
//! counters the request handler bumps (requests finished, requests answered
//! 503 because of shutdown). The server marks when shutdown begins and when
//! the grace period ends; [`Drain::report`] turns the counts at those marks
//! into a [`DrainReport`]. It only counts: it never answers, cancels or
//! delays a request, and it holds nothing about a request but its outcome.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

/// What a drain did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DrainReport {
    /// Requests that finished normally after shutdown began.
    pub drained: u64,
    /// Requests answered 503 because the grace period ran out.
    pub cut_off: u64,
    /// New requests refused with 503 during the grace period (after the
    /// `server.drain_accept` window, which queues them instead).
    pub refused: u64,
}

/// Counter values at one moment.
#[derive(Debug, Clone, Copy, Default)]
struct Mark {
    finished: u64,
    shutdown_503s: u64,
}

/// The marks a drain is measured between.
#[derive(Debug, Default)]
struct Marks {
    began: Option<Mark>,
    grace_over: Option<Mark>,
}

/// Readiness and drain counters, shared by the server, the handler and the
/// admin listener.
#[derive(Debug, Default)]
pub struct Drain {
    ready: AtomicBool,
    draining: AtomicBool,
    finished: AtomicU64,
    shutdown_503s: AtomicU64,
    marks: Mutex<Marks>,
}

impl Drain {
    /// Not ready, nothing counted.
    pub fn new() -> Drain {
        Drain::default()
    }

    /// True once the listeners are up and until shutdown begins.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }

    /// Marks the gateway ready (listeners up) or not.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// One request finished, with any outcome (including a shutdown 503).
    pub fn request_finished(&self) {
        self.finished.fetch_add(1, Ordering::Relaxed);
    }

    /// One request was answered 503 because the gateway is shutting down:
    /// refused during the grace period, or cut off after it.
    pub fn cut_off(&self) {
        self.shutdown_503s.fetch_add(1, Ordering::Relaxed);
    }

    fn mark(&self) -> Mark {
        Mark {
            finished: self.finished.load(Ordering::Relaxed),
            shutdown_503s: self.shutdown_503s.load(Ordering::Relaxed),
        }
    }

    fn marks(&self) -> std::sync::MutexGuard<'_, Marks> {
        self.marks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True from the moment shutdown begins: every answer from then on
    /// carries `Connection: close`, so callers reconnect (to a listener
    /// that is about to close, or to another replica) instead of keeping a
    /// connection to a process that is going away.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Shutdown begins: no longer ready; counts from here are the drain's.
    pub fn begin(&self) {
        self.set_ready(false);
        self.draining.store(true, Ordering::Relaxed);
        let now = self.mark();
        self.marks().began = Some(now);
    }

    /// The grace period is over (or everything finished within it): 503s
    /// from here on are requests cut off, not new ones refused.
    pub fn grace_over(&self) {
        let now = self.mark();
        self.marks().grace_over = Some(now);
    }

    /// What the drain did so far. A mark not yet set counts as now.
    pub fn report(&self) -> DrainReport {
        let now = self.mark();
        let marks = self.marks();
        let began = marks.began.unwrap_or(now);
        let grace_over = marks.grace_over.unwrap_or(now);
        let finished = now.finished.saturating_sub(began.finished);
        let shutdown_503s = now.shutdown_503s.saturating_sub(began.shutdown_503s);
        DrainReport {
            // A shutdown 503 also counts as finished; it was not drained.
            drained: finished.saturating_sub(shutdown_503s),
            cut_off: now.shutdown_503s.saturating_sub(grace_over.shutdown_503s),
            refused: grace_over.shutdown_503s.saturating_sub(began.shutdown_503s),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finish(d: &Drain, ok: u32, shutdown_503: u32) {
        for _ in 0..ok {
            d.request_finished();
        }
        for _ in 0..shutdown_503 {
            d.cut_off();
            d.request_finished();
        }
    }

    #[test]
    fn readiness_follows_start_and_shutdown() {
        let d = Drain::new();
        assert!(!d.is_ready(), "not ready before the listeners are up");
        d.set_ready(true);
        assert!(d.is_ready());
        assert!(!d.is_draining());
        d.begin();
        assert!(!d.is_ready(), "shutdown turns readiness off");
        assert!(d.is_draining());
    }

    #[test]
    fn report_splits_drained_refused_and_cut_off_by_the_marks() {
        let d = Drain::new();
        d.set_ready(true);
        // Before shutdown: not the drain's business.
        finish(&d, 5, 0);
        d.begin();
        // During the grace: 3 finish normally, 2 newcomers are refused.
        finish(&d, 3, 2);
        d.grace_over();
        // After the grace: 1 more finishes, 4 are cut off.
        finish(&d, 1, 4);
        assert_eq!(
            d.report(),
            DrainReport {
                drained: 4,
                cut_off: 4,
                refused: 2
            }
        );
    }

    #[test]
    fn a_drain_within_the_grace_cuts_nothing_off() {
        let d = Drain::new();
        d.begin();
        finish(&d, 2, 1);
        d.grace_over();
        assert_eq!(
            d.report(),
            DrainReport {
                drained: 2,
                cut_off: 0,
                refused: 1
            }
        );
    }
}
