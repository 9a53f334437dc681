//! Tests of the inbound stage: paths, control headers, rewriting, and the
//! order of checks (the key before the body).

use super::*;
use crate::config::Config;
use axum::body::Body;

const CONFIG: &str = r#"
[[tenants]]
name = "acme"
base_url = "https://acme.retailcrm.ru"
api_key = "real-acme-key-0001"
client_keys = ["ck-acme-1"]
site = "main"

[[tenants]]
name = "open"
base_url = "https://open.retailcrm.ru"
api_key = "real-open-key-0002"
"#;

fn snapshot(extra: &str) -> Snapshot {
    let config = Config::from_toml(&format!("{extra}\n{CONFIG}"), "test.toml", &|_| None)
        .expect("valid config");
    Snapshot::new(config)
}

fn peer() -> SocketAddr {
    "127.0.0.9:5555".parse().unwrap()
}

async fn read_one(snap: &Snapshot, req: Request) -> Result<(Inbound, Trace), GatewayError> {
    let mut trace = Trace::default();
    let pool = Arc::new(BodyPool::default());
    let r = read(snap, &pool, peer(), req, "rid-1", &mut trace).await?;
    Ok((r, trace))
}

#[test]
fn paths_split_into_prefix_and_api_method() {
    assert_eq!(
        split_path("/api/v5/orders").unwrap(),
        (None, "/api/v5/orders")
    );
    assert_eq!(
        split_path("/acme/api/v5/orders").unwrap(),
        (Some("acme"), "/api/v5/orders")
    );
    for bad in [
        "/",
        "/orders",
        "//api/v5/orders",
        "/acme/v5/orders",
        "/acme",
        "/api/v5/../credentials",
        "/api/v5/%2E%2e/x",
        "/api\\..\\x",
        "/acme/api/v5/./orders",
    ] {
        assert!(
            matches!(split_path(bad), Err(GatewayError::NotFound)),
            "{bad}"
        );
    }
}

#[test]
fn control_headers_are_checked() {
    let mut h = HeaderMap::new();
    assert_eq!(priority(&h).unwrap(), Priority::Normal);
    h.insert(PRIORITY_HEADER, "HIGH".parse().unwrap());
    assert_eq!(priority(&h).unwrap(), Priority::High);
    h.insert(PRIORITY_HEADER, "urgent".parse().unwrap());
    assert!(matches!(priority(&h), Err(GatewayError::BadRequest(_))));

    let cfg = Duration::from_secs(30);
    let mut h = HeaderMap::new();
    assert_eq!(max_wait(&h, cfg).unwrap(), cfg);
    h.insert(MAX_WAIT_HEADER, "500ms".parse().unwrap());
    assert_eq!(max_wait(&h, cfg).unwrap(), Duration::from_millis(500));
    // A caller can only shorten the wait.
    h.insert(MAX_WAIT_HEADER, "5m".parse().unwrap());
    assert_eq!(max_wait(&h, cfg).unwrap(), cfg);
    h.insert(MAX_WAIT_HEADER, "soon".parse().unwrap());
    assert!(matches!(
        max_wait(&h, cfg),
        Err(GatewayError::BadRequest(_))
    ));
}

#[tokio::test]
async fn a_get_is_stripped_of_its_key_and_given_the_site() {
    let snap = snapshot("");
    let req = Request::get("/api/v5/orders?apiKey=ck-acme-1&filter%5Bids%5D%5B%5D=7")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-crmgate-priority", "low")
        .body(Body::empty())
        .unwrap();
    let (r, trace) = read_one(&snap, req).await.unwrap();
    assert_eq!(&*r.tenant.name, "acme");
    assert_eq!(trace.tenant.as_deref(), Some("acme"));
    assert_eq!(r.class(), Class::General);
    assert_eq!(r.api_path(), "/api/v5/orders");
    assert_eq!(
        r.out.query.as_deref(),
        Some("filter%5Bids%5D%5B%5D=7&site=main")
    );
    assert_eq!(r.ticket.priority, Priority::Low);
    assert_eq!(&*r.ticket.client, "ck-acme-1");
    assert_eq!(r.out.headers["x-forwarded-for"], "10.1.1.1, 127.0.0.9");
    assert_eq!(r.out.headers["x-request-id"], "rid-1");
    assert!(r.out.headers.get("x-crmgate-priority").is_none());
    assert!(r.out.headers.get("x-api-key").is_none());
}

