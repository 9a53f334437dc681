//! The API methods the simulator implements: the routes and their handlers.
//!
//! Handlers run behind the gate, so they can rely on a [`Caller`] extension
//! (an authenticated account plus the decoded form). Every API version path
//! (`v3`, `v4`, `v5`) reaches the same handlers, as crmgate passes any
//! version through.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::middleware::from_fn_with_state;
use axum::response::Response;
use axum::routing::{get, post};
use axum::{Extension, Router};
use serde_json::{json, Map, Value};

use super::reply::{error, json};
use super::request::Caller;
use super::state::Shared;
use super::{entities, gate, upload};

/// The versions that have the versioned routes below.
const VERSIONS: [&str; 3] = ["v3", "v4", "v5"];

/// Page sizes RetailCRM accepts for list methods.
const PAGE_SIZES: [u64; 3] = [20, 50, 100];

/// The simulator's whole HTTP application, gate included.
pub(crate) fn router(sim: Arc<Shared>) -> Router {
    let mut router = Router::new()
        .route("/api/api-versions", get(super::credentials::api_versions))
        .route("/api/credentials", get(super::credentials::credentials));
    for v in VERSIONS {
        router = router
            .route(&format!("/api/{v}/orders"), get(list_orders))
            .route(&format!("/api/{v}/orders/create"), post(create_order))
            .route(
                &format!("/api/{v}/orders/history"),
                get(super::history::orders_history),
            )
            .route(
                &format!("/api/{v}/customers"),
                get(super::listing::list_customers),
            )
            .route(
                &format!("/api/{v}/customers/history"),
                get(super::history::customers_history),
            )
            .route(&format!("/api/{v}/telephony/call/event"), post(call_event))
            .route(&format!("/api/{v}/reference/sites"), get(sites))
            .route(&format!("/api/{v}/orders/{{x}}"), get(entities::get_order))
            .route(
                &format!("/api/{v}/orders/{{x}}/edit"),
                post(super::edit::edit_order),
            )
            .route(
                &format!("/api/{v}/customers/create"),
                post(entities::create_customer),
            )
            .route(
                &format!("/api/{v}/customers/{{x}}"),
                get(entities::get_customer_route),
            )
            .route(
                &format!("/api/{v}/customers-corporate/create"),
                post(entities::create_corporate),
            )
            .route(
                &format!("/api/{v}/customers-corporate/{{x}}"),
                get(entities::get_corporate),
            )
            .route(
                &format!("/api/{v}/orders/upload"),
                post(upload::upload_orders),
            )
            .route(
                &format!("/api/{v}/customers/upload"),
                post(upload::upload_customers),
            )
            .route(
                &format!("/api/{v}/customers-corporate/upload"),
                post(upload::upload_corporate),
            )
            .route(
                &format!("/api/{v}/store/inventories/upload"),
                post(upload::upload_inventories),
            )
            .route(
                &format!("/api/{v}/store/prices/upload"),
                post(upload::upload_prices),
            )
            .route(
                &format!("/api/{v}/orders/statuses"),
                get(upload::order_statuses),
            )
            .route(
                &format!("/api/{v}/reference/statuses"),
                get(super::reference::statuses),
            )
            .route(
                &format!("/api/{v}/reference/statuses/{{code}}/edit"),
                post(super::reference::edit_status),
            );
    }
    router
        .fallback(|| async { error(StatusCode::NOT_FOUND, "Not found") })
        .method_not_allowed_fallback(|| async {
            error(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed")
        })
        // Added after the fallbacks so the gate wraps them too.
        .layer(from_fn_with_state(sim.clone(), gate::gate))
        .with_state(sim)
}

async fn sites(State(sim): State<Arc<Shared>>, Extension(caller): Extension<Caller>) -> Response {
    let sites: Map<String, Value> = sim.accounts[caller.account]
        .sites
        .iter()
        .enumerate()
        .map(|(i, code)| {
            let site = json!({
                "code": code,
                "name": code,
                "url": format!("https://{code}.example.com"),
                "defaultForCrm": i == 0,
            });
            (code.clone(), site)
        })
        .collect();
    json(StatusCode::OK, &json!({"success": true, "sites": sites}))
}

async fn list_orders(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let (mut limit, mut page) = (20u64, 1u64);
    let mut errors = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "limit" => match v.parse() {
                Ok(l) if PAGE_SIZES.contains(&l) => limit = l,
                _ => {
                    errors.insert(
                        "limit".into(),
                        "The value you selected is not a valid choice.".into(),
                    );
                }
            },
            "page" => match v.parse() {
                Ok(p) if p >= 1 => page = p,
                _ => {
                    errors.insert(
                        "page".into(),
                        "This value should be greater than or equal to 1.".into(),
                    );
                }
            },
            _ => {}
        }
    }
    if !errors.is_empty() {
        let body = json!({
            "success": false,
            "errorMsg": "Errors in the input parameters",
            "errors": errors,
        });
        return json(StatusCode::BAD_REQUEST, &body);
    }

    let account = &sim.accounts[caller.account];
    let seeded = u64::from(sim.total_orders);
    let created = sim.store.created(caller.account);
    let total = seeded + created.len() as u64;
    let start = (page - 1).saturating_mul(limit);
    let orders: Vec<Value> = (start..total.min(start.saturating_add(limit)))
        .map(|idx| match idx.checked_sub(seeded) {
            Some(c) => created[c as usize].clone(),
            None => seed_order(idx + 1, &account.sites),
        })
        .collect();
    let body = json!({
        "success": true,
        "pagination": {
            "limit": limit,
            "totalCount": total,
            "currentPage": page,
            "totalPageCount": total.div_ceil(limit),
        },
        "orders": orders,
    });
    json(StatusCode::OK, &body)
}

