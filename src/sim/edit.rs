//! `POST orders/{x}/edit`: change an order created in this simulator, found
//! by `externalId` (the default) or `id` (`by`, a form field as
//! api-client-php 5.x sends it, or a query parameter). The fields of the
//! `order` form field (a JSON object) replace the stored ones, except `id`
//! and `externalId`; the answer is RetailCRM's `{"success":true,"id":N,
//! "order":{...}}`, or its JSON 404. Seeded orders are read-only here.
//! Never logs.

use std::sync::Arc;

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::reply::{error, json};
use super::request::Caller;
use super::state::Shared;

pub(crate) async fn edit_order(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(x): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let in_query = form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .find(|(k, _)| k == "by")
        .map(|(_, v)| v.into_owned());
    let by = caller.field("by").map(str::to_owned).or(in_query);
    let by_id = match by.as_deref() {
        None | Some("externalId") => false,
        Some("id") => true,
        Some(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "Value of 'by' parameter should be 'id' or 'externalId'",
            )
        }
    };
    let Some(raw) = caller.field("order") else {
        return error(StatusCode::BAD_REQUEST, "Parameter 'order' is missing");
    };
    let Ok(Value::Object(changes)) = serde_json::from_str::<Value>(raw) else {
        return error(StatusCode::BAD_REQUEST, "Errors in the entity format");
    };
    let mut created = sim.store.account(caller.account);
    let key = if by_id { "id" } else { "externalId" };
    let found = created.orders.iter_mut().find(|o| match &o[key] {
        Value::String(s) => *s == x,
        Value::Number(n) => n.to_string() == x,
        _ => false,
    });
    let Some(order) = found else {
        return error(StatusCode::NOT_FOUND, "Not found");
    };
    for (k, v) in changes {
        if k != "id" && k != "externalId" {
            order[&k] = v;
        }
    }
    json(
        StatusCode::OK,
        &json!({"success": true, "id": order["id"], "order": order}),
    )
}
