//! One source for the budget rules: the Redis scripts
//! (`src/scheduler/lua/`) must give the same slots as the Rust `Budget`,
//! which is the reference (docs/architecture.md). One sequence of events —
//! slots asked for by several replicas, 503s with and without Retry-After, a
//! slow connect, a late send, recovery over time — goes to both: to one
//! `Budget` per egress, picked the way a lane picks, and to `RedisBudget` on a
//! real redis-server whose scripts read "now" from the test's clock instead
//! of `TIME`, so both run on one time base and nothing here sleeps.
//!
//! The comparison runs on one redis-server and on a three-master Redis
//! Cluster (where every script's keys must share a slot).
//!
//! The Redis test starts its own redis-server on a free port; without one on
//! PATH it skips loudly (CRMGATE_REQUIRE_ALL=1 or CRMGATE_REQUIRE_REDIS=1
//! makes that a failure). The check that the sequence exercises every rule needs no Redis.
//!
//! `sequence`: the hand-written sequence, one table whose comments are the
//! expected slots; `reference`: the Rust side and the model CRMs that
//! generate sequences; this file: the Redis side, the comparison and the
//! tests.
#[path = "../common/mod.rs"]
mod common;
mod reference;
mod sequence;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, RedisServer};
use crmgate::classify::Class;
use crmgate::scheduler::RedisBudget;
use crmgate::sim::limiter::LimiterKind;
use reference::*;
use sequence::{sequence, Event};

/// Sends per window: small, so the sliding-log bound comes into play within
/// a few slots.
pub(crate) const LIMIT: u32 = 4;
/// The test clock's epoch for Redis, in µs: the magnitude of a real `TIME`,
/// so the scripts' arithmetic sees realistic numbers.
const BASE_US: u64 = 1_700_000_000_000_000;
/// How far a Redis slot may be from the Rust one. Redis keeps integer µs
/// and rounds each pacing gap up (`math.ceil(window / rate)`) where Rust
/// keeps ns, so a slot paced from the previous one can be up to 1 µs later
/// in Redis, and a chain of paced slots carries that along: with fewer than
/// [`MAX_RESERVATIONS`] slots the drift stays below this. Every rule moves
/// slots by milliseconds (`the_sequence_exercises_every_rule`), far beyond.
const TOLERANCE_US: f64 = 80.0;
const MAX_RESERVATIONS: usize = 80;

/// The slots the Redis scripts give for `events`, through [`RedisBudget`]'s own
/// calls, on the test's clock.
async fn redis_slots(topology: &str, prefix: &str, events: &[(u64, Event)]) -> Vec<Slot> {
    let config = config(topology, prefix, true);
    let clock = Arc::new(AtomicU64::new(BASE_US));
    let shared = RedisBudget::with_clock(&config, clock.clone());
    let class = Class::General;
    let mut slots = Vec::new();
    // Each egress's latest slot as the log holds it.
    let mut latest_us = [0u64; 2];
    for &(at_ms, event) in events {
        let now_us = at_ms * 1000;
        clock.store(BASE_US + now_us, Ordering::Relaxed);
        match event {
            Event::Reserve => {
                let reserved = shared
                    .reserve(class, None, u64::MAX)
                    .await
                    .unwrap_or_else(|| {
                        panic!("Redis answers the reservation: {:?}", shared.state())
                    });
                let (egress, wait) = (reserved.egress, reserved.wait);
                latest_us[egress] = reserved.slot_us;
                slots.push(Slot {
                    egress,
                    at_us: now_us as f64 + us(wait),
                });
            }
            Event::Throttled {
                egress,
                sent,
                retry_after,
            } => {
                let age = Duration::from_millis(at_ms - sent);
                shared
                    .throttled(egress, class, None, age, retry_after)
                    .await
            }
            // The shared budget does not hold slots while a connect is in
            // progress (docs/architecture.md): the sequence asks for none
            // that the local one would hold.
            Event::ConnectStarted { .. } => {}
            Event::ConnectFinished { egress, started } => {
                let took = Duration::from_millis(at_ms - started);
                shared.delayed(egress, class, None, took).await
            }
            Event::Late { egress, by } => {
                shared
                    .departed(egress, class, None, latest_us[egress], by)
                    .await
            }
            Event::Reload { adaptive } => {
                shared.reconfigure(&self::config(topology, prefix, adaptive))
            }
        }
        // `throttled` and `delayed` are best effort: a failure only shows as
        // fallback.
        assert!(
            !shared.in_fallback(),
            "Redis failed at {at_ms} ms ({event:?})"
        );
    }
    slots
}

/// The first slot where `a` and `b` differ by more than `tolerance_us` (or
/// pick another egress), described.
fn first_difference(a: &[Slot], b: &[Slot], tolerance_us: f64) -> Option<String> {
    if a.len() != b.len() {
        return Some(format!("{} slots against {}", a.len(), b.len()));
    }
    a.iter().zip(b).enumerate().find_map(|(i, (x, y))| {
        (x.egress != y.egress || (x.at_us - y.at_us).abs() > tolerance_us).then(|| {
            format!(
                "slot {i}: e{} @ {:.3} ms against e{} @ {:.3} ms",
                x.egress,
                x.at_us / 1000.0,
                y.egress,
                y.at_us / 1000.0
            )
        })
    })
}

