//! RetailCRM's PHP world through crmgate unchanged: a PHP script of ours
//! (`tests/clients/php_client.php`) sends exactly what api-client-php 5.x
//! and the Bitrix and WooCommerce modules send — curl with an array in
//! `CURLOPT_POSTFIELDS` (multipart), `apiKey` among the POST fields and in
//! the GET query, verification off — over HTTP and over HTTPS
//! (`server.tls_listen`). Every answer is checked, the order exists once,
//! and the CRM never saw a client key. Skips loudly without php-cli and
//! php-curl, unless required (tests/common/require.rs).
mod common;

use common::*;
use serde_json::Value;

/// Runs the script against `base` with `key` and `ext`; its answers by call.
async fn run_script(base: &str, ext: &str) -> Vec<(String, u16, Value)> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients/php_client.php");
    let out = tokio::process::Command::new("php")
        .args([script, base, ACME_CLIENT, ext])
        .output()
        .await
        .expect("php runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{base}: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}"));
            let status = v["status"].as_u64().unwrap() as u16;
            (
                v["call"].as_str().unwrap().to_string(),
                status,
                v["body"].clone(),
            )
        })
        .collect()
}

/// The answers of one run, each as api-client-php's caller would check it.
fn check_answers(base: &str, ext: &str, answers: &[(String, u16, Value)]) {
    let one = |call: &str| {
        let found: Vec<_> = answers.iter().filter(|(c, _, _)| c == call).collect();
        assert_eq!(found.len(), 1, "{base} {call}: {answers:?}");
        let (_, status, body) = found[0];
        (*status, body.clone())
    };
    let (status, body) = one("orders/create");
    assert_eq!(
        (status, &body["success"]),
        (201, &Value::Bool(true)),
        "{base}: {body}"
    );
    let (status, body) = one("orders/edit");
    assert_eq!(status, 200, "{base}: {body}");
    assert_eq!(body["order"]["firstName"], "Pyotr", "{base}: {body}");
    let (status, body) = one("orders/get");
    assert_eq!(status, 200, "{base}: {body}");
    assert_eq!(body["order"]["externalId"], ext);
    assert_eq!(body["order"]["firstName"], "Pyotr", "the edit took");
    assert_eq!(
        body["order"]["items"][0]["productName"],
        "Tea; \"green\" & black"
    );
    let (status, body) = one("orders/upload");
    assert_eq!(status, 201, "{base}: {body}");
    assert_eq!(
        body["uploadedOrders"].as_array().map(Vec::len),
        Some(3),
        "{body}"
    );
    let (status, body) = one("customers/create");
    assert_eq!(
        (status, &body["success"]),
        (201, &Value::Bool(true)),
        "{base}: {body}"
    );
    let (status, body) = one("telephony/call/event");
    assert_eq!(
        (status, &body["success"]),
        (200, &Value::Bool(true)),
        "{base}: {body}"
    );
    // The orders list, page by page, to the last page.
    let pages: Vec<_> = answers
        .iter()
        .filter(|(c, _, _)| c == "orders/list")
        .collect();
    let total_pages = pages[0].2["pagination"]["totalPageCount"].as_u64().unwrap();
    assert!(total_pages >= 3, "{}", pages[0].2);
    assert_eq!(pages.len() as u64, total_pages, "{base}");
    let mut seen = 0;
    for (n, (_, status, body)) in pages.iter().enumerate() {
        assert_eq!(*status, 200, "{base} page {}: {body}", n + 1);
        assert_eq!(body["pagination"]["currentPage"], n as u64 + 1);
        seen += body["orders"].as_array().unwrap().len() as u64;
    }
    assert_eq!(
        seen,
        pages[0].2["pagination"]["totalCount"].as_u64().unwrap()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_php_clients_pattern_works_over_http_and_https() {
    if !runs(
        Program::Php,
        "php",
        &["-r", "exit(function_exists('curl_init') ? 0 : 1);"],
        &test_name(),
    ) {
        return;
    }
    let extra = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
                 tls_listen = \"127.0.0.1:0\"\n";
    let (sim, gate) = setup_with_orders(50, extra).await;
    let https = format!("https://127.0.0.1:{}", gate.tls.unwrap().port());
    for (base, ext) in [
        (gate.url.as_str(), "php-http-1"),
        (https.as_str(), "php-https-1"),
    ] {
        let answers = run_script(base, ext).await;
        check_answers(base, ext, &answers);
    }

    let records = sim.records();
    // What the CRM saw: the real key only, and multipart POSTs (so the
    // script sent what the PHP modules send).
    assert_no_client_key(&records);
    assert!(records
        .iter()
        .all(|r| r.api_key.as_deref() == Some(ACME_KEY)));
    let posts: Vec<_> = records.iter().filter(|r| r.method == "POST").collect();
    assert_eq!(posts.len(), 2 * 5, "{posts:?}");
    for r in &posts {
        let ct = r.header("content-type").unwrap_or_default();
        assert!(ct.starts_with("multipart/form-data; boundary="), "{ct}");
        assert!(r.form.iter().any(|(k, _)| k == "site"), "site added: {r:?}");
    }
    // Each order exists once.
    let created = sim.orders_created("acme");
    for ext in ["php-http-1", "php-https-1"] {
        let n = created.iter().filter(|o| o["externalId"] == ext).count();
        assert_eq!(n, 1, "{ext}");
    }
}
