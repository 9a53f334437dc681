//! `crmgate export`, the built binary, against a gateway and the simulator
//! in this process: items to a file, progress as plain lines or a bar,
//! exit codes for complete, incomplete (with the resume point), bad
//! arguments, an unreachable gateway and a refused key, and the key never
//! printed.

mod common;

use std::collections::HashSet;
use std::process::Output;

use common::*;
use tokio::process::Command;

/// `crmgate export ARGS` with the client key in `CRMGATE_KEY`.
fn export_cmd(key: Option<&str>, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_crmgate"));
    cmd.arg("export").args(args).env_remove("CRMGATE_KEY");
    if let Some(key) = key {
        cmd.env("CRMGATE_KEY", key);
    }
    cmd.kill_on_drop(true);
    cmd
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The `id` of each NDJSON line of `ndjson`.
fn item_ids(ndjson: &str) -> impl Iterator<Item = u64> + '_ {
    ndjson.lines().map(|l| {
        serde_json::from_str::<serde_json::Value>(l).unwrap()["id"]
            .as_u64()
            .unwrap()
    })
}

fn assert_no_key(out: &Output, key: &str) {
    for stream in [&out.stdout, &out.stderr] {
        assert!(!text(stream).contains(key), "the key was printed");
    }
}

#[tokio::test]
async fn a_complete_export_writes_every_item_and_exits_0() {
    let (_sim, gate) = setup_with_orders(450, "").await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("orders.ndjson");
    let out = export_cmd(
        Some(ACME_CLIENT),
        &[
            "--gateway",
            &gate.url,
            "/api/v5/orders",
            "--param",
            "filter[status]=new",
            "--out",
            file.to_str().unwrap(),
        ],
    )
    .output()
    .await
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    assert!(out.stdout.is_empty(), "items went to the file");
    let written = std::fs::read_to_string(&file).unwrap();
    let ids: Vec<u64> = item_ids(&written).collect();
    assert_eq!(
        ids,
        (1..=450).collect::<Vec<u64>>(),
        "items only, no summary line"
    );
    // Not a terminal: plain progress lines, then the verdict.
    assert!(
        stderr.contains("export: 450 of 450 items, page 5 of 5"),
        "{stderr}"
    );
    assert!(
        stderr.contains("export complete: 5 pages, 450 items"),
        "{stderr}"
    );
    assert!(
        !stderr.contains('\x1b'),
        "no terminal codes in plain mode: {stderr:?}"
    );
    assert_no_key(&out, ACME_CLIENT);
}

#[tokio::test]
async fn the_bar_draws_pages_items_and_history_goes_to_stdout_with_its_last_id() {
    let (_sim, gate) = setup_with_orders(120, "").await;
    let out = export_cmd(
        None,
        &[
            "--gateway",
            &gate.url,
            "--key",
            ACME_CLIENT,
            "--since-id",
            "10",
            "--progress",
            "bar",
            "/acme/api/v5/orders/history",
        ],
    )
    .output()
    .await
    .unwrap();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stderr}");
    let ids: HashSet<u64> = item_ids(&text(&out.stdout)).collect();
    assert_eq!(ids, (11..=120).collect());
    assert!(stderr.contains("110/110 items"), "{stderr:?}");
    assert!(stderr.contains("page 2 of 2"), "{stderr:?}");
    // Each drawing says "page" once and gives the rate once.
    for drawn in stderr.split("\r\x1b[2K").filter(|d| d.contains("items ·")) {
        assert!(!drawn.contains("page page"), "{drawn:?}");
        assert_eq!(drawn.matches("/s").count(), 1, "{drawn:?}");
    }
    assert!(stderr.contains("--since-id 120"), "{stderr}");
}

#[tokio::test]
async fn an_incomplete_export_exits_1_with_the_resume_point() {
    let retry = "[retry]\nmax_attempts = 1\n";
    let (sim, gate) = setup_with_orders(3000, retry).await;
    let child = export_cmd(
        Some(ACME_CLIENT),
        &["--gateway", &gate.url, "/api/v5/orders"],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    wait_until("the first pages", || {
        sim.records()
            .iter()
            .filter(|r| r.path == "/api/v5/orders")
            .count()
            >= 2
    })
    .await;
    sim.faults().fail_next(100_000, None);
    let out = child.wait_with_output().await.unwrap();
    sim.faults().clear();
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let items = text(&out.stdout).lines().count() as u64;
    let resume = format!("resume with --param page={}", items / 100 + 1);
    assert!(stderr.contains(&resume), "{items} items; {stderr}");
    assert!(stderr.contains("rate limiting"), "{stderr}");
}

#[tokio::test]
async fn bad_arguments_an_unreachable_gateway_and_a_wrong_key_are_told_precisely() {
    let (_sim, gate) = setup_with_orders(10, "").await;
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", l.local_addr().unwrap())
    };
    let wrong = "not-a-client-key-5e1d";
    let cases: Vec<(Option<&str>, Vec<&str>, i32, &str)> = vec![
        (
            None,
            vec!["--gateway", &gate.url, "/api/v5/orders"],
            2,
            "no client key",
        ),
        (
            Some(ACME_CLIENT),
            vec!["--gateway", "localhost:1", "/api/v5/orders"],
            2,
            "--gateway must be",
        ),
        (
            Some(ACME_CLIENT),
            vec!["--gateway", &gate.url, "orders"],
            2,
            "PATH must be",
        ),
        (
            Some(ACME_CLIENT),
            vec!["--gateway", &gate.url, "/api/v5/orders", "--param", "x"],
            2,
            "NAME=VALUE",
        ),
        (
            Some(ACME_CLIENT),
            vec!["--gateway", &closed, "/api/v5/orders"],
            3,
            "cannot reach the gateway",
        ),
        (
            Some(wrong),
            vec!["--gateway", &gate.url, "/api/v5/orders"],
            3,
            "refused the export: 403",
        ),
        (
            Some(ACME_CLIENT),
            vec!["--gateway", &gate.url, "/api/v5/reference/sites"],
            3,
            "cannot be exported",
        ),
    ];
    for (key, args, code, says) in cases {
        let out = export_cmd(key, &args).output().await.unwrap();
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
        assert_no_key(&out, wrong);
        assert_no_key(&out, ACME_CLIENT);
    }
}
