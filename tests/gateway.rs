//! Gateway core, end to end: keys, tenants and rewriting, on real sockets
//! with the simulator as the CRM. crmgate's own errors are in
//! tests/own_errors.rs, the answers streaming back in tests/answers.rs.
mod common;

use common::*;
use serde_json::json;

#[tokio::test]
async fn client_keys_are_stripped_from_header_query_and_form_and_the_real_key_injected() {
    let (sim, gate) = start("").await;
    let c = client();
    let order = r#"{"externalId":"strip-1"}"#;

    // Header, query (twice) and form body.
    send_a_key_in_every_place(&c, &gate.url, "strip-2").await;
    // All three at once.
    let r = c
        .post(format!(
            "{}/api/v5/orders/create?apiKey={ACME_CLIENT2}",
            gate.url
        ))
        .header("X-API-KEY", ACME_CLIENT)
        .form(&[("apiKey", ACME_CLIENT2), ("order", order)])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);

    let recs = sim.records();
    assert_eq!(recs.len(), 4, "{recs:?}");
    assert_no_client_key(&recs);
    let real: Vec<_> = recs.iter().map(|r| r.api_key.as_deref()).collect();
    assert_eq!(
        real,
        [
            Some(ACME_KEY),
            Some(ACME_KEY),
            Some(BETA_KEY),
            Some(ACME_KEY)
        ]
    );
    for r in &recs {
        let real = r.api_key.as_deref().unwrap();
        assert_eq!(r.header("x-api-key"), Some(real));
        assert_eq!(r.status / 100, 2, "{r:?}");
    }
    assert_eq!(recs[1].query.as_deref(), Some("limit=20&site=main"));
    assert_eq!(
        body_str(&recs[2]),
        "site=beta-shop&order=%7B%22externalId%22%3A%22strip-2%22%7D"
    );
    // A form gets the tenant's site in the form, not in the query.
    assert_eq!(recs[3].query, None);
    assert_eq!(
        body_str(&recs[3]),
        "order=%7B%22externalId%22%3A%22strip-1%22%7D&site=main"
    );
    assert_eq!(sim.orders_created("beta").len(), 1);
    assert_eq!(sim.orders_created("acme").len(), 1);
}

#[tokio::test]
async fn tenants_resolve_by_client_key_and_by_prefix() {
    let (sim, gate) = start("").await;
    let c = client();
    let cases: [(&str, Option<&str>, &str, Option<&str>); 5] = [
        (
            "/api/v5/orders",
            Some(ACME_CLIENT),
            ACME_KEY,
            Some("site=main"),
        ),
        ("/api/v5/orders", Some(BETA_CLIENT), BETA_KEY, None),
        (
            "/acme/api/v5/orders",
            Some(ACME_CLIENT2),
            ACME_KEY,
            Some("site=main"),
        ),
        ("/beta/api/v5/orders", Some(BETA_CLIENT), BETA_KEY, None),
        // "open" has no client keys: the prefix alone is enough.
        ("/open/api/v5/orders", None, ACME_KEY, None),
    ];
    for (path, key, _, _) in cases {
        let mut req = c.get(format!("{}{path}", gate.url));
        if let Some(k) = key {
            req = req.header("X-API-KEY", k);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path} {key:?}");
        assert_eq!(json(resp).await["success"], true);
    }
    let recs = sim.records();
    assert_eq!(recs.len(), cases.len());
    for (r, (_, _, real, query)) in recs.iter().zip(cases) {
        assert_eq!(r.path, "/api/v5/orders", "the prefix is not forwarded");
        assert_eq!(r.api_key.as_deref(), Some(real), "{r:?}");
        assert_eq!(r.query.as_deref(), query, "{r:?}");
    }
    assert_no_client_key(&recs);
}

