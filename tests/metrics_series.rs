//! Every series the dashboard and the alerts query exists on the first
//! scrape of a fresh gateway (at 0), and a tenant added by a reload has
//! its series on the next scrape: no panel shows "no data" on a healthy
//! gateway, and `increase()` sees the very first event.
//!
//! The queries are read from `deploy/grafana/crmgate.json` (every `expr`,
//! and the template variables' queries) and `deploy/prometheus/alerts.yml`
//! (every `expr:` block), so a panel or alert added later is checked too.
//! Matchers on template variables (`$instance`) match anything; `=~`
//! alternatives of plain names must each exist.

mod common;

use common::*;

/// One vector selector: a metric name and its fixed label matchers.
#[derive(Debug, Clone, PartialEq)]
struct Selector {
    name: String,
    /// (label, op, value) with template variables left out.
    matchers: Vec<(String, String, String)>,
}

/// Every `crmgate_*` selector in a PromQL expression.
fn selectors(expr: &str) -> Vec<Selector> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("crmgate_") {
        let start = i + at;
        let boundary =
            start == 0 || !(bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        let mut end = start;
        while end < bytes.len() && (bytes[end].is_ascii_alphanumeric() || bytes[end] == b'_') {
            end += 1;
        }
        i = end;
        if !boundary {
            continue;
        }
        let name = expr[start..end].to_string();
        let mut matchers = Vec::new();
        if expr[end..].starts_with('{') {
            let close = expr[end..].find('}').expect("a closed label set") + end;
            for m in split_matchers(&expr[end + 1..close]) {
                let op = ["=~", "!~", "!=", "="]
                    .into_iter()
                    .find(|op| m.contains(op))
                    .unwrap_or_else(|| panic!("no operator in {m:?} of {expr}"));
                let (label, value) = m.split_once(op).unwrap();
                let value = value.trim().trim_matches('"').to_string();
                if !value.contains('$') {
                    matchers.push((label.trim().to_string(), op.to_string(), value));
                }
            }
            i = close + 1;
        }
        out.push(Selector { name, matchers });
    }
    out
}

/// Splits `a="x", b=~"y|z"` at the commas outside quotes.
fn split_matchers(inner: &str) -> Vec<String> {
    let (mut parts, mut cur, mut quoted) = (Vec::new(), String::new(), false);
    for ch in inner.chars() {
        match ch {
            '"' => {
                quoted = !quoted;
                cur.push(ch);
            }
            ',' if !quoted => parts.push(std::mem::take(&mut cur)),
            _ => cur.push(ch),
        }
    }
    parts.push(cur);
    parts
        .into_iter()
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// Every query string of the dashboard (`expr`, `query`, `definition`).
fn dashboard_queries(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                match (k.as_str(), v) {
                    ("expr" | "query" | "definition", serde_json::Value::String(s)) => {
                        out.push(s.clone())
                    }
                    _ => dashboard_queries(v, out),
                }
            }
        }
        serde_json::Value::Array(items) => items.iter().for_each(|v| dashboard_queries(v, out)),
        _ => {}
    }
}

/// Every `expr:` of the rules file: the rest of its line and the lines
/// indented deeper below it.
fn alert_exprs(text: &str) -> Vec<String> {
    let lines: Vec<&str> = text.lines().collect();
    let indent = |l: &str| l.len() - l.trim_start().len();
    let mut out = Vec::new();
    for (n, line) in lines.iter().enumerate() {
        let Some(rest) = line.trim_start().strip_prefix("expr:") else {
            continue;
        };
        let mut expr = rest.trim().trim_start_matches('|').to_string();
        for next in &lines[n + 1..] {
            if !next.trim().is_empty() && indent(next) <= indent(line) {
                break;
            }
            expr.push('\n');
            expr.push_str(next);
        }
        out.push(expr);
    }
    out
}