#[tokio::test]
async fn a_form_post_keeps_its_site_and_loses_its_key() {
    let snap = snapshot("");
    let req = Request::post("/api/v5/orders/create")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(Body::from("site=other&apiKey=ck-acme-1&order=%7B%7D"))
        .unwrap();
    let (r, _) = read_one(&snap, req).await.unwrap();
    assert_eq!(r.out.body, Bytes::from_static(b"site=other&order=%7B%7D"));
    assert_eq!(r.out.path, "/api/v5/orders/create");
    assert_eq!(r.out.query, None);
    assert_eq!(r.out.method, Method::POST);
}

#[tokio::test]
async fn the_tenant_comes_from_the_prefix_for_an_open_tenant() {
    let snap = snapshot("");
    let req = Request::get("/open/api/v5/telephony/call/event")
        .body(Body::empty())
        .unwrap();
    let (r, _) = read_one(&snap, req).await.unwrap();
    assert_eq!(&*r.tenant.name, "open");
    assert_eq!(r.class(), Class::Telephony);
    // Fairness by source address when there is no client key.
    assert_eq!(&*r.ticket.client, "127.0.0.9");
}

/// A body that fails if anyone reads it: proves the check came first.
fn unreadable() -> Body {
    let stream = futures_util::stream::once(async {
        Err::<Bytes, std::io::Error>(std::io::Error::other("the body was read"))
    });
    Body::from_stream(stream)
}

#[tokio::test]
async fn a_wrong_or_unknown_caller_is_refused_before_the_body_is_read() {
    let snap = snapshot("");
    let wrong = Request::post("/api/v5/orders/create")
        .header("x-api-key", "not-a-key")
        .body(unreadable())
        .unwrap();
    assert!(matches!(
        read_one(&snap, wrong).await,
        Err(GatewayError::WrongKey)
    ));
    let unknown = Request::post("/nobody/api/v5/orders/create")
        .body(unreadable())
        .unwrap();
    assert!(matches!(
        read_one(&snap, unknown).await,
        Err(GatewayError::UnknownTenant(_))
    ));
    // Without a key outside the body, and a body that cannot hold one (not
    // a form), the key is missing: the body is not read.
    let missing = Request::post("/acme/api/v5/orders/create")
        .header("content-type", "application/json")
        .body(unreadable())
        .unwrap();
    assert!(matches!(
        read_one(&snap, missing).await,
        Err(GatewayError::MissingKey)
    ));
    // A form body may carry the key: it must be read to find it.
    let in_body = Request::post("/api/v5/orders/create")
        .header("content-type", "application/x-www-form-urlencoded")
        .body(unreadable())
        .unwrap();
    assert!(matches!(
        read_one(&snap, in_body).await,
        Err(GatewayError::BadRequest(_))
    ));
}

#[tokio::test]
async fn only_get_head_and_post_are_forwarded() {
    let snap = snapshot("");
    for method in ["TRACE", "PUT", "DELETE", "OPTIONS", "PATCH", "CONNECT"] {
        let req = Request::builder()
            .method(method)
            .uri("/api/v5/orders?apiKey=ck-acme-1")
            .body(unreadable())
            .unwrap();
        match read_one(&snap, req).await {
            Err(GatewayError::MethodNotAllowed(m)) => assert_eq!(m, method),
            other => panic!("{method}: {other:?}"),
        }
    }
    for method in ["GET", "HEAD"] {
        let req = Request::builder()
            .method(method)
            .uri("/api/v5/orders?apiKey=ck-acme-1")
            .body(Body::empty())
            .unwrap();
        assert!(read_one(&snap, req).await.is_ok(), "{method}");
    }
}

#[tokio::test]
async fn an_oversized_body_is_refused() {
    let snap = snapshot("[server]\nmax_body_bytes = 16");
    let declared = Request::post("/api/v5/orders/create")
        .header("x-api-key", "ck-acme-1")
        .header("content-length", "17")
        .body(Body::from("x".repeat(17)))
        .unwrap();
    assert!(matches!(
        read_one(&snap, declared).await,
        Err(GatewayError::BodyTooLarge { limit: 16 })
    ));
    let streamed = Request::post("/api/v5/orders/create")
        .header("x-api-key", "ck-acme-1")
        .body(Body::from_stream(futures_util::stream::iter([
            Ok::<_, std::io::Error>(Bytes::from("x".repeat(10))),
            Ok(Bytes::from("x".repeat(10))),
        ])))
        .unwrap();
    assert!(matches!(
        read_one(&snap, streamed).await,
        Err(GatewayError::BodyTooLarge { limit: 16 })
    ));
}

