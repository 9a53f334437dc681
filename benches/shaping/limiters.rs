//! Scenario `limiters`: adaptation at default settings (configured 10/s)
//! against a CRM whose real limit is lower (7/s and 8/s), under each
//! limiter model the simulator plays (`crmgate sim --limiter`): a strict
//! and a lenient sliding window, nginx `limit_req` with burst 0 and 5, and
//! fixed windows. One table: from 10 s on, accepted ÷ the real limit, the
//! share of sends the CRM refused, and what callers saw.
//!
//! The full run plays the models one after another; `--quick` runs them
//! all at once for 15 s (each has its own simulator and gateway, so the budgets do
//! not mix, but they share the cores: a smoke run, not a figure). Measures
//! and reports; it never asserts.

use crmgate::sim::{LimiterKind, Simulator};
use serde::Serialize;

use crate::adapt::{self, Scenario};
use crate::measure::verdict;

/// Accepted ÷ the real limit, at least.
pub const TARGET_SHARE_OF_LIMIT: f64 = 0.9;
/// Share of sends the CRM refused, at most.
pub const TARGET_REFUSED: f64 = 0.02;
/// The measured part starts this long after the first arrival.
const SETTLE_S: f64 = 10.0;

/// The models, as `(name in the table, kind)`.
const MODELS: [(&str, LimiterKind); 5] = [
    ("strict", LimiterKind::Strict),
    ("lenient", LimiterKind::Lenient),
    ("leaky burst 0", LimiterKind::Leaky { burst: 0 }),
    ("leaky burst 5", LimiterKind::Leaky { burst: 5 }),
    ("fixed", LimiterKind::Fixed),
];
/// The real limits, while crmgate is configured for 10/s.
const REAL: [u32; 2] = [7, 8];

/// One model at one real limit.
#[derive(Debug, Clone, Serialize)]
pub struct ModelRun {
    pub model: &'static str,
    pub real_limit: u32,
    /// Accepted per second from 10 s on ÷ `real_limit`.
    pub share_of_limit: f64,
    pub run: Scenario,
}

impl ModelRun {
    /// Whether every goal of the row is met.
    pub fn met(&self) -> bool {
        self.share_of_limit >= TARGET_SHARE_OF_LIMIT
            && self.run.share_503 <= TARGET_REFUSED
            && self.run.callers_saw.errors.is_empty()
    }
}

/// Runs every model at every real limit, `secs` each.
pub async fn run(callers: usize, quick: bool, loadavg: impl Fn() -> String) -> Vec<ModelRun> {
    // Quick: fewer callers, so that the queue left at the end drains fast.
    let (secs, callers) = if quick {
        (15.0, callers.min(20))
    } else {
        (25.0, callers)
    };
    let max = adapt::max_attempts();
    let cases: Vec<(&'static str, LimiterKind, u32)> = REAL
        .iter()
        .flat_map(|real| MODELS.iter().map(move |(name, kind)| (*name, *kind, *real)))
        .collect();
    let one = |(name, kind, real): (&'static str, LimiterKind, u32)| {
        let load = &loadavg;
        async move {
            let fault = move |sim: &Simulator| {
                sim.set_limits(real, 40);
                sim.set_limiter(kind);
            };
            let run = adapt::steady(name, fault, SETTLE_S, (callers, secs, max), load).await;
            ModelRun {
                model: name,
                real_limit: real,
                share_of_limit: run.accepted_per_s / f64::from(real),
                run,
            }
        }
    };
    if quick {
        futures_util::future::join_all(cases.into_iter().map(one)).await
    } else {
        let mut out = Vec::new();
        for case in cases {
            out.push(one(case).await);
        }
        out
    }
}

/// Prints the table and verdicts.
pub fn print(runs: &[ModelRun], quick: bool) {
    println!(
        "\n== 13. Adaptation under each limiter model (configured 10/s, default settings{})",
        if quick { "; quick: all at once" } else { "" }
    );
    if let Some(r) = runs.first() {
        println!(
            "   {} callers, {:.0} s each, measured from {SETTLE_S:.0} s; goals: accepted ≥ {TARGET_SHARE_OF_LIMIT} × real limit, \
             refused ≤ {:.0} %, 0 caller errors",
            r.run.callers,
            r.run.seconds,
            TARGET_REFUSED * 100.0
        );
    }
    println!(
        "   {:<14} {:>5} {:>12} {:>9} {:>9} {:>9} {:>13}  {:<7} load",
        "model", "real", "accepted/s", "÷ real", "refused", "503s", "caller errors", "verdict"
    );
    for r in runs {
        let errors: usize = r.run.callers_saw.errors.iter().map(|(_, n)| n).sum();
        println!(
            "   {:<14} {:>5} {:>12.2} {:>9.3} {:>8.1}% {:>9} {:>13}  {:<7} {}",
            r.model,
            format!("{}/s", r.real_limit),
            r.run.accepted_per_s,
            r.share_of_limit,
            r.run.share_503 * 100.0,
            r.run.refused_503,
            errors,
            verdict(r.met()),
            r.run.loadavg
        );
    }
    println!(
        "   every model at every limit: {}",
        verdict(runs.iter().all(ModelRun::met))
    );
}
