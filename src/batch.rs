//! The batch guard: a batch method with more items than RetailCRM accepts
//! in one call is refused before it spends a slot.
//!
//! RetailCRM refuses such a call anyway, after it has cost one of the
//! account's ten requests a second; answering it here costs nothing and
//! names the limit. The limits are RetailCRM's (see `retailcrm-api.md`):
//!
//! | method | counted | at most |
//! |---|---|---|
//! | `orders/upload` | `orders` | 50 |
//! | `customers/upload` | `customers` | 50 |
//! | `customers-corporate/upload` | `customersCorporate` | 50 |
//! | `telephony/calls/upload` | `calls` | 50 |
//! | `store/inventories/upload` | `offers` | 250 |
//! | `store/prices/upload` | `prices` | 250 |
//! | `orders/statuses` | `ids[]` and `externalIds[]` together | 500 |
//!
//! A body it cannot read (not a form, a field that is not JSON) is left to
//! the CRM to judge: the guard refuses only what it has counted. It owns no
//! I/O, never logs, and never changes a request it lets through.

use axum::http::Method;
use serde_json::Value;

use crate::error::GatewayError;
use crate::inbound::Outgoing;
use crate::rewrite::is_form;

/// One batch method: where its items are and how many RetailCRM accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchRule {
    /// The method after `/api/v{N}/`, e.g. `orders/upload`.
    pub method: &'static str,
    /// The form field holding a JSON array (POST), or the query array
    /// names (GET, `name[]`), that are counted.
    pub fields: &'static [&'static str],
    /// Most items RetailCRM accepts.
    pub limit: usize,
}

/// Every batch method with a documented limit.
pub const RULES: [BatchRule; 7] = [
    BatchRule {
        method: "orders/upload",
        fields: &["orders"],
        limit: 50,
    },
    BatchRule {
        method: "customers/upload",
        fields: &["customers"],
        limit: 50,
    },
    BatchRule {
        method: "customers-corporate/upload",
        fields: &["customersCorporate"],
        limit: 50,
    },
    BatchRule {
        method: "telephony/calls/upload",
        fields: &["calls"],
        limit: 50,
    },
    BatchRule {
        method: "store/inventories/upload",
        fields: &["offers"],
        limit: 250,
    },
    BatchRule {
        method: "store/prices/upload",
        fields: &["prices"],
        limit: 250,
    },
    BatchRule {
        method: "orders/statuses",
        fields: &["ids", "externalIds"],
        limit: 500,
    },
];

/// The API method of `path` (`/api/v5/orders/upload` → `orders/upload`),
/// when it is versioned (`/api/v{N}/...`).
pub fn api_method(path: &str) -> Option<&str> {
    let rest = path.strip_prefix("/api/v")?;
    let (version, method) = rest.split_once('/')?;
    (!version.is_empty() && version.bytes().all(|b| b.is_ascii_digit())).then_some(method)
}

/// Refuses `out` when it is a batch call over its method's limit.
pub fn check(out: &Outgoing) -> Result<(), GatewayError> {
    let Some(method) = api_method(&out.path) else {
        return Ok(());
    };
    let Some(rule) = RULES.iter().find(|r| r.method == method) else {
        return Ok(());
    };
    let got = if out.method == Method::GET || out.method == Method::HEAD {
        count_query(out.query.as_deref().unwrap_or(""), rule.fields)
    } else if is_form(&out.headers) {
        count_form(&out.body, rule.fields)
    } else {
        0
    };
    if got > rule.limit {
        return Err(GatewayError::BatchTooLarge {
            method: rule.method,
            items: rule.fields[0],
            limit: rule.limit,
            got,
        });
    }
    Ok(())
}

/// Items in the form fields `fields`, each a JSON array (or object).
fn count_form(body: &[u8], fields: &[&str]) -> usize {
    form_urlencoded::parse(body)
        .filter(|(k, _)| fields.contains(&k.as_ref()))
        .map(|(_, v)| match serde_json::from_str::<Value>(&v) {
            Ok(Value::Array(items)) => items.len(),
            Ok(Value::Object(items)) => items.len(),
            _ => 0,
        })
        .sum()
}

/// Query parameters named `field[]` or `field[i]` for any of `fields`.
fn count_query(query: &str, fields: &[&str]) -> usize {
    form_urlencoded::parse(query.as_bytes())
        .filter(|(k, _)| {
            k.split_once('[')
                .is_some_and(|(name, rest)| fields.contains(&name) && rest.ends_with(']'))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::body::Bytes;
    use axum::http::{header, HeaderMap};

    fn post(path: &str, body: String) -> Outgoing {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONTENT_TYPE,
            "application/x-www-form-urlencoded".parse().unwrap(),
        );
        Outgoing {
            method: Method::POST,
            path: path.into(),
            query: None,
            headers,
            body: Bytes::from(body),
        }
    }

    fn items(field: &str, n: usize) -> String {
        let list: Vec<Value> = (0..n)
            .map(|i| serde_json::json!({"externalId": format!("x{i}")}))
            .collect();
        form_urlencoded::Serializer::new(String::new())
            .append_pair("site", "main")
            .append_pair(field, &Value::Array(list).to_string())
            .finish()
    }

    #[test]
    fn every_upload_is_let_through_at_its_limit_and_refused_above_it() {
        for rule in RULES.iter().filter(|r| r.method != "orders/statuses") {
            let path = format!("/api/v5/{}", rule.method);
            let field = rule.fields[0];
            assert!(
                check(&post(&path, items(field, rule.limit))).is_ok(),
                "{rule:?}"
            );
            match check(&post(&path, items(field, rule.limit + 1))) {
                Err(e @ GatewayError::BatchTooLarge { .. }) => {
                    let text = e.to_string();
                    assert!(text.contains(&format!("at most {}", rule.limit)), "{text}");
                    assert!(text.contains(rule.method), "{text}");
                    assert_eq!(e.status(), 400);
                }
                other => panic!("{rule:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn order_statuses_count_ids_and_external_ids_together() {
        let get = |ids: usize, ext: usize| {
            let mut q = form_urlencoded::Serializer::new(String::new());
            for i in 0..ids {
                q.append_pair("ids[]", &i.to_string());
            }
            for i in 0..ext {
                q.append_pair(&format!("externalIds[{i}]"), "e");
            }
            Outgoing {
                method: Method::GET,
                path: "/api/v5/orders/statuses".into(),
                query: Some(q.finish()),
                headers: HeaderMap::new(),
                body: Bytes::new(),
            }
        };
        assert!(check(&get(500, 0)).is_ok());
        assert!(check(&get(300, 200)).is_ok());
        assert!(check(&get(501, 0)).is_err());
        assert!(check(&get(250, 251)).is_err());
    }

    #[test]
    fn what_cannot_be_counted_goes_to_the_crm() {
        // Not JSON, another method, another version spelling, not a form.
        let body = "orders=not-json".to_string();
        assert!(check(&post("/api/v5/orders/upload", body)).is_ok());
        let big = items("orders", 80);
        assert!(check(&post("/api/v5/orders/create", big.clone())).is_ok());
        assert!(check(&post("/api/v4/orders/upload", big.clone())).is_err());
        assert!(check(&post("/api/orders/upload", big.clone())).is_ok());
        let mut json = post("/api/v5/orders/upload", big);
        json.headers
            .insert(header::CONTENT_TYPE, "application/json".parse().unwrap());
        assert!(check(&json).is_ok());
    }
}
