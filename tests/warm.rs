//! Warm connections: each worker's egress opens one connection per CRM
//! origin ahead of need, and the first request uses it instead of
//! connecting while its slot runs; a worker whose own is in use takes
//! another worker's. Counted, never timed: the warm counter rises with no
//! request at the simulator, and the first request opens no connection of
//! its own (`crmgate_upstream_connections_total` counts only those).
mod common;

use common::*;

/// Waits until `name`{egress=default} reaches `at_least` (the keeper runs in
/// the background), for at most 10 s.
async fn wait_for_metric(gate: &Gate, name: &str, at_least: f64) -> f64 {
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let v = metric_now(&gate.admin, name, &[("egress", "default")]).await;
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

const WARM: &str = "crmgate_upstream_warm_connections_total";
/// Two workers, each with its own pool and so its own warm connection.
const TWO_WORKERS: &str = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                           worker_threads = 2\n";
const ON_DEMAND: &str = "crmgate_upstream_connections_total";

/// Sends one GET and checks it was answered.
async fn one_get(gate: &Gate, id: &str) {
    let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&client(), &gate.url, id)
        .await;
    assert_eq!(o.status, 200, "{o:?}");
}

#[tokio::test]
async fn the_first_request_finds_a_warm_connection() {
    let (sim, gate) = setup(TWO_WORKERS).await;
    // Opened with no request in sight, one per worker: a connect, not a
    // request.
    assert!(wait_for_metric(&gate, WARM, 2.0).await >= 2.0);
    assert!(sim.records().is_empty(), "{:?}", sim.records());
    one_get(&gate, "warm-1").await;
    assert_eq!(sim.records().len(), 1);
    // The request took the spare: it opened nothing while it waited.
    assert_eq!(
        metric_now(&gate.admin, ON_DEMAND, &[("egress", "default")]).await,
        0.0
    );
    // The keeper replaces a spare that was taken.
    assert!(wait_for_metric(&gate, WARM, 3.0).await >= 3.0);
}

#[tokio::test]
async fn a_warm_tls_connection_serves_the_first_request() {
    let (sim, gate) = tls_setup(tls_sim_config(false), TWO_WORKERS).await;
    assert!(wait_for_metric(&gate, WARM, 2.0).await >= 2.0);
    assert!(sim.records().is_empty());
    one_get(&gate, "warm-tls").await;
    assert_eq!(sim.records().len(), 1);
    assert_eq!(
        metric_now(&gate.admin, ON_DEMAND, &[("egress", "default")]).await,
        0.0
    );
}

#[tokio::test]
async fn warm_connections_can_be_switched_off() {
    let (sim, gate) = setup("[upstream]\nwarm_connections = false\n").await;
    one_get(&gate, "cold").await;
    assert_eq!(sim.records().len(), 1);
    // The request connected itself; nothing was opened ahead of it.
    assert_eq!(
        metric_now(&gate.admin, ON_DEMAND, &[("egress", "default")]).await,
        1.0
    );
    assert_eq!(
        metric_now(&gate.admin, WARM, &[("egress", "default")]).await,
        0.0
    );
}

/// Sends `GET /api/v5/orders` on `stream` (HTTP/1.1, keep-alive) and
/// returns the answer's status line.
async fn raw_get(stream: &mut tokio::net::TcpStream) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let head = format!(
        "GET /api/v5/orders HTTP/1.1\r\nHost: 127.0.0.1\r\nX-API-KEY: {ACME_CLIENT}\r\n\r\n"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The head is enough: the status line is all this test reads.
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await.unwrap();
        assert!(n > 0, "closed: {}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    String::from_utf8_lossy(&got)
        .lines()
        .next()
        .unwrap()
        .to_string()
}

/// A worker that needs a second connection while its own warm one is in
/// use, and its replacement still opening, takes the other worker's warm
/// connection instead of connecting inside a slot. The CRM's TLS handshake
/// takes 1 s here, so a replacement is not ready for the second request,
/// paced about 100 ms after the first.
#[tokio::test]
async fn a_worker_borrows_the_other_workers_warm_connection() {
    let cfg = crmgate::sim::SimConfig {
        handshake: std::time::Duration::from_secs(1),
        ..tls_sim_config(false)
    };
    let (sim, gate) = tls_setup(cfg, TWO_WORKERS).await;
    assert!(wait_for_metric(&gate, WARM, 2.0).await >= 2.0);
    // Connections go to the worker with the fewest, ties in turn: the
    // first and third land on one worker, the second (idle) on the other.
    let mut first = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let _idle = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    let mut third = tokio::net::TcpStream::connect(gate.addr).await.unwrap();
    // The first request holds its connection while the second is sent.
    sim.faults()
        .stall_next(1, std::time::Duration::from_millis(1500));
    let (a, b) = tokio::join!(raw_get(&mut first), async {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        raw_get(&mut third).await
    });
    assert!(a.contains(" 200 ") && b.contains(" 200 "), "{a} / {b}");
    assert_eq!(sim.records().len(), 2);
    assert_eq!(
        metric_now(&gate.admin, ON_DEMAND, &[("egress", "default")]).await,
        0.0,
        "both requests found a warm connection"
    );
}
