//! Adaptation: whether the CRM's 503s say that *our rate* is the cause, and
//! the effective rate that follows from the answer.
//!
//! A 503 (or 429) means one of two things. Either the CRM's real limit is
//! lower than configured (another sender behind the same IP, a stricter
//! account), and then 503s come when our windows are full and stop when we
//! send less; or the CRM is failing a share of requests whatever the rate
//! (an incident, an outage), and then sending less only loses throughput.
//! Cutting the rate on every 503 mistakes the second for the first and
//! sinks to the floor. So the rate is lowered only on evidence, by a test:
//!
//! 1. **Observe.** The first 503 (the *onset*) changes nothing yet: for
//!    [`OBSERVE_WINDOWS`] windows from the refused send, the sends after it
//!    and their refusals are counted at the rate in force (`before`). No
//!    other refusal: nothing to test, back to where it came from. Any other
//!    refusal is tested: a CRM that does not count refused arrivals refuses
//!    only a share of them, which is not evidence of noise.
//! 2. **Test.** The rate drops to [`Params::test_rate`]: a little under
//!    the rate the CRM accepted while observed, `before × (1 − refused
//!    share)`, but never below `before × decrease_factor` (nor below
//!    `min_rate`). The first window after the cut is ignored (the CRM's
//!    window still holds the old rate's arrivals); then the sample runs in
//!    rounds of two windows.
//! 3. **Verdict** (half a window after each round): a one-sided
//!    two-proportion test, `p_before − p_test > Z·σ`. If the refusal share
//!    fell, the rate was the cause (*limited*). A sample with no refusal
//!    that is still too small to prove it gets another round (at most
//!    [`MAX_ROUNDS`]). Otherwise it is noise: the rate goes straight back to
//!    `before`, and further 503s are ignored for a hold-off (10 s, doubling
//!    per consecutive noise verdict, at most 30 s); also as soon as a
//!    refusal makes a pass impossible. Fewer than 3 sends in the sample
//!    prove nothing.
//! 4. **Limited.** The tested rate is held for 5 s from the cut, then a
//!    probe rises by `recovery_per_second` to its target
//!    ([`Params::probe_target`]: the limit, or half way to the lowest rate
//!    known to be refused) and holds it for [`PLATEAU`]; then it is the
//!    good rate and the next probe starts. A 503 on a send above the good
//!    rate is a failed probe: its rate is the new ceiling, one window at
//!    `good × decrease_factor` (with a strict CRM the refused probe would
//!    otherwise keep the window over its limit), then half way between the
//!    good rate and the ceiling is the good rate, and the hold doubles (at
//!    most 5 min). A 503 at a good rate above the
//!    tested one goes back to the tested one (a burst hid the excess); at
//!    the tested rate itself it starts a new onset from it. A probe held
//!    at the limit ends it.
//!
//! Refusals are attributed to the moment their request was *sent* (a 503
//! answers a send made one latency earlier, possibly at another rate), and
//! those of an already judged period are ignored.
//!
//! Everything here is a pure function of the state and the instants passed
//! in: no clock, no I/O. The Redis scripts (`lua/adapt.lua`) implement the
//! same machine; this file is their reference.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::AdaptiveConfig;

/// How long a good rate is held after a verdict that the rate was the cause,
/// before probing above it.
pub const LIMIT_HOLD: Duration = Duration::from_secs(5);
/// The longest hold after repeated failed probes.
pub const LIMIT_HOLD_MAX: Duration = Duration::from_secs(300);
/// How long 503s are ignored after a verdict of noise (doubling per
/// consecutive noise verdict).
pub const NOISE_HOLD: Duration = Duration::from_secs(10);
/// The longest hold-off after noise: also the longest a real limit that
/// appears during a hold-off goes unnoticed.
pub const NOISE_HOLD_MAX: Duration = Duration::from_secs(30);
/// Fewest test sends that can prove anything.
pub const MIN_TEST_SENDS: u32 = 3;
/// Standard deviations by which the refusal share must fall.
pub const Z: f64 = 2.0;
/// Windows observed at the rate in force after an onset.
pub const OBSERVE_WINDOWS: u32 = 2;
/// Most rounds (two windows each) of a test sample: a test whose sample
/// has too few refusals to decide goes on for another round.
pub const MAX_ROUNDS: u32 = 4;
/// How long a probe's rate is held before it counts as good.
pub const PLATEAU: Duration = Duration::from_secs(5);
/// A probe closer than this to the rate that failed is not worth its cost:
/// the next probe aims at the limit instead, after the (doubled) hold.
pub const MIN_GAP: f64 = 0.5;
/// The test rate's margin under the rate the CRM accepted while observed.
pub const ESTIMATE_MARGIN: f64 = 0.95;

