//! The strict window, per-IP accounting and what is recorded.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use reqwest::StatusCode;

use super::*;

#[tokio::test]
async fn strict_window_counts_rejections_and_classes_separately() {
    let cfg = SimConfig {
        general_per_second: 3,
        telephony_per_second: 2,
        window: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let (sim, c) = start(cfg).await;
    let mut statuses = Vec::new();
    for _ in 0..4 {
        statuses.push(get(&c, &sim, "/api/v5/orders").await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 200, 503]);

    // Even an unauthenticated request counts and is rejected by the limit first.
    let resp = c
        .get(format!("{}/api/v5/orders", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(resp.headers()["content-type"], "text/html");
    let html = resp.text().await.unwrap();
    assert!(html.starts_with("<html>"));
    assert!(html.contains("<title>503 Service Temporarily Unavailable</title>"));

    // Telephony has its own budget.
    let event = [("event", r#"{"phone":"1"}"#)];
    let path = "/api/v5/telephony/call/event";
    let mut statuses = Vec::new();
    for _ in 0..3 {
        statuses.push(post_form(&c, &sim, path, &event).await.status().as_u16());
    }
    assert_eq!(statuses, vec![200, 200, 503]);

    let records = sim.records();
    assert_eq!(records.len(), 8);
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let max = max_in_window(&records, Duration::from_secs(60));
    assert_eq!(max[&(ip, Class::General)], 5);
    assert_eq!(max[&(ip, Class::Telephony)], 3);
    assert!(records.windows(2).all(|w| w[0].at <= w[1].at));
}

#[tokio::test]
async fn source_ip_is_the_tcp_peer_and_limits_are_per_ip() {
    let cfg = SimConfig {
        general_per_second: 1,
        window: Duration::from_secs(60),
        ..SimConfig::default()
    };
    let (sim, _) = start(cfg).await;
    let two = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    let three = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));
    for ip in [two, three] {
        let resp = get(&client_from(Some(ip)), &sim, "/api/v5/orders?limit=20").await;
        assert_eq!(resp.status(), StatusCode::OK, "{ip}");
    }
    let again = get(&client_from(Some(two)), &sim, "/api/v5/orders").await;
    assert_eq!(again.status(), StatusCode::SERVICE_UNAVAILABLE);
    let seen: Vec<_> = sim
        .records()
        .iter()
        .map(|r| (r.source_ip, r.status))
        .collect();
    assert_eq!(seen, vec![(two, 200), (three, 200), (two, 503)]);
    assert_eq!(sim.records()[0].query.as_deref(), Some("limit=20"));
}

#[tokio::test]
async fn raw_query_and_set_limits() {
    let (sim, c) = start(roomy()).await;
    let raw = "filter[numbers][]=1235C&filter%5Bsites%5D%5B%5D=main&apiKey=demo-crm-key";
    let resp = c
        .get(format!("{}/api/v5/orders?{raw}", sim.base_url()))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let rec = sim.records().pop().unwrap();
    assert_eq!(rec.query.as_deref(), Some(raw));
    assert_eq!(rec.api_key.as_deref(), Some(KEY));
    assert!(rec
        .headers
        .iter()
        .all(|(n, _)| *n == n.to_ascii_lowercase()));

    sim.set_limits(1, 1);
    // Two arrivals are already in this minute's window.
    assert_eq!(get(&c, &sim, "/api/v5/orders").await.status(), 503);
}
