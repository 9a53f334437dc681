//! Adaptation end to end, at default settings, against the simulator: a
//! lower real limit is found and kept under each limiter model the
//! simulator plays, noise does not lower the rate, an
//! outage is weathered within `retry.max_attempts` and callers' deadlines
//! and the rate comes back. Shortened versions of the benchmark's `adapt`
//! scenarios (benches/shaping/adapt.rs, where the timing targets live):
//! these check behaviour and counts, waiting for what they can observe
//! (the budget's phase in `/status`, arrivals at the CRM).
mod common;

use std::collections::HashMap;

use common::load::{flood, id_of, isolated_setup, not_ok, Call, Outcome, LOAD};
use common::{status_now, wait_until, Gate, ACME_CLIENT};
use crmgate::sim::{Class, LimiterKind, Received};

/// The general budget's phase and effective rate, from `/status`.
fn general(gate: &Gate) -> (String, f64) {
    let status = status_now(gate);
    let row = status["budgets"]
        .as_array()
        .and_then(|rows| rows.iter().find(|b| b["class"] == "general"))
        .cloned()
        .unwrap_or_default();
    (
        row["adaptation"].as_str().unwrap_or("?").to_string(),
        row["effective_rate"].as_f64().unwrap_or(f64::NAN),
    )
}

fn general_records(records: &[Received]) -> Vec<&Received> {
    records
        .iter()
        .filter(|r| r.class == Class::General)
        .collect()
}

/// Waits until the CRM has received `more` general arrivals after the first
/// `after` of them.
async fn wait_for_arrivals(sim: &crmgate::sim::Simulator, after: usize, more: usize) {
    wait_until(&format!("{more} more arrivals at the CRM"), || {
        general_records(&sim.records()).len() >= after + more
    })
    .await;
}

/// Every caller error is 503 JSON in RetailCRM's shape with a Retry-After.
fn assert_errors_are_503_json_with_retry_after(outcomes: &[Outcome]) {
    for o in outcomes.iter().filter(|o| o.status != 200) {
        assert_eq!(o.status, 503, "{o:?}");
        o.assert_gateway_error(503);
        assert!(o.retry_after.is_some(), "no Retry-After: {o:?}");
    }
}

