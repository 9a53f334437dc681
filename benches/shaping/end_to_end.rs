//! Scenarios 1–3: real sockets, a real gateway, the strict simulator.

use std::time::Duration;

use serde::Serialize;

use crate::harness::{self, Gate, JitterHop, Load, ACME_CLIENT};
use crate::measure::{self, Answers, Delivered, Percentiles, TARGET_LIGHT_P95_MS};

/// The configured general limit the gateway and the simulator share.
pub const LIMIT: u32 = 10;
/// Simulated CRM latency, uniform.
pub const LATENCY: (Duration, Duration) = (Duration::from_millis(20), Duration::from_millis(60));

/// Scenario 1 or 2: one tenant saturating the general budget.
#[derive(Debug, Clone, Serialize)]
pub struct Saturation {
    pub callers: usize,
    pub seconds: f64,
    /// Upper bound of the added arrival jitter (0 = none).
    pub jitter_ms: u64,
    pub delivered: Delivered,
    pub answers: Answers,
    /// How long the jitter hop actually held requests (ms), when used.
    pub held_ms: Option<Percentiles>,
}

pub async fn saturation(callers: usize, run: Duration, jitter: Duration) -> Saturation {
    let sim = harness::sim(LATENCY).await;
    let hop = if jitter.is_zero() {
        None
    } else {
        Some(JitterHop::start(sim.base_url(), jitter).await)
    };
    let upstream = hop
        .as_ref()
        .map_or_else(|| sim.base_url(), |h| h.url.clone());
    let gate = Gate::start(harness::gateway_config(&upstream, "")).await;
    let client = harness::client();

    let load = Load::flood(&client, &gate.url, ACME_CLIENT, callers);
    tokio::time::sleep(run).await;
    // Judge what arrived during the run, before callers walk away.
    let records = sim.records();
    let samples = load.stop().await;
    drop(client);
    gate.shutdown().await;
    let held_ms = hop.map(|h| {
        h.stop();
        let held = h.held.lock().unwrap_or_else(|p| p.into_inner());
        measure::percentiles(
            &held
                .iter()
                .map(|d| d.as_secs_f64() * 1000.0)
                .collect::<Vec<_>>(),
        )
    });
    sim.shutdown();

    Saturation {
        callers,
        seconds: run.as_secs_f64(),
        jitter_ms: jitter.as_millis() as u64,
        delivered: measure::delivered(&records, LIMIT),
        answers: measure::answers(&samples),
        held_ms,
    }
}

/// Scenario 3: a light tenant's wait while another floods.
#[derive(Debug, Clone, Serialize)]
pub struct Fairness {
    pub flood_callers: usize,
    pub light_every_ms: u64,
    pub seconds: f64,
    /// Light tenant's queue wait (ms), over its 200 answers.
    pub light_wait_ms: Percentiles,
    /// Flooding tenant's queue wait (ms), over its 200 answers.
    pub flood_wait_ms: Percentiles,
    pub light_answers: Answers,
    pub flood_answers: Answers,
    /// The CRM's view of the whole run (both tenants share one budget).
    pub delivered: Delivered,
}

pub async fn fairness(callers: usize, run: Duration, every: Duration) -> Fairness {
    let sim = harness::sim(LATENCY).await;
    let gate = Gate::start(harness::gateway_config(&sim.base_url(), "")).await;
    let client = harness::client();

    let harness::FloodAndTrickle {
        light: light_samples,
        flood: flood_samples,
        records,
    } = harness::flood_and_trickle(&client, &gate.url, &sim, callers, run, every).await;
    drop(client);
    gate.shutdown().await;
    sim.shutdown();

    Fairness {
        flood_callers: callers,
        light_every_ms: every.as_millis() as u64,
        seconds: run.as_secs_f64(),
        light_wait_ms: measure::percentiles(&measure::queue_waits(&light_samples)),
        flood_wait_ms: measure::percentiles(&measure::queue_waits(&flood_samples)),
        light_answers: measure::answers(&light_samples),
        flood_answers: measure::answers(&flood_samples),
        delivered: measure::delivered(&records, LIMIT),
    }
}

