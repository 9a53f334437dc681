//! One source for the budget rules: the Redis scripts
//! (`src/scheduler/lua/`) must give the same slots as the Rust `Budget`,
//! which is the reference (docs/architecture.md). One sequence of events —
//! slots asked for by several replicas, 503s with and without Retry-After, a
//! slow connect, a late send, recovery over time — goes to both: to one
//! `Budget` per egress, picked the way a lane picks, and to `Shared` on a
//! real redis-server whose scripts read "now" from the test's clock instead
//! of `TIME`, so both run on one time base and nothing here sleeps.
//!
//! The comparison runs on one redis-server and on a three-master Redis
//! Cluster (where every script's keys must share a slot).
//!
//! The Redis test starts its own redis-server on a free port; without one on
//! PATH it skips loudly (CRMGATE_REQUIRE_ALL=1 or CRMGATE_REQUIRE_REDIS=1 makes that a failure). The
//! check that the sequence exercises every rule needs no Redis.
//!
//! Over 500 lines on purpose: the sequence is one table whose comments are
//! the expected slots, and adaptation's steps (issue 10) made it longer;
//! split, it would no longer read as one story.
mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{Cluster, RedisServer};
use crmgate::classify::Class;
use crmgate::config::Config;
use crmgate::scheduler::{Budget, BudgetShape, Shared};
use crmgate::sim::limiter::{Limiter, LimiterKind};
use tokio::time::Instant;

/// Sends per window: small, so the sliding-log bound comes into play within
/// a few slots.
const LIMIT: u32 = 4;
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

/// What happens to the budgets, at a time (ms) in [`sequence`].
#[derive(Debug, Clone, Copy)]
enum Event {
    /// A replica asks for the next slot on any egress.
    Reserve,
    /// The CRM answered 503 through `egress` to the send made at `sent` (ms).
    Throttled {
        egress: usize,
        sent: u64,
        retry_after: Option<Duration>,
    },
    /// A connection to the CRM starts opening through `egress`.
    ConnectStarted { egress: usize },
    /// The connection through `egress` that started at `started` (ms) is open.
    ConnectFinished { egress: usize, started: u64 },
    /// The send in `egress`'s latest slot left `by` after it (a late
    /// wake-up, a slow hand-off): `Budget::left_late`, `Shared::departed`.
    Late { egress: usize, by: Duration },
    /// The config is reloaded with adaptation switched on or off.
    Reload { adaptive: bool },
}

