//! The version-less methods that describe a key: `GET /api/api-versions`
//! and `GET /api/credentials`, answered in RetailCRM's shapes, and what
//! each account's key may do ([`KeyAccess`], settable while running).
//!
//! `credentials` answers `scopes` (current CRMs), `credentials` (the older
//! list of method paths, kept by the CRM for old clients), `siteAccess`
//! (`access_full` or `access_selective`) and `sitesAvailable`. Never echoes
//! or logs a key.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::lock::lock;
use super::reply::json;
use super::request::Caller;
use super::state::Shared;

/// What one account's key may do, as `GET /api/credentials` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyAccess {
    /// Scopes such as `order_read` or `customer_write`.
    pub scopes: Vec<String>,
    /// `None`: every site of the account (`access_full`); `Some`: only these
    /// (`access_selective`).
    pub sites: Option<Vec<String>>,
    /// Answer as an older CRM: the `credentials` list of method paths only,
    /// no `scopes`.
    pub legacy: bool,
}

impl Default for KeyAccess {
    /// Full access: every site, and the scopes crmgate's traffic uses.
    fn default() -> Self {
        KeyAccess {
            scopes: [
                "order_read",
                "order_write",
                "customer_read",
                "customer_write",
                "reference_read",
                "reference_write",
                "store_write",
                "telephony_write",
            ]
            .map(String::from)
            .to_vec(),
            sites: None,
            legacy: false,
        }
    }
}

/// Each account's [`KeyAccess`], by account index; absent: the default.
#[derive(Default)]
pub(crate) struct Access(Mutex<HashMap<usize, KeyAccess>>);

impl Access {
    pub(crate) fn set(&self, account: usize, access: KeyAccess) {
        lock(&self.0).insert(account, access);
    }

    fn get(&self, account: usize) -> KeyAccess {
        lock(&self.0).get(&account).cloned().unwrap_or_default()
    }
}

/// The method paths an older CRM lists in `credentials` for a scope.
fn paths_of(scope: &str) -> &'static [&'static str] {
    match scope {
        "order_read" => &["/api/orders", "/api/orders/history"],
        "order_write" => &[
            "/api/orders/create",
            "/api/orders/edit",
            "/api/orders/upload",
        ],
        "customer_read" => &["/api/customers", "/api/customers/history"],
        "customer_write" => &["/api/customers/create", "/api/customers/edit"],
        "reference_read" => &["/api/reference/sites", "/api/reference/statuses"],
        "telephony_write" => &["/api/telephony/call/event"],
        _ => &[],
    }
}

pub(crate) async fn api_versions() -> Response {
    json(
        StatusCode::OK,
        &json!({"success": true, "versions": ["3.0", "4.0", "5.0"]}),
    )
}

pub(crate) async fn credentials(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let access = sim.access.get(caller.account);
    let all = &sim.accounts[caller.account].sites;
    let (site_access, sites) = match &access.sites {
        None => ("access_full", all.clone()),
        Some(sites) => ("access_selective", sites.clone()),
    };
    let mut paths = vec!["/api/credentials"];
    for scope in &access.scopes {
        paths.extend_from_slice(paths_of(scope));
    }
    let mut body = json!({
        "success": true,
        "credentials": paths,
        "siteAccess": site_access,
        "sitesAvailable": sites,
    });
    if !access.legacy {
        body["scopes"] = Value::from(access.scopes.clone());
    }
    json(StatusCode::OK, &body)
}
