//! HTTPS: the generated certificate verifies for the loopback names, ALPN
//! picks HTTP/2 only when offered, resets still reach the client as resets,
//! and the round-trip and handshake delays happen where they should.

use std::time::Instant as WallClock;

use reqwest::{Certificate, Version};

use super::*;

fn tls_cfg(http2: bool) -> SimConfig {
    SimConfig {
        tls: Some(SimTls { http2 }),
        ..roomy()
    }
}

/// A client that trusts only `sim`'s CA (no public roots), leaving from `ip`.
fn trusting(sim: &Simulator, ip: Option<IpAddr>) -> Client {
    let ca = Certificate::from_pem(sim.ca_pem().expect("TLS simulator").as_bytes()).unwrap();
    Client::builder()
        .no_proxy()
        .tls_built_in_root_certs(false)
        .add_root_certificate(ca)
        .local_address(ip)
        .build()
        .expect("client")
}

#[tokio::test]
async fn https_with_h2_when_offered_and_http1_otherwise() {
    for (http2, want) in [(true, Version::HTTP_2), (false, Version::HTTP_11)] {
        let sim = Simulator::spawn(tls_cfg(http2), any_port()).await.unwrap();
        assert!(sim.base_url().starts_with("https://127.0.0.1:"));
        let pem = sim.ca_pem().unwrap();
        assert!(pem.starts_with("-----BEGIN CERTIFICATE-----"), "{pem}");
        assert!(!pem.contains("PRIVATE KEY"));
        let c = trusting(&sim, None);
        let resp = get(&c, &sim, "/api/credentials").await;
        assert_eq!(resp.version(), want);
        assert_eq!(parts(resp).await.0, StatusCode::OK);
        // The certificate names localhost too.
        let url = sim.base_url().replace("127.0.0.1", "localhost");
        let resp = c
            .get(format!("{url}/api/credentials"))
            .header("X-API-KEY", KEY)
            .send()
            .await
            .expect("localhost verifies");
        assert_eq!(resp.status(), StatusCode::OK);
        let recs = sim.records();
        assert_eq!(recs.len(), 2);
        assert!(recs.iter().all(|r| r.version == want), "{recs:?}");
        sim.shutdown();
    }
}

#[tokio::test]
async fn an_untrusting_client_fails_the_handshake_and_nothing_is_received() {
    let sim = Simulator::spawn(tls_cfg(true), any_port()).await.unwrap();
    let err = client_from(None)
        .get(format!("{}/api/credentials", sim.base_url()))
        .header("X-API-KEY", KEY)
        .send()
        .await
        .expect_err("the CA is not a public root");
    assert!(err.is_connect(), "{err:?}");
    assert!(sim.records().is_empty());
}

#[tokio::test]
async fn the_peer_address_is_the_client_source_over_tls() {
    let sim = Simulator::spawn(tls_cfg(true), any_port()).await.unwrap();
    let ip: IpAddr = "127.0.0.3".parse().unwrap();
    let resp = get(&trusting(&sim, Some(ip)), &sim, "/api/credentials").await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(sim.records()[0].source_ip, ip);
}

#[tokio::test]
async fn a_reset_after_processing_is_a_reset_over_tls() {
    for http2 in [true, false] {
        let sim = Simulator::spawn(tls_cfg(http2), any_port()).await.unwrap();
        sim.faults().reset_after_processing_next(1);
        let c = trusting(&sim, None);
        let err = c
            .post(format!("{}/api/v5/orders/create", sim.base_url()))
            .header("X-API-KEY", KEY)
            .form(&[("order", r#"{"externalId":"tls-1"}"#)])
            .send()
            .await
            .expect_err("reset");
        assert!(!err.is_connect(), "the request was sent: {err:?}");
        assert_eq!(sim.orders_created("demo").len(), 1, "processed, then reset");
        // The next request opens a new connection and is answered.
        assert_eq!(
            get(&c, &sim, "/api/credentials").await.status(),
            StatusCode::OK
        );
    }
}

/// Lower bounds only: a loaded machine can make things slower, never faster.
#[tokio::test]
async fn rtt_and_handshake_delay_the_first_request_and_rtt_every_request() {
    let rtt = Duration::from_millis(80);
    let handshake = Duration::from_millis(50);
    let sim = Simulator::spawn(
        SimConfig {
            rtt,
            handshake,
            ..tls_cfg(false)
        },
        any_port(),
    )
    .await
    .unwrap();
    let c = trusting(&sim, None);
    let cold = WallClock::now();
    assert_eq!(
        get(&c, &sim, "/api/credentials").await.status(),
        StatusCode::OK
    );
    let cold = cold.elapsed();
    assert!(cold >= 2 * rtt + handshake, "cold request took {cold:?}");
    let warm = WallClock::now();
    assert_eq!(
        get(&c, &sim, "/api/credentials").await.status(),
        StatusCode::OK
    );
    let warm = warm.elapsed();
    assert!(warm >= rtt, "warm request took {warm:?}");
}
