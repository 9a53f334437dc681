//! The stage's pure parts: which requests are creates, what is looked up,
//! and what counts as "that externalId already exists".

use super::*;

fn form_post(path: &str, query: Option<&str>, body: &str) -> Outgoing {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        "application/x-www-form-urlencoded; charset=utf-8"
            .parse()
            .unwrap(),
    );
    headers.insert(REQUEST_ID_HEADER, "req-1".parse().unwrap());
    Outgoing {
        method: Method::POST,
        path: path.into(),
        query: query.map(Into::into),
        headers,
        body: Bytes::from(body.to_string()),
    }
}

fn field(name: &str, json: &str) -> String {
    form_urlencoded::Serializer::new(String::new())
        .append_pair(name, json)
        .finish()
}

#[test]
fn the_three_creates_are_recognised_with_their_external_id_and_site() {
    let order = form_post(
        "/api/v5/orders/create",
        None,
        &format!(
            "{}&site=shop-2",
            field("order", r#"{"externalId":"ext-1"}"#)
        ),
    );
    assert_eq!(
        create_of(&order),
        Some(Create {
            entity: Entity::Order,
            version: "v5".into(),
            external_id: Some("ext-1".into()),
            site: Some("shop-2".into()),
        })
    );
    let customer = form_post(
        "/api/v4/customers/create",
        Some("site=main"),
        &field("customer", r#"{"externalId":42,"firstName":"A"}"#),
    );
    let c = create_of(&customer).unwrap();
    assert_eq!(
        (c.entity, c.external_id.as_deref(), c.site.as_deref()),
        (Entity::Customer, Some("42"), Some("main"))
    );
    let corporate = form_post(
        "/api/v5/customers-corporate/create",
        None,
        &field("customerCorporate", r#"{"externalId":"c-9"}"#),
    );
    let c = create_of(&corporate).unwrap();
    assert_eq!(c.entity, Entity::CustomerCorporate);
    assert_eq!(c.external_id.as_deref(), Some("c-9"));
}

#[test]
fn creates_without_a_usable_external_id_are_still_creates() {
    for body in [
        field("order", r#"{"number":"1"}"#),
        field("order", r#"{"externalId":""}"#),
        field("order", r#"{"externalId":null}"#),
        field("order", "not json"),
        String::new(),
    ] {
        let c = create_of(&form_post("/api/v5/orders/create", None, &body)).unwrap();
        assert_eq!(c.external_id, None, "{body}");
    }
}

#[test]
fn other_requests_are_not_creates() {
    let body = field("order", r#"{"externalId":"e"}"#);
    for path in [
        "/api/v5/orders/upload",
        "/api/v5/orders/e/edit",
        "/api/orders/create",
        "/api/vx/orders/create",
        "/api/v5/customers/create/extra",
    ] {
        assert_eq!(create_of(&form_post(path, None, &body)), None, "{path}");
    }
    let mut get = form_post("/api/v5/orders/create", None, &body);
    get.method = Method::GET;
    assert_eq!(create_of(&get), None);
}

#[test]
fn the_lookup_asks_by_external_id_with_the_site_and_request_id() {
    let create = Create {
        entity: Entity::CustomerCorporate,
        version: "v5".into(),
        external_id: Some("a/b c?".into()),
        site: Some("shop 2".into()),
    };
    let mut headers = HeaderMap::new();
    headers.insert(REQUEST_ID_HEADER, "req-7".parse().unwrap());
    headers.insert("x-api-key", "never-copied".parse().unwrap());
    headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
    let out = lookup_request(&create, "a/b c?", &headers);
    assert_eq!(out.method, Method::GET);
    // The id is one path segment, whatever it contains.
    assert_eq!(out.path, "/api/v5/customers-corporate/a%2Fb%20c%3F");
    assert_eq!(out.query.as_deref(), Some("by=externalId&site=shop+2"));
    assert_eq!(out.headers[REQUEST_ID_HEADER], "req-7");
    assert!(out.headers.get("x-api-key").is_none());
    assert!(out.headers.get(header::CONTENT_TYPE).is_none());
    assert!(out.body.is_empty());
    let plain = Create {
        site: None,
        ..create
    };
    assert_eq!(
        lookup_request(&plain, "x", &headers).query.as_deref(),
        Some("by=externalId")
    );
}

#[test]
fn only_an_external_id_conflict_is_a_duplicate() {
    let dup = br#"{"success":false,"errorMsg":"Errors in the entity format","errors":{"externalId":"Order with externalId already exists."}}"#;
    assert!(is_duplicate(dup));
    let other = br#"{"success":false,"errorMsg":"Errors in the entity format","errors":{"customer":"This value should not be blank."}}"#;
    assert!(!is_duplicate(other));
    assert!(!is_duplicate(b"<html>400</html>"));
    assert!(!is_duplicate(
        br#"{"success":true,"errors":{"externalId":"exists"}}"#
    ));
}

#[test]
fn every_outcome_has_its_own_series() {
    let labels = Reconciled::ALL.map(Reconciled::as_str);
    assert_eq!(labels, crate::metrics::RECONCILE_OUTCOMES);
}
