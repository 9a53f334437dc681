//! `orders/history` and `customers/history`: the change logs integrations
//! sync from, with `filter[sinceId]` (exclusive), `filter[startDate]`,
//! `limit`, `page`, a `history` list and `pagination`, oldest first.
//!
//! Entry `k` records the creation of order (or customer) `k`, so the log
//! grows as orders and customers are created, and entry ids rise with
//! `createdAt` (one minute apart from 2026-01-01 00:01:00). Generated on
//! the fly: thousands of entries cost nothing until asked for. Never logs.

use std::sync::Arc;

use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use super::listing::{customers, list_query, orders_total, pagination};
use super::reply::json;
use super::request::Caller;
use super::state::Shared;

/// `GET /api/v5/orders/history`.
pub(crate) async fn orders_history(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let total = orders_total(&sim, caller.account);
    let site = sim.accounts[caller.account]
        .sites
        .first()
        .cloned()
        .unwrap_or_else(|| "main".into());
    let order =
        |id: u64| json!({"id": id, "number": format!("{id}A"), "site": site, "status": "new"});
    history(query, total, "order", order)
}

/// `GET /api/v5/customers/history`.
pub(crate) async fn customers_history(
    State(sim): State<Arc<Shared>>,
    Extension(caller): Extension<Caller>,
    RawQuery(query): RawQuery,
) -> Response {
    let all = customers(&sim, caller.account);
    let customer = |id: u64| all.get(id as usize - 1).cloned().unwrap_or(Value::Null);
    history(query, all.len() as u64, "customer", customer)
}

/// Entries `1..=total`, entry `k` the creation of `subject(k)`.
fn history(
    query: Option<String>,
    total: u64,
    entity: &str,
    subject: impl Fn(u64) -> Value,
) -> Response {
    let q = match list_query(query) {
        Ok(q) => q,
        Err(body) => return json(StatusCode::BAD_REQUEST, &body),
    };
    // The first entry the filters let through (ids are 1..=total, and
    // createdAt rises with the id).
    let mut first = q.since_id.map_or(1, |s| s.saturating_add(1));
    if let Some(start) = &q.start_date {
        let ids: Vec<u64> = (first..=total).collect();
        first += ids.partition_point(|id| created_at(*id).as_str() < start.as_str()) as u64;
    }
    let matching = (total + 1).saturating_sub(first);
    let start = first.saturating_add((q.page - 1).saturating_mul(q.limit));
    let entries: Vec<Value> = (start..=total)
        .take(q.limit as usize)
        .map(|id| {
            json!({
                "id": id,
                "createdAt": created_at(id),
                "created": true,
                "source": "api",
                "field": "status",
                "oldValue": null,
                "newValue": {"code": "new"},
                "apiKey": {"current": false},
                entity: subject(id),
            })
        })
        .collect();
    let body = json!({
        "success": true,
        "generatedAt": created_at(total + 1),
        "history": entries,
        "pagination": pagination(&q, matching),
    });
    json(StatusCode::OK, &body)
}

/// `Y-m-d H:i:s` of entry `id`: 2026-01-01 00:00:00 plus `id` minutes.
fn created_at(id: u64) -> String {
    let secs = id * 60;
    let (days, rest) = (secs / 86_400, secs % 86_400);
    // Days since 2026-01-01 to a civil date (H. Hinnant's algorithm, from
    // the 1970 epoch: 2026-01-01 is day 20454).
    let z = 20_454 + days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rest / 3600,
        (rest % 3600) / 60,
        rest % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_are_a_minute_apart_from_new_year_2026() {
        assert_eq!(created_at(0), "2026-01-01 00:00:00");
        assert_eq!(created_at(1), "2026-01-01 00:01:00");
        assert_eq!(created_at(1440), "2026-01-02 00:00:00");
        assert_eq!(created_at(59 * 1440 + 61), "2026-03-01 01:01:00");
        assert_eq!(created_at(365 * 1440), "2027-01-01 00:00:00");
    }
}