fn table(
    events: &[(u64, Event)],
    reference: &[Slot],
    decided: &[Decided],
    redis: &[Slot],
) -> String {
    let mut out = String::new();
    let mut i = 0;
    for (at, event) in events {
        out.push_str(&format!("{at:>6} ms {event:?}"));
        if let Event::Reserve = event {
            let r = reference[i];
            out.push_str(&format!(
                " -> Rust e{} @ {:.3} ms ({:?})",
                r.egress,
                r.at_us / 1000.0,
                decided[i]
            ));
            if let Some(s) = redis.get(i) {
                out.push_str(&format!(
                    ", Redis e{} @ {:.3} ms",
                    s.egress,
                    s.at_us / 1000.0
                ));
            }
            i += 1;
        }
        out.push('\n');
    }
    out
}

/// The sequence through Redis at `topology` against the reference.
async fn compare(topology: &str) {
    let events = sequence();
    let (expected, decided) = reference(
        &config(topology, "equivalence", true),
        &events,
        Perturbation::None,
    );
    let got = redis_slots(topology, "equivalence", &events).await;
    if let Some(diff) = first_difference(&expected, &got, TOLERANCE_US) {
        panic!(
            "the Redis scripts diverge from the Rust budget: {diff}\n{}",
            table(&events, &expected, &decided, &got)
        );
    }
}

#[tokio::test]
async fn the_redis_scripts_give_the_slots_of_the_rust_budget() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    compare(&format!("url = \"{}\"", redis.url())).await;
}

/// The same on a three-master Redis Cluster: every script's keys carry one
/// hash tag, so each call runs on one node (a key in another slot would
/// fail the script with CROSSSLOT).
#[tokio::test]
async fn the_redis_scripts_give_the_slots_of_the_rust_budget_on_a_cluster() {
    let Some(cluster) = Cluster::start().await else {
        return;
    };
    compare(&cluster.config_line()).await;
}

#[tokio::test]
async fn the_redis_scripts_adapt_as_the_rust_budget_against_model_crms() {
    let Some(redis) = RedisServer::start().await else {
        return;
    };
    for (i, (kind, limit)) in [
        (LimiterKind::Lenient, 3),
        (LimiterKind::Leaky { burst: 2 }, 3),
        (LimiterKind::Strict, 2),
        (LimiterKind::Fixed, 3),
    ]
    .into_iter()
    .enumerate()
    {
        let topology = format!("url = \"{}\"", redis.url());
        let prefix = format!("generated{i}");
        let config = config(&topology, &prefix, true);
        let events = generated(&config, kind, limit, 90);
        let (expected, decided) = reference(&config, &events, Perturbation::None);
        let refused = events
            .iter()
            .filter(|(_, e)| matches!(e, Event::Throttled { .. }))
            .count();
        assert!(refused > 5, "{kind}: only {refused} refusals");
        assert!(
            decided.contains(&Decided::PacedCut),
            "{kind}: adaptation never cut the rate"
        );
        let got = redis_slots(&topology, &prefix, &events).await;
        // Redis rounds each pacing gap up by at most 1 µs per slot.
        let tolerance = 50.0 + expected.len() as f64;
        if let Some(diff) = first_difference(&expected, &got, tolerance) {
            panic!(
                "{kind}: the Redis scripts diverge from the Rust budget: {diff}\n{}",
                table(&events, &expected, &decided, &got)
            );
        }
    }
}

/// The comparison above can fail: the sequence reaches every rule (the
/// sliding-log bound decides a slot by far more than the tolerance), and
/// changing any other rule in the reference moves some slot by far more
/// than the tolerance; a script that broke that rule would move the same
/// slots. Checked the other way round too, by hand: breaking any one rule
/// in the scripts (the
/// window term, the pacing gap, the pause, a shorter Retry-After not
/// shortening a pause, connect moves and their slack, the choice of the
/// egress free longest, adaptation switched off) fails the Redis test. Each
/// step of adaptation's machine moves a slot here (the sequence's comments
/// say which): a lone 503, an observation too weak to test, a test that
/// proves the rate guilty (its test rate estimated from the refused share,
/// then the factor's blind cut), one that ends early as noise, the
/// hold-off, a failed probe, its dip and the half-way good rate after a
/// blind cut, a refusal at that good rate, an onset at the tested rate.
#[test]
fn the_sequence_exercises_every_rule() {
    let config = config("url = \"redis://127.0.0.1:1\"", "unused", true);
    let events = sequence();
    let (expected, decided) = reference(&config, &events, Perturbation::None);
    let shown = table(&events, &expected, &decided, &[]);
    assert!(
        expected.len() < MAX_RESERVATIONS,
        "the tolerance assumes fewer slots"
    );
    assert!(
        expected.iter().any(|s| s.egress == 0) && expected.iter().any(|s| s.egress == 1),
        "both egresses are chosen\n{shown}"
    );
    for rule in [
        Decided::Free,
        Decided::PacedFull,
        Decided::PacedCut,
        Decided::Window,
        Decided::Paused,
    ] {
        assert!(
            decided.contains(&rule),
            "no slot decided by {rule:?}\n{shown}"
        );
    }
    assert!(!decided.contains(&Decided::Other), "{shown}");
    for p in [
        Perturbation::Pacing,
        Perturbation::NoCut,
        Perturbation::DecreaseFactor,
        Perturbation::SlowRecovery,
        Perturbation::NoRetryAfter,
        Perturbation::NoConnect,
        Perturbation::NoLate,
        Perturbation::NoReload,
    ] {
        let (perturbed, _) = reference(&config, &events, p);
        // By a millisecond, 20 times the tolerance: the Redis slots are within one
        // tolerance of the reference, so they would be caught.
        assert!(
            first_difference(&expected, &perturbed, 1000.0).is_some(),
            "{p:?} changes no slot by a millisecond: the sequence does not exercise it\n{shown}"
        );
    }
}