/// Utilisation goal of scenario 1 (no added jitter).
pub const TARGET_UTILISATION: f64 = 0.98;
/// Utilisation goal of scenario 2 (0–20 ms arrival jitter).
pub const TARGET_UTILISATION_JITTER: f64 = 0.96;

/// Prints scenario 1's or 2's table and verdicts.
pub fn print_saturation(title: &str, s: &Saturation, target: f64) {
    let d = &s.delivered;
    println!("\n== {title}");
    println!(
        "   {} callers, {:.0} s, CRM latency 20–60 ms, limit {}/s, jitter 0–{} ms",
        s.callers, s.seconds, LIMIT, s.jitter_ms
    );
    println!("   {:<38} {:>12}", "accepted by the CRM", d.accepted);
    println!(
        "   {:<38} {:>12.3}",
        "span first→last accepted (s)", d.span_s
    );
    println!("   {:<38} {:>12.3}", "delivered rate (req/s)", d.rate);
    println!(
        "   {:<38} {:>12.4}   target ≥ {target:.2}: {}",
        "utilisation (rate / limit)",
        d.utilisation,
        measure::verdict(d.utilisation >= target)
    );
    println!(
        "   {:<38} {:>12}   target 0: {}",
        "503s answered by the CRM",
        d.rejected_503,
        measure::verdict(d.rejected_503 == 0)
    );
    measure::print_rejected_at(&d.rejected_at_s);
    println!(
        "   {:<38} {:>12}",
        "most arrivals in any 1000 ms", d.max_in_1s
    );
    println!(
        "   {:<38} {:>12.2}   min {:.1} / p50 {:.1} / p95 {:.1} / max {:.1}",
        "gap between accepted arrivals (ms)",
        d.mean_gap_ms,
        d.gap_ms.min,
        d.gap_ms.p50,
        d.gap_ms.p95,
        d.gap_ms.max
    );
    println!(
        "   {:<38} {:>12}   other: {:?}",
        "caller answers (200)", s.answers.ok_200, s.answers.other
    );
    if let Some(h) = &s.held_ms {
        println!(
            "   {:<38} {:>12}",
            "jitter actually added (ms)",
            format!("p50 {:.1} / max {:.1}", h.p50, h.max)
        );
    }
}

/// Prints scenario 3's table and verdicts.
pub fn print_fairness(f: &Fairness) {
    println!("\n== 3. Light-tenant wait during a flood");
    println!(
        "   tenant A: {} callers flooding; tenant B: 1 request / {} ms; {:.0} s; equal weights",
        f.flood_callers, f.light_every_ms, f.seconds
    );
    println!(
        "   {:<30} {:>6} {:>9} {:>9} {:>9}",
        "queue wait (ms)", "n", "p50", "p95", "max"
    );
    for (name, p) in [
        ("B (light)", &f.light_wait_ms),
        ("A (flood)", &f.flood_wait_ms),
    ] {
        println!(
            "   {:<30} {:>6} {:>9.0} {:>9.0} {:>9.0}",
            name, p.n, p.p50, p.p95, p.max
        );
    }
    println!(
        "   B p95 ≤ {TARGET_LIGHT_P95_MS:.0} ms: {}",
        measure::verdict(f.light_wait_ms.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   B answers: {} ok, other {:?}; A answers: {} ok, other {:?}",
        f.light_answers.ok_200,
        f.light_answers.other,
        f.flood_answers.ok_200,
        f.flood_answers.other
    );
    println!(
        "   CRM: utilisation {:.4}, 503s {}, most in any 1000 ms {}",
        f.delivered.utilisation, f.delivered.rejected_503, f.delivered.max_in_1s
    );
}