#[tokio::test]
async fn dot_segments_cannot_leave_api_or_change_the_budget() {
    let (sim, gate) = start("").await;
    // Raw bytes: an HTTP client would resolve the dots before sending.
    for path in [
        "/api/../foo",
        "/api/v5/telephony/../orders",
        "/acme/api/v5/%2e%2e/%2E%2E/admin",
        "/api/v5/./orders",
        "/acme/api/./v5/orders",
        "/api\\..\\foo",
        "/api/v5/telephony\\..\\orders",
    ] {
        let answer = raw(
            &gate.addr.to_string(),
            &format!(
                "GET {path} HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\nConnection: close\r\n\r\n"
            ),
        )
        .await;
        assert_eq!(answer.status(), Some(404), "{path}: {}", answer.text());
        assert!(
            answer.text().contains("\"success\":false"),
            "{}",
            answer.text()
        );
    }
    assert!(sim.records().is_empty(), "{:?}", sim.records());
    // Dots inside a segment are just characters.
    let answer = raw(
        &gate.addr.to_string(),
        &format!(
            "GET /api/v5/orders?filter[name]=a..b HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\nConnection: close\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text());
    assert_eq!(sim.records()[0].path, "/api/v5/orders");
}

#[tokio::test]
async fn bodies_and_queries_pass_through_byte_exact() {
    let (sim, gate) = start("").await;
    let c = client();
    let url = |p: &str| format!("{}{p}", gate.url);

    let create = "site=simple-site&order=%7B%22externalId%22%3A%22a123%22%7D";
    let resp = c
        .post(url("/api/v5/orders/create"))
        .header("X-API-KEY", ACME_CLIENT)
        .header("content-type", FORM)
        .body(create)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let body = json(resp).await;
    assert_eq!(body["order"]["externalId"], "a123");
    assert_eq!(body["order"]["site"], "simple-site");
    // The same with a legacy key: only the key goes.
    let resp = c
        .post(url("/api/v5/orders/create"))
        .header("content-type", FORM)
        .body(format!(
            "site=simple-site&apiKey={ACME_CLIENT}&order=%7B%22externalId%22%3A%22a124%22%7D"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);

    let resp = c
        .get(url("/api/v5/orders?limit=50&page=3"))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body = json(resp).await;
    assert_eq!(
        body["pagination"],
        json!({"limit": 50, "totalCount": 237, "currentPage": 3, "totalPageCount": 5})
    );
    assert_eq!(body["orders"].as_array().unwrap().len(), 50);
    assert_eq!(body["orders"][0]["id"], 101);

    let queries = [
        "filter[numbers][]=1235C&filter[customFields][nps][min]=5",
        "filter%5Bnumbers%5D%5B%5D=1235C&filter%5BcustomFields%5D%5Bnps%5D%5Bmin%5D=5",
        "filter[name]=Ivan+Petrov&filter[email]=a%2Bb%40example.ru&filter[ids][]=1&filter[ids][]=2&flag",
    ];
    for q in queries {
        let resp = c
            .get(url(&format!("/beta/api/v5/orders?{q}")))
            .header("X-API-KEY", BETA_CLIENT)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{q}");
    }
    let resp = c
        .get(url(&format!(
            "/api/v5/orders?filter[numbers][]=1235C&apiKey={BETA_CLIENT}&limit=20"
        )))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let recs = sim.records();
    assert_eq!(recs.len(), 7);
    assert_eq!(body_str(&recs[0]), create);
    assert_eq!(
        recs[0].header("content-type"),
        Some(FORM),
        "content type kept"
    );
    assert_eq!(body_str(&recs[1]), create.replace("a123", "a124"));
    assert_eq!(recs[2].query.as_deref(), Some("limit=50&page=3"));
    for (r, q) in recs[3..6].iter().zip(queries) {
        assert_eq!(r.query.as_deref(), Some(q));
    }
    assert_eq!(
        recs[6].query.as_deref(),
        Some("filter[numbers][]=1235C&limit=20")
    );
    assert_no_client_key(&recs);
}

#[tokio::test]
async fn the_tenant_site_is_added_only_when_the_request_has_none() {
    let (sim, gate) = start("").await;
    let c = client();
    let url = |p: &str| format!("{}{p}", gate.url);
    let order = "order=%7B%22externalId%22%3A%22s1%22%7D";

    let get = |path: String, key: &'static str| c.get(url(&path)).header("X-API-KEY", key);
    let post = |path: &str, key: &'static str, body: String| {
        c.post(url(path))
            .header("X-API-KEY", key)
            .header("content-type", FORM)
            .body(body)
    };
    let reqs = [
        get("/api/v5/orders?limit=20".into(), ACME_CLIENT),
        get("/api/v5/orders".into(), ACME_CLIENT),
        c.get(url(&format!("/api/v5/orders?apiKey={ACME_CLIENT}"))),
        get("/api/v5/orders?limit=20&site=other".into(), ACME_CLIENT),
        post("/api/v5/orders/create", ACME_CLIENT, order.into()),
        post(
            "/api/v5/orders/create",
            ACME_CLIENT,
            order.replace("s1", "s2") + "&site=own",
        ),
        post(
            "/api/v5/orders/create?site=inquery",
            ACME_CLIENT,
            order.replace("s1", "s3"),
        ),
        get("/api/v5/orders?limit=20".into(), BETA_CLIENT),
        post(
            "/api/v5/orders/create",
            BETA_CLIENT,
            order.replace("s1", "s4"),
        ),
        c.get(url("/open/api/v5/orders?limit=20")),
    ];
    for req in reqs {
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_success(), "{resp:?}");
    }
    let recs = sim.records();
    let seen: Vec<(Option<&str>, &str)> = recs
        .iter()
        .map(|r| (r.query.as_deref(), body_str(r)))
        .collect();
    let o = |id: &str| order.replace("s1", id);
    assert_eq!(
        seen,
        [
            (Some("limit=20&site=main"), ""),
            (Some("site=main"), ""),
            (Some("site=main"), ""),
            (Some("limit=20&site=other"), ""),
            (None, &*format!("{}&site=main", o("s1"))),
            (None, &*format!("{}&site=own", o("s2"))),
            (Some("site=inquery"), &*o("s3")),
            (Some("limit=20"), ""),
            (None, &*o("s4")),
            (Some("limit=20"), ""),
        ]
    );
    let sites: Vec<_> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["site"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(sites, ["main", "own", "main"]);
}

#[tokio::test]
async fn hop_by_hop_and_control_headers_are_not_forwarded() {
    let (sim, gate) = start("").await;
    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .header("Connection", "keep-alive, X-Hop")
        .header("X-Hop", "1")
        .header("Keep-Alive", "timeout=5")
        .header("TE", "trailers")
        .header("Proxy-Authorization", "Basic Zm9vOmJhcg==")
        .header("X-Crmgate-Priority", "low")
        .header("X-Crmgate-Max-Wait", "10s")
        .header("Accept-Language", "ru-RU,ru;q=0.9")
        .header("User-Agent", "retailcrm/api-client-php 6.1")
        .header("X-Trace-Tag", "end-to-end")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // The same as raw bytes, so no client library can have dropped any of them.
    let answer = raw(
        &gate.addr.to_string(),
        &format!(
            "GET /api/v5/orders HTTP/1.1\r\nHost: localhost\r\nX-API-KEY: {ACME_CLIENT}\r\n\
             Connection: close, X-Hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nTE: trailers\r\n\
             Proxy-Authorization: Basic Zm9vOmJhcg==\r\nX-Crmgate-Priority: low\r\n\
             X-Crmgate-Whatever: 1\r\nAccept-Language: ru-RU,ru;q=0.9\r\n\
             User-Agent: retailcrm/api-client-php 6.1\r\nX-Trace-Tag: end-to-end\r\n\r\n"
        ),
    )
    .await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text());
    let recs = sim.records();
    assert_eq!(recs.len(), 2);
    for r in &recs {
        for gone in [
            "x-hop",
            "keep-alive",
            "te",
            "proxy-authorization",
            "x-crmgate-priority",
            "x-crmgate-max-wait",
        ] {
            assert_eq!(r.header(gone), None, "{gone} was forwarded: {r:?}");
        }
        assert!(
            !r.header("connection")
                .unwrap_or("")
                .to_ascii_lowercase()
                .contains("x-hop"),
            "{r:?}"
        );
        assert!(
            !r.headers.iter().any(|(n, _)| n.starts_with("x-crmgate-")),
            "{r:?}"
        );
        assert_eq!(r.header("accept-language"), Some("ru-RU,ru;q=0.9"));
        assert_eq!(r.header("user-agent"), Some("retailcrm/api-client-php 6.1"));
        assert_eq!(r.header("x-trace-tag"), Some("end-to-end"));
    }
}

#[tokio::test]
async fn request_ids_and_forwarded_for() {
    let (sim, gate) = start("").await;
    let c = client();
    let get = || {
        c.get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
    };

    let resp = get()
        .header("X-Request-Id", "req-7d1e-abc")
        .send()
        .await
        .unwrap();
    assert_eq!(header(&resp, "x-request-id"), Some("req-7d1e-abc"));
    let resp2 = get().send().await.unwrap();
    let generated = header(&resp2, "x-request-id").unwrap().to_string();
    assert!(
        uuid::Uuid::parse_str(&generated).is_ok(),
        "not an id: {generated}"
    );
    // An unusable id (spaces) is replaced, not forwarded.
    let resp3 = get()
        .header("X-Request-Id", "a b c")
        .header("X-Forwarded-For", "203.0.113.7")
        .send()
        .await
        .unwrap();
    let replaced = header(&resp3, "x-request-id").unwrap().to_string();
    assert!(replaced != "a b c" && replaced != generated, "{replaced}");
    // crmgate's own answers carry the id too.
    let resp4 = c
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-Request-Id", "req-denied-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp4.status(), 403);
    assert_eq!(header(&resp4, "x-request-id"), Some("req-denied-1"));

    let recs = sim.records();
    assert_eq!(recs.len(), 3);
    let ids: Vec<_> = recs.iter().map(|r| r.header("x-request-id")).collect();
    assert_eq!(
        ids,
        [
            Some("req-7d1e-abc"),
            Some(generated.as_str()),
            Some(replaced.as_str())
        ]
    );
    for r in &recs {
        assert_eq!(
            r.headers
                .iter()
                .filter(|(n, _)| n == "x-request-id" || n == "x-forwarded-for")
                .count(),
            2,
            "{r:?}"
        );
    }
    assert_eq!(recs[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(
        recs[2].header("x-forwarded-for"),
        Some("203.0.113.7, 127.0.0.1")
    );
}

#[tokio::test]
async fn the_configured_egress_ip_is_the_source_the_crm_sees() {
    let (sim, gate) = start("[upstream]\negress_ips = [\"127.0.0.2\"]\n").await;
    let resp = client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let ip: std::net::IpAddr = "127.0.0.2".parse().unwrap();
    assert_eq!(sim.records()[0].source_ip, ip);

    // Without egress IPs it is the OS default (loopback's own 127.0.0.1).
    let (sim, gate) = start("").await;
    client()
        .get(format!("{}/api/v5/orders", gate.url))
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    let ip: std::net::IpAddr = "127.0.0.1".parse().unwrap();
    assert_eq!(sim.records()[0].source_ip, ip);
}

#[tokio::test]
async fn version_less_methods_pass_through() {
    let (sim, gate) = start("").await;
    let c = client();
    let resp = c
        .get(format!("{}/api/api-versions", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["versions"], json!(["3.0", "4.0", "5.0"]));
    for (path, key, sites) in [
        ("/api/credentials", BETA_CLIENT, json!(["beta-shop"])),
        ("/acme/api/credentials", ACME_CLIENT, json!(["main"])),
    ] {
        let resp = c
            .get(format!("{}{path}", gate.url))
            .header("X-API-KEY", key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "{path}");
        let body = json(resp).await;
        assert_eq!(body["sitesAvailable"], sites, "{body}");
        assert_eq!(body["siteAccess"], "access_full");
    }
    let paths: Vec<_> = sim.records().into_iter().map(|r| r.path).collect();
    assert_eq!(
        paths,
        ["/api/api-versions", "/api/credentials", "/api/credentials"]
    );
}