/// Where a budget's adaptation stands.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Phase {
    /// No evidence against the rate: `rate` at `since`, rising by the
    /// recovery per second up to the limit.
    Free {
        /// Sends per window at `since` (infinite: the limit).
        rate: f64,
        /// When that rate was set.
        since: Instant,
    },
    /// Counting sends and refusals for [`OBSERVE_WINDOWS`] windows from the
    /// refused send `from`, at `before`; the test starts when they end.
    Observe(Sample),
    /// At the test rate since the observation ended; one window is skipped,
    /// then the sample runs in rounds of two windows, each judged half a
    /// window after it ends.
    Test(Sample),
    /// The rate was the cause: `good` is held (after a dip below it until
    /// `dip_until`) until `hold_until`, then a probe rises towards
    /// [`Params::probe_target`] and, held there for [`PLATEAU`], becomes the good
    /// rate.
    Limited {
        /// The highest rate known free of the rate's 503s.
        good: f64,
        /// The rate the test proved (never gone below by a failed good rate).
        base: f64,
        /// The lowest rate known to be refused (infinite: none).
        ceil: f64,
        /// A failed probe's dip ends here.
        dip_until: Instant,
        /// The probe starts here.
        hold_until: Instant,
        /// The tested rate was the factor's blind cut, not an estimate from
        /// the refused share, and no probe has failed since: the first
        /// failed probe's rate is the best estimate, and half way to it the
        /// good rate.
        blind: bool,
    },
}

/// The evidence gathered since an onset.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    /// The rate in force at the onset.
    pub before: f64,
    /// When the first refused send was sent.
    pub from: Instant,
    /// Sends in the observed window after the refused one (which is left
    /// out: it chose the window, so counting it would bias the sample).
    pub sent: u32,
    /// Refusals among them.
    pub refused: u32,
    /// Sends in the test sample.
    pub test_sent: u32,
    /// Refusals among them.
    pub test_refused: u32,
    /// Rounds of the test sample judged so far.
    pub rounds: u32,
    /// The onset came from a limited rate: its base and ceiling, to return
    /// to when the 503s prove nothing.
    pub limited: Option<(f64, f64)>,
}

/// The budget's fixed parameters, as adaptation needs them.
#[derive(Debug, Clone, Copy)]
pub struct Params<'a> {
    /// Configured sends per window.
    pub limit: f64,
    /// The widened window.
    pub window: Duration,
    /// `[limits.adaptive]`.
    pub config: &'a AdaptiveConfig,
}

impl Params<'_> {
    fn floor(&self) -> f64 {
        self.config.min_rate.min(self.limit)
    }

    /// `before × decrease_factor`, at least the floor: the test rate when
    /// the observation says nothing better, and a failed probe's dip.
    pub fn lowered(&self, before: f64) -> f64 {
        (before * self.config.decrease_factor).max(self.floor())
    }

    /// The test rate of a sample: [`ESTIMATE_MARGIN`] under the rate the
    /// CRM accepted while observed, `before × (1 − refused share)`, but
    /// never below [`Params::lowered`]. A CRM that does not count
    /// refused arrivals (nginx `limit_req`, a lenient or fixed window)
    /// accepts its real limit while refusing the rest, so its share says
    /// where the limit is; a strict one refuses nearly everything, and an
    /// outage or noise refuse a share whatever the rate, and then the
    /// factor's cut decides.
    pub fn test_rate(&self, s: &Sample) -> f64 {
        let lowered = self.lowered(s.before);
        if s.sent == 0 {
            return lowered;
        }
        let accepted = 1.0 - (f64::from(s.refused) / f64::from(s.sent)).min(1.0);
        (s.before * accepted * ESTIMATE_MARGIN).max(lowered)
    }

    fn windows(&self, n: f64) -> Duration {
        self.window.mul_f64(n)
    }

    /// When the observation of an onset at `from` ends.
    fn observed(&self, from: Instant) -> Instant {
        from + self.windows(f64::from(OBSERVE_WINDOWS))
    }

    /// Where the test sample starts (a window after the cut).
    fn sample_start(&self, from: Instant) -> Instant {
        from + self.windows(f64::from(OBSERVE_WINDOWS + 1))
    }

    /// Where the test sample ends after `rounds` rounds.
    fn sample_end(&self, from: Instant, rounds: u32) -> Instant {
        self.sample_start(from) + self.windows(f64::from(2 * rounds))
    }

    /// When round `round` (from 1) is judged.
    fn verdict(&self, from: Instant, round: u32) -> Instant {
        self.sample_end(from, round) + self.windows(0.5)
    }

    /// The rate a probe from `good` aims at: half way to the lowest rate
    /// known to be refused, or the limit when that is within [`MIN_GAP`].
    pub fn probe_target(&self, good: f64, ceil: f64) -> f64 {
        if ceil - good >= MIN_GAP {
            ((good + ceil) / 2.0).min(self.limit)
        } else {
            self.limit
        }
    }
}

