//! The CRM's answers stream back: status, headers and body as the CRM sent
//! them, minus hop-by-hop headers; a garbage answer is passed through and
//! the gateway keeps serving. Real sockets, the simulator as the CRM, or a
//! tiny raw HTTP stub where the simulator cannot say what we need.
mod common;

use common::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// A raw HTTP/1.1 upstream that answers every request with `response`
/// verbatim and closes; the request heads it read are sent on the channel.
async fn raw_upstream(
    response: &'static str,
) -> (String, tokio::sync::mpsc::UnboundedReceiver<String>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Ok((mut sock, _)) = listener.accept().await {
            let tx = tx.clone();
            tokio::spawn(async move {
                let mut head = Vec::new();
                let mut buf = [0u8; 4096];
                while !contains(&head, "\r\n\r\n") {
                    match sock.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = tx.send(String::from_utf8_lossy(&head).into_owned());
                let _ = sock.write_all(response.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    (url, rx)
}

#[tokio::test]
async fn hop_by_hop_headers_of_the_answer_are_not_passed_back() {
    let (stub, mut heads) = raw_upstream(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n\
         Content-Length: 16\r\nConnection: close, X-Resp-Hop\r\nX-Resp-Hop: 1\r\n\
         Keep-Alive: timeout=5\r\nProxy-Authenticate: Basic realm=\"x\"\r\n\
         X-End: kept\r\n\r\n{\"success\":true}",
    )
    .await;
    let (_sim, gate) = start(&format!(
        "[[tenants]]\nname = \"stub\"\nbase_url = \"{stub}\"\napi_key = \"real-stub-key-1\"\n\
         client_keys = [\"svc-stub-0001\"]\n"
    ))
    .await;
    let resp = client()
        .get(format!("{}/stub/api/v5/orders?limit=20", gate.url))
        .header("X-API-KEY", "svc-stub-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    for gone in ["x-resp-hop", "keep-alive", "proxy-authenticate"] {
        assert_eq!(header(&resp, gone), None, "{gone}: {resp:?}");
    }
    assert!(!header(&resp, "connection")
        .unwrap_or("")
        .to_ascii_lowercase()
        .contains("x-resp-hop"));
    assert_eq!(header(&resp, "x-end"), Some("kept"));
    assert_eq!(header(&resp, "content-type"), Some(JSON_TYPE));
    assert_eq!(resp.text().await.unwrap(), "{\"success\":true}");
    let head = heads.recv().await.unwrap();
    assert!(
        head.starts_with("GET /api/v5/orders?limit=20 HTTP/1.1\r\n"),
        "{head}"
    );
    let lower = head.to_ascii_lowercase();
    assert!(
        lower.contains("\r\nx-api-key: real-stub-key-1\r\n"),
        "{head}"
    );
    assert!(!lower.contains("svc-stub-0001"), "{head}");
}

#[tokio::test]
async fn the_crm_answer_streams_back_with_its_status_headers_and_body() {
    // "stale" holds a key the CRM does not know: its 403 must come through.
    let (sim, gate) = start_with(|sim| {
        format!(
            "[[tenants]]\nname = \"stale\"\nbase_url = \"{}\"\napi_key = \"rotated-away-key\"\n\
             client_keys = [\"svc-stale-0001\"]\n",
            sim.base_url()
        )
    })
    .await;
    let c = client();
    let create = |ext: &str| {
        c.post(format!("{}/api/v5/orders/create", gate.url))
            .header("X-API-KEY", BETA_CLIENT)
            .form(&[(
                "order",
                format!(r#"{{"externalId":"{ext}","firstName":"Ann"}}"#),
            )])
    };

    let resp = create("dup-1").send().await.unwrap();
    assert_eq!(resp.status(), 201);
    assert_eq!(header(&resp, "content-type"), Some(JSON_TYPE));
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    let queue_ms = header(&resp, "x-crmgate-queue-ms").expect("queue ms");
    assert!(queue_ms.parse::<u64>().is_ok(), "{queue_ms}");
    let body = json(resp).await;
    assert_eq!(body["success"], true);
    assert_eq!(body["id"], 238);
    assert_eq!(body["order"]["firstName"], "Ann");

    let resp = create("dup-1").send().await.unwrap();
    assert_eq!(resp.status(), 400);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(
        json(resp).await,
        json!({
            "success": false,
            "errorMsg": "Errors in the entity format",
            "errors": {"externalId": "Order with externalId already exists."},
        })
    );

    let resp = c
        .get(format!("{}/api/v5/orders?limit=7", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    let body = json(resp).await;
    assert_eq!(body["errorMsg"], "Errors in the input parameters");
    assert!(body["errors"]["limit"].is_string(), "{body}");

    let resp = c
        .get(format!("{}/stale/api/v5/orders", gate.url))
        .header("X-API-KEY", "svc-stale-0001")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(
        json(resp).await,
        json!({"success": false, "errorMsg": "Wrong \"apiKey\" value."})
    );

    let resp = c
        .get(format!("{}/api/v5/no-such-method", gate.url))
        .header("X-API-KEY", BETA_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 404);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    assert_eq!(json(resp).await["errorMsg"], "Not found");

    let recs = sim.records();
    let statuses: Vec<u16> = recs.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [201, 400, 400, 403, 404]);
    assert_eq!(recs[3].api_key.as_deref(), Some("rotated-away-key"));
    assert_eq!(sim.orders_created("beta").len(), 1);
    assert_no_client_key(&recs);
}

#[tokio::test]
async fn a_garbage_answer_is_passed_through_and_the_gateway_keeps_serving() {
    let (sim, gate) = start("").await;
    sim.faults().garbage_next(1);
    let c = client();
    let get = || {
        c.get(format!("{}/api/v5/orders", gate.url))
            .header("X-API-KEY", ACME_CLIENT)
    };
    let resp = get().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "x-crmgate-attempts"), Some("1"));
    let bytes = resp.bytes().await.unwrap();
    assert_eq!(
        &bytes[..],
        &b"{\"success\":true,\"pagination\":{\"limit\":20,\"totalCo\x00\xfe<"[..]
    );
    let resp = get().send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(json(resp).await["pagination"]["totalCount"], 237);
    assert_eq!(sim.records().len(), 2);
}
