//! Auth, the fixed routes, pagination and order creation.

use reqwest::StatusCode;
use serde_json::json;

use super::*;

#[tokio::test]
async fn auth_errors_and_every_key_location() {
    let (sim, c) = start(roomy()).await;
    let url = format!("{}/api/credentials", sim.base_url());

    let (status, ctype, body) = parts(c.get(&url).send().await.unwrap()).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(ctype, "application/json; charset=utf-8");
    assert_eq!(
        body,
        json!({"success": false, "errorMsg": "\"apiKey\" is missing."})
    );

    let resp = c
        .get(&url)
        .header("X-API-KEY", "nope")
        .send()
        .await
        .unwrap();
    let (status, _, body) = parts(resp).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert_eq!(
        body,
        json!({"success": false, "errorMsg": "Wrong \"apiKey\" value."})
    );

    let resp = c.get(format!("{url}?apiKey={KEY}")).send().await.unwrap();
    let (status, _, body) = parts(resp).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["sitesAvailable"], json!(["main"]));
    assert_eq!(body["siteAccess"], "access_full");

    // Legacy clients put the key in the form body of a POST.
    let event = r#"{"phone":"+79990000000","type":"in"}"#;
    let resp = c
        .post(format!("{}/api/v5/telephony/call/event", sim.base_url()))
        .form(&[("apiKey", KEY), ("event", event)])
        .send()
        .await
        .unwrap();
    assert_eq!(parts(resp).await.2, json!({"success": true}));

    let keys: Vec<_> = sim
        .records()
        .into_iter()
        .map(|r| (r.status, r.api_key))
        .collect();
    assert_eq!(
        keys,
        vec![
            (403, None),
            (403, Some("nope".into())),
            (200, Some(KEY.into())),
            (200, Some(KEY.into())),
        ]
    );
    let last = sim.records().pop().unwrap();
    assert_eq!(last.class, Class::Telephony);
    assert_eq!(last.form[1], ("event".to_owned(), event.to_owned()));
    assert!(last
        .header("content-type")
        .unwrap()
        .starts_with("application/x-www-form-urlencoded"));
}

#[tokio::test]
async fn fixed_routes_versions_and_unknown_paths() {
    let (sim, c) = start(roomy()).await;
    let body = parts(get(&c, &sim, "/api/api-versions").await).await.2;
    assert_eq!(
        body,
        json!({"success": true, "versions": ["3.0", "4.0", "5.0"]})
    );

    let body = parts(get(&c, &sim, "/api/v4/reference/sites").await)
        .await
        .2;
    assert_eq!(body["sites"]["main"]["code"], "main");

    let (status, ctype, body) = parts(get(&c, &sim, "/api/v5/nothing-here").await).await;
    assert_eq!(
        (status, ctype.as_str()),
        (StatusCode::NOT_FOUND, "application/json; charset=utf-8")
    );
    assert_eq!(body, json!({"success": false, "errorMsg": "Not found"}));

    let (status, _, body) = parts(get(&c, &sim, "/api/v5/orders/create").await).await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body["success"], false);

    // Unknown paths are still recorded with the status they got.
    let statuses: Vec<u16> = sim.records().iter().map(|r| r.status).collect();
    assert_eq!(statuses, vec![200, 200, 404, 405]);
}