/// Pre-seeded order number `id` (1-based); sites take turns.
pub(super) fn seed_order(id: u64, sites: &[String]) -> Value {
    let site = match sites.len() {
        0 => "main",
        n => &sites[((id - 1) % n as u64) as usize],
    };
    json!({"id": id, "number": format!("{id}A"), "externalId": seed_external_id(id), "site": site})
}

pub(crate) fn seed_external_id(id: u64) -> String {
    format!("seed-{id}")
}

async fn create_order(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    let Some(raw) = caller.field("order") else {
        return error(StatusCode::BAD_REQUEST, "Parameter 'order' is missing");
    };
    let Ok(Value::Object(order)) = serde_json::from_str::<Value>(raw) else {
        return error(StatusCode::BAD_REQUEST, "Errors in the entity format");
    };
    let external_id = match order.get("externalId") {
        Some(Value::String(s)) => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let seeded = u64::from(sim.total_orders);
    // One lock for check and insert, so concurrent duplicates cannot both win.
    let mut created = sim.store.account(caller.account);
    if let Some(ext) = &external_id {
        if created.taken(ext, seeded) {
            let body = json!({
                "success": false,
                "errorMsg": "Errors in the entity format",
                "errors": {"externalId": "Order with externalId already exists."},
            });
            return json(StatusCode::BAD_REQUEST, &body);
        }
    }
    let site = super::entities::site_of(&sim, &caller, &order);
    let (id, order) = created.insert(seeded, order, site, external_id);
    drop(created);
    json(
        StatusCode::CREATED,
        &json!({"success": true, "id": id, "order": order}),
    )
}

async fn call_event(Extension(caller): Extension<Caller>) -> Response {
    let Some(raw) = caller.field("event") else {
        return error(StatusCode::BAD_REQUEST, "Parameter 'event' is missing");
    };
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(_)) => json(StatusCode::OK, &json!({"success": true})),
        _ => error(StatusCode::BAD_REQUEST, "Errors in the entity format"),
    }
}
