//! One budget: the sends allowed through one outbound IP for one class.
//!
//! Sends are paced: each one waits `window / rate` after the previous one,
//! where `window = 1 s + jitter_allowance` (GCRA with a burst of 1). Any
//! `limit + 1` consecutive sends then span at least `window`, so even if
//! each reaches the CRM up to `jitter_allowance` later than another, no
//! 1000 ms window at the CRM holds more than `limit` of them. Pacing (rather
//! than letting `limit` go at once) keeps slots evenly spread, which is what
//! lets a light caller get the next slot instead of waiting out a burst.
//!
//! A log of the last `limit` sends backs this up: when the rate changes
//! (reload, adaptation) the gaps before and after differ, and the log keeps
//! the window bound across the change. The effective rate follows
//! [`super::adapt`]: it drops on 503s only when a test shows the rate was
//! their cause (see [`Budget::throttled`]). governor's GCRA does the
//! pacing half well but cannot change rate in place or hand a slot back, so
//! this small state machine is kept here, with time always passed in: the
//! guarantee is unit-tested with made-up instants instead of sleeps.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use super::adapt::{Adapt, Params};
use crate::config::AdaptiveConfig;

/// The shape of a budget: limit, window and adaptation rules.
#[derive(Debug, Clone, PartialEq)]
pub struct BudgetShape {
    /// Configured sends per second (the ceiling).
    pub limit: u32,
    /// 1 s plus the jitter allowance.
    pub window: Duration,
    /// How the effective rate reacts to 503s.
    pub adaptive: AdaptiveConfig,
}

/// A sliding-log budget with an adaptive effective rate.
#[derive(Debug)]
pub struct Budget {
    shape: BudgetShape,
    /// Send times, oldest first; at most `shape.limit` entries.
    log: VecDeque<Instant>,
    /// Adaptation to the CRM's 503s.
    adapt: Adapt,
    /// No sends before this (an honoured `Retry-After`).
    paused_until: Option<Instant>,
    /// Start times of connections to the CRM being opened through this
    /// egress right now.
    connecting: Vec<Instant>,
}

/// How long before a connect starts its request may have been granted
/// (dispatch, wake-up, pool checkout; a busy machine stretches it).
pub const CONNECT_SLACK: Duration = Duration::from_millis(100);

/// How far `next_free` puts a slot that waits on a connect in progress; the
/// connect's end wakes the dispatcher long before.
const BLOCKED: Duration = Duration::from_secs(3600);

impl Budget {
    /// A fresh budget with nothing sent.
    pub fn new(shape: BudgetShape) -> Self {
        Budget {
            log: VecDeque::with_capacity((shape.limit as usize).min(1024)),
            adapt: Adapt::new(Instant::now()),
            shape,
            paused_until: None,
            connecting: Vec::new(),
        }
    }

    /// The current shape.
    pub fn shape(&self) -> &BudgetShape {
        &self.shape
    }

    /// The recorded send times, oldest first (at most `limit`), for checks
    /// that compare this budget with another implementation of its rules.
    pub fn sends(&self) -> &VecDeque<Instant> {
        &self.log
    }

    /// Applies a new shape (config reload). The send log is kept, so a reload
    /// never opens a burst the CRM would count against us.
    pub fn reshape(&mut self, shape: BudgetShape) {
        while self.log.len() > shape.limit as usize {
            self.log.pop_front();
        }
        if !shape.adaptive.enabled {
            self.adapt = Adapt::new(Instant::now());
        }
        self.shape = shape;
    }

