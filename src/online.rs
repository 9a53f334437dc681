//! `crmgate check --online`: asks the CRM, for each tenant, whether its key
//! works before any traffic arrives.
//!
//! Per tenant it sends `GET /api/credentials` and `GET /api/api-versions`
//! through the tenant's own egress with the real key, each after a slot
//! from the scheduler (so the calls count against the budget, shared
//! through Redis when configured, and against nothing else: no access log,
//! no tenant counters). It reports whether the key was accepted, whether
//! API v5 is there, the key's site access and scopes, and warns about a
//! configured `site` the key cannot reach or a scope the services likely
//! need. It never prints, logs or returns the key: any text from the CRM is
//! scrubbed of it before it is kept.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use crate::classify::Class;
use http_body_util::{BodyExt, Full};

use crate::forward::{key_header, target_uri};
use crate::gateway::Gateway;
use crate::scheduler::{Priority, Ticket};
use crate::tenant::Tenant;

/// Scopes the services behind crmgate are most likely to need, with the
/// method path an older CRM lists in `credentials` for each.
const LIKELY_NEEDED: [(&str, &str); 4] = [
    ("order_read", "/api/orders"),
    ("order_write", "/api/orders/create"),
    ("customer_read", "/api/customers"),
    ("customer_write", "/api/customers/create"),
];

/// How many times one call is sent when the CRM answers 503 or 429.
const ATTEMPTS: u32 = 3;

/// What the CRM said about one tenant's key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyState {
    /// `credentials` answered `success: true`.
    Accepted,
    /// The CRM refused the key (its status and message, key scrubbed).
    Refused(u16, String),
    /// No usable answer: unreachable, throttled, or not the CRM's JSON.
    Failed(String),
}

/// One tenant's result.
#[derive(Debug, Clone)]
pub struct TenantReport {
    /// Tenant name from the config.
    pub tenant: String,
    /// The account's base URL (never holds a key: config validation refuses one).
    pub base_url: String,
    /// The egress the calls left through.
    pub egress: String,
    /// Whether the key works.
    pub key: KeyState,
    /// The API versions the CRM offers (empty when unknown).
    pub versions: Vec<String>,
    /// The tenant's configured `site`, if any.
    pub site: Option<String>,
    /// `siteAccess`: `access_full` or `access_selective`.
    pub site_access: Option<String>,
    /// `sitesAvailable`.
    pub sites: Vec<String>,
    /// `scopes`, or else the older `credentials` list.
    pub scopes: Vec<String>,
    /// Things that will likely fail later although the key works.
    pub warnings: Vec<String>,
}

impl TenantReport {
    /// True when this tenant's key cannot be used (refused or unchecked).
    pub fn failed(&self) -> bool {
        self.key != KeyState::Accepted
    }

    /// True when API v5 is among the versions.
    pub fn has_v5(&self) -> bool {
        self.versions
            .iter()
            .any(|v| v == "5" || v.starts_with("5."))
    }
}

/// Checks every tenant in the config in force, one after another.
pub async fn check_all(gw: &Gateway) -> Vec<TenantReport> {
    let snap = gw.snapshot();
    let mut reports = Vec::new();
    for tenant in snap.tenants.iter() {
        reports.push(check_tenant(gw, tenant).await);
    }
    reports
}

/// Checks one tenant's key.
pub async fn check_tenant(gw: &Gateway, tenant: &Arc<Tenant>) -> TenantReport {
    let mut report = TenantReport {
        tenant: tenant.name.to_string(),
        base_url: tenant.config.base_url.to_string(),
        egress: String::new(),
        key: KeyState::Failed("not checked".into()),
        versions: Vec::new(),
        site: tenant.config.site.clone(),
        site_access: None,
        sites: Vec::new(),
        scopes: Vec::new(),
        warnings: Vec::new(),
    };
    let creds = match call(gw, tenant, "/api/credentials", &mut report.egress).await {
        Ok(answer) => answer,
        Err(e) => {
            report.key = KeyState::Failed(e);
            return report;
        }
    };
    report.key = judge_key(&creds);
    if report.key != KeyState::Accepted {
        return report;
    }
    read_credentials(&creds.body, &mut report);
    match call(gw, tenant, "/api/api-versions", &mut report.egress).await {
        Ok(answer) => {
            report.versions = strings(&answer.body["versions"]);
            if !report.has_v5() {
                report.warnings.push(format!(
                    "API v5 is not offered (versions: {}); crmgate's clients use v5",
                    or_none(&report.versions)
                ));
            }
        }
        Err(e) => report
            .warnings
            .push(format!("api-versions could not be read: {e}")),
    }
    report
}

