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
