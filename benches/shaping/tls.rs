//! Scenario 7 (`tls`): the production path at a realistic distance. The
//! simulator serves HTTPS (its own CA, trusted through `upstream.ca_file`)
//! 60 ms away, with one more 60 ms round trip for the TLS handshake of
//! every new connection; crmgate leaves through two egress IPs. Tenant A
//! floods, tenant B sends one request every 0.5 s, as in scenarios 1 and 3
//! at once: utilisation per egress IP, 503s, B's queue wait, and the
//! connections crmgate opened per egress IP (reused or not).
//!
//! Measures and reports; it never asserts.

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use crmgate::sim::{Received, SimConfig, SimTls, Simulator};
use serde::Serialize;

use crate::end_to_end::{LATENCY, LIMIT};
use crate::harness::{self, Gate};
use crate::measure::{self, Answers, Delivered, Percentiles, TARGET_LIGHT_P95_MS};

/// One network round trip to the CRM.
pub const RTT: Duration = Duration::from_millis(60);
/// The TLS 1.3 handshake's extra round trip on a new connection.
pub const HANDSHAKE: Duration = Duration::from_millis(60);
/// Start-up excluded from the `warm` figures: the first connections (and the
/// connect accounting's holds for them, one per window while the first
/// window's late arrivals still bound the next) fall in it.
pub const WARM: Duration = Duration::from_secs(2);
/// The egress IPs crmgate binds (each a budget of its own).
pub const EGRESS: [Ipv4Addr; 2] = [Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(127, 0, 0, 3)];

/// One egress IP's share of the run.
#[derive(Debug, Clone, Serialize)]
pub struct PerEgress {
    pub ip: String,
    /// What the CRM received from this IP (utilisation against its own limit).
    pub delivered: Delivered,
    /// The same from [`WARM`] after this IP's first arrival on: the
    /// connections are open, the cold start's holds are behind.
    pub warm: Delivered,
    /// Requests the CRM received from this IP (accepted or not).
    pub requests: usize,
    /// `crmgate_upstream_connections_total` for this egress: TCP+TLS
    /// connections opened.
    pub connections_opened: u64,
    /// Gaps between accepted arrivals longer than 150 ms (the pacing is
    /// 102 ms): `(seconds after the first arrival, gap in ms)`. Where the
    /// utilisation went.
    pub long_gaps: Vec<(f64, f64)>,
}

/// The whole run, for one ALPN offer.
#[derive(Debug, Clone, Serialize)]
pub struct TlsRun {
    /// `h2` offered through ALPN (else `http/1.1` only).
    pub http2: bool,
    pub rtt_ms: u64,
    pub handshake_ms: u64,
    pub flood_callers: usize,
    pub light_every_ms: u64,
    pub seconds: f64,
    pub per_egress: Vec<PerEgress>,
    /// Light tenant's queue wait (ms), over its 200 answers.
    pub light_wait_ms: Percentiles,
    /// Flooding tenant's queue wait (ms), over its 200 answers.
    pub flood_wait_ms: Percentiles,
    pub light_answers: Answers,
    pub flood_answers: Answers,
    /// Load average when the run ended (the machine is shared).
    pub loadavg: String,
}

impl TlsRun {
    /// The lower of the egress IPs' utilisations, whole run and warm.
    pub fn min_utilisation(&self) -> (f64, f64) {
        let min =
            |f: fn(&PerEgress) -> f64| self.per_egress.iter().map(f).fold(f64::INFINITY, f64::min);
        (
            min(|e| e.delivered.utilisation),
            min(|e| e.warm.utilisation),
        )
    }

    /// 503s the CRM answered, all IPs together.
    pub fn rejected_503(&self) -> usize {
        self.per_egress
            .iter()
            .map(|e| e.delivered.rejected_503)
            .sum()
    }
}

