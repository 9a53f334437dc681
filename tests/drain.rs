//! The accept window of a drain (`server.drain_accept`): after SIGTERM the
//! gateway is not ready at once, but still accepts and serves new
//! requests, each answered with `Connection: close`; then it closes its
//! listener and finishes what it holds.

mod common;

use std::time::Duration;

use common::*;

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
