//! Adaptation against model CRMs, on made-up instants: a budget saturated
//! by callers sends as early as it allows; a model CRM judges each send
//! (a strict 1000 ms window at a lower real limit, refusals at random, an
//! outage) and its 503 reaches the budget 40 ms later. The bounds stated in
//! docs/architecture.md ("Adaptation") are checked here, over many seeds
//! and outage phases rather than one lucky run.

use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::time::Instant;

use super::*;
use crate::config::AdaptiveConfig;
use crate::scheduler::{Budget, BudgetShape};
use crate::sim::limiter::{Limiter, LimiterKind};

const LATENCY: Duration = Duration::from_millis(40);

fn defaults() -> AdaptiveConfig {
    crate::config::Config::from_toml(
        "[[tenants]]\nname = \"t\"\nsubdomain = \"t\"\napi_key = \"k-0001\"\n",
        "t.toml",
        &|_| None,
    )
    .unwrap()
    .limits
    .adaptive
}

fn budget() -> Budget {
    Budget::new(BudgetShape {
        limit: 10,
        window: Duration::from_millis(1020),
        adaptive: defaults(),
    })
}

/// A model CRM.
struct Crm {
    /// Each request refused at random with this probability.
    noise: f64,
    /// A limiter (the simulator's models) at this many of our sends per
    /// 1000 ms.
    limit: Option<(Limiter<()>, u32)>,
    /// Everything refused in [from, to) after the start.
    outage: Option<(Duration, Duration)>,
    rng: StdRng,
}

/// Every limiter model the simulator plays.
const MODELS: [LimiterKind; 5] = [
    LimiterKind::Strict,
    LimiterKind::Lenient,
    LimiterKind::Leaky { burst: 0 },
    LimiterKind::Leaky { burst: 5 },
    LimiterKind::Fixed,
];

impl Crm {
    fn new(seed: u64) -> Crm {
        Crm {
            noise: 0.0,
            limit: None,
            outage: None,
            rng: StdRng::seed_from_u64(seed),
        }
    }

    /// A CRM that allows `limit` of our sends per second, by `kind`, its
    /// fixed windows (if any) starting `phase` before ours.
    fn limited(seed: u64, kind: LimiterKind, limit: u32, start: Instant) -> Crm {
        let phase = Duration::from_millis(seed * 137 % 1000);
        Crm {
            limit: Some((Limiter::new(kind, start - phase), limit)),
            ..Crm::new(seed)
        }
    }

    /// Whether the CRM refuses a send arriving at `at`.
    fn refuses(&mut self, start: Instant, at: Instant) -> bool {
        let mut refused = false;
        if let Some((limiter, limit)) = &mut self.limit {
            refused |= limiter.refuses((), at, Duration::from_secs(1), *limit);
        }
        if let Some((from, to)) = self.outage {
            refused |= at >= start + from && at < start + to;
        }
        refused || (self.noise > 0.0 && self.rng.gen_bool(self.noise))
    }
}

/// One send: when, and whether the CRM accepted it.
type Send = (Instant, bool);

/// Saturates `b` for `run` against `crm`.
fn run(b: &mut Budget, crm: &mut Crm, start: Instant, run: Duration) -> Vec<Send> {
    let mut sends = Vec::new();
    let mut now = start;
    while now < start + run {
        let at = b.next_free(now).max(now);
        b.record(at);
        let ok = !crm.refuses(start, at);
        if !ok {
            // Answers arrive before the next send (at most 10/s, 102 ms
            // apart), so handling them in line keeps events in order.
            b.throttled(at + LATENCY, at, None);
        }
        sends.push((at, ok));
        now = at + LATENCY;
    }
    sends
}

fn between(sends: &[Send], start: Instant, from: f64, to: f64) -> (usize, usize) {
    let (from, to) = (
        start + Duration::from_secs_f64(from),
        start + Duration::from_secs_f64(to),
    );
    let part: Vec<&Send> = sends
        .iter()
        .filter(|(t, _)| *t >= from && *t < to)
        .collect();
    let accepted = part.iter().filter(|(_, ok)| *ok).count();
    (accepted, part.len() - accepted)
}