pub async fn run(callers: usize, run: Duration, http2: bool, loadavg: fn() -> String) -> TlsRun {
    let every = Duration::from_millis(500);
    let sim = Simulator::spawn(
        SimConfig {
            tls: Some(SimTls { http2 }),
            rtt: RTT,
            handshake: HANDSHAKE,
            ..harness::sim_config(LATENCY)
        },
        (Ipv4Addr::LOCALHOST, 0).into(),
    )
    .await
    .expect("TLS simulator starts");
    let dir = tempfile::tempdir().expect("temp dir");
    let ca_file = dir.path().join("sim-ca.pem");
    std::fs::write(&ca_file, sim.ca_pem().expect("TLS")).expect("CA written");
    let upstream = format!(
        "[upstream]\nca_file = {:?}\negress_ips = [{}]\n",
        ca_file.display().to_string(),
        EGRESS
            .iter()
            .map(|ip| format!("\"{ip}\""))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let gate = Gate::start(harness::gateway_config_with(&sim.base_url(), "", &upstream)).await;
    let client = harness::client();

    let harness::FloodAndTrickle {
        light: light_samples,
        flood: flood_samples,
        records,
    } = harness::flood_and_trickle(&client, &gate.url, &sim, callers, run, every).await;
    let opened = connections_opened(&client, &gate.admin).await;
    drop(client);
    gate.shutdown().await;
    sim.shutdown();

    let per_egress = EGRESS
        .iter()
        .map(|ip| {
            let ip = IpAddr::V4(*ip);
            let mine: Vec<Received> = records
                .iter()
                .filter(|r| r.source_ip == ip)
                .cloned()
                .collect();
            let mut accepted: Vec<_> = mine
                .iter()
                .filter(|r| r.status != 503)
                .map(|r| r.at)
                .collect();
            accepted.sort_unstable();
            let long_gaps = accepted
                .windows(2)
                .map(|w| (w[1], w[1].duration_since(w[0])))
                .filter(|(_, gap)| *gap > Duration::from_millis(150))
                .map(|(at, gap)| {
                    (
                        at.duration_since(accepted[0]).as_secs_f64(),
                        gap.as_secs_f64() * 1000.0,
                    )
                })
                .collect();
            let warm: Vec<Received> = match mine.iter().map(|r| r.at).min() {
                Some(first) => mine
                    .iter()
                    .filter(|r| r.at >= first + WARM)
                    .cloned()
                    .collect(),
                None => Vec::new(),
            };
            PerEgress {
                warm: measure::delivered(&warm, LIMIT),
                long_gaps,
                ip: ip.to_string(),
                delivered: measure::delivered(&mine, LIMIT),
                requests: mine.len(),
                connections_opened: opened
                    .iter()
                    .find(|(label, _)| *label == ip.to_string())
                    .map_or(0, |(_, n)| *n),
            }
        })
        .collect();
    TlsRun {
        http2,
        rtt_ms: RTT.as_millis() as u64,
        handshake_ms: HANDSHAKE.as_millis() as u64,
        flood_callers: callers,
        light_every_ms: every.as_millis() as u64,
        seconds: run.as_secs_f64(),
        per_egress,
        light_wait_ms: measure::percentiles(&measure::queue_waits(&light_samples)),
        flood_wait_ms: measure::percentiles(&measure::queue_waits(&flood_samples)),
        light_answers: measure::answers(&light_samples),
        flood_answers: measure::answers(&flood_samples),
        loadavg: loadavg(),
    }
}

/// `crmgate_upstream_connections_total` by its `egress` label (empty if the
/// metrics would not answer).
async fn connections_opened(client: &reqwest::Client, admin: &str) -> Vec<(String, u64)> {
    let Ok(resp) = client.get(format!("{admin}/metrics")).send().await else {
        return Vec::new();
    };
    let text = resp.text().await.unwrap_or_default();
    text.lines()
        .filter(|l| l.starts_with("crmgate_upstream_connections_total{"))
        .filter_map(|l| {
            let label = l.split("egress=\"").nth(1)?.split('"').next()?.to_string();
            let n = l.rsplit(' ').next()?.parse::<f64>().ok()?;
            Some((label, n as u64))
        })
        .collect()
}

/// Over HTTPS at 60 ms with handshakes, per egress IP (issue 14).
pub const TARGET_UTILISATION_TLS: f64 = 0.97;

/// Prints one run (h2 or http/1.1) of scenario 7 with its verdicts.
pub fn print(t: &TlsRun) {
    println!(
        "\n== 7. Over HTTPS, {} ms away ({})",
        t.rtt_ms,
        if t.http2 {
            "ALPN h2"
        } else {
            "ALPN http/1.1 only"
        }
    );
    println!(
        "   RTT {} ms + TLS handshake {} ms per new connection, CRM latency 20–60 ms, \
         limit {}/s per IP; A: {} callers, B: 1 / {} ms; {:.0} s",
        t.rtt_ms, t.handshake_ms, LIMIT, t.flood_callers, t.light_every_ms, t.seconds
    );
    println!(
        "   {:<14} {:>8} {:>11} {:>9} {:>6} {:>10} {:>12} {:>9}",
        "egress IP",
        "requests",
        "utilisation",
        "warm",
        "503s",
        "max in 1s",
        "connections",
        "req/conn"
    );
    for e in &t.per_egress {
        println!(
            "   {:<14} {:>8} {:>11.4} {:>9.4} {:>6} {:>10} {:>12} {:>9.1}",
            e.ip,
            e.requests,
            e.delivered.utilisation,
            e.warm.utilisation,
            e.delivered.rejected_503,
            e.delivered.max_in_1s,
            e.connections_opened,
            e.requests as f64 / e.connections_opened.max(1) as f64
        );
    }
    for e in &t.per_egress {
        let gaps: Vec<String> = e
            .long_gaps
            .iter()
            .map(|(at, gap)| format!("{gap:.0} ms at {at:.2} s"))
            .collect();
        println!("   {:<14} gaps > 150 ms: {}", e.ip, gaps.join(", "));
    }
    let (whole, warm) = t.min_utilisation();
    println!(
        "   utilisation ≥ {TARGET_UTILISATION_TLS:.2} on every IP: whole run {}, warm (from {} s) {}; 503s 0: {}",
        measure::verdict(whole >= TARGET_UTILISATION_TLS),
        WARM.as_secs(),
        measure::verdict(warm >= TARGET_UTILISATION_TLS),
        measure::verdict(t.rejected_503() == 0)
    );
    println!(
        "   B queue wait (ms): n {} p50 {:.0} p95 {:.0} max {:.0}   p95 ≤ {TARGET_LIGHT_P95_MS:.0}: {}",
        t.light_wait_ms.n,
        t.light_wait_ms.p50,
        t.light_wait_ms.p95,
        t.light_wait_ms.max,
        measure::verdict(t.light_wait_ms.p95 <= TARGET_LIGHT_P95_MS)
    );
    println!(
        "   A queue wait (ms): p50 {:.0} p95 {:.0}; answers B {} ok {:?}, A {} ok {:?}; load average at end {}",
        t.flood_wait_ms.p50,
        t.flood_wait_ms.p95,
        t.light_answers.ok_200,
        t.light_answers.other,
        t.flood_answers.ok_200,
        t.flood_answers.other,
        t.loadavg
    );
}