    fn params(&self) -> Params<'_> {
        Params {
            limit: f64::from(self.shape.limit),
            window: self.shape.window,
            config: &self.shape.adaptive,
        }
    }

    /// Sends per window allowed now: the configured limit, or less while
    /// adaptation holds it lower. Never above the limit.
    pub fn effective_rate(&self, now: Instant) -> f64 {
        if !self.shape.adaptive.enabled {
            return f64::from(self.shape.limit);
        }
        self.adapt.rate(now, &self.params())
    }

    /// Adaptation's state as of `now`, for status and tests.
    pub fn adaptation(&self, now: Instant) -> Adapt {
        if !self.shape.adaptive.enabled {
            return Adapt::new(now);
        }
        self.adapt.at(now, &self.params())
    }

    /// The earliest instant when a send is allowed, as of `now`. It may lie
    /// in the past: the dispatcher uses the planned time, not the moment its
    /// timer happened to fire, to keep the pace exact.
    pub fn next_free(&self, now: Instant) -> Instant {
        let Some(last) = self.log.back() else {
            return self.paused_until.unwrap_or(now);
        };
        let rate = self.effective_rate(now).max(f64::MIN_POSITIVE);
        let mut at = *last + self.shape.window.div_f64(rate);
        let limit = self.shape.limit as usize;
        if self.log.len() >= limit {
            let oldest = self.log[self.log.len() - limit];
            // That send may still be waiting for its connection: its arrival
            // time is unknown until the connect ends, so wait for that.
            if self
                .connecting
                .iter()
                .any(|c| oldest >= c.checked_sub(CONNECT_SLACK).unwrap_or(*c))
            {
                return now + BLOCKED;
            }
            at = at.max(oldest + self.shape.window);
        }
        if let Some(p) = self.paused_until {
            at = at.max(p);
        }
        at
    }

    /// A connection to the CRM started opening at `at` through this egress.
    pub fn connect_started(&mut self, at: Instant) {
        self.connecting.push(at);
    }

    /// The connection that started at `started` is open (or failed) at `now`.
    ///
    /// The sends granted around its start may have waited for it, so they
    /// reached the CRM as late as `now`, not when granted: the log moves them
    /// to `now`. Without this, the first send of a burst over a cold
    /// connection (TCP and TLS handshakes, ~100 ms to the real CRM) arrives
    /// late and the send a window after it, over a warm connection, lands
    /// less than a second later. Moving sends that did not need the connect
    /// only costs a little throughput, and only while connections are opened.
    pub fn connect_finished(&mut self, started: Instant, now: Instant) {
        if let Some(i) = self.connecting.iter().position(|c| *c == started) {
            self.connecting.swap_remove(i);
        }
        let from = started.checked_sub(CONNECT_SLACK).unwrap_or(started);
        for t in self.log.iter_mut().filter(|t| **t >= from && **t < now) {
            *t = now;
        }
    }

    /// The send granted at `granted` left only at `now`: it (and any send
    /// granted after it that the log holds before `now`) counts from `now`,
    /// so the CRM's windows see the actual spacing. No send moves earlier,
    /// and the log stays in order.
    pub fn left_late(&mut self, granted: Instant, now: Instant) {
        for t in self.log.iter_mut().filter(|t| **t >= granted && **t < now) {
            *t = now;
        }
    }

    /// Records a send at `now` (the caller checked [`Budget::next_free`]).
    /// Returns the send that fell out of the log to make room, for
    /// [`Budget::unrecord`].
    pub fn record(&mut self, now: Instant) -> Option<Instant> {
        let dropped = if self.log.len() == self.shape.limit as usize {
            self.log.pop_front()
        } else {
            None
        };
        self.log.push_back(now);
        if self.shape.adaptive.enabled {
            let params = Params {
                limit: f64::from(self.shape.limit),
                window: self.shape.window,
                config: &self.shape.adaptive,
            };
            self.adapt.sent(now, &params);
        }
        dropped
    }

    /// Takes back the latest send (the request it was for went away before
    /// using it), returning the slot.
    /// `dropped` is what [`Budget::record`] returned: it goes back, so the
    /// window check still sees it.
    pub fn unrecord(&mut self, at: Instant, dropped: Option<Instant>) {
        if self.log.back() == Some(&at) {
            self.log.pop_back();
            if let Some(d) = dropped {
                self.log.push_front(d);
            }
            if self.shape.adaptive.enabled {
                let params = Params {
                    limit: f64::from(self.shape.limit),
                    window: self.shape.window,
                    config: &self.shape.adaptive,
                };
                self.adapt.unsent(at, &params);
            }
        }
    }

    /// The CRM answered 503/429 at `now` to the send made at `sent_at`
    /// through this budget: pause until `retry_after` if the CRM named a
    /// time, and let adaptation weigh the refusal (it lowers the rate only
    /// when a test shows the rate was the cause, see [`super::adapt`]).
    pub fn throttled(&mut self, now: Instant, sent_at: Instant, retry_after: Option<Duration>) {
        if let Some(d) = retry_after {
            let until = now + d;
            self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        }
        if !self.shape.adaptive.enabled {
            return;
        }
        let params = Params {
            limit: f64::from(self.shape.limit),
            window: self.shape.window,
            config: &self.shape.adaptive,
        };
        let log = &self.log;
        self.adapt.refused(now, sent_at, &params, |t| {
            log.iter().filter(|s| **s > t).count() as u32
        });
    }

    /// No sends before `until` (e.g. while slots granted elsewhere may still
    /// be arriving).
    pub fn hold_until(&mut self, until: Instant) {
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
    }

    /// Sends recorded within the last window (for status output).
    pub fn recent(&self, now: Instant) -> usize {
        self.log
            .iter()
            .filter(|t| now.saturating_duration_since(**t) < self.shape.window)
            .count()
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    fn shape(limit: u32, jitter_ms: u64) -> BudgetShape {
        BudgetShape {
            limit,
            window: Duration::from_millis(1000 + jitter_ms),
            adaptive: AdaptiveConfig {
                enabled: true,
                decrease_factor: 0.5,
                recovery_per_second: 1.0,
                min_rate: 1.0,
            },
        }
    }

    /// Sends as early as the budget allows, returning the send times.
    fn saturate(b: &mut Budget, start: Instant, until: Duration) -> Vec<Instant> {
        let mut sent = Vec::new();
        let mut now = start;
        while now < start + until {
            now = b.next_free(now).max(now);
            b.record(now);
            sent.push(now);
        }
        sent
    }

    /// Largest count of sorted `times` within any half-open window
    /// [t, t + w). Shared with the scheduler's tests.
    pub(in crate::scheduler) fn max_in_window<T>(times: &[T], w: Duration) -> usize
    where
        T: Copy + PartialOrd + std::ops::Add<Duration, Output = T>,
    {
        let mut best = 0;
        let mut lo = 0;
        for hi in 0..times.len() {
            while times[hi] >= times[lo] + w {
                lo += 1;
            }
            best = best.max(hi - lo + 1);
        }
        best
    }

    #[test]
    fn never_more_than_the_limit_in_any_window_even_with_jitter() {
        let start = Instant::now();
        let mut b = Budget::new(shape(10, 20));
        let sent = saturate(&mut b, start, Duration::from_secs(60));
        assert_eq!(max_in_window(&sent, Duration::from_millis(1020)), 10);
        // Worst case jitter: every 11th send arrives the whole allowance late,
        // so the span of 11 consecutive arrivals shrinks by 20 ms.
        let arrivals: Vec<Instant> = sent
            .iter()
            .enumerate()
            .map(|(i, t)| *t + Duration::from_millis(if i % 11 == 0 { 20 } else { 0 }))
            .collect();
        let mut sorted = arrivals.clone();
        sorted.sort();
        assert_eq!(max_in_window(&sorted, Duration::from_millis(1000)), 10);
        // Sends are evenly spread: 102 ms apart.
        assert!(sent
            .windows(2)
            .all(|w| w[1] - w[0] == Duration::from_millis(102)));
    }

    #[test]
    fn utilisation_is_limit_over_widened_window() {
        let start = Instant::now();
        let mut b = Budget::new(shape(10, 20));
        let sent = saturate(&mut b, start, Duration::from_secs(102));
        // 10 per 1.02 s = 9.80/s: 1000 sends in 102 s, plus the one at the end.
        assert_eq!(sent.len(), 1001);
    }

    #[test]
    fn a_lone_503_does_not_lower_the_rate() {
        // The evidence rules live in `adapt` (and its tests); here only that
        // the budget feeds them: one refusal in a window proves nothing.
        let start = Instant::now();
        let mut b = Budget::new(shape(10, 0));
        let sent = saturate(&mut b, start, Duration::from_secs(1));
        b.throttled(start + Duration::from_millis(150), sent[1], None);
        assert_eq!(b.effective_rate(start + Duration::from_millis(200)), 10.0);
        let more = saturate(
            &mut b,
            start + Duration::from_secs(1),
            Duration::from_secs(2),
        );
        assert_eq!(more.len(), 20);
        assert_eq!(b.effective_rate(start + Duration::from_secs(3)), 10.0);
    }

    #[test]
    fn retry_after_pauses_the_budget() {
        let start = Instant::now();
        let mut b = Budget::new(shape(10, 0));
        b.throttled(start, start, Some(Duration::from_secs(2)));
        assert_eq!(b.next_free(start), start + Duration::from_secs(2));
        assert!(b.next_free(start + Duration::from_secs(3)) <= start + Duration::from_secs(3));
    }

    #[test]
    fn reshape_keeps_the_log() {
        let start = Instant::now();
        let mut b = Budget::new(shape(10, 0));
        for ms in 0..10 {
            b.record(start + Duration::from_millis(ms));
        }
        assert_eq!(b.recent(start + Duration::from_millis(10)), 10);
        // Five sends in the last window already: the lower limit waits for
        // the fifth-latest to leave it, not just for the pacing gap.
        b.reshape(shape(5, 0));
        assert_eq!(b.next_free(start), start + Duration::from_millis(1005));
    }

    #[test]
    fn a_slow_connect_moves_the_sends_that_waited_for_it() {
        let start = Instant::now();
        let ms = Duration::from_millis;
        let mut b = Budget::new(shape(2, 20));
        b.record(start);
        b.connect_started(start + ms(1));
        b.record(start + ms(510));
        // Still connecting: the send that depends on the first one's
        // arrival cannot be scheduled yet.
        assert!(b.next_free(start + ms(1020)) > start + ms(60_000));
        b.connect_finished(start + ms(1), start + ms(300));
        // The first send counts from when its connection was ready.
        assert_eq!(b.next_free(start + ms(1020)), start + ms(1320));
        // Sends granted well before the connect started are not moved.
        let mut b = Budget::new(shape(2, 20));
        b.record(start);
        b.record(start + ms(510));
        b.connect_started(start + ms(700));
        b.connect_finished(start + ms(700), start + ms(800));
        assert_eq!(b.next_free(start + ms(1020)), start + ms(1020));
    }

    #[test]
    fn unrecord_returns_the_slot() {
        let start = Instant::now();
        let mut b = Budget::new(shape(1, 0));
        let dropped = b.record(start);
        assert!(b.next_free(start) > start);
        b.unrecord(start, dropped);
        assert_eq!(b.next_free(start), start);
        // A full log gets back the send it dropped: the window check still
        // sees it.
        let ms = Duration::from_millis;
        let mut b = Budget::new(shape(2, 0));
        b.record(start);
        b.record(start + ms(600));
        let dropped = b.record(start + ms(1200));
        assert_eq!(dropped, Some(start));
        b.unrecord(start + ms(1200), dropped);
        assert!(b.next_free(start + ms(1200)) <= start + ms(1200));
        assert_eq!(b.recent(start + ms(999)), 2);
    }
}
