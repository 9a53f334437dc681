//! Worker runtimes: connections spread over `server.worker_threads`
//! runtimes still share one scheduler, so the CRM sees one budget, counted
//! at the simulator (arrivals per window), never by timing.
mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use crmgate::sim::Class;

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// Two workers, callers on many connections: both workers accept some,
/// and the CRM never sees more than one budget's worth in a window (two
/// budgets would deliver up to 20).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_on_different_workers_share_one_budget() {
    let _load = LOAD.lock().await;
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                  worker_threads = 2\n[limits]\n";
    let (sim, gate, _sim_thread) = isolated_setup(server).await;
    // 24 callers at once: as many connections, spread by the kernel.
    let calls = (0..24)
        .map(|i| match i % 2 {
            0 => Call::get("/api/v5/orders", Some(ACME_CLIENT)),
            _ => Call::get("/api/v5/reference/sites", Some(BETA_CLIENT)),
        })
        .collect();
    let load = flood(&gate.url, "workers", calls);
    wait_for_arrivals_spanning(&sim, Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);

    let text = metrics_text(&gate.admin).await;
    let accepted = |worker: &str| {
        metric(
            &text,
            "crmgate_connections_accepted_total",
            &[("listener", "api"), ("worker", worker)],
        )
        .unwrap_or(0.0)
    };
    let (w0, w1) = (accepted("0"), accepted("1"));
    println!(
        "workers: connections {w0} + {w1}; {} requests at the CRM, per-window max {windows:?}",
        records.len()
    );
    assert!(
        w0 >= 1.0 && w1 >= 1.0,
        "one worker took every connection: {w0} + {w1}"
    );
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    assert_eq!(records.len(), outcomes.len());
    for (key, n) in &windows {
        assert!(*n <= 10, "{key:?}: {n} arrivals in one second");
    }
    // The budget was used, so the bound above means something.
    assert!(windows[&(LOOPBACK, Class::General)] >= 8, "{windows:?}");
}