/// The events, with the slots the reference gave in the comments (two
/// egresses e0 and e1, 4 per 1020 ms: paced 255 ms apart at full rate;
/// adaptation's test halves the rate and a good rate rises 1 req/s per
/// second).
///
/// The comments on 503s and slots from 2000 ms on describe the machine
/// before issue 19 (one observed window, one test round, no ceiling); the
/// rules now differ there (two observed windows, test rounds, probes half
/// way to a ceiling), and the table printed on a failure shows the current
/// slots. The new rules are compared by
/// `the_redis_scripts_adapt_as_the_rust_budget_against_model_crms`.
#[rustfmt::skip]
fn sequence() -> Vec<(u64, Event)> {
    use Event::*;
    let ms = Duration::from_millis;
    let throttled = |egress, sent, retry_ms: Option<u64>| Throttled { egress, sent, retry_after: retry_ms.map(ms) };
    vec![
        // Pacing, and the choice between egresses: both free (ties go to the
        // first), then the one free first.
        (0, Reserve), // e0 @ 0   // e0 @ 0
        (0, Reserve), // e1 @ 0   // e1 @ 0
        (0, Reserve), // e0 @ 255   // e0 @ 255
        (0, Reserve), // e1 @ 255   // e1 @ 255
        (300, ConnectStarted { egress: 0 }),
        // During the connect: e0 holds only two sends, so no slot waits on
        // it (the local budget would hold one that did; Redis does not).
        (300, Reserve), // e0 @ 510
        // The connect took 300 ms: e0's sends since 200 ms count from 600.
        (600, ConnectFinished { egress: 0, started: 300 }),
        (600, Reserve), // e1 @ 600: e1 has been free longest
        (600, Reserve), // e0 @ 855 (paced from the moved sends)
        (600, Reserve), // e1 @ 855
        (600, Reserve), // e0 @ 1110
        (600, Reserve), // e1 @ 1110
        (600, Reserve), // e1 @ 1365: e0 waits for the window
        // The sliding-log bound: e0's last four are 600, 600, 855, 1110, so
        // its next slot is 600 + 1020, not 1110 + 255.
        (600, Reserve), // e0 @ 1620
        // 503s (adaptation, src/scheduler/adapt.rs). e1's pauses it for
        // Retry-After (until 7000) and opens an observation from its 1365
        // send that sees no other refusal: a lone 503, no cut. e0's opens
        // one from its 1620 send.
        (2000, throttled(1, 1365, Some(5000))),
        (2000, throttled(0, 1620, None)),
        (2000, Reserve), // e0 @ 2000
        (2000, Reserve), // e0 @ 2255
        (2300, throttled(0, 2000, None)),
        (2400, throttled(0, 2255, None)),
        (2400, Reserve), // e0 @ 2510
        (2600, throttled(0, 2510, None)),
        // Refused 3 of 3 in e0's window: at 2640 its rate halves to 2/s for
        // the test; the sample is e0's sends in [3660, 5700).
        (2700, Reserve), // e0 @ 3020 (paced at 2/s)
        (2700, Reserve), // e0 @ 3530
        (2700, Reserve), // e0 @ 4040
        (2700, Reserve), // e0 @ 4550
        (2700, Reserve), // e0 @ 5060
        (2700, Reserve), // e0 @ 5570
        // A refusal of a send before the sample does not count.
        (5100, throttled(0, 3530, None)),
        // The verdict at 6210: 3 of 3 refused before, none of 4 after: the
        // rate was the cause. e0 keeps 2/s until 11210, then rises 1/s per s.
        (6300, Reserve), // e0 @ 6300
        (6300, Reserve), // e0 @ 6810
        (6900, Reserve), // e1 @ 7000: the end of its pause
        (6900, Reserve), // e1 @ 7255
        // e1: every send in its window from 7000 refused, so a test at 2/s
        // from 8020 could prove the rate guilty; its sample is e1's sends in
        // [9040, 11080), and the first refusal there makes that impossible:
        // noise at once, e1 back at 4/s, 503s ignored for 10 s.
        (7300, throttled(1, 7000, None)),
        (7300, throttled(1, 7255, None)),
        (7300, Reserve), // e0 @ 7320
        (7300, Reserve), // e1 @ 7510
        (7600, throttled(1, 7510, None)),
        (7600, Reserve), // e1 @ 7765
        (7800, throttled(1, 7765, None)),
        (7800, Reserve), // e0 @ 7830
        (7800, Reserve), // e1 @ 8020
        (7800, Reserve), // e0 @ 8340
        (8900, Reserve), // e1 @ 8900
        (8900, Reserve), // e0 @ 8900
        (8900, Reserve), // e0 @ 9410
        (8900, Reserve), // e1 @ 9410
        (9500, throttled(1, 9410, None)),
        (9500, Reserve), // e1 @ 9665
        (9500, Reserve), // e0 @ 9920
        // Ignored (the hold-off after noise): e1 keeps 4/s.
        (10_000, throttled(1, 9665, None)),
        (10_000, Reserve), // e1 @ 10000
        (10_000, Reserve), // e1 @ 10255
        // e0 rises from 11210: a refusal of a send above the good rate is a
        // failed probe: 1/s for a window, then 2/s, and a 10 s hold.
        (12_400, Reserve), // e0 @ 12400
        (12_450, throttled(0, 12_400, None)),
        (12_450, Reserve), // e1 @ 12450
        (12_450, Reserve), // e1 @ 12705
        (12_450, Reserve), // e1 @ 12960
        (12_450, Reserve), // e1 @ 13215
        (12_450, Reserve), // e0 @ 13420: 1/s during the dip
        // A refusal at the good rate itself is a new onset from it; one more
        // refusal in its window cannot prove anything: noise, without a cut,
        // and e0 rises from 2/s at once.
        (14_000, Reserve), // e1 @ 14000
        (14_000, Reserve), // e0 @ 14000
        (14_100, throttled(0, 14_000, None)),
        (14_100, Reserve), // e1 @ 14255
        (14_100, Reserve), // e0 @ 14510
        (14_600, throttled(0, 14_510, None)),
        (15_100, Reserve), // e1 @ 15100
        (15_100, Reserve), // e0 @ 15100
        (15_100, Reserve), // e1 @ 15355
        (15_100, Reserve), // e0 @ 15590.385 (rising from 2/s at 15020; 15610 if still held)
        // The send in e0's latest slot left 90 ms late: it and any send
        // between its slot and its departure count from then.
        (15_700, Late { egress: 0, by: ms(90) }),
        // A reload that switches adaptation off ends any cut at once.
        (16_000, Reserve), // e1 @ 16000
        (16_000, Reserve), // e0 @ 16000

        (16_100, Reload { adaptive: false }),
        (16_100, Reserve), // e0 @ 16255 (4 req/s)
        (16_100, Reserve), // e1 @ 16295 (paced from 16040)
    ]
}

