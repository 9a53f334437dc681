//! The simulator's own reading of RetailCRM's rules: which paths count as
//! telephony and which bodies are forms. The tables are written from
//! `retailcrm-api.md`, not from the gateway, so the gateway's mistakes show.

use axum::http::{header, HeaderMap, HeaderValue};
use reqwest::StatusCode;

use super::*;
use crate::sim::class::is_form;

/// "Telephony methods (`/api/telephony/*`, in v5 `/api/v5/telephony/*`)".
const TELEPHONY: &[&str] = &[
    "/api/telephony/call/event",
    "/api/v5/telephony/call/event",
    "/api/v5/telephony/calls/upload",
    "/api/v5/telephony/manager",
    // The older versions RetailCRM still serves name the same methods.
    "/api/v4/telephony/call/event",
    "/api/v3/telephony/manager",
    "/api/v10/telephony/manager",
    // Trailing slashes: still under `telephony/`, which is all `*` asks.
    "/api/v5/telephony/call/event/",
    "/api/v5/telephony/",
];

/// Everything else is general, the lower limit.
const GENERAL: &[&str] = &[
    "/api/v5/orders",
    "/api/v5/orders/",
    "/api/v4/orders/create",
    "/api/api-versions",
    "/api/credentials",
    "/api/v5/reference/sites",
    // The group itself is no telephony method.
    "/api/telephony",
    "/api/v5/telephony",
    // Prefixes and other groups that merely mention telephony.
    "/api/v5/telephonyx/call/event",
    "/api/v5/telephony-settings",
    "/api/v5/orders/telephony",
    "/api/v5/orders/telephony/call",
    "/api/v5/integration-modules/telephony/edit",
    // Not a version segment, so `telephony` is not the method group.
    "/api/v/telephony/call/event",
    "/api/vx/telephony/call/event",
    "/api/V5/telephony/call/event",
    "/api/v5/v5/telephony/call/event",
    // No normalisation: case, doubled slashes and escapes stay as sent.
    "/api/v5/Telephony/call/event",
    "/api/v5//telephony/call/event",
    "/api//telephony/call/event",
    "/api/v5/telephony%2Fcall/event",
    // Outside the API.
    "/telephony/call/event",
    "/v5/telephony/call/event",
    "/",
    "",
];

#[test]
fn classifier_follows_the_documented_rule() {
    for path in TELEPHONY {
        assert_eq!(classify(path), Class::Telephony, "{path:?}");
    }
    for path in GENERAL {
        assert_eq!(classify(path), Class::General, "{path:?}");
    }
    assert_eq!(Class::Telephony.to_string(), "telephony");
    assert_eq!(Class::General.to_string(), "general");
}

#[test]
fn form_bodies_are_detected_like_php() {
    let form = |value: Option<&'static str>| {
        let mut headers = HeaderMap::new();
        if let Some(v) = value {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(v));
        }
        is_form(&headers)
    };
    for yes in [
        "application/x-www-form-urlencoded",
        "application/x-www-form-urlencoded; charset=UTF-8",
        "application/x-www-form-urlencoded;charset=utf-8",
        "application/x-www-form-urlencoded ;charset=utf-8",
        "application/x-www-form-urlencoded,text/plain",
        "APPLICATION/X-WWW-Form-UrlEncoded",
    ] {
        assert!(form(Some(yes)), "{yes:?}");
    }
    for no in [
        "application/json",
        "multipart/form-data; boundary=x",
        "application/x-www-form-urlencodedx",
        "text/plain; application/x-www-form-urlencoded",
        "",
    ] {
        assert!(!form(Some(no)), "{no:?}");
    }
    assert!(!form(None));
}

/// A path the gateway might take for telephony but the CRM does not gets
/// only the general budget: a gateway sending it at the telephony rate meets
/// 503s, which is how the integration tests catch a misclassification.
#[tokio::test]
async fn a_near_miss_path_draws_from_the_general_budget() {
    let cfg = SimConfig {
        general_per_second: 2,
        telephony_per_second: 40,
        window: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let (sim, c) = start(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..3 {
        let resp = post_form(&c, &sim, "/api/v5/telephony", &[("event", "{}")]).await;
        statuses.push(resp.status());
    }
    // Unknown method, so 404, until the general window is full.
    assert_eq!(
        statuses,
        [
            StatusCode::NOT_FOUND,
            StatusCode::NOT_FOUND,
            StatusCode::SERVICE_UNAVAILABLE
        ]
    );
    // The real telephony method still has its own, untouched budget.
    let event = [("event", r#"{"phone":"1"}"#)];
    let resp = post_form(&c, &sim, "/api/v5/telephony/call/event", &event).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let classes: Vec<Class> = sim.records().iter().map(|r| r.class).collect();
    assert_eq!(
        classes,
        [
            Class::General,
            Class::General,
            Class::General,
            Class::Telephony
        ]
    );
}

/// The simulator's modules use nothing of the crate outside `sim`, so in
/// particular never the gateway's request path (`classify`, `rewrite`,
/// `proxy`): if they did, a gateway bug would be mirrored instead of caught.
#[test]
fn simulator_code_uses_nothing_outside_sim() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/sim");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("src/sim") {
        let path = entry.expect("dir entry").path();
        if path.extension() != Some(std::ffi::OsStr::new("rs")) {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("source file");
        // Code only: the module docs may name what they must not use.
        for line in text.lines().filter(|l| !l.trim_start().starts_with("//")) {
            let outside = line
                .match_indices("crate::")
                .any(|(at, _)| !line[at..].starts_with("crate::sim::"));
            // In mod.rs, `super` is the crate root.
            let root = path.ends_with("mod.rs") && line.contains("super::");
            assert!(!outside && !root, "{}: {line}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 10,
        "only {checked} files under {}",
        dir.display()
    );
}
