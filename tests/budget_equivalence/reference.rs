//! The reference: the Rust `Budget`s given the events one by one, a slot
//! picked as a lane picks; one rule at a time can be changed (a
//! [`Perturbation`]) to show that the sequence notices; and the model
//! CRMs that generate sequences.

use std::time::Duration;

use crmgate::classify::Class;
use crmgate::config::Config;
use crmgate::scheduler::{Budget, BudgetShape};
use crmgate::sim::limiter::{Limiter, LimiterKind};
use tokio::time::Instant;

use super::sequence::Event;
use super::LIMIT;

/// A slot given for one [`Event::Reserve`]: which egress, and when (µs from
/// the start of the sequence).
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Slot {
    pub(crate) egress: usize,
    pub(crate) at_us: f64,
}

/// Which rule decided a reference slot.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Decided {
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
pub(crate) enum Perturbation {
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
pub(crate) fn config(topology: &str, prefix: &str, adaptive: bool) -> Config {
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
pub(crate) fn shape(config: &Config, p: Perturbation) -> BudgetShape {
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

pub(crate) fn us(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

/// The slots the Rust budgets give for `events`, and which rule decided
/// each. A slot is picked as a lane picks (the budget with the earliest
/// `next_free`, ties to the first) and recorded at the slot time, as Redis
/// records a reservation.
pub(crate) fn reference(
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

/// A sequence made by a model CRM: both egresses saturated for `secs`,
/// each refused by `kind` at `limit` per second (another sender has the
/// rest), every refusal answered 40 ms after its send. The Rust budgets
/// give the slots (as [`reference`] picks them), so the events walk through
/// whatever adaptation does against that CRM: sequential test rounds,
/// probes towards the ceiling, a refused good rate.
pub(crate) fn generated(
    config: &Config,
    kind: LimiterKind,
    limit: u32,
    secs: u64,
) -> Vec<(u64, Event)> {
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