fn queried() -> Vec<(String, Selector)> {
    let root = env!("CARGO_MANIFEST_DIR");
    let dash = std::fs::read_to_string(format!("{root}/deploy/grafana/crmgate.json")).unwrap();
    let mut queries = Vec::new();
    dashboard_queries(&serde_json::from_str(&dash).unwrap(), &mut queries);
    let alerts = std::fs::read_to_string(format!("{root}/deploy/prometheus/alerts.yml")).unwrap();
    queries.extend(alert_exprs(&alerts));
    let all: Vec<(String, Selector)> = queries
        .iter()
        .flat_map(|q| selectors(q).into_iter().map(move |s| (q.clone(), s)))
        .collect();
    assert!(all.len() >= 20, "the files were not read right: {all:?}");
    all
}

/// The samples that satisfy `sel` (each `=~` alternative separately).
fn missing(text: &str, sel: &Selector) -> Vec<String> {
    let samples = samples(text);
    let mut wanted: Vec<Vec<(String, String, String)>> = vec![Vec::new()];
    for (label, op, value) in &sel.matchers {
        if op == "=~" {
            assert!(
                value
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_|:-".contains(c)),
                "the test reads =~ as alternatives of plain values only: {value:?}; extend it"
            );
            wanted = wanted
                .into_iter()
                .flat_map(|w| {
                    value.split('|').map(move |alt| {
                        let mut w = w.clone();
                        w.push((label.clone(), "=".into(), alt.to_string()));
                        w
                    })
                })
                .collect();
        } else {
            for w in &mut wanted {
                w.push((label.clone(), op.clone(), value.clone()));
            }
        }
    }
    wanted
        .into_iter()
        .filter(|w| {
            !samples.iter().any(|s| {
                s.name == sel.name
                    && w.iter().all(|(l, op, v)| {
                        let got = s.label(l).unwrap_or("");
                        match op.as_str() {
                            "=" => got == v,
                            "!=" => got != v,
                            _ => panic!("unsupported matcher {op} in {sel:?}"),
                        }
                    })
            })
        })
        .map(|w| format!("{}{w:?}", sel.name))
        .collect()
}

#[test]
fn selectors_are_read_with_their_fixed_matchers() {
    let s = selectors(
        r#"sum(rate(crmgate_rejections_total{instance=~"$instance", reason=~"a|b"}[5m])) / crmgate_queue_capacity"#,
    );
    assert_eq!(s.len(), 2);
    assert_eq!(s[0].name, "crmgate_rejections_total");
    assert_eq!(
        s[0].matchers,
        [("reason".into(), "=~".into(), "a|b".into())]
    );
    assert_eq!(s[1].matchers, []);
}

#[tokio::test]
async fn every_series_the_dashboard_and_alerts_query_exists_on_the_first_scrape() {
    let (_sim, gate) = setup("").await;
    let text = metrics_text(&gate.admin).await;
    let mut gaps = Vec::new();
    for (query, sel) in queried() {
        for m in missing(&text, &sel) {
            gaps.push(format!("{m}\n    in: {}", query.trim()));
        }
    }
    assert!(
        gaps.is_empty(),
        "absent on a fresh gateway:\n{}\n--- exposition ---\n{text}",
        gaps.join("\n")
    );
}

#[tokio::test]
async fn a_tenant_added_by_a_reload_has_its_series_on_the_next_scrape() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("crmgate.toml");
    let sim = sim().await;
    let server = "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n";
    let text = config_text(&sim, server);
    let gate = Gate::from_file(&path, &text).await;
    let labels = [("tenant", "newcomer")];
    let before = metrics_text(&gate.admin).await;
    assert_eq!(metric(&before, "crmgate_requests_total", &labels), None);

    let added = format!(
        "{text}\n[[tenants]]\nname = \"newcomer\"\nbase_url = \"{}\"\napi_key = \"{BETA_KEY}\"\n\
         client_keys = [\"svc-newcomer-01\"]\n",
        sim.base_url()
    );
    std::fs::write(&path, added).unwrap();
    let (code, body) = admin_reload(&gate.admin).await;
    assert_eq!(code, 200, "{body}");
    let after = metrics_text(&gate.admin).await;
    for name in [
        "crmgate_requests_total",
        "crmgate_reconciled_total",
        "crmgate_queue_depth",
        "crmgate_inflight_requests",
    ] {
        assert_eq!(metric(&after, name, &labels), Some(0.0), "{name}");
    }
}