/// One budget's adaptation state.
#[derive(Debug, Clone, PartialEq)]
pub struct Adapt {
    phase: Phase,
    /// 503s are ignored (noise hold-off) until then.
    quiet_until: Option<Instant>,
    /// Refusals of sends made before this belong to a judged period.
    ignore_before: Option<Instant>,
    /// The next hold at a good rate.
    limit_hold: Duration,
    /// The next noise hold-off.
    noise_hold: Duration,
}

/// Whether the test could still show the rate was the cause, were every
/// remaining sample send accepted: at most `2 × test rate` sends fit in
/// each round, and only a sample without refusals goes on to another round
/// (up to [`MAX_ROUNDS`]). If not, testing on is pointless.
pub fn could_prove(s: &Sample, p: &Params) -> bool {
    let rounds = if s.test_refused == 0 {
        MAX_ROUNDS
    } else {
        s.rounds + 1
    };
    let most = (f64::from(2 * rounds) * p.test_rate(s)).ceil() as u32;
    rate_was_the_cause(&Sample {
        test_sent: s.test_sent.max(most),
        ..*s
    })
}

/// What a test sample says: the rate was the cause, or it was not.
pub fn rate_was_the_cause(s: &Sample) -> bool {
    let (n1, k1, n2, k2) = (
        f64::from(s.sent.max(1)),
        f64::from(s.refused),
        f64::from(s.test_sent.max(1)),
        f64::from(s.test_refused),
    );
    let (p1, p2) = ((k1 / n1).min(1.0), (k2 / n2).min(1.0));
    let p = ((k1 + k2) / (n1 + n2)).min(1.0);
    let sigma = (p * (1.0 - p) * (1.0 / n1 + 1.0 / n2)).sqrt();
    p1 - p2 > Z * sigma
}

impl Adapt {
    /// Nothing known: the limit, from `now`.
    pub fn new(now: Instant) -> Adapt {
        Adapt {
            // Infinite: at the limit, whatever the limit becomes on reload.
            phase: Phase::Free {
                rate: f64::INFINITY,
                since: now,
            },
            quiet_until: None,
            ignore_before: None,
            limit_hold: LIMIT_HOLD,
            noise_hold: NOISE_HOLD,
        }
    }

