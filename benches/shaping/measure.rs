//! Turning what the simulator recorded and what callers saw into numbers.

use std::time::Duration;

use crmgate::sim::{max_in_window, Class, Received};
use serde::Serialize;

use crate::harness::Sample;

/// What reached the CRM in the general class, judged by its own records.
#[derive(Debug, Clone, Serialize)]
pub struct Delivered {
    /// Arrivals the CRM accepted (anything but 503; an answer still in
    /// flight when the run ended counts as accepted, it was not refused).
    pub accepted: usize,
    /// Arrivals the CRM refused with 503 (they count in its window too).
    pub rejected_503: usize,
    /// When those arrived: seconds after the first general arrival.
    pub rejected_at_s: Vec<f64>,
    /// Seconds between the first and the last accepted arrival.
    pub span_s: f64,
    /// `(accepted - 1) / span_s`: accepted arrivals per second, measured
    /// between the first and the last of them, so start-up and shutdown do
    /// not dilute it.
    pub rate: f64,
    /// `rate / limit`.
    pub utilisation: f64,
    /// Most arrivals (accepted or not) in any 1000 ms window at the CRM.
    pub max_in_1s: usize,
    /// Gaps between consecutive accepted arrivals (ms). The budget paces
    /// one send every `(1000 + jitter_allowance) / limit` ms (102 ms at the
    /// defaults); every millisecond above that is capacity not used.
    pub gap_ms: Percentiles,
    /// Mean of those gaps (ms): `span_s * 1000 / (accepted - 1)`.
    pub mean_gap_ms: f64,
}

pub fn delivered(records: &[Received], limit: u32) -> Delivered {
    let general: Vec<&Received> = records
        .iter()
        .filter(|r| r.class == Class::General)
        .collect();
    let mut accepted: Vec<_> = general
        .iter()
        .filter(|r| r.status != 503)
        .map(|r| r.at)
        .collect();
    accepted.sort_unstable();
    let rejected_503 = general.len() - accepted.len();
    let first = general.iter().map(|r| r.at).min();
    let rejected_at_s = general
        .iter()
        .filter(|r| r.status == 503)
        .filter_map(|r| Some(r.at.duration_since(first?).as_secs_f64()))
        .collect();
    let span_s = match (accepted.first(), accepted.last()) {
        (Some(a), Some(b)) => b.duration_since(*a).as_secs_f64(),
        _ => 0.0,
    };
    let rate = if span_s > 0.0 {
        (accepted.len() - 1) as f64 / span_s
    } else {
        0.0
    };
    let max_in_1s = max_in_window(records, Duration::from_secs(1))
        .into_iter()
        .filter(|((_, class), _)| *class == Class::General)
        .map(|(_, n)| n)
        .max()
        .unwrap_or(0);
    let gaps: Vec<f64> = accepted
        .windows(2)
        .map(|w| w[1].duration_since(w[0]).as_secs_f64() * 1000.0)
        .collect();
    Delivered {
        mean_gap_ms: gaps.iter().sum::<f64>() / gaps.len().max(1) as f64,
        gap_ms: percentiles(&gaps),
        accepted: accepted.len(),
        rejected_503,
        rejected_at_s,
        span_s,
        rate,
        utilisation: rate / f64::from(limit),
        max_in_1s,
    }
}

/// How callers fared: answers by status.
#[derive(Debug, Clone, Serialize)]
pub struct Answers {
    pub total: usize,
    pub ok_200: usize,
    /// Any other status (0 = transport error), as `(status, count)`.
    pub other: Vec<(u16, usize)>,
}

impl Answers {
    /// Successful answers: 200 plus any other 2xx (201 for a creation).
    pub fn succeeded(&self) -> usize {
        self.ok_200
            + self
                .other
                .iter()
                .filter(|(s, _)| (200..300).contains(s))
                .map(|(_, n)| n)
                .sum::<usize>()
    }
}

pub fn answers(samples: &[Sample]) -> Answers {
    let mut other: std::collections::BTreeMap<u16, usize> = Default::default();
    let mut ok = 0;
    for s in samples {
        if s.status == 200 {
            ok += 1;
        } else {
            *other.entry(s.status).or_default() += 1;
        }
    }
    Answers {
        total: samples.len(),
        ok_200: ok,
        other: other.into_iter().collect(),
    }
}

/// Nearest-rank percentiles of a set of values.
#[derive(Debug, Clone, Serialize)]
pub struct Percentiles {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub max: f64,
}

pub fn percentiles(values: &[f64]) -> Percentiles {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = |p: f64| -> f64 {
        if v.is_empty() {
            return f64::NAN;
        }
        let i = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    Percentiles {
        n: v.len(),
        min: v.first().copied().unwrap_or(f64::NAN),
        p50: rank(0.50),
        p95: rank(0.95),
        max: v.last().copied().unwrap_or(f64::NAN),
    }
}

/// Queue waits (ms, from `x-crmgate-queue-ms`) of the successful (2xx)
/// answers: 200 for reads, 201 for a created order.
pub fn queue_waits(samples: &[Sample]) -> Vec<f64> {
    samples
        .iter()
        .filter(|s| (200..300).contains(&s.status))
        .filter_map(|s| s.queue_ms)
        .map(|ms| ms as f64)
        .collect()
}

/// Goal for a light tenant's p95 queue wait beside a flood (ms).
pub const TARGET_LIGHT_P95_MS: f64 = 300.0;

/// How a figure stands against its goal, in the report's words.
pub fn verdict(ok: bool) -> &'static str {
    if ok {
        "MET"
    } else {
        "MISSED"
    }
}

/// When the 503s arrived, if there were any.
pub fn print_rejected_at(at: &[f64]) {
    if !at.is_empty() {
        let at: Vec<String> = at.iter().map(|t| format!("{t:.2}")).collect();
        println!(
            "   {:<38} {:>12}",
            "  … arrived at (s after start)",
            at.join(", ")
        );
    }
}
