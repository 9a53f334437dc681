//! The statuses dictionary: `reference/statuses` (list) and
//! `reference/statuses/{code}/edit` (create or change one), per account.
//!
//! Enough of RetailCRM's dictionaries for the cache's tests and benchmark:
//! a read sees every write that finished before it. Only storage and the
//! two handlers; it never logs a key or a body.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};

use super::lock::lock;
use super::reply::{error, json};
use super::request::Caller;
use super::state::Shared;

/// Each account's statuses by code.
pub(crate) struct Reference {
    statuses: Vec<Mutex<BTreeMap<String, Value>>>,
}

impl Reference {
    /// The seeded statuses (`new`, `complete`) for `accounts` accounts.
    pub(crate) fn new(accounts: usize) -> Reference {
        let seed = || {
            let mut m = BTreeMap::new();
            for (i, (code, name, group)) in
                [("new", "New", "new"), ("complete", "Complete", "complete")]
                    .into_iter()
                    .enumerate()
            {
                m.insert(
                    code.to_string(),
                    json!({"name": name, "code": code, "active": true,
                           "ordering": (i + 1) * 10, "group": group}),
                );
            }
            Mutex::new(m)
        };
        Reference {
            statuses: (0..accounts).map(|_| seed()).collect(),
        }
    }
}

/// `GET /api/v*/reference/statuses`
pub(crate) async fn statuses(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let all: Map<String, Value> = lock(&sim.reference.statuses[caller.account])
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    json(StatusCode::OK, &json!({"success": true, "statuses": all}))
}

/// `POST /api/v*/reference/statuses/{code}/edit` with a form field `status`
/// (JSON): 200 when it changed one, 201 when it created one.
pub(crate) async fn edit_status(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(code): Path<String>,
) -> Response {
    let Some(raw) = caller.field("status") else {
        return error(StatusCode::BAD_REQUEST, "Parameter 'status' is missing");
    };
    let Ok(Value::Object(mut fields)) = serde_json::from_str::<Value>(raw) else {
        return error(StatusCode::BAD_REQUEST, "Errors in the entity format");
    };
    let mut all = lock(&sim.reference.statuses[caller.account]);
    let created = !all.contains_key(&code);
    let entry = all
        .entry(code.clone())
        .or_insert_with(|| json!({"code": code, "active": true, "ordering": 99, "group": "new"}));
    if let Value::Object(existing) = entry {
        fields.remove("code");
        existing.extend(fields);
    }
    drop(all);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    json(status, &json!({"success": true}))
}