#[test]
fn the_verdict_tells_a_rate_limit_from_noise() {
    let sample = |sent, refused, test_sent, test_refused| Sample {
        before: 10.0,
        from: Instant::now(),
        sent,
        refused,
        test_sent,
        test_refused,
        rounds: 0,
        limited: None,
    };
    // A strict limit: the window refused almost everything, the test nothing.
    assert!(rate_was_the_cause(&sample(10, 9, 14, 0)));
    // A softer one: 40 % refused at the full rate, none at 0.7 of it.
    assert!(rate_was_the_cause(&sample(10, 4, 14, 0)));
    // Noise: the same share at both rates, or more at the lower one.
    assert!(!rate_was_the_cause(&sample(10, 3, 14, 4)));
    assert!(!rate_was_the_cause(&sample(10, 3, 14, 6)));
    // An outage: everything refused at both rates.
    assert!(!rate_was_the_cause(&sample(10, 10, 14, 14)));
    // Three of ten against one of fourteen is not proof (2.5σ).
    assert!(!rate_was_the_cause(&sample(10, 3, 14, 1)));
}

#[test]
fn a_lower_real_limit_is_found_within_ten_seconds_and_kept_under_every_limiter() {
    // The CRM allows 7 or 8 of our sends per 1000 ms (another sender uses
    // the rest of 10), by each limiter model; fixed windows at several
    // phases against ours.
    let mut failures = Vec::new();
    for kind in MODELS {
        for limit in [7u32, 8] {
            // From 10 s to 25 s (the benchmark's span) and to 120 s.
            for to in [25.0, 120.0] {
                let (mut worst_rate, mut worst_share) = (f64::MAX, 0.0f64);
                for seed in 0..6 {
                    let start = Instant::now();
                    let mut b = budget();
                    let mut crm = Crm::limited(seed, kind, limit, start);
                    let sends = run(&mut b, &mut crm, start, Duration::from_secs(120));
                    let (accepted, refused) = between(&sends, start, 10.0, to);
                    let rate = accepted as f64 / (to - 10.0);
                    let share = refused as f64 / (accepted + refused) as f64;
                    worst_rate = worst_rate.min(rate / f64::from(limit));
                    worst_share = worst_share.max(share);
                }
                println!(
                    "{kind} at {limit}/s, 10–{to} s: worst {worst_rate:.3} of the limit \
                     accepted, worst {:.1} % refused",
                    worst_share * 100.0
                );
                if worst_rate < 0.9 || worst_share > 0.02 {
                    failures.push(format!(
                        "{kind} at {limit}/s, 10–{to} s: {worst_rate:.3}, {worst_share:.3}"
                    ));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
}

#[test]
fn random_503s_keep_the_rate() {
    // 30 % refused at random, whatever the rate: the most possible is
    // 0.7 × 9.8/s = 6.86/s accepted.
    let mut worst = f64::MAX;
    for seed in 0..40 {
        let start = Instant::now();
        let mut b = budget();
        let mut crm = Crm::new(seed);
        crm.noise = 0.3;
        let sends = run(&mut b, &mut crm, start, Duration::from_secs(60));
        let (accepted, _) = between(&sends, start, 0.0, 60.0);
        let rate = accepted as f64 / 60.0;
        worst = worst.min(rate);
        assert!(rate >= 0.6 * 10.0, "seed {seed}: {rate:.2}/s accepted");
        // Never near the floor.
        for s in 0..60 {
            let at = start + Duration::from_secs(s);
            assert!(b.effective_rate(at) >= 0.0);
        }
    }
    // Most of the spread is the noise's own luck: a seed's sends are
    // 568–589 of the 588 possible.
    println!("30 % noise: worst of 40 seeds {worst:.2}/s accepted");
}

#[test]
fn the_full_rate_is_back_within_fifteen_seconds_after_an_outage() {
    // Outages of every length from 1 s to 40 s in 250 ms steps, so that
    // the end falls in every part of the cycle (observation, test, verdict,
    // hold-off, a good rate held or rising); the pace must be the full one
    // from 15 s after the end on.
    let mut slowest = Duration::ZERO;
    for step in 4..=160u64 {
        let start = Instant::now();
        let mut b = budget();
        let mut crm = Crm::new(step);
        let from = Duration::from_secs(5);
        let to = from + Duration::from_millis(250 * step);
        crm.outage = Some((from, to));
        let sends = run(&mut b, &mut crm, start, to + Duration::from_secs(30));
        // The last send below the full pace (102 ms after the previous one).
        let last_slow = sends
            .windows(2)
            .filter(|w| w[0].0 >= start + to && w[1].0 - w[0].0 > Duration::from_millis(103))
            .map(|w| w[1].0)
            .next_back()
            .unwrap_or(start + to);
        let back = last_slow.saturating_duration_since(start + to);
        slowest = slowest.max(back);
        assert!(
            back <= Duration::from_secs(15),
            "{:?} outage: full pace only {back:?} after its end",
            to - from
        );
        // During the outage the rate never sank: it is all noise.
        let (_, refused) = between(&sends, start, from.as_secs_f64(), to.as_secs_f64());
        let floor = (to - from).as_secs_f64() * 0.7 * 9.8 - 10.0;
        assert!(
            refused as f64 >= floor,
            "{:?} outage: {refused} sends",
            to - from
        );
    }
    println!("outage: full pace back at most {slowest:?} after its end");
}

#[test]
fn without_503s_nothing_changes() {
    let start = Instant::now();
    let mut b = budget();
    let mut crm = Crm::new(0);
    let sends = run(&mut b, &mut crm, start, Duration::from_secs(102));
    // 10 per 1.02 s, as without adaptation: 1000 in 102 s and the one at
    // the end.
    assert_eq!(sends.len(), 1001);
    assert!(sends.iter().all(|(_, ok)| *ok));
}

#[test]
fn the_rate_never_falls_below_the_floor_nor_rises_above_the_limit() {
    let start = Instant::now();
    let mut b = budget();
    let mut crm = Crm::limited(7, LimiterKind::Strict, 1, start);
    crm.noise = 0.2;
    let sends = run(&mut b, &mut crm, start, Duration::from_secs(120));
    for w in sends.windows(2) {
        let rate = b.effective_rate(w[0].0);
        assert!((1.0..=10.0).contains(&rate), "{rate}");
        // Never slower than the floor's pace (1 per 1.02 s), pauses aside.
        assert!(w[1].0 - w[0].0 <= Duration::from_millis(1020 + 41));
    }
}

/// `recovery_per_second` passes validation at any positive value, so the
/// rise from a good rate back to the limit may take longer than a
/// `Duration` holds: the rate then just keeps rising, nothing panics.
#[test]
fn a_tiny_recovery_rate_never_overflows_the_rise() {
    let config = AdaptiveConfig {
        recovery_per_second: 1e-300,
        ..defaults()
    };
    let p = Params {
        limit: 10.0,
        window: Duration::from_millis(1020),
        config: &config,
    };
    let t0 = Instant::now();
    let a = Adapt {
        phase: Phase::Limited {
            good: 7.0,
            base: 7.0,
            ceil: f64::INFINITY,
            dip_until: t0,
            hold_until: t0 + LIMIT_HOLD,
            blind: false,
        },
        ..Adapt::new(t0)
    };
    let later = t0 + Duration::from_secs(3600);
    assert_eq!(a.at(later, &p).label(), "limited");
    assert_eq!(a.rate(later, &p), 7.0 + 1e-300 * 3595.0);
}

#[test]
fn the_test_rate_follows_the_share_the_crm_accepted() {
    let config = defaults();
    let p = Params {
        limit: 10.0,
        window: Duration::from_millis(1020),
        config: &config,
    };
    let observed = |sent, refused| Sample {
        before: 10.0,
        from: Instant::now(),
        sent,
        refused,
        test_sent: 0,
        test_refused: 0,
        rounds: 0,
        limited: None,
    };
    // A lenient CRM at 8 of our 10: 4 of 20 refused, 0.95 × 8.
    assert!((p.test_rate(&observed(20, 4)) - 7.6).abs() < 1e-9);
    // A strict one refuses nearly all, noise a share whatever the rate,
    // and nothing observed says nothing: the factor's cut, never lower.
    assert_eq!(p.test_rate(&observed(20, 18)), 7.0);
    assert_eq!(p.test_rate(&observed(10, 3)), 7.0);
    assert_eq!(p.test_rate(&observed(0, 0)), 7.0);
    // A small share is an estimate too: the test decides whether the rate
    // or noise caused it.
    assert!((p.test_rate(&observed(20, 1)) - 9.025).abs() < 1e-9);
}