/// Against a CRM that refuses by `kind` at 7 of its 10/s (another sender
/// uses 3): adaptation tests a lower rate, keeps it, and the 503s stop;
/// the callers never see one (retries absorb them).
async fn a_lower_real_limit_is_found_under(kind: LimiterKind) {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup("").await;
    sim.set_limits(7, 40);
    sim.set_limiter(kind);
    let load = flood(
        &gate.url,
        "limit",
        vec![Call::get("/api/v5/orders", Some(ACME_CLIENT)); 12],
    );
    wait_until("the budget to test a lower rate", || {
        general(&gate).0 == "testing"
    })
    .await;
    wait_until("the verdict that the rate was the cause", || {
        general(&gate).0 == "limited"
    })
    .await;
    let (_, rate) = general(&gate);
    let settled = general_records(&sim.records()).len();
    wait_for_arrivals(&sim, settled, 30).await;
    let records = sim.records();
    let outcomes = load.finish().await;
    let general = general_records(&records);
    let (before, after) = general.split_at(settled);
    let refused = |rs: &[&Received]| rs.iter().filter(|r| r.status == 503).count();
    println!(
        "{kind} at 7/s: {} arrivals ({} refused) until the verdict, then {} ({} refused); \
         rate {rate}; {} answers",
        before.len(),
        refused(before),
        after.len(),
        refused(after),
        outcomes.len()
    );
    assert_eq!(rate, 7.0, "{kind}: the test rate is kept");
    assert!(refused(before) > 0, "{kind}: the limit was never hit");
    // Once the rate dropped the 503s stopped: the window's own arrivals at
    // the verdict may still be answered, a probe above the good rate may
    // cost one or two.
    assert!(
        refused(&after[..30]) <= 2,
        "{kind}: {} of 30 refused after the verdict",
        refused(&after[..30])
    );
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{kind}: caller errors: {:?}",
        not_ok(&outcomes, 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_real_limit_is_found_under_a_strict_window() {
    a_lower_real_limit_is_found_under(LimiterKind::Strict).await;
}

/// The case that needed a test where a share of refusals used to be
/// called noise: refused arrivals are not counted, so only 3 in 10 are.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_real_limit_is_found_under_a_lenient_window() {
    a_lower_real_limit_is_found_under(LimiterKind::Lenient).await;
}

/// nginx `limit_req` with a small burst (without one, two arrivals closer
/// than 1/7 s are refused, and loopback jitter on a loaded machine would
/// make the count after the verdict a matter of luck).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_real_limit_is_found_under_a_leaky_bucket() {
    a_lower_real_limit_is_found_under(LimiterKind::Leaky { burst: 2 }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lower_real_limit_is_found_under_fixed_windows() {
    a_lower_real_limit_is_found_under(LimiterKind::Fixed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_constant_share_of_503s_does_not_lower_the_rate() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup("").await;
    // 3 of every 10 requests refused, whatever the rate: noise.
    sim.faults().set_share_503(3, 10);
    let load = flood(
        &gate.url,
        "noise",
        vec![Call::get("/api/v5/orders", Some(ACME_CLIENT)); 12],
    );
    // Watch the budget while 80 requests reach the CRM.
    let mut phases: Vec<(String, f64)> = Vec::new();
    wait_until("80 arrivals at the CRM", || {
        let now = general(&gate);
        if phases.last() != Some(&now) {
            phases.push(now);
        }
        general_records(&sim.records()).len() >= 80
    })
    .await;
    let last = general(&gate);
    sim.faults().clear();
    let outcomes = load.finish().await;
    let records = sim.records();
    let refused = general_records(&records)
        .iter()
        .filter(|r| r.status == 503)
        .count();
    println!(
        "noise: phases {phases:?}; {} arrivals, {refused} refused; {} answers",
        general_records(&records).len(),
        outcomes.len()
    );
    assert!(refused >= 20, "the noise was not there: {refused} refused");
    // The 503s were weighed, and never taken for a lower limit: a window's
    // share (3 in 10) can never pass for a rate the CRM refuses.
    assert!(phases.iter().any(|(p, _)| p == "observing"), "{phases:?}");
    assert!(phases.iter().all(|(p, _)| p != "limited"), "{phases:?}");
    assert!(
        phases
            .iter()
            .all(|(p, rate)| p == "testing" || *rate == 10.0),
        "{phases:?}"
    );
    assert!(last.1 == 10.0 && last.0 != "limited", "{last:?}");
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "caller errors: {:?}",
        not_ok(&outcomes, 200)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_weathered_within_max_attempts_and_deadlines() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup("").await;
    let max_attempts = gate.gateway.snapshot().config.retry.max_attempts.get();
    // Half the callers give up after 3 s: during the outage their deadline
    // passes before their attempts run out.
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let mut calls = vec![get.clone(); 6];
    calls.extend(vec![get.header("X-Crmgate-Max-Wait", "3s"); 6]);
    let load = flood(&gate.url, "outage", calls);
    wait_for_arrivals(&sim, 0, 10).await;
    // Everything refused, at any rate, for a (scaled) outage: three times
    // the window of the test and its sample.
    sim.faults().set_random_503(1.0);
    let from = general_records(&sim.records()).len();
    wait_for_arrivals(&sim, from, 40).await;
    sim.faults().clear();
    let ended = general_records(&sim.records()).len();
    wait_until("the full rate again", || {
        general(&gate) == ("free".into(), 10.0)
    })
    .await;
    wait_for_arrivals(&sim, ended, 20).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let general = general_records(&records);

    let mut sends: HashMap<&str, u32> = HashMap::new();
    for r in &general {
        *sends.entry(id_of(r)).or_default() += 1;
    }
    let most = sends.values().copied().max().unwrap_or(0);
    let deadline_503 = outcomes
        .iter()
        .filter(|o| o.status == 503 && o.attempts.unwrap_or(0) < max_attempts)
        .count();
    let after_ok = general[ended..].iter().filter(|r| r.status != 503).count();
    println!(
        "outage: {} arrivals ({} in the outage); most sends for one request {most}; \
         {} answers, {} 503 ({deadline_503} at the deadline); {after_ok} accepted after it",
        general.len(),
        ended - from,
        outcomes.len(),
        outcomes.iter().filter(|o| o.status == 503).count()
    );
    assert!(most <= max_attempts, "a request was sent {most} times");
    for o in &outcomes {
        assert!(o.attempts.unwrap_or(0) <= max_attempts, "{o:?}");
    }
    assert!(
        deadline_503 > 0,
        "no caller's deadline passed in the outage"
    );
    assert_errors_are_503_json_with_retry_after(&outcomes);
    assert!(after_ok >= 20, "only {after_ok} accepted after the outage");
}
