//! Customers, corporate customers and lookups by `externalId`: the methods
//! that let tests reconcile a create that failed after it was sent.
//!
//! - `POST customers/create` and `customers-corporate/create` (form field
//!   `customer` / `customerCorporate`, a JSON object), refusing an
//!   `externalId` the account already has, as RetailCRM does (400,
//!   `errors.externalId`);
//! - `GET orders/{x}`, `customers/{x}`, `customers-corporate/{x}` with
//!   `by=externalId` (the default) or `by=id`, and an optional `site`:
//!   200 with the entity, or RetailCRM's JSON 404.
//!
//! Orders live in the order store (`store`), the customers here. This module
//! never logs and never forgets an entity while the simulator runs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};

use super::lock::lock;
use super::reply::{error, json};
use super::request::Caller;
use super::state::Shared;

/// The kinds of customer the simulator stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// `customers/*`, field `customer`.
    Customer,
    /// `customers-corporate/*`, field `customerCorporate`.
    Corporate,
}

impl Kind {
    /// The form field and the answer's key.
    pub(crate) fn field(self) -> &'static str {
        match self {
            Kind::Customer => "customer",
            Kind::Corporate => "customerCorporate",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Kind::Customer => "Customer",
            Kind::Corporate => "Corporate customer",
        }
    }
}

/// The `externalId` of a new entity is already used in its account.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Taken;

/// Customers created through the API, per account.
pub(crate) struct Entities {
    accounts: Vec<Mutex<Customers>>,
}

/// One account's customers of both kinds.
#[derive(Default)]
pub(crate) struct Customers {
    customers: Vec<Value>,
    corporate: Vec<Value>,
    customer_ids: HashSet<String>,
    corporate_ids: HashSet<String>,
}

impl Customers {
    /// The list and the claimed `externalId`s of one kind.
    fn of(&mut self, kind: Kind) -> (&mut Vec<Value>, &mut HashSet<String>) {
        match kind {
            Kind::Customer => (&mut self.customers, &mut self.customer_ids),
            Kind::Corporate => (&mut self.corporate, &mut self.corporate_ids),
        }
    }

    /// Stores `entity` (a JSON object) as a new `kind` for `site`, unless
    /// its `externalId` is taken: the stored entity, or [`Taken`].
    pub(crate) fn insert(
        &mut self,
        kind: Kind,
        mut entity: Map<String, Value>,
        site: String,
    ) -> Result<Value, Taken> {
        let external_id = external_id(&entity);
        let (list, ids) = self.of(kind);
        if let Some(ext) = &external_id {
            if ids.contains(ext) {
                return Err(Taken);
            }
        }
        let id = list.len() as u64 + 1;
        entity.insert("id".into(), id.into());
        entity.insert("site".into(), site.into());
        let entity = Value::Object(entity);
        list.push(entity.clone());
        if let Some(ext) = external_id {
            ids.insert(ext);
        }
        Ok(entity)
    }

    /// Every stored entity of `kind`.
    pub(crate) fn all(&mut self, kind: Kind) -> Vec<Value> {
        self.of(kind).0.clone()
    }
}

impl Entities {
    pub(crate) fn new(accounts: usize) -> Self {
        Entities {
            accounts: (0..accounts).map(|_| Mutex::default()).collect(),
        }
    }

    /// Locks one account's customers (check and insert under one lock).
    pub(crate) fn account(&self, account: usize) -> MutexGuard<'_, Customers> {
        lock(&self.accounts[account])
    }
}

/// An entity's `externalId` as text, when it has one.
pub(crate) fn external_id(entity: &Map<String, Value>) -> Option<String> {
    match entity.get("externalId") {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    }
}

/// RetailCRM's refusal of an `externalId` that is already used.
pub(crate) fn duplicate(label: &str) -> Response {
    let body = json!({
        "success": false,
        "errorMsg": "Errors in the entity format",
        "errors": {"externalId": format!("{label} with externalId already exists.")},
    });
    json(StatusCode::BAD_REQUEST, &body)
}

/// The site of a new entity: the form's `site`, the entity's own, or the
/// account's first.
pub(crate) fn site_of(sim: &Shared, caller: &Caller, entity: &Map<String, Value>) -> String {
    caller
        .field("site")
        .map(str::to_owned)
        .or_else(|| {
            entity
                .get("site")
                .and_then(Value::as_str)
                .map(str::to_owned)
        })
        .or_else(|| sim.accounts[caller.account].sites.first().cloned())
        .unwrap_or_else(|| "main".into())
}

