//! The harness itself works: a GET through the gateway reaches the simulator.
mod common;

use common::*;

#[tokio::test]
async fn a_get_reaches_the_simulator_with_the_real_key() {
    let (sim, gate) = setup("").await;
    let resp = client()
        .get(format!("{}/api/v5/orders?limit=20", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(body["pagination"]["totalPageCount"], 12);
    let records = sim.records();
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].api_key.as_deref(), Some(ACME_KEY));
}