/// An answer from the CRM: its status and JSON body (`Null` if not JSON).
struct CrmReply {
    status: u16,
    body: Value,
}

/// Sends one GET through the scheduler and the egress it grants; resends
/// after a 503/429 (honouring the budget's slow-down), up to [`ATTEMPTS`].
async fn call(
    gw: &Gateway,
    tenant: &Arc<Tenant>,
    path: &str,
    egress_label: &mut String,
) -> Result<CrmReply, String> {
    let snap = gw.snapshot();
    let key = tenant.config.api_key.expose();
    let ticket = Ticket {
        tenant: tenant.name.clone(),
        weight: tenant.config.weight.get(),
        max_queued: tenant.config.max_queued.get(),
        client: Arc::from("crmgate check --online"),
        priority: Priority::Normal,
        class: Class::General,
        deadline: tokio::time::Instant::now() + snap.config.limits.max_queue_wait,
    };
    let mut last = String::new();
    for attempt in 0..ATTEMPTS {
        let permit = if attempt == 0 {
            gw.scheduler.acquire(ticket.clone()).await
        } else {
            gw.scheduler.reacquire(ticket.clone()).await
        }
        .map_err(|e| format!("no slot in the budget: {e}"))?;
        let egress = gw.clients.get(permit.egress);
        *egress_label = egress.label.clone();
        let uri = target_uri(tenant, path, None)
            .map_err(|e| format!("{path}: the CRM URL is not a valid URI ({e})"))?;
        let mut req = axum::http::Request::new(Full::new(bytes::Bytes::new()));
        *req.uri_mut() = uri;
        req.headers_mut()
            .insert("x-api-key", key_header(&tenant.config.api_key));
        let send = egress.client.request(req);
        let resp = match tokio::time::timeout(snap.config.upstream.request_timeout, send).await {
            Err(_) => return Err(format!("{path}: no answer within upstream.request_timeout")),
            Ok(Err(e)) => return Err(scrub(&format!("{path}: {}", chain(&e)), key)),
            Ok(Ok(resp)) => resp,
        };
        let status = resp.status().as_u16();
        if status == 503 || status == 429 {
            let retry_after = resp
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|s| Duration::from_secs(s.min(10)));
            permit.throttled(retry_after);
            last = format!("{path}: the CRM answered {status} (throttled) {ATTEMPTS} times");
            continue;
        }
        let bytes = tokio::time::timeout(
            snap.config.upstream.request_timeout,
            resp.into_body().collect(),
        )
        .await
        .map_err(|_| format!("{path}: the answer stalled past upstream.request_timeout"))?
        .map_err(|e| scrub(&format!("{path}: {}", chain(&e)), key))?
        .to_bytes();
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        return Ok(CrmReply { status, body });
    }
    Err(last)
}

/// Accepted, refused or not understood, from the `credentials` answer.
fn judge_key(answer: &CrmReply) -> KeyState {
    let success = answer.body["success"].as_bool();
    let message = answer.body["errorMsg"].as_str().unwrap_or("").to_string();
    match (answer.status, success) {
        (200, Some(true)) => KeyState::Accepted,
        (401 | 403, _) | (_, Some(false)) => KeyState::Refused(answer.status, message),
        (404, _) => KeyState::Refused(answer.status, "the account does not exist".into()),
        (status, _) => KeyState::Failed(format!(
            "/api/credentials: HTTP {status} without RetailCRM's JSON (is base_url the CRM?)"
        )),
    }
}