async fn create(sim: &Shared, caller: &Caller, kind: Kind) -> Response {
    let field = kind.field();
    let Some(raw) = caller.field(field) else {
        return error(
            StatusCode::BAD_REQUEST,
            &format!("Parameter '{field}' is missing"),
        );
    };
    let Ok(Value::Object(entity)) = serde_json::from_str::<Value>(raw) else {
        return error(StatusCode::BAD_REQUEST, "Errors in the entity format");
    };
    let site = site_of(sim, caller, &entity);
    let stored = sim
        .entities
        .account(caller.account)
        .insert(kind, entity, site);
    match stored {
        Ok(entity) => json(
            StatusCode::CREATED,
            &json!({"success": true, "id": entity["id"]}),
        ),
        Err(Taken) => duplicate(kind.label()),
    }
}

/// `POST customers/create`.
pub(crate) async fn create_customer(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    create(&sim, &caller, Kind::Customer).await
}

/// `POST customers-corporate/create`.
pub(crate) async fn create_corporate(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
) -> Response {
    create(&sim, &caller, Kind::Corporate).await
}

/// What a lookup asks: by which identifier, and in which site.
struct By {
    id: bool,
    site: Option<String>,
}

fn by(query: Option<String>) -> Result<By, Box<Response>> {
    let mut by = By {
        id: false,
        site: None,
    };
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "by" => match &*v {
                "externalId" => by.id = false,
                "id" => by.id = true,
                _ => {
                    let body = json!({
                        "success": false,
                        "errorMsg": "Errors in the input parameters",
                        "errors": {"by": "The value you selected is not a valid choice."},
                    });
                    return Err(Box::new(json(StatusCode::BAD_REQUEST, &body)));
                }
            },
            "site" => by.site = Some(v.into_owned()),
            _ => {}
        }
    }
    Ok(by)
}

/// The entity among `candidates` that `x` names, read as `by` says.
fn find(candidates: impl IntoIterator<Item = Value>, x: &str, by: &By) -> Option<Value> {
    candidates.into_iter().find(|e| {
        let key = if by.id { &e["id"] } else { &e["externalId"] };
        let matches = match key {
            Value::String(s) => s == x,
            Value::Number(n) => n.to_string() == x,
            _ => false,
        };
        let in_site = match &by.site {
            None => true,
            Some(site) => e["site"] == site.as_str(),
        };
        matches && in_site
    })
}

fn found(field: &str, entity: Option<Value>) -> Response {
    match entity {
        Some(e) => {
            let mut body = json!({"success": true});
            body[field] = e;
            json(StatusCode::OK, &body)
        }
        None => error(StatusCode::NOT_FOUND, "Not found"),
    }
}

/// `GET orders/{x}`: created orders, then the seeded ones.
pub(crate) async fn get_order(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(x): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    let by = match by(query) {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    let created = sim.store.created(caller.account);
    let seeded = u64::from(sim.total_orders);
    let sites = &sim.accounts[caller.account].sites;
    // Seeded order n is "seed-n" by externalId, n by id.
    let seed = if by.id {
        x.parse::<u64>().ok()
    } else {
        x.strip_prefix("seed-").and_then(|n| n.parse::<u64>().ok())
    }
    .filter(|n| (1..=seeded).contains(n))
    .map(|n| super::api::seed_order(n, sites));
    found("order", find(created.into_iter().chain(seed), &x, &by))
}

async fn get_customer(
    sim: &Shared,
    caller: &Caller,
    x: &str,
    query: Option<String>,
    kind: Kind,
) -> Response {
    let by = match by(query) {
        Ok(b) => b,
        Err(refusal) => return *refusal,
    };
    let all = sim.entities.account(caller.account).all(kind);
    found(kind.field(), find(all, x, &by))
}

/// `GET customers/{x}`.
pub(crate) async fn get_customer_route(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(x): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    get_customer(&sim, &caller, &x, query, Kind::Customer).await
}

/// `GET customers-corporate/{x}`.
pub(crate) async fn get_corporate(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    Path(x): Path<String>,
    RawQuery(query): RawQuery,
) -> Response {
    get_customer(&sim, &caller, &x, query, Kind::Corporate).await
}
