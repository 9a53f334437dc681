//! Graceful drain: every queued request is served within a generous grace,
//! a request waiting to retry still gets its slot, and what the grace
//! cannot serve gets a 503 JSON answer. The accept window
//! (`server.drain_accept`): after SIGTERM the gateway is not ready at once,
//! but still accepts and serves new requests, each answered with
//! `Connection: close`; then it closes its listener and finishes what it
//! holds.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[tokio::test]
async fn the_drain_window_accepts_new_requests_then_closes_the_listener() {
    let (sim, mut gate) = setup(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_grace = \"20s\"\ndrain_accept = \"2s\"\n",
    )
    .await;
    let url = format!("{}/api/v5/orders", gate.url);
    // A keep-alive connection from before the signal...
    let kept = client();
    let before = kept
        .get(&url)
        .header("x-api-key", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(before.status(), 200);
    assert!(before.headers().get("connection").is_none());

    let gw = gate.gateway.clone();
    let drain = gate.begin_shutdown();
    wait_until("shutdown began", || !gw.drain.is_ready()).await;
    let ready = client()
        .get(format!("{}/readyz", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 503, "not ready from the start of the drain");

    // ...and a new one, both served during the window, and told to close.
    for c in [&kept, &client()] {
        let resp = c
            .get(&url)
            .header("x-api-key", ACME_CLIENT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "accepted and queued during the window");
        assert_eq!(resp.headers()["connection"], "close");
        assert_eq!(json(resp).await["success"], true);
    }

    // Then the listener closes: a new connection is refused.
    let addr = gate.addr;
    let closed = poll_until(Duration::from_secs(20), || async move {
        tokio::net::TcpStream::connect(addr)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    assert!(closed.is_some(), "the listener never closed");
    let report = drain.await.unwrap();
    assert_eq!((report.cut_off, report.refused), (0, 0), "{report:?}");
    assert!(report.drained >= 2, "{report:?}");
    assert_eq!(sim.records().len(), 3, "all three reached the CRM once");
}

/// `[server]` with ephemeral ports, the given grace, no accept window (new
/// requests are refused at once, as these tests expect), and a slow general
/// budget.
fn drain_config(grace: &str) -> String {
    format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         shutdown_grace = \"{grace}\"\ndrain_accept = \"0s\"\n[limits]\ngeneral_per_second = 2\n"
    )
}

/// A request whose headers (with `Expect: 100-continue`) reached the handler
/// before shutdown, and whose body is sent later.
struct SlowPost {
    stream: TcpStream,
    body: String,
}

impl SlowPost {
    /// Sends the head and waits for `100 Continue`: the handler is running.
    async fn start(addr: std::net::SocketAddr) -> SlowPost {
        let body = format!("apiKey={ACME_CLIENT}&order=%7B%22externalId%22%3A%22late-1%22%7D");
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let head = format!(
            "POST /api/v5/orders/create HTTP/1.1\r\nHost: {addr}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\n\
             Content-Length: {}\r\nExpect: 100-continue\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).await.unwrap();
        let mut seen = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
            let n = tokio::time::timeout(Duration::from_secs(20), stream.read(&mut buf))
                .await
                .expect("100 Continue arrives")
                .unwrap();
            assert!(n > 0, "connection closed before 100 Continue");
            seen.extend_from_slice(&buf[..n]);
        }
        let seen = String::from_utf8_lossy(&seen);
        assert!(seen.starts_with("HTTP/1.1 100"), "{seen}");
        SlowPost { stream, body }
    }

    /// Sends the body; returns the status and the JSON body of the answer.
    async fn finish(mut self) -> (u16, Value) {
        self.stream.write_all(self.body.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), self.stream.read_to_end(&mut raw))
            .await
            .expect("an answer, not a hang")
            .unwrap();
        let raw = String::from_utf8_lossy(&raw);
        let (head, body) = raw.split_once("\r\n\r\n").expect("a full response");
        let code = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .expect("status line");
        let body = serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {raw}"));
        (code, body)
    }
}

#[tokio::test]
async fn drain_serves_every_queued_request_within_a_generous_grace() {
    let (sim, mut gate) = setup(&drain_config("10s")).await;
    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let tasks: Vec<_> = (0..6)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    let gw = gate.gateway.clone();
    wait_until("4 requests queued", || gw.scheduler.queued() >= 4).await;
    let late = SlowPost::start(gate.addr).await;

    // The queue only shrinks from here, so this is at most what is queued
    // when the drain begins.
    let queued = gw.scheduler.queued();
    let drain = gate.begin_shutdown();
    wait_until("shutdown began", || !gw.drain.is_ready()).await;

    // A request that arrives during the drain is refused with JSON...
    let (code, body) = late.finish().await;
    assert_eq!(
        (code, &body["success"]),
        (503, &Value::Bool(false)),
        "{body}"
    );
    // ...and a new connection is refused (or answered 503), never left hanging.
    let fresh = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
        .get(&url)
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await;
    match fresh {
        Err(e) => assert!(!e.is_timeout(), "a new request hung: {e}"),
        Ok(r) => {
            assert_eq!(r.status(), 503);
            assert_eq!(json(r).await["success"], false);
        }
    }

    for t in tasks {
        let (code, body) = t.await.unwrap().expect("no connection error");
        assert_eq!(code, 200, "{body}");
    }
    let report = drain.await.unwrap();
    assert_eq!(report.cut_off, 0, "{report:?}");
    assert!(
        queued >= 3 && report.drained >= queued as u64 && report.drained <= 6,
        "queued {queued} at shutdown, {report:?}"
    );
    // The six, and not the late request, reached the CRM.
    let records = sim.records();
    assert_eq!(records.len(), 6);
    assert!(records.iter().all(|r| r.status == 200 && r.method == "GET"));
}

// A retry asks the scheduler for a new slot; a request admitted before
// SIGTERM must still get one during the grace period.
#[tokio::test]
async fn drain_lets_a_request_waiting_to_retry_finish() {
    let (sim, mut gate) = setup(&drain_config("10s")).await;
    // The CRM refuses the first send and asks for a 1 s pause.
    sim.faults().fail_next(1, Some("1".into()));
    let task = spawn_get(
        &client(),
        format!("{}/api/v5/orders", gate.url),
        ACME_CLIENT,
    );
    wait_until("the first send was refused", || {
        sim.records().first().is_some_and(|r| r.status == 503)
    })
    .await;
    let drain = gate.begin_shutdown();

    let (code, body) = task.await.unwrap().expect("no connection error");
    assert_eq!(code, 200, "admitted before shutdown, so drained: {body}");
    assert_eq!(sim.records().len(), 2);
    let report = drain.await.unwrap();
    assert_eq!((report.drained, report.cut_off), (1, 0), "{report:?}");
}

#[tokio::test]
async fn drain_answers_503_json_to_what_the_grace_cannot_serve() {
    let (sim, mut gate) = setup(&drain_config("300ms")).await;
    let c = client();
    let url = format!("{}/api/v5/orders", gate.url);
    let tasks: Vec<_> = (0..8)
        .map(|_| spawn_get(&c, url.clone(), ACME_CLIENT))
        .collect();
    let gw = gate.gateway.clone();
    wait_until("6 requests queued", || gw.scheduler.queued() >= 6).await;
    let report = gate.begin_shutdown().await.unwrap();

    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (code, body) = t.await.unwrap().expect("an answer, not a connection error");
        match code {
            200 => ok += 1,
            503 => {
                let v: Value = serde_json::from_str(&body)
                    .unwrap_or_else(|e| panic!("not JSON ({e}): {body}"));
                assert_eq!(v["success"], false, "{v}");
                refused += 1;
            }
            other => panic!("unexpected status {other}: {body}"),
        }
    }
    assert!(refused >= 1, "the grace cannot serve 6 queued at 2/s");
    assert_eq!(report.cut_off, refused, "{report:?}");
    assert_eq!(ok + refused, 8);
    assert_eq!(
        sim.records().len() as u64,
        ok,
        "cut-off requests never reach the CRM"
    );
}
