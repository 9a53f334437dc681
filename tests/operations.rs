//! Operations: the admin listener's JSON endpoints and the Prometheus
//! metrics (checked by promtool). Drain, reload and the real binary have
//! files of their own. Everything runs on loopback sockets against the
//! simulator.
mod common;

use std::process::{Command, Stdio};

use common::*;
use serde_json::Value;

async fn get_json(url: String) -> (u16, Value) {
    let resp = client().get(url).send().await.expect("admin answers");
    (resp.status().as_u16(), json(resp).await)
}

fn tenant<'a>(status: &'a Value, name: &str) -> &'a Value {
    status["tenants"]
        .as_array()
        .expect("tenants is an array")
        .iter()
        .find(|t| t["name"] == name)
        .unwrap_or_else(|| panic!("no tenant {name} in {status}"))
}

/// Some traffic for the admin and metrics tests: three forwarded requests
/// (client key in the header, the query and a form body), a wrong key
/// (403) and an unknown tenant prefix (404).
async fn mixed_traffic(gate: &Gate) {
    let c = client();
    send_a_key_in_every_place(&c, &gate.url, "ops-1").await;
    let r = c
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", BAD_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    let r = c
        .get(format!("{}/nosuch/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}

#[tokio::test]
async fn admin_endpoints_answer_json_and_never_show_a_key() {
    let (_sim, gate) = setup("").await;

    let (code, body) = get_json(format!("{}/healthz", gate.admin)).await;
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    let (code, body) = get_json(format!("{}/readyz", gate.admin)).await;
    assert_eq!(
        (code, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );

    mixed_traffic(&gate).await;

    let resp = client()
        .get(format!("{}/status", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let text = resp.text().await.unwrap();
    assert_no_secret("/status", &text);
    let status: Value = serde_json::from_str(&text).expect("/status is JSON");
    assert_eq!(status["version"], env!("CARGO_PKG_VERSION"));
    assert!(status["uptime_seconds"].is_u64(), "{status}");
    let checksum = status["config_checksum"].as_str().expect("checksum");
    assert!(
        checksum.len() == 64 && checksum.bytes().all(|b| b.is_ascii_hexdigit()),
        "checksum {checksum}"
    );

    let budgets = general_budgets(&status);
    assert_eq!(budgets.len(), 1, "one egress, one general budget: {status}");
    let b = &budgets[0];
    for field in [
        "egress",
        "class",
        "configured_rate",
        "effective_rate",
        "queued",
        "oldest_wait_ms",
        "next_free_in_ms",
        "adaptation",
    ] {
        assert!(!b[field].is_null(), "budget has no {field}: {b}");
    }
    assert_eq!(b["adaptation"], "free");
    assert_eq!(b["configured_rate"], 10);
    assert_eq!(b["effective_rate"].as_f64(), Some(10.0));
    assert_eq!(b["queued"], 0);

    let names: Vec<&str> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "beta", "open"]);
    for t in status["tenants"].as_array().unwrap() {
        assert_eq!(
            (&t["queued"], &t["inflight"]),
            (&0.into(), &0.into()),
            "{t}"
        );
    }
    // Rejections before tenant resolution belong to no tenant.
    assert_eq!(
        tenant(&status, "acme")["totals_by_status"],
        serde_json::json!({"200": 2})
    );
    assert_eq!(
        tenant(&status, "beta")["totals_by_status"],
        serde_json::json!({"201": 1})
    );
    assert_eq!(
        tenant(&status, "open")["totals_by_status"],
        serde_json::json!({})
    );

    let resp = client()
        .get(format!("{}/nope", gate.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    let body = json(resp).await;
    assert_eq!(body["success"], false, "{body}");
    assert!(body["errorMsg"].as_str().unwrap().contains("/status"));

    // Started without a file: a reload has nothing to read.
    let (code, body) = post_reload(&gate).await;
    assert_eq!(code, 409);
    assert_eq!(body["success"], false);
}

#[tokio::test]
async fn metrics_cover_traffic_and_rejections_and_pass_promtool() {
    let (_sim, gate) = setup("").await;
    mixed_traffic(&gate).await;
    let text = metrics_text(&gate.admin).await;
    assert_no_secret("/metrics", &text);

    let get = |name: &str, labels: &[(&str, &str)]| {
        metric(&text, name, labels).unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{text}"))
    };
    assert_eq!(
        get(
            "crmgate_requests_total",
            &[("tenant", "acme"), ("class", "general"), ("status", "200")]
        ),
        2.0
    );
    assert_eq!(
        get(
            "crmgate_requests_total",
            &[("tenant", "beta"), ("status", "201")]
        ),
        1.0
    );
    assert_eq!(
        get(
            "crmgate_upstream_attempts_total",
            &[("egress", "default"), ("class", "general")]
        ),
        3.0
    );
    assert_eq!(
        get("crmgate_rejections_total", &[("reason", "bad_key")]),
        1.0
    );
    assert_eq!(
        get("crmgate_rejections_total", &[("reason", "unknown_tenant")]),
        1.0
    );
    assert_eq!(
        get("crmgate_queue_wait_seconds_count", &[("class", "general")]),
        3.0
    );
    assert_eq!(
        get(
            "crmgate_queue_wait_seconds_bucket",
            &[("class", "general"), ("le", "+Inf")]
        ),
        3.0
    );
    assert_eq!(get("crmgate_rate_limit", &[("class", "general")]), 10.0);
    assert_eq!(get("crmgate_rate_limit", &[("class", "telephony")]), 40.0);
    assert_eq!(get("crmgate_effective_rate", &[("class", "general")]), 10.0);
    assert_eq!(
        get(
            "crmgate_build_info",
            &[("version", env!("CARGO_PKG_VERSION"))]
        ),
        1.0
    );
    // Rejected requests are never labelled by the path they asked for.
    assert!(!text.contains("nosuch"), "{text}");

    promtool_check(&text);
}

/// The tests' one exposition parser (tests/common/metrics.rs) reads what
/// the format allows, so a label value or a special float never makes a
/// metric look absent.
#[test]
fn the_metrics_parser_reads_escapes_labels_and_special_values() {
    let text = "# HELP x_total A counter.\n# TYPE x_total counter\n\
        x_total{path=\"a\\\"b\\\\c\\nd\",class=\"general\"} 2\n\
        x_total{subclass=\"general\",} 5 1700000000000\n\
        y_bucket{le=\"+Inf\"} +Inf\n\
        z NaN\n\
        up 1\n";
    let all = samples(text);
    assert_eq!(all.len(), 5, "{all:?}");
    assert_eq!(all[0].label("path"), Some("a\"b\\c\nd"));
    // Exact label values: `subclass="general"` is not `class="general"`.
    assert_eq!(metric(text, "x_total", &[("class", "general")]), Some(2.0));
    assert_eq!(metric(text, "x_total", &[]), Some(7.0));
    assert_eq!(
        metric(text, "y_bucket", &[("le", "+Inf")]),
        Some(f64::INFINITY)
    );
    assert!(metric(text, "z", &[]).unwrap().is_nan());
    assert_eq!(metric(text, "up", &[]), Some(1.0));
    assert_eq!(metric(text, "x", &[]), None);
    assert_eq!(metric(text, "x_total", &[("class", "telephony")]), None);
    for bad in [
        "x{a=\"1\" 2",
        "x{a=1} 2",
        "x 1 2 3",
        "x",
        "x{a=\"1\"b=\"2\"} 1",
        "9x 1",
    ] {
        let panicked = std::panic::catch_unwind(|| samples(bad)).is_err();
        assert!(panicked, "accepted {bad:?}");
    }
}

/// Runs `promtool check metrics` on an exposition, when promtool is installed.
fn promtool_check(text: &str) {
    use std::io::Write;
    let child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            // CI installs promtool and requires it: there, a missing one fails.
            missing(
                Program::Promtool,
                "`promtool check metrics` in operations.rs",
            );
            return;
        }
        Err(e) => panic!("cannot run promtool: {e}"),
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n--- exposition ---\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
