//! Multipart bodies from a real curl (`curl -F`, what PHP's curl makes of an
//! array in `CURLOPT_POSTFIELDS`) through a real gateway to the simulator,
//! which reads them as PHP does: key parts in any spelling are removed and
//! find the tenant, everything else arrives byte-exact, and
//! `Expect: 100-continue` is answered only when the body is wanted.
//! Skips loudly without curl, unless required (tests/common/require.rs).
mod common;

use common::*;
use crmgate::sim::Received;

/// Runs curl with `args` plus `-sS`; returns stdout.
async fn curl(args: &[&str]) -> String {
    let out = tokio::process::Command::new("curl")
        .arg("-sS")
        .args(args)
        .output()
        .await
        .expect("curl runs");
    assert!(
        out.status.success(),
        "curl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The one record of `path`.
fn record(sim: &crmgate::sim::Simulator, path: &str) -> Received {
    let mut found: Vec<_> = sim
        .records()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(found.len(), 1, "{path}: {found:?}");
    found.pop().unwrap()
}

/// The boundary of a recorded multipart request.
fn boundary_of(r: &Received) -> String {
    let ct = r.header("content-type").expect("content type");
    let b = ct.split("boundary=").nth(1).expect("boundary");
    b.to_string()
}

/// A part as curl 7.x writes it for `-F name=value` / `--form-string`.
fn text_part(b: &str, name: &str, value: &str) -> Vec<u8> {
    format!("--{b}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
        .into_bytes()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_curl_form_with_a_file_part_arrives_byte_exact_without_its_key() {
    if !runs(Program::Curl, "curl", &["--version"], &test_name()) {
        return;
    }
    let (sim, gate) = setup("").await;
    let dir = tempfile::tempdir().unwrap();
    let file: Vec<u8> = (0..4096u32).map(|i| (i * 7 % 256) as u8).collect();
    let path = dir.path().join("blob.bin");
    std::fs::write(&path, &file).unwrap();
    let order = r#"{"externalId":"mp-file","items":[{"productName":"a;b=\"c\""}]}"#;
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "--form-string",
        &format!("apiKey={ACME_CLIENT}"),
        "--form-string",
        &format!("order={order}"),
        "-F",
        &format!("file=@{};type=application/octet-stream", path.display()),
        &format!("{}/api/v5/orders/create", gate.url),
    ])
    .await;
    assert!(out.ends_with("\n201"), "{out}");

    let r = record(&sim, "/api/v5/orders/create");
    let b = boundary_of(&r);
    // What curl sent, minus the key part, plus the tenant's site before
    // the closing boundary: every other byte as sent.
    let mut want = text_part(&b, "order", order);
    want.extend(
        format!(
            "--{b}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"blob.bin\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .into_bytes(),
    );
    want.extend(&file);
    want.extend(b"\r\n");
    want.extend(text_part(&b, "site", "main"));
    want.extend(format!("--{b}--\r\n").into_bytes());
    assert_eq!(r.body.len(), want.len());
    assert!(r.body == want, "the body changed beyond the key and site");
    assert_eq!(r.header("content-length"), Some(&*want.len().to_string()));
    assert_eq!(r.api_key.as_deref(), Some(ACME_KEY));
    // The CRM (reading as PHP) saw the order and the site, no key.
    let names: Vec<_> = r.form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["order", "site"]);
    assert_no_client_key(&sim.records());
    assert_eq!(sim.orders_created("acme").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_in_every_spelling_are_removed_and_a_header_key_serves_a_keyless_body() {
    if !runs(Program::Curl, "curl", &["--version"], &test_name()) {
        return;
    }
    let (sim, gate) = setup("").await;
    let url = format!("{}/api/v5/orders/create", gate.url);
    // The first `apiKey` finds the tenant; every spelling PHP reads goes.
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "--form-string",
        &format!("api_key={BETA_CLIENT}"),
        "--form-string",
        &format!("apiKey={ACME_CLIENT2}"),
        "--form-string",
        &format!("APIKEY={BETA_CLIENT}"),
        "--form-string",
        &format!("apiKey[]={ACME_CLIENT}"),
        "--form-string",
        &format!("api.key={ACME_CLIENT}"),
        "--form-string",
        r#"order={"externalId":"mp-spell"}"#,
        &url,
    ])
    .await;
    assert!(out.ends_with("\n201"), "{out}");
    let r = record(&sim, "/api/v5/orders/create");
    assert_eq!(r.api_key.as_deref(), Some(ACME_KEY), "acme, by apiKey");
    let names: Vec<_> = r.form.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(names, ["order", "site"]);

    // No key part, the key in the header: the body goes as sent.
    sim.clear_records();
    let out = curl(&[
        "-w",
        "\n%{http_code}",
        "-H",
        &format!("X-API-KEY: {BETA_CLIENT}"),
        "--form-string",
        "site=beta-shop",
        "--form-string",
        r#"order={"externalId":"mp-header"}"#,
        &url,
    ])
    .await;
    assert!(out.ends_with("\n201"), "{out}");
    let r = record(&sim, "/api/v5/orders/create");
    let b = boundary_of(&r);
    let mut want = text_part(&b, "site", "beta-shop");
    want.extend(text_part(&b, "order", r#"{"externalId":"mp-header"}"#));
    want.extend(format!("--{b}--\r\n").into_bytes());
    assert!(r.body == want, "{:?}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.api_key.as_deref(), Some(BETA_KEY));
    assert_no_client_key(&sim.records());
    assert_eq!(sim.orders_created("beta").len(), 1);
}

/// `curl -H 'Expect: 100-continue'`: a wrong key outside the body is
/// refused before the upload (no `100 Continue`); a key inside the body
/// needs the body, so the upload continues and the key is checked then.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expect_100_continue_is_answered_only_when_the_body_is_wanted() {
    if !runs(Program::Curl, "curl", &["--version"], &test_name()) {
        return;
    }
    let (sim, gate) = setup("").await;
    let big = "x".repeat(64 * 1024);
    let note = format!("note={big}");
    let dump = |query: &'static str, key_part: String| {
        let url = format!("{}/api/v5/orders/create{query}", gate.url);
        let note = note.clone();
        async move {
            curl(&[
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-H",
                "Expect: 100-continue",
                "--expect100-timeout",
                "30",
                "--form-string",
                &key_part,
                "--form-string",
                &note,
                "--form-string",
                r#"order={"externalId":"mp-expect"}"#,
                &url,
            ])
            .await
        }
    };
    // A wrong key in the query: 403 at once, no 100, nothing sent on.
    let head = dump("?apiKey=svc-nobody", "site=main".into()).await;
    assert!(!head.contains(" 100 "), "{head}");
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(sim.records().is_empty());
    // The key in the body: 100 Continue, then the CRM's answer.
    let head = dump("", format!("apiKey={ACME_CLIENT}")).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    assert!(head.contains("HTTP/1.1 201"), "{head}");
    // A right key in the query: 100 Continue too (the body is wanted).
    let head = dump(
        "?apiKey=svc-orders-3f9c&by=externalId", // ACME_CLIENT
        "site=main".into(),
    )
    .await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    assert!(
        head.contains("HTTP/1.1 400"),
        "a duplicate externalId: {head}"
    );
    // A wrong key in the body: the upload continued, then 403.
    let head = dump("", "apiKey=svc-nobody".into()).await;
    assert!(head.starts_with("HTTP/1.1 100 Continue"), "{head}");
    assert!(head.contains("HTTP/1.1 403"), "{head}");
    let recs = sim.records();
    assert_eq!(recs.len(), 2, "{recs:?}");
    assert!(recs.iter().all(|r| r.header("expect").is_none()));
    assert_no_client_key(&recs);
}
