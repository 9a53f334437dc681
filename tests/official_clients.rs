//! The official RetailCRM Python client (`pip install retailcrm`) works
//! through crmgate unchanged, with the gateway URL as its base URL, and with
//! the tenant prefix in it. Runs the interpreter in `CRMGATE_PYTHON` (a
//! virtualenv's, in CI), else `python3`; skips loudly when it cannot import
//! `retailcrm`, and fails instead under CRMGATE_REQUIRE_ALL=1 or
//! CRMGATE_REQUIRE_PYCLIENT=1 (tests/common/require.rs).
mod common;

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_unchanged() {
    if !python_client("official_clients::the_python_client_works_unchanged") {
        return;
    }
    let (sim, gate) = setup("").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_retailcrm.py"
    );
    for base in [gate.url.clone(), format!("{}/acme", gate.url)] {
        let out = tokio::process::Command::new(python())
            .args([script, &base, ACME_CLIENT])
            .output()
            .await
            .expect("the Python interpreter runs");
        assert!(
            out.status.success(),
            "{base}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The CRM saw only the real key, never the client's.
    let records = sim.records();
    assert!(records.len() >= 6, "{}", records.len());
    assert!(records
        .iter()
        .all(|r| r.api_key.as_deref() == Some(ACME_KEY)));
    assert_eq!(sim.orders_created("acme").len(), 2);
}

#[tokio::test]
async fn the_official_clients_request_shapes_work() {
    let (sim, gate) = start("").await;
    let c = client();
    let order = |ext: &str| format!(r#"{{"externalId":"{ext}","firstName":"Ivan"}}"#);
    let port_base = gate.url.clone();
    let prefixed_base = format!("{}/acme", gate.url);

    // Python retailcrm / PHP v6: header key, plain or prefixed base URL.
    for (i, base) in [&port_base, &prefixed_base].into_iter().enumerate() {
        let resp = c
            .get(format!("{base}/api/v5/orders"))
            .query(&[("limit", "20"), ("page", "2")])
            .header("X-API-KEY", ACME_CLIENT)
            .header("User-Agent", "python-requests/2.31.0")
            .header("Accept", "*/*")
            .header("Connection", "keep-alive")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{base}");
        assert_eq!(json(resp).await["pagination"]["currentPage"], 2);
        let resp = c
            .post(format!("{base}/api/v5/orders/create"))
            .header("X-API-KEY", ACME_CLIENT)
            .form(&[
                ("order", order(&format!("py-{i}"))),
                ("site", "main".into()),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{base}");
        assert_eq!(json(resp).await["order"]["externalId"], format!("py-{i}"));
    }
    // Legacy PHP v5 / .NET: apiKey in the query for GET, in the form for POST.
    for (i, base) in [&port_base, &prefixed_base].into_iter().enumerate() {
        let resp = c
            .get(format!("{base}/api/v5/orders"))
            .query(&[("apiKey", ACME_CLIENT2), ("limit", "20")])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{base}");
        let resp = c
            .post(format!("{base}/api/v5/orders/create"))
            .form(&[
                ("apiKey", ACME_CLIENT2.to_string()),
                ("order", order(&format!("legacy-{i}"))),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 201, "{base}");
    }

    let recs = sim.records();
    assert_eq!(recs.len(), 8);
    assert!(recs.iter().all(|r| r.api_key.as_deref() == Some(ACME_KEY)));
    assert!(recs.iter().all(|r| r.path.starts_with("/api/v5/orders")));
    assert_no_client_key(&recs);
    let created: Vec<_> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["externalId"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(created, ["py-0", "py-1", "legacy-0", "legacy-1"]);
}
