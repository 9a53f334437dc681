//! Paginated reads beyond `orders`: the customers list (newest first, so a
//! customer created during a walk shifts every later page by one, as on a
//! busy account), the page parameters every list method shares, and a
//! switch that lets another "user" create customers between two list
//! requests, for tests of de-duplication.
//!
//! The customers are the ones `customers/create` stores (`entities`), so a
//! listed customer is also found by `GET customers/{x}`; the switch and
//! [`add_customers`] create them the same way, `cust-{id}` as `externalId`.
//! Only reads, inserts and counters: it never talks to the gateway's code
//! and never logs a key.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Map, Value};

use super::entities::Kind;
use super::lock::lock;
use super::reply::json;
use super::request::Caller;
use super::state::Shared;

/// Page sizes the simulated list methods accept.
const PAGE_SIZES: [u64; 3] = [20, 50, 100];

/// The switch: customers to create once so many list requests were answered.
#[derive(Debug, Default)]
pub(crate) struct Listing {
    /// Customer-list requests answered so far.
    list_requests: AtomicU64,
    /// `(at, n)`: once `at` customer-list requests were answered, `n`
    /// customers appear before the next one is.
    pending: Mutex<Vec<(u64, u64)>>,
}

impl Listing {
    /// Arms the switch: after `after` more customer-list requests, `n` new
    /// customers appear in every account.
    pub(crate) fn add_customers_after(&self, after: u64, n: u64) {
        let at = self.list_requests.load(Ordering::SeqCst) + after;
        lock(&self.pending).push((at, n));
    }

    /// Counts one customer-list request, creating customers first when due.
    fn on_list(&self, sim: &Shared) {
        let seen = self.list_requests.fetch_add(1, Ordering::SeqCst);
        let due: u64 = {
            let mut pending = lock(&self.pending);
            let due = pending
                .iter()
                .filter(|(at, _)| seen >= *at)
                .map(|(_, n)| n)
                .sum();
            pending.retain(|(at, _)| seen < *at);
            due
        };
        if due > 0 {
            add_customers(sim, due);
        }
    }
}

/// Creates `n` customers in every account, as `customers/create` would.
pub(crate) fn add_customers(sim: &Shared, n: u64) {
    for (idx, account) in sim.accounts.iter().enumerate() {
        let site = account
            .sites
            .first()
            .cloned()
            .unwrap_or_else(|| "main".into());
        let mut customers = sim.entities.account(idx);
        for _ in 0..n {
            let id = customers.all(Kind::Customer).len() + 1;
            let mut entity = Map::new();
            entity.insert("externalId".into(), format!("cust-{id}").into());
            entity.insert("firstName".into(), format!("Customer {id}").into());
            // A clash only if a test created "cust-N" itself: skip it.
            let _ = customers.insert(Kind::Customer, entity, site.clone());
        }
    }
}

/// Orders in an account: seeded plus created.
pub(crate) fn orders_total(sim: &Shared, account: usize) -> u64 {
    u64::from(sim.total_orders) + sim.store.account(account).orders.len() as u64
}

/// Customers in an account, oldest first (`id` = position + 1).
pub(crate) fn customers(sim: &Shared, account: usize) -> Vec<Value> {
    sim.entities.account(account).all(Kind::Customer)
}

/// `limit`, `page` and the filters one list request asked for.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub(crate) limit: u64,
    pub(crate) page: u64,
    pub(crate) since_id: Option<u64>,
    pub(crate) start_date: Option<String>,
}

/// Reads the page parameters (and the history filters); the body of a
/// RetailCRM-style 400 for bad ones.
pub(crate) fn list_query(query: Option<String>) -> Result<ListQuery, Value> {
    let mut q = ListQuery {
        limit: 20,
        page: 1,
        ..ListQuery::default()
    };
    let mut errors = Map::new();
    for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        match &*k {
            "limit" => match v.parse() {
                Ok(l) if PAGE_SIZES.contains(&l) => q.limit = l,
                _ => {
                    errors.insert(
                        "limit".into(),
                        "The value you selected is not a valid choice.".into(),
                    );
                }
            },
            "page" => match v.parse() {
                Ok(p) if p >= 1 => q.page = p,
                _ => {
                    errors.insert(
                        "page".into(),
                        "This value should be greater than or equal to 1.".into(),
                    );
                }
            },
            "filter[sinceId]" => match v.parse() {
                Ok(id) => q.since_id = Some(id),
                _ => {
                    errors.insert(
                        "sinceId".into(),
                        "This value should be of type integer.".into(),
                    );
                }
            },
            "filter[startDate]" => {
                let ok =
                    v.len() >= 10 && v.bytes().all(|b| b.is_ascii_digit() || b" -:".contains(&b));
                if ok {
                    q.start_date = Some(v.into_owned());
                } else {
                    errors.insert(
                        "startDate".into(),
                        "This value is not a valid datetime.".into(),
                    );
                }
            }
            _ => {}
        }
    }
    if errors.is_empty() {
        Ok(q)
    } else {
        Err(json!({
            "success": false,
            "errorMsg": "Errors in the input parameters",
            "errors": errors,
        }))
    }
}

/// RetailCRM's `pagination` object.
pub(crate) fn pagination(q: &ListQuery, total: u64) -> Value {
    json!({
        "limit": q.limit,
        "totalCount": total,
        "currentPage": q.page,
        "totalPageCount": total.div_ceil(q.limit),
    })
}

/// `GET /api/v5/customers`: newest first.
pub(crate) async fn list_customers(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let q = match list_query(query) {
        Ok(q) => q,
        Err(body) => return json(StatusCode::BAD_REQUEST, &body),
    };
    sim.listing.on_list(&sim);
    let all = customers(&sim, caller.account);
    let total = all.len() as u64;
    let skip = (q.page - 1).saturating_mul(q.limit);
    let page: Vec<&Value> = all
        .iter()
        .rev()
        .skip(skip as usize)
        .take(q.limit as usize)
        .collect();
    let body = json!({
        "success": true,
        "pagination": pagination(&q, total),
        "customers": page,
    });
    json(StatusCode::OK, &body)
}