/// A slot given for one [`Event::Reserve`]: which egress, and when (µs from
/// the start of the sequence).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Slot {
    egress: usize,
    at_us: f64,
}

/// Which rule decided a reference slot.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Decided {
    /// Free now.
    Free,
    /// Pacing at the configured rate.
    PacedFull,
    /// Pacing at an adapted (lower) rate.
    PacedCut,
    /// The log of the last `limit` sends, later than pacing would say.
    Window,
    /// A Retry-After pause, later than pacing and the log would say.
    Paused,
    Other,
}

/// One rule changed in the reference, to show that the sequence notices.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Perturbation {
    None,
    /// Pacing `1000 ms / rate` instead of `1020 ms / rate`.
    Pacing,
    /// 503s do not cut the rate.
    NoCut,
    /// A 503 cuts the rate to 0.7 of it instead of 0.5.
    DecreaseFactor,
    /// Recovery at 0.5 req/s per s instead of 1.
    SlowRecovery,
    /// Retry-After is ignored.
    NoRetryAfter,
    /// Connects are not accounted.
    NoConnect,
    /// Late sends are not accounted.
    NoLate,
    /// Reloads are not applied.
    NoReload,
}

/// The test's config on the Redis that `topology` names (a `[redis]` line:
/// `url = ...` or `cluster_nodes = [...]`).
fn config(topology: &str, prefix: &str, adaptive: bool) -> Config {
    let text = format!(
        r#"
[upstream]
egress_ips = ["127.0.0.1", "127.0.0.2"]
[limits]
backend = "redis"
general_per_second = {LIMIT}
jitter_allowance = "20ms"
[limits.adaptive]
enabled = {adaptive}
decrease_factor = 0.5
recovery_per_second = 1.0
min_rate = 1.0
[redis]
{topology}
key_prefix = "{prefix}"
# Generous: a loaded machine must not push the test into fallback.
timeout = "5s"
[[tenants]]
name = "acme"
subdomain = "acme"
api_key = "k"
"#
    );
    Config::from_toml(&text, "test", &|_| None).expect("test config is valid")
}

/// The reference budget's shape, from the same config as the Redis side.
fn shape(config: &Config, p: Perturbation) -> BudgetShape {
    let mut shape = BudgetShape {
        limit: config.rate(Class::General).get(),
        window: Duration::from_secs(1) + config.limits.jitter_allowance,
        adaptive: config.limits.adaptive.clone(),
    };
    match p {
        Perturbation::Pacing => shape.window = Duration::from_secs(1),
        Perturbation::NoCut => shape.adaptive.enabled = false,
        Perturbation::DecreaseFactor => shape.adaptive.decrease_factor = 0.7,
        Perturbation::SlowRecovery => shape.adaptive.recovery_per_second = 0.5,
        _ => {}
    }
    shape
}

fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

/// The slots the Rust budgets give for `events`, and which rule decided
/// each. A slot is picked as a lane picks (the budget with the earliest
/// `next_free`, ties to the first) and recorded at the slot time, as Redis
/// records a reservation.
fn reference(
    config: &Config,
    events: &[(u64, Event)],
    p: Perturbation,
) -> (Vec<Slot>, Vec<Decided>) {
    let start = Instant::now();
    let shape = shape(config, p);
    let limit = shape.limit as usize;
    // Two egresses, as in `config`.
    let mut budgets: Vec<Budget> = (0..2).map(|_| Budget::new(shape.clone())).collect();
    let (mut slots, mut decided) = (Vec::new(), Vec::new());
    for &(at_ms, event) in events {
        let now = start + Duration::from_millis(at_ms);
        match event {
            Event::Reserve => {
                let (egress, free) = budgets
                    .iter()
                    .enumerate()
                    .map(|(i, b)| (i, b.next_free(now)))
                    .min_by_key(|(_, at)| *at)
                    .unwrap();
                let at = free.max(now);
                let b = &mut budgets[egress];
                let rate = b.effective_rate(now);
                let log = b.sends();
                let pacing = log.back().map(|l| *l + shape.window.div_f64(rate));
                let window = (log.len() >= limit).then(|| log[log.len() - limit] + shape.window);
                let margin = Duration::from_millis(10);
                let latest = pacing.max(window);
                decided.push(if at == now {
                    Decided::Free
                } else if Some(at) == window && pacing.is_some_and(|p| at > p + margin) {
                    Decided::Window
                } else if Some(at) == pacing {
                    if rate < f64::from(shape.limit) {
                        Decided::PacedCut
                    } else {
                        Decided::PacedFull
                    }
                } else if latest.is_none_or(|l| at > l + margin) {
                    Decided::Paused
                } else {
                    Decided::Other
                });
                b.record(at);
                slots.push(Slot {
                    egress,
                    at_us: us(at - start),
                });
            }
            Event::Throttled {
                egress,
                sent,
                retry_after,
            } => {
                let retry_after = retry_after.filter(|_| p != Perturbation::NoRetryAfter);
                let sent = start + Duration::from_millis(sent);
                budgets[egress].throttled(now, sent, retry_after);
            }
            Event::ConnectStarted { egress } if p != Perturbation::NoConnect => {
                budgets[egress].connect_started(now);
            }
            Event::ConnectFinished { egress, started } if p != Perturbation::NoConnect => {
                budgets[egress].connect_finished(start + Duration::from_millis(started), now);
            }
            // The permit reports its late departure (`Permit::departed`).
            Event::Late { egress, by } if p != Perturbation::NoLate => {
                let slot = budgets[egress]
                    .sends()
                    .back()
                    .copied()
                    .expect("a slot to leave late");
                budgets[egress].left_late(slot, slot + by);
            }
            Event::Reload { adaptive } if p != Perturbation::NoReload => {
                for b in &mut budgets {
                    let mut reloaded = b.shape().clone();
                    reloaded.adaptive.enabled = adaptive;
                    b.reshape(reloaded);
                }
            }
            _ => {}
        }
    }
    (slots, decided)
}

