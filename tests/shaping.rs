//! Rate shaping end to end: the budgets per class and per egress IP, and
//! connection setup reported to the scheduler, measured at the strict
//! simulated CRM over real loopback sockets. The fair queue and its
//! deadlines are in tests/queueing.rs, retries in tests/retries.rs.
//!
//! Load tests assert counts taken from the simulator's records (per-window
//! maxima, deliveries within a span of simulator time), never how long the
//! test itself took; the only timings asserted are lower bounds on a delay
//! and generous upper bounds on a wait that a FIFO would miss by seconds.
//! Floods hold [`common::LOAD`] so that two of them never share the two cores and
//! add scheduling jitter to each other's measurements.
mod common;

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use common::*;
use crmgate::sim::{Class, Received};

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturating_callers_never_trip_the_crm_limit() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let calls = (0..30)
        .map(|i| match i % 4 {
            0 => Call::get("/api/v5/orders", Some(ACME_CLIENT)),
            1 => Call::get("/api/v5/orders?page=2", Some(ACME_CLIENT2)),
            2 => Call::get("/api/v5/reference/sites", Some(BETA_CLIENT)),
            _ => Call::get("/open/api/v5/orders", None),
        })
        .collect();
    let load = flood(&gate.url, "sat", calls);
    // The measurement window: two seconds of the CRM's arrivals at full
    // saturation (two full windows for the per-window bound), and the
    // 29 requests still queued when the callers stop drain for three more.
    wait_for_arrivals_spanning(&sim, Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    println!(
        "saturation: {} requests, {:.2}/s at the CRM, per-window max {windows:?}",
        records.len(),
        arrival_rate(&records)
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    // One send per client request: nothing was retried.
    assert_eq!(records.len(), outcomes.len());
    assert!(outcomes.iter().all(|o| o.attempts == Some(1)));
    for (key, n) in &windows {
        assert!(*n <= 10, "{key:?}: {n} arrivals in one second");
    }
    // The budget was used (9 fit in a window at this pacing), so the bound
    // above means something.
    assert!(windows[&(LOOPBACK, Class::General)] >= 8, "{windows:?}");
    assert!(records.len() >= 40, "only {} delivered", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephony_has_its_own_budget() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let mut calls: Vec<Call> = (0..12)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    calls.extend((0..50).map(|i| Call::telephony([ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT][i % 3])));
    let load = flood(&gate.url, "mix", calls);
    // The measurement window: one second of the CRM's arrivals holds one
    // full telephony window; the ~60 requests queued when the callers stop
    // keep both budgets saturated for about another second as they drain.
    wait_for_arrivals_spanning(&sim, Duration::from_secs(1)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    let telephony: Vec<Received> = records
        .iter()
        .filter(|r| r.class == Class::Telephony)
        .cloned()
        .collect();
    println!(
        "telephony: {} telephony at {:.1}/s, {} general; per-window max {windows:?}",
        telephony.len(),
        arrival_rate(&telephony),
        records.len() - telephony.len()
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    let tel = windows[&(LOOPBACK, Class::Telephony)];
    let gen = windows[&(LOOPBACK, Class::General)];
    assert!(tel <= 40, "{tel} telephony requests in one second");
    assert!(tel > 10, "telephony was held to the general rate ({tel}/s)");
    assert!(gen <= 10, "{gen} general requests in one second");
}

/// Floods until the simulator's arrivals span `span` and returns what it
/// received meanwhile (every arrival within `span` of the first one).
async fn flood_records(extra: &str, callers: usize, span: Duration) -> Vec<Received> {
    let (sim, gate, _sim_thread) = isolated_setup(extra).await;
    let calls = (0..callers)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    let load = flood(&gate.url, "egress", calls);
    wait_for_arrivals_spanning(&sim, span).await;
    let records = sim.records();
    drop(load);
    records
}

/// Arrivals within `span` of the first one, by source IP.
fn delivered_within(records: &[Received], span: Duration) -> HashMap<IpAddr, usize> {
    let t0 = records.iter().map(|r| r.at).min().expect("some arrivals");
    let mut by_ip = HashMap::new();
    for r in records.iter().filter(|r| r.at < t0 + span) {
        *by_ip.entry(r.source_ip).or_default() += 1;
    }
    by_ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_egress_ips_double_the_delivered_rate() {
    let _load = LOAD.lock().await;
    let span = Duration::from_secs(2);
    let one = flood_records(LIMITS, 40, span).await;
    let egress = "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]";
    let two = flood_records(&format!("{LIMITS}{egress}"), 40, span).await;
    let (one_by_ip, two_by_ip) = (delivered_within(&one, span), delivered_within(&two, span));
    let (n1, n2) = (
        one_by_ip.values().sum::<usize>(),
        two_by_ip.values().sum::<usize>(),
    );
    println!(
        "egress: one IP {n1} in 2 s {one_by_ip:?}, two IPs {n2} in 2 s {two_by_ip:?}; \
         per-window max {:?}",
        per_window(&two)
    );

    assert_no_503(&one);
    assert_no_503(&two);
    for (key, n) in per_window(&one).into_iter().chain(per_window(&two)) {
        assert!(n <= 10, "{key:?}: {n} arrivals in one second");
    }
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    assert_eq!(two_by_ip.len(), 2, "{two_by_ip:?}");
    assert!(two_by_ip[&a] >= 15 && two_by_ip[&b] >= 15, "{two_by_ip:?}");
    assert!(n1 >= 15, "a single IP delivered only {n1} in 2 s");
    let ratio = n2 as f64 / n1 as f64;
    assert!(
        ratio >= 1.7,
        "two IPs delivered {n2}, one {n1}: ratio {ratio:.2}"
    );
}

/// Connection set-up is reported to the scheduler: without that report a
/// cold connection (TCP and TLS handshakes, ~100 ms to the real CRM) would
/// delay the first send of a burst past the jitter allowance. The budget's
/// handling of the report is unit-tested with paused time
/// (`scheduler::tests::sends_behind_a_slow_connect_count_from_when_it_opened`);
/// this checks the wiring through reqwest's connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_setup_is_reported_to_the_scheduler() {
    let _load = LOAD.lock().await;
    // Without warm connections, so that the first request connects itself.
    let (_sim, gate) = setup("[upstream]\nwarm_connections = false\n").await;
    let c = client();
    for n in 0..3 {
        let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .send(&c, &gate.url, &format!("conn-{n}"))
            .await;
        assert_eq!(o.status, 200, "{o:?}");
    }
    let metrics = metrics_text(&gate.admin).await;
    let opened = metric(
        &metrics,
        "crmgate_upstream_connections_total",
        &[("egress", "default")],
    )
    .expect("connection counter present");
    // Sequential requests reuse one pooled connection.
    assert_eq!(opened, 1.0, "{metrics}");
}
