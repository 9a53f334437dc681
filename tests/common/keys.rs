//! Client keys in every place a client puts one (header, query, form body),
//! and the CRM-side check that none of them got through.
//!
//! It only sends requests and reads the simulator's records; it starts
//! nothing and never decides what the gateway should have answered beyond
//! "accepted".

use crmgate::sim::Received;

use super::{ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT};

/// Every client key of the test config: none may reach the CRM.
pub const CLIENT_KEYS: [&str; 3] = [ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT];

/// Whether `needle` occurs in `haystack` (a body is bytes, not always UTF-8).
pub fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// Sends three requests through the gateway at `base`, each with its
/// client key in another place, and asserts each was answered 2xx:
///
/// 1. header (Python, Go, PHP v6): `GET /api/v5/orders?limit=20` with
///    `X-API-KEY: ACME_CLIENT`;
/// 2. query (legacy PHP v5, .NET), twice, first and last:
///    `GET /api/v5/orders?apiKey=ACME_CLIENT2&limit=20&apiKey=ACME_CLIENT`;
/// 3. form body (legacy POST), in the middle: `POST /api/v5/orders/create`
///    with `site=beta-shop&apiKey=BETA_CLIENT&order={"externalId":"<external_id>"}`.
///
/// The CRM should then have seen acme, acme (query `limit=20&site=main`)
/// and beta (body `site=beta-shop&order=...`), in that order.
pub async fn send_a_key_in_every_place(c: &reqwest::Client, base: &str, external_id: &str) {
    let r = c
        .get(format!("{base}/api/v5/orders?limit=20"))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "key in the header");
    let r = c
        .get(format!(
            "{base}/api/v5/orders?apiKey={ACME_CLIENT2}&limit=20&apiKey={ACME_CLIENT}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "key in the query");
    let r = c
        .post(format!("{base}/api/v5/orders/create"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(format!(
            "site=beta-shop&apiKey={BETA_CLIENT}&order=%7B%22externalId%22%3A%22{external_id}%22%7D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201, "key in the form body");
}

/// No client key (nor any `apiKey` parameter) reached the CRM, in any record,
/// and each record carries exactly one `X-API-KEY`.
pub fn assert_no_client_key(records: &[Received]) {
    for r in records {
        for key in CLIENT_KEYS {
            assert_ne!(r.api_key.as_deref(), Some(key), "{r:?}");
            assert!(
                !r.query.as_deref().unwrap_or("").contains(key),
                "client key in query: {r:?}"
            );
            assert!(
                !r.headers
                    .iter()
                    .any(|(n, v)| n.contains(key) || v.contains(key)),
                "client key in headers: {r:?}"
            );
            assert!(!contains(&r.body, key), "client key in body: {r:?}");
        }
        assert!(
            !r.query.as_deref().unwrap_or("").contains("apiKey"),
            "apiKey left in query: {r:?}"
        );
        assert!(!contains(&r.body, "apiKey"), "apiKey left in body: {r:?}");
        let keys = r.headers.iter().filter(|(n, _)| n == "x-api-key").count();
        assert_eq!(keys, 1, "{r:?}");
    }
}