/// The slots the Redis scripts give for `events`, through [`Shared`]'s own
/// calls, on the test's clock.
async fn redis_slots(topology: &str, prefix: &str, events: &[(u64, Event)]) -> Vec<Slot> {
    let config = config(topology, prefix, true);
    let clock = Arc::new(AtomicU64::new(BASE_US));
    let shared = Shared::with_clock(&config, clock.clone());
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
                    .expect("Redis answers the reservation");
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

/// A sequence made by a model CRM: both egresses saturated for `secs`,
/// each refused by `kind` at `limit` per second (another sender has the
/// rest), every refusal answered 40 ms after its send. The Rust budgets
/// give the slots (as [`reference`] picks them), so the events walk through
/// whatever adaptation does against that CRM: sequential test rounds,
/// probes towards the ceiling, a refused good rate.
fn generated(config: &Config, kind: LimiterKind, limit: u32, secs: u64) -> Vec<(u64, Event)> {
    let start = Instant::now();
    let shape = shape(config, Perturbation::None);
    let mut budgets: Vec<Budget> = (0..2).map(|_| Budget::new(shape.clone())).collect();
    let mut crm = Limiter::new(kind, start);
    let mut events = Vec::new();
    let mut pending: Vec<(u64, Event)> = Vec::new();
    let mut now_ms = 0u64;
    while now_ms < secs * 1000 {
        // Answers due by now first, in time order.
        pending.sort_by_key(|(at, _)| *at);
        while pending.first().is_some_and(|(at, _)| *at <= now_ms) {
            let (at, event) = pending.remove(0);
            if let Event::Throttled { egress, sent, .. } = event {
                budgets[egress].throttled(
                    start + Duration::from_millis(at),
                    start + Duration::from_millis(sent),
                    None,
                );
            }
            events.push((at, event));
        }
        let now = start + Duration::from_millis(now_ms);
        let (egress, free) = budgets
            .iter()
            .enumerate()
            .map(|(i, b)| (i, b.next_free(now)))
            .min_by_key(|(_, at)| *at)
            .unwrap();
        let at = free.max(now);
        budgets[egress].record(at);
        events.push((now_ms, Event::Reserve));
        // The send leaves at its slot; Redis's slot differs by µs, so the
        // CRM's verdict is recorded as an event both sides replay.
        let sent_ms = (at - start).as_millis() as u64;
        if crm.refuses(egress, at, Duration::from_secs(1), limit) {
            pending.push((
                sent_ms + 40,
                Event::Throttled {
                    egress,
                    sent: sent_ms,
                    retry_after: None,
                },
            ));
        }
        // The next request asks when this slot is (about) due.
        now_ms = now_ms.max(sent_ms.saturating_sub(20));
        now_ms += 1;
    }
    events.extend(pending);
    events
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
/// slots. Checked the other way round too, by hand, before adaptation
/// became a test (issue 10): breaking any one rule in the scripts (the
/// window term, the pacing gap, the pause, a shorter Retry-After not
/// shortening a pause, connect moves and their slack, the choice of the
/// egress free longest, adaptation switched off) fails the Redis test. Each
/// step of adaptation's machine moves a slot here (the sequence's comments
/// say which): a lone 503, an observation too weak to test, a test that
/// proves the rate guilty, one that ends early as noise, the hold-off, a
/// failed probe and its dip, an onset at the kept rate.
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
