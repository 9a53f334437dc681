//! The batch guard against the simulator: each batch family at its limit
//! reaches the CRM, one item more is refused with RetailCRM-shaped 400
//! JSON before it spends a slot, and a 460 (an upload that partly
//! succeeded) is passed through and never resent.

mod common;

use common::*;
use serde_json::{json, Value};

/// `n` items for an upload, each with its own `externalId`.
fn items(tag: &str, n: usize) -> String {
    let list: Vec<Value> = (0..n)
        .map(|i| json!({"externalId": format!("{tag}-{i}"), "firstName": "Batch"}))
        .collect();
    Value::Array(list).to_string()
}

fn upload(method: &str, field: &str, body: &str) -> Call {
    Call::post(
        &format!("/api/v5/{method}"),
        Some(ACME_CLIENT),
        &[(field, body)],
    )
}

/// `orders/statuses` with `n` ids.
fn statuses(n: usize) -> Call {
    let mut q = form_urlencoded::Serializer::new(String::new());
    for i in 0..n {
        q.append_pair("ids[]", &(i + 1).to_string());
    }
    Call::get(
        &format!("/api/v5/orders/statuses?{}", q.finish()),
        Some(ACME_CLIENT),
    )
}

/// Builds a batch call with `n` items.
type MakeCall = Box<dyn Fn(usize) -> Call>;

#[tokio::test]
async fn every_batch_family_passes_at_its_limit_and_is_refused_above_it() {
    let (sim, gate) = setup("").await;
    let c = client();
    let cases: Vec<(&str, usize, MakeCall)> = vec![
        (
            "orders/upload",
            50,
            Box::new(|n| upload("orders/upload", "orders", &items("o", n))),
        ),
        (
            "customers/upload",
            50,
            Box::new(|n| upload("customers/upload", "customers", &items("c", n))),
        ),
        (
            "customers-corporate/upload",
            50,
            Box::new(|n| {
                upload(
                    "customers-corporate/upload",
                    "customersCorporate",
                    &items("k", n),
                )
            }),
        ),
        (
            "store/inventories/upload",
            250,
            Box::new(|n| upload("store/inventories/upload", "offers", &items("i", n))),
        ),
        (
            "store/prices/upload",
            250,
            Box::new(|n| upload("store/prices/upload", "prices", &items("p", n))),
        ),
        ("orders/statuses", 500, Box::new(statuses)),
    ];
    for (i, (method, limit, call)) in cases.iter().enumerate() {
        let over = format!("over-{i}");
        let o = call(limit + 1).send(&c, &gate.url, &over).await;
        o.assert_gateway_error(400);
        let msg = o.json()["errorMsg"].as_str().unwrap().to_string();
        assert!(
            msg.contains(method) && msg.contains(&format!("at most {limit}")),
            "{method}: {msg}"
        );
        assert_eq!(o.attempts, Some(0), "{method}: never sent: {o:?}");
        assert!(
            sim.records().iter().all(|r| id_of(r) != over),
            "{method}: an oversized batch reached the CRM"
        );

        let at = format!("at-{i}");
        let o = call(*limit).send(&c, &gate.url, &at).await;
        assert!(
            matches!(o.status, 200 | 201),
            "{method} at its limit: {o:?}"
        );
        assert_eq!(o.attempts, Some(1), "{o:?}");
    }
    let refused = metric_now(
        &gate.admin,
        "crmgate_rejections_total",
        &[("reason", "batch_too_large")],
    )
    .await;
    assert_eq!(refused, cases.len() as f64);
    assert_eq!(sim.orders_created("acme").len(), 50);
}

#[tokio::test]
async fn a_partly_successful_upload_is_passed_through_as_460_and_never_resent() {
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"\n").await;
    // seed-1 exists at the CRM already: that item fails, the other is taken.
    let body = json!([{"externalId": "seed-1"}, {"externalId": "fresh-1"}]).to_string();
    let o = upload("orders/upload", "orders", &body)
        .send(&client(), &gate.url, "partial")
        .await;
    assert_eq!(o.status, 460, "{o:?}");
    assert_eq!(o.attempts, Some(1), "{o:?}");
    let v = o.json();
    assert_eq!(v["uploadedOrders"].as_array().unwrap().len(), 1, "{v}");
    assert_eq!(v["failedOrders"][0]["externalId"], "seed-1", "{v}");
    let sent = sim
        .records()
        .iter()
        .filter(|r| id_of(r) == "partial")
        .count();
    assert_eq!(sent, 1, "a 460 is the CRM's answer, not a reason to resend");
    let fresh = sim.orders_created("acme");
    assert_eq!(
        fresh
            .iter()
            .filter(|o| o["externalId"] == "fresh-1")
            .count(),
        1
    );
    let retries = metric_now(&gate.admin, "crmgate_retries_total", &[]).await;
    assert_eq!(retries, 0.0);
}
