//! The official RetailCRM Python client (`pip install retailcrm`) works
//! through crmgate unchanged, with the gateway URL as its base URL, and with
//! the tenant prefix in it. Skips loudly when the package is missing, unless
//! CRMGATE_REQUIRE_PYCLIENT=1 (CI installs it and sets that).
mod common;

use std::process::Command;

use common::*;

fn python_client_available() -> bool {
    let found = Command::new("python3")
        .args(["-c", "import retailcrm"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !found {
        assert!(
            std::env::var("CRMGATE_REQUIRE_PYCLIENT").as_deref() != Ok("1"),
            "CRMGATE_REQUIRE_PYCLIENT=1 but the retailcrm Python package is not installed"
        );
        eprintln!("\n!!!!! SKIPPED: the retailcrm Python package is not installed (pip install retailcrm) !!!!!\n");
    }
    found
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_client_works_unchanged() {
    if !python_client_available() {
        return;
    }
    let (sim, gate) = setup("").await;
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/python_retailcrm.py"
    );
    for base in [gate.url.clone(), format!("{}/acme", gate.url)] {
        let out = tokio::process::Command::new("python3")
            .args([script, &base, ACME_CLIENT])
            .output()
            .await
            .expect("python3 runs");
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
