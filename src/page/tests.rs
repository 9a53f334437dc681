use super::*;
use crate::config::Config;
use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use tower::ServiceExt;

const KEY: &str = "real-key-page-0001";
const CLIENT_KEY: &str = "client-key-page-0002";

fn gateway(name: &str) -> Arc<Gateway> {
    let text = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         [[tenants]]\nname = \"{name}\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
         api_key = \"{KEY}\"\nclient_keys = [\"{CLIENT_KEY}\"]\n"
    );
    let config = Config::from_toml(&text, "test config", &|_| None).unwrap();
    Gateway::new(config, None).unwrap()
}

async fn get(app: Router, path: &str) -> (StatusCode, axum::http::HeaderMap, String) {
    let resp = app
        .oneshot(Request::get(path).body(Body::empty()).unwrap())
        .await
        .unwrap();
    let (parts, body) = resp.into_parts();
    let bytes = body.collect().await.unwrap().to_bytes();
    (
        parts.status,
        parts.headers,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

#[tokio::test]
async fn the_page_holds_the_numbers_and_no_key() {
    let gw = gateway("acme");
    for (status, n) in [("200", 7), ("201", 1), ("404", 2), ("503", 1)] {
        gw.metrics
            .requests
            .with_label_values(&["acme", "general", status])
            .inc_by(n);
    }
    gw.metrics
        .export_pages
        .with_label_values(&["acme"])
        .inc_by(3);
    let (status, headers, html) = get(crate::admin::router(gw.clone()), "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(headers[header::CONTENT_TYPE]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    assert!(!html.contains(KEY) && !html.contains(CLIENT_KEY));
    // Numbers are in the HTML itself: readable without JavaScript.
    assert!(html.contains("<tr data-tenant=\"acme\">"), "{html}");
    assert!(html.contains("data-field=\"2xx\">8<"));
    assert!(html.contains("data-field=\"4xx\">2<"));
    assert!(html.contains("data-field=\"5xx\">1<"));
    assert!(html.contains("data-field=\"exports\">3<"), "export pages");
    assert!(!html.contains("not built"), "no stale placeholder");
    assert!(html.contains("data-field=\"configured\" data-value=\"10\">10/s<"));
    assert!(html.contains("data-field=\"configured\" data-value=\"40\">40/s<"));
    assert!(html.contains(&gw.snapshot().config.checksum));
    // Not ready until the server runs.
    assert!(html.contains("id=\"f-state\" data-value=\"false\""));
    // Self-contained: nothing loaded from elsewhere.
    for outside in ["http://", "https://", "src=", "@import", "url("] {
        assert!(!html.contains(outside), "{outside} in the page");
    }
}

#[tokio::test]
async fn the_csp_allows_exactly_the_embedded_style_and_script() {
    let (_, headers, html) = get(routes(gateway("acme")), "/").await;
    let csp = headers[header::CONTENT_SECURITY_POLICY].to_str().unwrap();
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    let sha = |t: &str| base64::engine::general_purpose::STANDARD.encode(Sha256::digest(t));
    let between = |open: &str, close: &str| {
        let start = html.find(open).unwrap() + open.len();
        let end = start + html[start..].find(close).unwrap();
        html[start..end].to_string()
    };
    let style = between("<style>", "</style>");
    let script = between("<script>", "</script>");
    assert!(csp.contains(&format!("style-src 'sha256-{}'", sha(&style))));
    assert!(csp.contains(&format!("script-src 'sha256-{}'", sha(&script))));
}

#[test]
fn text_is_escaped() {
    // Config already restricts names to [A-Za-z0-9_-]; escaping is the
    // second line, and the CSP the third.
    assert_eq!(esc("a<b>&\"c'"), "a&lt;b&gt;&amp;&quot;c&#39;");
}

#[tokio::test]
async fn history_is_json_on_the_admin_port() {
    let (status, headers, body) =
        get(crate::admin::router(gateway("acme")), "/status/history").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(doc["capacity"], 300);
    assert_eq!(doc["interval_seconds"], 1);
    assert!(doc["uptime_seconds"].is_array() && doc["budgets"].is_array());
    assert_eq!(doc["reloads"]["last"], serde_json::Value::Null);
}

#[test]
fn numbers_carry_units() {
    assert_eq!(rate(10.0), "10/s");
    assert_eq!(rate(9.456), "9.46/s");
    assert_eq!(millis(0.0), "0 ms");
    assert_eq!(millis(3.46), "3.5 ms");
    assert_eq!(millis(453.9), "454 ms");
    assert_eq!(millis(2500.0), "2.5 s");
    assert_eq!(duration(5), "5 s");
    assert_eq!(duration(125), "2 min 05 s");
    assert_eq!(duration(3 * 3600 + 120), "3 h 02 min");
    assert_eq!(duration(2 * 86_400 + 3600), "2 d 1 h");
}

#[test]
fn chart_scale_is_a_round_number_above_the_data() {
    assert_eq!(nice_ceiling(0.0), 1.0);
    assert_eq!(nice_ceiling(11.0), 20.0);
    assert_eq!(nice_ceiling(44.0), 50.0);
    assert_eq!(nice_ceiling(21.0), 25.0);
    assert_eq!(nice_ceiling(100.0), 100.0);
}

#[test]
fn a_gap_in_a_series_breaks_the_line() {
    let pts = [
        (0.0, Some(1.0)),
        (1.0, Some(2.0)),
        (2.0, None),
        (3.0, Some(3.0)),
    ];
    assert_eq!(line(&pts, false, 9.0), "M0,1L1,2M3,3");
    assert_eq!(line(&pts[..2], true, 9.0), "M0,1L1,2L1,9L0,9Z");
}

#[tokio::test]
async fn the_fragments_are_the_pages_sections_as_json() {
    let gw = gateway("acme");
    let (status, headers, body) = get(crate::admin::router(gw.clone()), "/status/fragments").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(headers[header::CACHE_CONTROL], "no-store");
    assert!(!body.contains(KEY) && !body.contains(CLIENT_KEY));
    let doc: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(doc["facts"].as_str().unwrap().contains("id=\"f-state\""));
    assert!(doc["budgets"]
        .as_str()
        .unwrap()
        .contains("<svg class=\"chart\""));
    assert!(doc["tenants"]
        .as_str()
        .unwrap()
        .contains("<tr data-tenant=\"acme\">"));
    // One renderer: the page is the template around these very sections.
    let (status, history) = (Status::collect(&gw), History::start(&gw).doc());
    let sections = Fragments::render(&status, &history);
    let page = render(&status, &history, 0);
    for (name, html) in [
        ("facts", &sections.facts),
        ("budgets", &sections.budgets),
        ("tenants", &sections.tenants),
    ] {
        assert!(!html.is_empty() && page.contains(html.as_str()), "{name}");
    }
}

#[tokio::test]
async fn a_draining_gateway_says_so() {
    let gw = gateway("acme");
    gw.drain.begin();
    let status = Status::collect(&gw);
    assert!(status.draining && !status.ready);
    let facts = Fragments::render(&status, &History::start(&gw).doc()).facts;
    assert!(
        facts.contains(
            "id=\"f-state\" data-value=\"draining\"><span class=\"pill warn\">Draining</span>"
        ),
        "{facts}"
    );
}