#[test]
fn dot_segments_are_found_in_place_as_by_lowercase_and_replace() {
    // The former check, which copied every short segment.
    let copied = |s: &str| {
        s.len() <= 6
            && matches!(
                s.to_ascii_lowercase().replace("%2e", ".").as_str(),
                "." | ".."
            )
    };
    let parts = [
        "", ".", "%2e", "%2E", "%2", "%", "2e", "e", "a", "..", "%%2e",
    ];
    let mut checked = 0;
    for a in parts {
        for b in parts {
            for c in parts {
                let s = format!("{a}{b}{c}");
                assert_eq!(super::is_dot_segment(&s), copied(&s), "{s:?}");
                checked += 1;
            }
        }
    }
    assert_eq!(checked, parts.len().pow(3));
    assert!(super::is_dot_segment("%2E%2e") && !super::is_dot_segment("..."));
}

const MULTIPART: &str = "multipart/form-data; boundary=------------------------9f2c";

fn part(name: &str, value: &str) -> String {
    format!("--------------------------9f2c\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n")
}

#[tokio::test]
async fn a_multipart_post_loses_its_key_parts_and_gains_the_site() {
    let snap = snapshot("");
    let order = part("order", "{\"externalId\":\"m1\"}");
    let sent = format!(
        "{}{order}{}--------------------------9f2c--\r\n",
        part("apiKey", "ck-acme-1"),
        part("api_key", "other")
    );
    let req = Request::post("/api/v5/orders/create")
        .header("content-type", MULTIPART)
        .body(Body::from(sent))
        .unwrap();
    let (r, _) = read_one(&snap, req).await.unwrap();
    assert_eq!(&*r.tenant.name, "acme");
    assert_eq!(&*r.ticket.client, "ck-acme-1");
    assert_eq!(
        std::str::from_utf8(&r.out.body).unwrap(),
        format!(
            "{order}{}--------------------------9f2c--\r\n",
            part("site", "main")
        )
    );
    assert_eq!(r.out.query, None);
    assert_eq!(r.out.headers["content-type"], MULTIPART);
}

#[tokio::test]
async fn a_multipart_post_without_a_key_part_uses_the_header_key() {
    let snap = snapshot("");
    let sent = format!(
        "{}{}--------------------------9f2c--",
        part("site", "other"),
        part("order", "{}")
    );
    let req = Request::post("/api/v5/orders/create")
        .header("content-type", MULTIPART)
        .header("x-api-key", "ck-acme-1")
        .body(Body::from(sent.clone()))
        .unwrap();
    let (r, _) = read_one(&snap, req).await.unwrap();
    assert_eq!(r.out.body, sent.as_bytes(), "byte-exact, site kept");
    // Without any key: missing, once the body showed none.
    let req = Request::post("/api/v5/orders/create")
        .header("content-type", MULTIPART)
        .body(Body::from(sent))
        .unwrap();
    assert!(matches!(
        read_one(&snap, req).await,
        Err(GatewayError::MissingKey)
    ));
}

#[tokio::test]
async fn a_malformed_multipart_body_is_refused_even_with_a_header_key() {
    let snap = snapshot("");
    for (ct, sent) in [
        ("multipart/form-data", part("order", "{}")),
        (MULTIPART, part("order", "{}")),
        (
            MULTIPART,
            "--------------------------9f2c\r\n\r\nx\r\n--------------------------9f2c--".into(),
        ),
    ] {
        let req = Request::post("/api/v5/orders/create")
            .header("content-type", ct)
            .header("x-api-key", "ck-acme-1")
            .body(Body::from(sent.clone()))
            .unwrap();
        match read_one(&snap, req).await {
            Err(GatewayError::BadRequest(m)) => assert!(m.contains("multipart"), "{m}"),
            other => panic!("{sent:?}: {other:?}"),
        }
    }
    // A wrong header key is refused before the body is read.
    let req = Request::post("/api/v5/orders/create")
        .header("content-type", MULTIPART)
        .header("x-api-key", "not-a-key")
        .body(unreadable())
        .unwrap();
    assert!(matches!(
        read_one(&snap, req).await,
        Err(GatewayError::WrongKey)
    ));
}

#[test]
fn addresses_are_written_as_display_writes_them() {
    for ip in [
        "0.0.0.0",
        "127.0.0.1",
        "10.20.255.9",
        "255.255.255.255",
        "::1",
        "2001:db8::8a2e:370:7334",
        "::ffff:192.0.2.1",
    ] {
        let ip: std::net::IpAddr = ip.parse().unwrap();
        let mut out = String::from("a, ");
        push_ip(&mut out, ip);
        assert_eq!(out, format!("a, {ip}"));
    }
}