    /// The phase's name for `/status`: `free`, `observing`, `testing` or
    /// `limited`.
    pub fn label(&self) -> &'static str {
        match self.phase {
            Phase::Free { .. } => "free",
            Phase::Observe(_) => "observing",
            Phase::Test(_) => "testing",
            Phase::Limited { .. } => "limited",
        }
    }

    /// The phase as of the last event (see [`Adapt::at`] for a given time).
    pub fn phase(&self) -> &Phase {
        &self.phase
    }

    /// The state at `now`: timed transitions (end of observation, verdict,
    /// end of the rise) applied. Pure.
    pub fn at(&self, now: Instant, p: &Params) -> Adapt {
        let mut a = self.clone();
        a.advance(now, p);
        a
    }

    fn advance(&mut self, now: Instant, p: &Params) {
        loop {
            match self.phase {
                Phase::Observe(s) if now >= p.observed(s.from) => {
                    let at = p.observed(s.from);
                    if s.refused >= 1 {
                        // Any refusal besides the onset is worth a test: a
                        // test costs a few sends, and a CRM that does not
                        // count refused arrivals refuses only a share.
                        self.phase = Phase::Test(s);
                    } else {
                        // A lone 503 in its windows: nothing to test, and the
                        // noise that caused earlier hold-offs has thinned.
                        self.noise_hold = NOISE_HOLD;
                        self.back(s, at);
                    }
                }
                Phase::Test(s) if now >= p.verdict(s.from, s.rounds + 1) => {
                    let at = p.verdict(s.from, s.rounds + 1);
                    let rounds = s.rounds + 1;
                    if rate_was_the_cause(&s) && s.test_sent >= MIN_TEST_SENDS {
                        self.ignore_before = Some(at);
                        self.noise_hold = NOISE_HOLD;
                        let good = p.test_rate(&s);
                        self.phase = Phase::Limited {
                            good,
                            base: good,
                            blind: good <= p.lowered(s.before),
                            // The first probe aims at the limit.
                            ceil: f64::INFINITY,
                            dip_until: at,
                            // The test rate has been held since the cut.
                            hold_until: at.max(p.observed(s.from) + self.limit_hold),
                        };
                    } else if rounds < MAX_ROUNDS && s.test_refused == 0 && could_prove(&s, p) {
                        // Not proven yet, and not one refusal at the test
                        // rate: one more round.
                        self.phase = Phase::Test(Sample { rounds, ..s });
                    } else if s.test_sent < MIN_TEST_SENDS {
                        self.ignore_before = Some(at);
                        self.back(s, at);
                    } else {
                        self.noise(s, at);
                    }
                }
                Phase::Limited {
                    good,
                    base,
                    ceil,
                    hold_until,
                    ..
                } => {
                    let target = p.probe_target(good, ceil);
                    let rec = p.config.recovery_per_second;
                    // A rise too slow for a `Duration` (a tiny recovery
                    // rate passes validation) never reaches its target.
                    let Some(reached) = Duration::try_from_secs_f64((target - good).max(0.0) / rec)
                        .ok()
                        .and_then(|rise| hold_until.checked_add(rise))
                    else {
                        return;
                    };
                    let passed = reached + PLATEAU;
                    if now < passed {
                        return;
                    }
                    self.limit_hold = LIMIT_HOLD;
                    if target >= p.limit {
                        // Held at the limit: free again.
                        self.phase = Phase::Free {
                            rate: f64::INFINITY,
                            since: passed,
                        };
                        continue;
                    }
                    // The probe held: its rate is good, the next one starts.
                    self.phase = Phase::Limited {
                        good: target,
                        base,
                        ceil,
                        blind: false,
                        dip_until: passed,
                        hold_until: passed,
                    };
                }
                _ => return,
            }
        }
    }

    /// Where an observation or test that found nothing returns to: the rate
    /// before the onset, limited again if it was.
    fn back(&mut self, s: Sample, at: Instant) {
        self.phase = match s.limited {
            Some((base, ceil)) => Phase::Limited {
                good: s.before,
                blind: false,
                base,
                ceil,
                dip_until: at,
                hold_until: at + self.limit_hold,
            },
            None => Phase::Free {
                rate: s.before,
                since: at,
            },
        };
    }

    /// The verdict "noise" at `at`: back to `before`, 503s ignored for the
    /// hold-off, which doubles for the next time.
    fn noise(&mut self, s: Sample, at: Instant) {
        self.ignore_before = Some(at);
        self.quiet_until = Some(at + self.noise_hold);
        self.noise_hold = (self.noise_hold * 2).min(NOISE_HOLD_MAX);
        // Even from a limited rate: the refusals went on below it, so they
        // say nothing about it.
        self.phase = Phase::Free {
            rate: s.before,
            since: at,
        };
    }

    /// Sends per window allowed at `now`, at most the limit.
    pub fn rate(&self, now: Instant, p: &Params) -> f64 {
        let a = self.at(now, p);
        let rec = p.config.recovery_per_second;
        let rate = match a.phase {
            Phase::Free { rate, since } => {
                rate + rec * now.saturating_duration_since(since).as_secs_f64()
            }
            Phase::Observe(s) => s.before,
            Phase::Test(s) => p.test_rate(&s),
            Phase::Limited {
                good,
                ceil,
                dip_until,
                hold_until,
                ..
            } => {
                if now < dip_until {
                    p.lowered(good)
                } else {
                    let rise = rec * now.saturating_duration_since(hold_until).as_secs_f64();
                    (good + rise).min(p.probe_target(good, ceil))
                }
            }
        };
        rate.min(p.limit)
    }

    /// A send at `at` (counted in the sample whose window holds it).
    pub fn sent(&mut self, at: Instant, p: &Params) {
        self.count(at, p, 1);
    }

    /// A send at `at` was taken back.
    pub fn unsent(&mut self, at: Instant, p: &Params) {
        self.count(at, p, -1);
    }

    fn count(&mut self, at: Instant, p: &Params, by: i32) {
        self.advance(at, p);
        if let Phase::Observe(s) | Phase::Test(s) = &mut self.phase {
            if at > s.from && at < p.observed(s.from) {
                s.sent = s.sent.saturating_add_signed(by);
            } else if at >= p.sample_start(s.from) && at < p.sample_end(s.from, MAX_ROUNDS) {
                s.test_sent = s.test_sent.saturating_add_signed(by);
            }
        }
    }

    /// The CRM refused, answered at `now`, the send made at `sent_at`.
    /// `sends_since(t)` counts this budget's recorded sends after `t` (an
    /// onset counts the sends already made since the refused one).
    pub fn refused(
        &mut self,
        now: Instant,
        sent_at: Instant,
        p: &Params,
        sends_since: impl Fn(Instant) -> u32,
    ) {
        self.advance(now, p);
        if self.ignore_before.is_some_and(|t| sent_at < t) {
            return;
        }
        match self.phase {
            Phase::Free { .. } => {
                if self.quiet_until.is_some_and(|q| now < q) {
                    return;
                }
                let before = self.rate(now, p);
                self.onset(before, None, sent_at, sends_since);
            }
            Phase::Observe(ref mut s) | Phase::Test(ref mut s) => {
                if sent_at > s.from && sent_at < p.observed(s.from) {
                    s.refused += 1;
                } else if sent_at >= p.sample_start(s.from)
                    && sent_at < p.sample_end(s.from, MAX_ROUNDS)
                {
                    s.test_refused += 1;
                    let s = *s;
                    if !could_prove(&s, p) {
                        // The refusals go on at the lower rate: noise, now.
                        self.noise(s, now);
                    }
                }
            }
            Phase::Limited {
                good,
                base,
                ceil,
                dip_until,
                hold_until,
                blind,
            } => {
                if sent_at >= hold_until {
                    // A failed probe: its rate at the send is too high. Dip
                    // below the good rate for a window so the CRM's window
                    // sheds the refused arrivals, then hold longer. After a
                    // blind cut the real limit lies between the two: half
                    // way is the good rate, at least the estimate's margin
                    // under the failed rate (a CRM that refuses at once,
                    // nginx `limit_req` without burst, fails a probe just
                    // over its limit, and a send's jitter would cross it);
                    // a refusal there goes back to the tested rate.
                    let failed = self.rate(sent_at, p).min(ceil);
                    self.limit_hold = (self.limit_hold * 2).min(LIMIT_HOLD_MAX);
                    let dip_until = now + p.window;
                    self.phase = Phase::Limited {
                        good: if blind {
                            good.max(((good + failed) / 2.0).min(failed * ESTIMATE_MARGIN))
                        } else {
                            good
                        },
                        blind: false,
                        base,
                        ceil: failed,
                        dip_until,
                        hold_until: dip_until + self.limit_hold,
                    };
                    self.ignore_before = Some(dip_until);
                } else if sent_at >= dip_until && good > base {
                    // A probe that held is refused after all (a burst that
                    // hid a small excess): back to the tested rate, and this
                    // one is the ceiling.
                    self.limit_hold = (self.limit_hold * 2).min(LIMIT_HOLD_MAX);
                    let dip_until = now + p.window;
                    self.phase = Phase::Limited {
                        good: base,
                        blind: false,
                        base,
                        ceil: good,
                        dip_until,
                        hold_until: dip_until + self.limit_hold,
                    };
                    self.ignore_before = Some(dip_until);
                } else if sent_at >= dip_until {
                    self.onset(good, Some((base, ceil)), sent_at, sends_since);
                }
            }
        }
    }

    fn onset(
        &mut self,
        before: f64,
        limited: Option<(f64, f64)>,
        from: Instant,
        sends_since: impl Fn(Instant) -> u32,
    ) {
        self.phase = Phase::Observe(Sample {
            before,
            from,
            sent: sends_since(from),
            refused: 0,
            test_sent: 0,
            test_refused: 0,
            rounds: 0,
            limited,
        });
    }
}

#[cfg(test)]
mod tests;
