//! Batch methods, with RetailCRM's item limits: uploads of orders and
//! customers (a `460` when only some items are taken), inventories and
//! prices, and `orders/statuses`.
//!
//! Limits (from `retailcrm-api.md`): 50 orders, customers or corporate
//! customers per upload, 250 offers or prices, 500 ids for statuses. A call
//! over its limit is refused with 400 after it has counted in the rate
//! window, as at the real CRM. An upload item whose `externalId` is already
//! taken fails alone: the others are stored, and the answer is `460` with
//! `uploaded*` and `failed*` lists. This module never logs.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};

use super::entities::{external_id, site_of, Kind};
use super::reply::{error, json};
use super::request::Caller;
use super::state::Shared;

/// What kind of item an upload stores.
#[derive(Debug, Clone, Copy)]
enum Item {
    Order,
    Customer(Kind),
}

/// The items of form field `field` (a JSON array), or the 400 to answer.
fn items(caller: &Caller, field: &str, limit: usize) -> Result<Vec<Value>, Box<Response>> {
    let Some(raw) = caller.field(field) else {
        let msg = format!("Parameter '{field}' is missing");
        return Err(Box::new(error(StatusCode::BAD_REQUEST, &msg)));
    };
    let Ok(Value::Array(items)) = serde_json::from_str::<Value>(raw) else {
        let msg = "Errors in the entity format";
        return Err(Box::new(error(StatusCode::BAD_REQUEST, msg)));
    };
    if items.len() > limit {
        let body = json!({
            "success": false,
            "errorMsg": "Errors in the input parameters",
            "errors": {field: format!("This collection should contain {limit} elements or less.")},
        });
        return Err(Box::new(json(StatusCode::BAD_REQUEST, &body)));
    }
    Ok(items)
}

/// Stores one order as `orders/create` does; `None` when its `externalId`
/// is taken (or it is not an object).
fn store_order(sim: &Shared, caller: &Caller, item: Value) -> Option<Value> {
    let Value::Object(order) = item else {
        return None;
    };
    let seeded = u64::from(sim.total_orders);
    let ext = external_id(&order);
    let site = site_of(sim, caller, &order);
    let mut created = sim.store.account(caller.account);
    if ext.as_deref().is_some_and(|ext| created.taken(ext, seeded)) {
        return None;
    }
    Some(created.insert(seeded, order, site, ext).1)
}

fn store_customer(sim: &Shared, caller: &Caller, kind: Kind, item: Value) -> Option<Value> {
    let Value::Object(entity) = item else {
        return None;
    };
    let site = site_of(sim, caller, &entity);
    sim.entities
        .account(caller.account)
        .insert(kind, entity, site)
        .ok()
}

/// One upload: each item stored or failed; 201 when all were stored, 460
/// when some were, 400 when none was.
fn upload(sim: &Shared, caller: &Caller, field: &str, plural: &str, item: Item) -> Response {
    let items = match items(caller, field, 50) {
        Ok(items) => items,
        Err(refusal) => return *refusal,
    };
    let (mut uploaded, mut failed) = (Vec::new(), Vec::new());
    for it in items {
        let ext = it.get("externalId").cloned().unwrap_or(Value::Null);
        let stored = match item {
            Item::Order => store_order(sim, caller, it),
            Item::Customer(kind) => store_customer(sim, caller, kind, it),
        };
        match stored {
            Some(e) => uploaded.push(json!({"id": e["id"], "externalId": ext})),
            None => failed.push(json!({"externalId": ext})),
        }
    }
    let mut body = Map::new();
    body.insert(format!("uploaded{plural}"), Value::Array(uploaded.clone()));
    let status = if failed.is_empty() {
        body.insert("success".into(), true.into());
        StatusCode::CREATED
    } else {
        body.insert("success".into(), false.into());
        body.insert(
            "errorMsg".into(),
            format!("{plural} are loaded with errors").into(),
        );
        body.insert(format!("failed{plural}"), Value::Array(failed));
        if uploaded.is_empty() {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::from_u16(460).expect("460 is a valid status")
        }
    };
    json(status, &Value::Object(body))
}

/// `POST orders/upload`.
pub(crate) async fn upload_orders(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    upload(&sim, &caller, "orders", "Orders", Item::Order)
}

/// `POST customers/upload`.
pub(crate) async fn upload_customers(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    upload(
        &sim,
        &caller,
        "customers",
        "Customers",
        Item::Customer(Kind::Customer),
    )
}

/// `POST customers-corporate/upload`.
pub(crate) async fn upload_corporate(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    upload(
        &sim,
        &caller,
        "customersCorporate",
        "CustomersCorporate",
        Item::Customer(Kind::Corporate),
    )
}

/// `POST store/inventories/upload` (`offers`) and `store/prices/upload`
/// (`prices`): every offer is taken.
fn offers(caller: &Caller, field: &str) -> Response {
    match items(caller, field, 250) {
        Ok(items) => json(
            StatusCode::OK,
            &json!({"success": true, "processedOffersCount": items.len(), "notFoundOffers": []}),
        ),
        Err(refusal) => *refusal,
    }
}

/// `POST store/inventories/upload`.
pub(crate) async fn upload_inventories(Extension(caller): Extension<Caller>) -> Response {
    offers(&caller, "offers")
}

/// `POST store/prices/upload`.
pub(crate) async fn upload_prices(Extension(caller): Extension<Caller>) -> Response {
    offers(&caller, "prices")
}

/// `GET orders/statuses`: `ids[]` and `externalIds[]`, 500 at most together.
pub(crate) async fn order_statuses(RawQuery(query): RawQuery) -> Response {
    let query = query.unwrap_or_default();
    let asked: Vec<(String, String)> = form_urlencoded::parse(query.as_bytes())
        .into_owned()
        .filter(|(k, _)| k.starts_with("ids[") || k.starts_with("externalIds["))
        .collect();
    if asked.len() > 500 {
        let body = json!({
            "success": false,
            "errorMsg": "Errors in the input parameters",
            "errors": {"ids": "This collection should contain 500 elements or less."},
        });
        return json(StatusCode::BAD_REQUEST, &body);
    }
    let orders: Vec<Value> = asked
        .iter()
        .map(|(k, v)| {
            let key = if k.starts_with("ids[") {
                "id"
            } else {
                "externalId"
            };
            json!({key: v, "status": "new", "group": "new"})
        })
        .collect();
    json(StatusCode::OK, &json!({"success": true, "orders": orders}))
}
