//! Worker runtimes: connections spread over `server.worker_threads`
//! runtimes still share one scheduler, so the CRM sees one budget, counted
//! at the simulator (arrivals per window), never by timing; and each new
//! connection goes to the worker with the fewest open ones, read from the
//! gateway's own per-worker gauge.
mod common;

use std::net::IpAddr;
use std::time::Duration;

use common::*;
use crmgate::sim::Class;
use tokio::net::TcpStream;

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

/// Open API connections on workers 0 and 1, as the gateway counts them.
async fn worker_connections(admin: &str) -> (u32, u32) {
    let text = metrics_text(admin).await;
    let open = |worker| {
        metric(&text, "crmgate_worker_connections", &[("worker", worker)]).unwrap_or(0.0) as u32
    };
    (open("0"), open("1"))
}

/// Waits until the gateway counts `total` open connections over both
/// workers, and returns the split.
async fn split_at(admin: &str, total: u32) -> (u32, u32) {
    wait_for(&format!("{total} open connections"), || async move {
        let split = worker_connections(admin).await;
        (split.0 + split.1 == total).then_some(split)
    })
    .await
}

/// A few long-lived keep-alive connections (a benchmark's `-c8`, one
/// PHP-FPM pool's children) split evenly over 2 workers, whatever their
/// ports; closing connections frees their worker's count, and the next
/// connections go to the worker that has fewer. With one `SO_REUSEPORT`
/// socket per worker the kernel chose by a hash of the ports: 4/4 in 15 of
/// 50 trials.
#[tokio::test]
async fn keep_alive_connections_split_evenly_and_closing_frees_their_worker() {
    let (_sim, gate) = setup(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         worker_threads = 2\n",
    )
    .await;
    let admin = gate.admin.as_str();
    assert_eq!(worker_connections(admin).await, (0, 0));
    // One at a time, each counted before the next: which worker's count
    // went up tells where each connection is.
    let mut conns: Vec<(TcpStream, usize)> = Vec::new();
    let mut split = (0, 0);
    for n in 1..=9u32 {
        let stream = TcpStream::connect(gate.addr).await.unwrap();
        let now = split_at(admin, n).await;
        conns.push((stream, if now.0 > split.0 { 0 } else { 1 }));
        split = now;
        if n == 8 {
            assert_eq!(split, (4, 4), "8 connections over 2 workers");
        }
    }
    assert!(
        split == (5, 4) || split == (4, 5),
        "9 connections: {split:?}"
    );
    let fuller = usize::from(split.1 == 5);

    // Closing three of the fuller worker's connections frees its count...
    let mut closed = 0;
    conns.retain(|(_, w)| {
        let close = *w == fuller && closed < 3;
        closed += usize::from(close);
        !close
    });
    let three_closed = if fuller == 0 { (2, 4) } else { (4, 2) };
    assert_eq!(split_at(admin, 6).await, three_closed, "3 closed");
    // ...and the next two connections both go there.
    for _ in 0..2 {
        conns.push((TcpStream::connect(gate.addr).await.unwrap(), fuller));
    }
    assert_eq!(split_at(admin, 8).await, (4, 4), "2 new ones");

    drop(conns);
    assert_eq!(split_at(admin, 0).await, (0, 0), "every count freed");
}

/// Each worker sends on its own outbound pool: a connection to the CRM is
/// driven by one worker's runtime and only that worker's requests use it,
/// so a send never wakes another thread. Two callers on two keep-alive
/// connections (one per worker), taking turns: a pool shared by the
/// workers would serve all four sends on the one connection the first
/// send opened; per-worker pools open one each and reuse it.
#[tokio::test]
async fn each_worker_sends_on_its_own_upstream_connections() {
    let (sim, gate) = setup(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         worker_threads = 2\n[upstream]\nwarm_connections = false\n",
    )
    .await;
    let admin = gate.admin.as_str();
    // One client each: each keeps its own connection to the gateway.
    let callers = [client(), client()];
    for round in 0..2 {
        for (i, caller) in callers.iter().enumerate() {
            let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
                .send(caller, &gate.url, &format!("turn-{round}-{i}"))
                .await;
            assert_eq!(o.status, 200, "{o:?}");
        }
    }
    assert_eq!(sim.records().len(), 4);
    assert_eq!(worker_connections(admin).await, (1, 1), "one caller each");
    let opened = metric_now(
        admin,
        "crmgate_upstream_connections_total",
        &[("egress", "default")],
    )
    .await;
    assert_eq!(opened, 2.0, "one upstream connection per worker, reused");
}
