//! Fault injection, latency and graceful shutdown.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::Value;
use tokio::time::Instant;

use super::*;

#[tokio::test]
async fn reset_after_processing_stores_the_order_but_never_answers() {
    let (sim, c) = start(roomy()).await;
    sim.faults().reset_after_processing_next(1);
    let res = c
        .post(format!("{}/api/v5/orders/create", sim.base_url()))
        .header("X-API-KEY", KEY)
        .form(&[("order", r#"{"externalId":"once"}"#)])
        .send()
        .await;
    assert!(res.is_err(), "expected a connection error, got {res:?}");
    assert_eq!(sim.orders_created("demo").len(), 1);
    assert_eq!(sim.records()[0].status, 0);

    // Resetting before processing stores nothing.
    sim.faults().reset_before_processing_next(1);
    let res = client_from(None)
        .post(format!("{}/api/v5/orders/create", sim.base_url()))
        .header("X-API-KEY", KEY)
        .form(&[("order", r#"{"externalId":"twice"}"#)])
        .send()
        .await;
    assert!(res.is_err());
    assert_eq!(sim.orders_created("demo").len(), 1);

    // The server itself is fine afterwards.
    let ok = get(&client_from(None), &sim, "/api/api-versions").await;
    assert_eq!(ok.status(), StatusCode::OK);
}

#[tokio::test]
async fn fail_garbage_stall_random_and_latency_faults() {
    let (sim, c) = start(roomy()).await;
    let path = "/api/v5/orders/create";
    sim.faults().fail_next(1, Some("2".into()));
    let resp = post_form(&c, &sim, path, &[("order", r#"{"externalId":"x"}"#)]).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["retry-after"], "2");
    assert!(
        sim.orders_created("demo").is_empty(),
        "a failed request is not processed"
    );

    sim.faults().garbage_next(1);
    let resp = get(&c, &sim, "/api/v5/orders").await;
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.bytes().await.unwrap();
    assert!(serde_json::from_slice::<Value>(&bytes).is_err());

    sim.faults().stall_next(1, Duration::from_millis(150));
    let started = Instant::now();
    assert_eq!(
        get(&c, &sim, "/api/api-versions").await.status(),
        StatusCode::OK
    );
    assert!(started.elapsed() >= Duration::from_millis(150));

    sim.faults().set_random_503(1.0);
    assert_eq!(get(&c, &sim, "/api/api-versions").await.status(), 503);
    sim.faults().clear();
    assert_eq!(get(&c, &sim, "/api/api-versions").await.status(), 200);

    sim.set_latency(Duration::from_millis(60), Duration::from_millis(60));
    let started = Instant::now();
    assert_eq!(get(&c, &sim, "/api/api-versions").await.status(), 200);
    assert!(started.elapsed() >= Duration::from_millis(60));

    let statuses: Vec<u16> = sim.records().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![503, 200, 200, 503, 200, 200]);
    sim.clear_records();
    assert!(sim.records().is_empty());
}

#[tokio::test]
async fn serve_stops_when_shutdown_resolves() {
    let listener = tokio::net::TcpListener::bind(any_port()).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let sim = Simulator::new(roomy());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(sim.clone().serve(listener, async {
        let _ = stopped.await;
    }));
    let c = client_from(None);
    assert_eq!(get(&c, &sim, "/api/api-versions").await.status(), 200);
    assert_eq!(sim.addr(), addr);

    stop.send(()).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(3), server).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "{done:?}");
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}
