//! Scenarios 1–3: real sockets, a real gateway, the strict simulator.

use std::time::Duration;

use serde::Serialize;

use crate::harness::{self, Gate, JitterHop, Load, ACME_CLIENT};
use crate::measure::{self, Answers, Delivered, Percentiles};

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