#[tokio::test]
async fn pagination_math_and_errors() {
    let (sim, c) = start(roomy()).await;
    let body = parts(get(&c, &sim, "/api/v5/orders").await).await.2;
    assert_eq!(
        body["pagination"],
        json!({"limit": 20, "totalCount": 237, "currentPage": 1, "totalPageCount": 12})
    );
    assert_eq!(body["orders"].as_array().unwrap().len(), 20);
    assert_eq!(
        body["orders"][0],
        json!({"id": 1, "number": "1A", "externalId": "seed-1", "site": "main"})
    );

    let body = parts(get(&c, &sim, "/api/v5/orders?limit=50&page=5").await)
        .await
        .2;
    assert_eq!(body["pagination"]["totalPageCount"], 5);
    let orders = body["orders"].as_array().unwrap();
    assert_eq!(
        (orders.len(), &orders[0]["id"], &orders[36]["id"]),
        (37, &json!(201), &json!(237))
    );

    let body = parts(get(&c, &sim, "/api/v5/orders?limit=100&page=9").await)
        .await
        .2;
    assert_eq!(body["orders"], json!([]));
    assert_eq!(body["pagination"]["currentPage"], 9);

    for (bad, keys) in [
        ("limit=30", vec!["limit"]),
        ("page=0", vec!["page"]),
        ("limit=abc&page=-1", vec!["limit", "page"]),
    ] {
        let (status, _, body) = parts(get(&c, &sim, &format!("/api/v5/orders?{bad}")).await).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
        assert_eq!(body["errorMsg"], "Errors in the input parameters");
        let got: Vec<&String> = body["errors"].as_object().unwrap().keys().collect();
        assert_eq!(got, keys, "{bad}");
    }

    // Created orders join the list after the seeded ones.
    let order = r#"{"externalId":"new-1"}"#;
    post_form(&c, &sim, "/api/v5/orders/create", &[("order", order)]).await;
    let body = parts(get(&c, &sim, "/api/v5/orders?limit=20&page=12").await)
        .await
        .2;
    assert_eq!(body["pagination"]["totalCount"], 238);
    assert_eq!(body["orders"].as_array().unwrap().len(), 18);
    assert_eq!(body["orders"][17]["externalId"], "new-1");
}

#[tokio::test]
async fn create_order_then_duplicate_and_bad_input() {
    let (sim, c) = start(roomy()).await;
    let path = "/api/v5/orders/create";
    let order = r#"{"externalId":"a123","firstName":"Ann"}"#;
    let (status, _, body) =
        parts(post_form(&c, &sim, path, &[("site", "main"), ("order", order)]).await).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_eq!(body["id"], 238);
    assert_eq!(body["order"]["firstName"], "Ann");
    assert_eq!(body["order"]["site"], "main");

    let (status, _, body) = parts(post_form(&c, &sim, path, &[("order", order)]).await).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(
        body,
        json!({"success": false, "errorMsg": "Errors in the entity format",
               "errors": {"externalId": "Order with externalId already exists."}})
    );
    let seed_dup = post_form(&c, &sim, path, &[("order", r#"{"externalId":"seed-7"}"#)]).await;
    assert_eq!(seed_dup.status(), StatusCode::BAD_REQUEST);

    let body = parts(post_form(&c, &sim, path, &[("site", "main")]).await)
        .await
        .2;
    assert_eq!(
        body,
        json!({"success": false, "errorMsg": "Parameter 'order' is missing"})
    );
    let body = parts(post_form(&c, &sim, path, &[("order", "{not json")]).await)
        .await
        .2;
    assert_eq!(
        body,
        json!({"success": false, "errorMsg": "Errors in the entity format"})
    );

    let created = sim.orders_created("demo");
    assert_eq!(created.len(), 1);
    assert_eq!(created[0]["externalId"], "a123");
    assert_eq!(created[0]["id"], 238);
    assert!(sim.orders_created("nobody").is_empty());
}

/// PHP clients (api-client-php 5.x, Bitrix, WooCommerce) POST multipart
/// bodies, the key a part among the others: the CRM reads them as forms.
#[tokio::test]
async fn a_multipart_post_carries_its_key_and_fields_like_a_form() {
    let (sim, c) = start(roomy()).await;
    let part = |name: &str, value: &str| {
        format!("--XyZ\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
    };
    let body = format!(
        "{}{}{}--XyZ--\r\n",
        part("apiKey", KEY),
        part("site", "main"),
        part("order", r#"{"externalId":"mp-1"}"#)
    );
    let resp = c
        .post(format!("{}/api/v5/orders/create", sim.base_url()))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let (status, _, answer) = parts(resp).await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    assert_eq!(answer["order"]["externalId"], "mp-1");
    let rec = sim.records().pop().unwrap();
    assert_eq!(rec.api_key.as_deref(), Some(KEY));
    assert_eq!(rec.form.len(), 3);
    assert_eq!(rec.form[1], ("site".to_owned(), "main".to_owned()));
    // Without the key part: missing, as for a form.
    let resp = c
        .post(format!("{}/api/v5/orders/create", sim.base_url()))
        .header("content-type", "multipart/form-data; boundary=XyZ")
        .body(body.replacen("apiKey", "other", 1))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::FORBIDDEN);
}