/// Site access and scopes from an accepted `credentials` answer, with the
/// warnings they call for.
fn read_credentials(body: &Value, report: &mut TenantReport) {
    report.site_access = body["siteAccess"].as_str().map(String::from);
    report.sites = strings(&body["sitesAvailable"]);
    let scopes = strings(&body["scopes"]);
    let legacy = body.get("scopes").is_none();
    report.scopes = if legacy {
        strings(&body["credentials"])
    } else {
        scopes
    };
    report.warnings.extend(warnings(report, legacy));
}

/// The warnings for a site the key cannot reach and for missing scopes.
fn warnings(report: &TenantReport, legacy: bool) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(site) = &report.site {
        if !report.sites.iter().any(|s| s == site) {
            out.push(format!(
                "site \"{site}\" is not among the sites this key can access ({}): \
                 requests that crmgate gives this site will be refused",
                or_none(&report.sites)
            ));
        }
    }
    let missing: Vec<&str> = LIKELY_NEEDED
        .iter()
        .filter(|(scope, path)| {
            let have = if legacy { path } else { scope };
            !report.scopes.iter().any(|s| s == have)
        })
        .map(|(scope, path)| if legacy { *path } else { *scope })
        .collect();
    if !missing.is_empty() {
        out.push(format!(
            "the key lacks {} (services reading or writing orders and customers will get 403)",
            missing.join(", ")
        ));
    }
    out
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn or_none(list: &[String]) -> String {
    if list.is_empty() {
        "none".into()
    } else {
        list.join(", ")
    }
}

/// An error and its sources, joined.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let part = s.to_string();
        if !text.contains(&part) {
            text = format!("{text}: {part}");
        }
        source = s.source();
    }
    text
}

/// `text` with every occurrence of `key` replaced.
fn scrub(text: &str, key: &str) -> String {
    if key.is_empty() {
        text.to_string()
    } else {
        text.replace(key, "<key>")
    }
}

impl fmt::Display for TenantReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} ({}, egress {}):",
            self.tenant, self.base_url, self.egress
        )?;
        match &self.key {
            KeyState::Accepted => writeln!(f, "  key           accepted")?,
            KeyState::Refused(status, msg) => {
                writeln!(f, "  key           REFUSED (HTTP {status}: {msg})")?;
                return Ok(());
            }
            KeyState::Failed(why) => {
                writeln!(f, "  key           NOT CHECKED: {why}")?;
                return Ok(());
            }
        }
        let v5 = if self.has_v5() {
            "available"
        } else {
            "NOT available"
        };
        writeln!(
            f,
            "  API v5        {v5} (versions {})",
            or_none(&self.versions)
        )?;
        writeln!(
            f,
            "  site access   {}; sites available: {}",
            self.site_access.as_deref().unwrap_or("unknown"),
            or_none(&self.sites)
        )?;
        writeln!(f, "  scopes        {}", or_none(&self.scopes))?;
        for w in &self.warnings {
            writeln!(f, "  warning: {w}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn judged(status: u16, body: Value) -> KeyState {
        judge_key(&CrmReply { status, body })
    }

    #[test]
    fn the_credentials_answer_decides_the_key() {
        assert_eq!(judged(200, json!({"success": true})), KeyState::Accepted);
        let wrong = json!({"success": false, "errorMsg": "Wrong \"apiKey\" value."});
        assert_eq!(
            judged(403, wrong),
            KeyState::Refused(403, "Wrong \"apiKey\" value.".into())
        );
        assert!(matches!(
            judged(404, Value::Null),
            KeyState::Refused(404, _)
        ));
        // An HTML page or a proxy's error is not an answer about the key.
        assert!(matches!(judged(502, Value::Null), KeyState::Failed(_)));
        assert!(matches!(judged(200, Value::Null), KeyState::Failed(_)));
    }

    #[test]
    fn a_key_in_an_error_text_is_scrubbed() {
        assert_eq!(
            scrub("GET https://x/?apiKey=k3y failed: k3y", "k3y"),
            "GET https://x/?apiKey=<key> failed: <key>"
        );
    }
}
