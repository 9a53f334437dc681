//! Rate shaping end to end: budgets, the fair queue, deadlines and retries,
//! measured at the strict simulated CRM over real loopback sockets.
//!
//! Load tests assert counts taken from the simulator's records (per-window
//! maxima, deliveries within a span of simulator time), never how long the
//! test itself took; the only timings asserted are lower bounds on a delay
//! and generous upper bounds on a wait that a FIFO would miss by seconds.
//! Floods hold [`LOAD`] so that two of them never share the two cores and
//! add scheduling jitter to each other's measurements.
mod common;

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use crmgate::sim::{max_in_window, Class, Received, Simulator};
use futures_util::future::join_all;
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::sleep;

/// Taken by every test that floods the gateway.
static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

const LOOPBACK: IpAddr = IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

/// A telephony event body the simulator accepts.
const EVENT: &str = r#"{"phone":"+79990001122","type":"in","codes":["101"]}"#;

/// One kind of request, sent as often as a test likes.
#[derive(Clone)]
struct Call {
    method: reqwest::Method,
    /// Path on the gateway, e.g. `/api/v5/orders` or `/open/api/v5/orders`.
    path: String,
    /// Client key, sent as `X-API-KEY`.
    key: Option<&'static str>,
    /// Form fields, sent urlencoded.
    form: Option<Vec<(String, String)>>,
    headers: Vec<(&'static str, String)>,
}

impl Call {
    fn get(path: &str, key: Option<&'static str>) -> Call {
        Call {
            method: reqwest::Method::GET,
            path: path.into(),
            key,
            form: None,
            headers: Vec::new(),
        }
    }

    fn post(path: &str, key: Option<&'static str>, form: &[(&str, &str)]) -> Call {
        Call {
            method: reqwest::Method::POST,
            form: Some(
                form.iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Call::get(path, key)
        }
    }

    /// `POST /api/v5/orders/create` with `externalId`.
    fn create(key: &'static str, external_id: &str) -> Call {
        let order = format!(r#"{{"externalId":"{external_id}","firstName":"Test"}}"#);
        Call::post("/api/v5/orders/create", Some(key), &[("order", &order)])
    }

    fn telephony(key: &'static str) -> Call {
        Call::post(
            "/api/v5/telephony/call/event",
            Some(key),
            &[("event", EVENT)],
        )
    }

    fn header(mut self, name: &'static str, value: &str) -> Call {
        self.headers.push((name, value.into()));
        self
    }

    fn request(&self, c: &reqwest::Client, base: &str, id: &str) -> reqwest::RequestBuilder {
        let mut req = c
            .request(self.method.clone(), format!("{base}{}", self.path))
            .header("x-request-id", id);
        if let Some(key) = self.key {
            req = req.header("x-api-key", key);
        }
        for (name, value) in &self.headers {
            req = req.header(*name, value);
        }
        if let Some(form) = &self.form {
            req = req.form(form);
        }
        req
    }

    /// Sends once with request id `id`; a transport error fails the test.
    async fn send(&self, c: &reqwest::Client, base: &str, id: &str) -> Outcome {
        let resp = self
            .request(c, base, id)
            .send()
            .await
            .unwrap_or_else(|e| panic!("request {id} failed: {e}"));
        Outcome::read(id, resp).await
    }
}

/// What a client saw.
#[derive(Debug)]
struct Outcome {
    id: String,
    status: u16,
    attempts: Option<u32>,
    queue_ms: Option<u64>,
    retry_after: Option<String>,
    body: String,
}

impl Outcome {
    async fn read(id: &str, resp: reqwest::Response) -> Outcome {
        let h = resp.headers();
        let num = |name: &str| -> Option<u64> { h.get(name)?.to_str().ok()?.parse().ok() };
        let attempts = num("x-crmgate-attempts").map(|n| n as u32);
        let queue_ms = num("x-crmgate-queue-ms");
        let retry_after = h
            .get("retry-after")
            .map(|v| v.to_str().unwrap_or("<bad>").to_string());
        let status = resp.status().as_u16();
        let body = resp.text().await.expect("response body");
        Outcome {
            id: id.into(),
            status,
            attempts,
            queue_ms,
            retry_after,
            body,
        }
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.id, self.body))
    }

    /// Checks the shape of an answer crmgate gave itself instead of the CRM:
    /// RetailCRM-style JSON and, for 503, a whole-seconds `Retry-After`.
    fn assert_gateway_error(&self, status: u16) {
        assert_eq!(self.status, status, "{self:?}");
        let body = self.json();
        assert_eq!(body["success"], false, "{self:?}");
        assert!(body["errorMsg"].as_str().is_some_and(|m| !m.is_empty()));
        if status == 503 {
            let after: u64 = self
                .retry_after
                .as_deref()
                .and_then(|v| v.parse().ok())
                .unwrap_or_else(|| panic!("503 without a numeric Retry-After: {self:?}"));
            assert!(after >= 1, "{self:?}");
        }
    }
}

/// `[limits]` for floods that assert what the CRM received: the defaults
/// (20 ms jitter allowance), so the tests check what users run. Extra keys
/// are appended after it.
const LIMITS: &str = "[limits]\n";

/// Stops the simulator's thread when dropped.
struct SimThread(Option<oneshot::Sender<()>>);

impl Drop for SimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// Like [`setup`], but the simulator runs on a thread and runtime of its own,
/// as the CRM runs on another machine: its arrival stamps never wait in a
/// task queue behind the gateway and the test's callers. The gateway starts
/// cold (no pooled connections), as after a restart: the first sends of a
/// flood open connections, which the budget accounts for.
async fn isolated_setup(extra: &str) -> (Simulator, Gate, SimThread) {
    let (ready, sim) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("simulator runtime");
        rt.block_on(async move {
            let _ = ready.send(common::sim().await);
            let _ = stopped.await;
        });
    });
    let sim = sim.await.expect("simulator thread");
    let gate = Gate::start(config(&config_text(&sim, extra))).await;
    (sim, gate, SimThread(Some(stop)))
}

/// Callers that each repeat one [`Call`] back to back until stopped. They
/// run on a runtime of their own, as callers run in other processes, so the
/// gateway's tasks do not queue behind theirs.
struct Flood {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
    runtime: Option<Runtime>,
}

/// Starts one caller per call; request ids are `{tag}-{caller}-{n}`.
fn flood(base: &str, tag: &str, calls: Vec<Call>) -> Flood {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("callers' runtime");
    let stop = Arc::new(AtomicBool::new(false));
    let c = client();
    let tasks = calls
        .into_iter()
        .enumerate()
        .map(|(i, call)| {
            let (c, stop, base, tag) = (c.clone(), stop.clone(), base.to_string(), tag.to_string());
            runtime.spawn(async move {
                let mut seen = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    let id = format!("{tag}-{i}-{}", seen.len());
                    seen.push(call.send(&c, &base, &id).await);
                }
                seen
            })
        })
        .collect();
    Flood {
        stop,
        tasks,
        runtime: Some(runtime),
    }
}

impl Flood {
    /// Stops issuing, waits for every request already made, and returns all
    /// outcomes.
    async fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        let mut all = Vec::new();
        for task in std::mem::take(&mut self.tasks) {
            all.extend(task.await.expect("caller task"));
        }
        all
    }
}

impl Drop for Flood {
    /// Abandons whatever is still running (its requests are dropped by the
    /// client, which the gateway sees as a disconnect).
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        if let Some(runtime) = self.runtime.take() {
            // Not `drop`: a runtime may not be dropped in async context.
            runtime.shutdown_background();
        }
    }
}

fn id_of(r: &Received) -> &str {
    r.header("x-request-id").unwrap_or("")
}

/// The most arrivals per (source IP, class) in any 1 s window.
fn per_window(records: &[Received]) -> HashMap<(IpAddr, Class), usize> {
    max_in_window(records, Duration::from_secs(1))
}

fn count_503(records: &[Received]) -> usize {
    records.iter().filter(|r| r.status == 503).count()
}

/// Arrivals per second between the first and the last one (for the report).
fn arrival_rate(records: &[Received]) -> f64 {
    let (Some(first), Some(last)) = (
        records.iter().map(|r| r.at).min(),
        records.iter().map(|r| r.at).max(),
    ) else {
        return 0.0;
    };
    (records.len() as f64 - 1.0) / (last - first).as_secs_f64().max(1e-9)
}

/// Fails if the CRM answered anything 503, listing for the first such
/// arrival the ones from the same IP and class in the second before it (ms
/// before it, request id, status): the evidence of what the budget let out.
fn assert_no_503(records: &[Received]) {
    let Some(hit) = records.iter().find(|r| r.status == 503) else {
        return;
    };
    let before: Vec<(u128, &str, u16)> = records
        .iter()
        .filter(|r| (r.source_ip, r.class) == (hit.source_ip, hit.class))
        .filter(|r| r.at <= hit.at && hit.at - r.at < Duration::from_secs(1))
        .map(|r| ((hit.at - r.at).as_millis(), id_of(r), r.status))
        .collect();
    panic!(
        "the CRM answered {} of {} arrivals 503; arrivals from {} ({}) in the second up to {}: {before:?}",
        count_503(records),
        records.len(),
        hit.source_ip,
        hit.class,
        id_of(hit)
    );
}

fn not_ok(outcomes: &[Outcome], ok: u16) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status != ok).take(5).collect()
}

/// Sum of the samples of metric `name` whose labels include `labels`.
async fn metric(gate: &Gate, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = client()
        .get(format!("{}/metrics", gate.admin))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics body");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            let wanted = n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            wanted.then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

/// `(effective_rate, configured_rate)` of the general budget, from `/status`.
async fn general_budget(gate: &Gate) -> (f64, f64) {
    let status = json(
        client()
            .get(format!("{}/status", gate.admin))
            .send()
            .await
            .expect("status"),
    )
    .await;
    let b = status["budgets"]
        .as_array()
        .and_then(|bs| bs.iter().find(|b| b["class"] == "general"))
        .unwrap_or_else(|| panic!("no general budget in {status}"))
        .clone();
    (
        b["effective_rate"].as_f64().expect("effective_rate"),
        b["configured_rate"].as_f64().expect("configured_rate"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn saturating_callers_never_trip_the_crm_limit() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let calls = (0..30)
        .map(|i| match i % 4 {
            0 => Call::get("/api/v5/orders", Some(ACME_CLIENT)),
            1 => Call::get("/api/v5/orders?page=2", Some(ACME_CLIENT2)),
            2 => Call::get("/api/v5/reference/sites", Some(BETA_CLIENT)),
            _ => Call::get("/open/api/v5/orders", None),
        })
        .collect();
    let load = flood(&gate.url, "sat", calls);
    sleep(Duration::from_secs(3)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    println!(
        "saturation: {} requests, {:.2}/s at the CRM, per-window max {windows:?}",
        records.len(),
        arrival_rate(&records)
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    // One send per client request: nothing was retried.
    assert_eq!(records.len(), outcomes.len());
    assert!(outcomes.iter().all(|o| o.attempts == Some(1)));
    for (key, n) in &windows {
        assert!(*n <= 10, "{key:?}: {n} arrivals in one second");
    }
    // The budget was used (9 fit in a window at this pacing), so the bound
    // above means something.
    assert!(windows[&(LOOPBACK, Class::General)] >= 8, "{windows:?}");
    assert!(records.len() >= 40, "only {} delivered", records.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn telephony_has_its_own_budget() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    let mut calls: Vec<Call> = (0..12)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    calls.extend((0..50).map(|i| Call::telephony([ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT][i % 3])));
    let load = flood(&gate.url, "mix", calls);
    sleep(Duration::from_secs(2)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let windows = per_window(&records);
    let telephony: Vec<Received> = records
        .iter()
        .filter(|r| r.class == Class::Telephony)
        .cloned()
        .collect();
    println!(
        "telephony: {} telephony at {:.1}/s, {} general; per-window max {windows:?}",
        telephony.len(),
        arrival_rate(&telephony),
        records.len() - telephony.len()
    );

    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    assert_no_503(&records);
    let tel = windows[&(LOOPBACK, Class::Telephony)];
    let gen = windows[&(LOOPBACK, Class::General)];
    assert!(tel <= 40, "{tel} telephony requests in one second");
    assert!(tel > 10, "telephony was held to the general rate ({tel}/s)");
    assert!(gen <= 10, "{gen} general requests in one second");
}

/// Floods for `run` and returns what the simulator received meanwhile.
async fn flood_records(extra: &str, callers: usize, run: Duration) -> Vec<Received> {
    let (sim, gate, _sim_thread) = isolated_setup(extra).await;
    let calls = (0..callers)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, BETA_CLIENT][i % 2])))
        .collect();
    let load = flood(&gate.url, "egress", calls);
    sleep(run).await;
    let records = sim.records();
    drop(load);
    records
}

/// Arrivals within `span` of the first one, by source IP.
fn delivered_within(records: &[Received], span: Duration) -> HashMap<IpAddr, usize> {
    let t0 = records.iter().map(|r| r.at).min().expect("some arrivals");
    let mut by_ip = HashMap::new();
    for r in records.iter().filter(|r| r.at < t0 + span) {
        *by_ip.entry(r.source_ip).or_default() += 1;
    }
    by_ip
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_egress_ips_double_the_delivered_rate() {
    let _load = LOAD.lock().await;
    let span = Duration::from_secs(2);
    let run = Duration::from_millis(2600);
    let one = flood_records(LIMITS, 40, run).await;
    let egress = "[upstream]\negress_ips = [\"127.0.0.2\", \"127.0.0.3\"]";
    let two = flood_records(&format!("{LIMITS}{egress}"), 40, run).await;
    let (one_by_ip, two_by_ip) = (delivered_within(&one, span), delivered_within(&two, span));
    let (n1, n2) = (
        one_by_ip.values().sum::<usize>(),
        two_by_ip.values().sum::<usize>(),
    );
    println!(
        "egress: one IP {n1} in 2 s {one_by_ip:?}, two IPs {n2} in 2 s {two_by_ip:?}; \
         per-window max {:?}",
        per_window(&two)
    );

    assert_no_503(&one);
    assert_no_503(&two);
    for (key, n) in per_window(&one).into_iter().chain(per_window(&two)) {
        assert!(n <= 10, "{key:?}: {n} arrivals in one second");
    }
    let a: IpAddr = "127.0.0.2".parse().unwrap();
    let b: IpAddr = "127.0.0.3".parse().unwrap();
    assert_eq!(two_by_ip.len(), 2, "{two_by_ip:?}");
    assert!(two_by_ip[&a] >= 15 && two_by_ip[&b] >= 15, "{two_by_ip:?}");
    assert!(n1 >= 15, "a single IP delivered only {n1} in 2 s");
    let ratio = n2 as f64 / n1 as f64;
    assert!(
        ratio >= 1.7,
        "two IPs delivered {n2}, one {n1}: ratio {ratio:.2}"
    );
}

/// Connection set-up is reported to the scheduler: without that report a
/// cold connection (TCP and TLS handshakes, ~100 ms to the real CRM) would
/// delay the first send of a burst past the jitter allowance. The budget's
/// handling of the report is unit-tested with paused time
/// (`scheduler::tests::sends_behind_a_slow_connect_count_from_when_it_opened`);
/// this checks the wiring through reqwest's connector.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_setup_is_reported_to_the_scheduler() {
    let _load = LOAD.lock().await;
    let (_sim, gate) = setup("").await;
    let c = client();
    for n in 0..3 {
        let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .send(&c, &gate.url, &format!("conn-{n}"))
            .await;
        assert_eq!(o.status, 200, "{o:?}");
    }
    let metrics = c
        .get(format!("{}/metrics", gate.admin))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let opened: u64 = metrics
        .lines()
        .find(|l| l.starts_with("crmgate_upstream_connections_total{egress=\"default\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .expect("connection counter present");
    // Sequential requests reuse one pooled connection.
    assert_eq!(opened, 1, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_light_tenant_is_not_stuck_behind_a_flood() {
    let _load = LOAD.lock().await;
    let (_sim, gate) = setup("").await;
    let calls = (0..50)
        .map(|i| Call::get("/api/v5/orders", Some([ACME_CLIENT, ACME_CLIENT2][i % 2])))
        .collect();
    let load = flood(&gate.url, "acme", calls);
    sleep(Duration::from_millis(600)).await;
    let c = client();
    let mut seen = Vec::new();
    for n in 0..5 {
        let acme_queued = gate.gateway.scheduler.tenant_queued("acme");
        let o = Call::get("/api/v5/orders", Some(BETA_CLIENT))
            .send(&c, &gate.url, &format!("beta-{n}"))
            .await;
        assert_eq!(o.status, 200, "{o:?}");
        seen.push((acme_queued, o.queue_ms.expect("queue-ms header")));
        sleep(Duration::from_millis(500)).await;
    }
    drop(load);
    println!("fairness: (acme queued, beta queue ms) = {seen:?}");

    for (acme_queued, wait) in seen {
        // Behind a FIFO of this many, beta would wait seconds.
        assert!(acme_queued >= 30, "the flood was not queued: {acme_queued}");
        assert!(
            wait <= 350,
            "beta waited {wait} ms behind {acme_queued} acme requests"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_wait_header_gives_up_without_sending() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(LIMITS).await;
    // The probes use the flood's client key, so they queue behind it.
    let calls = (0..20)
        .map(|_| Call::get("/api/v5/orders", Some(ACME_CLIENT)))
        .collect();
    let load = flood(&gate.url, "flood", calls);
    sleep(Duration::from_millis(500)).await;
    let c = client();
    for n in 0..3 {
        let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
            .header("x-crmgate-max-wait", "200ms")
            .send(&c, &gate.url, &format!("probe-{n}"))
            .await;
        o.assert_gateway_error(503);
        assert_eq!(o.attempts, Some(0), "{o:?}");
    }
    // Everything queued ahead of the probes is served by now, so their
    // turns have passed.
    let outcomes = load.finish().await;
    let records = sim.records();
    assert!(
        not_ok(&outcomes, 200).is_empty(),
        "{:?}",
        not_ok(&outcomes, 200)
    );
    let sent: Vec<&str> = records.iter().map(id_of).collect();
    assert!(
        !sent.iter().any(|id| id.starts_with("probe-")),
        "a request that was answered 503 reached the CRM"
    );
    assert_eq!(records.len(), outcomes.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configured_max_queue_wait_gives_up_without_sending() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) =
        isolated_setup(&format!("{LIMITS}max_queue_wait = \"300ms\"")).await;
    let calls = (0..20)
        .map(|_| Call::get("/api/v5/orders", Some(ACME_CLIENT)))
        .collect();
    let load = flood(&gate.url, "w", calls);
    sleep(Duration::from_millis(1500)).await;
    let outcomes = load.finish().await;
    let records = sim.records();
    let sent: HashSet<&str> = records.iter().map(id_of).collect();
    let (ok, refused): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.status == 200);
    println!(
        "max_queue_wait: {} served, {} refused",
        ok.len(),
        refused.len()
    );

    assert!(refused.len() >= 5, "only {} refused", refused.len());
    assert!(ok.len() >= 5, "only {} served", ok.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert_eq!(o.attempts, Some(0), "{o:?}");
        assert!(
            !sent.contains(o.id.as_str()),
            "{} was refused yet sent",
            o.id
        );
    }
    for o in &ok {
        assert!(
            sent.contains(o.id.as_str()),
            "{} served but not recorded",
            o.id
        );
    }
    assert_eq!(records.len(), ok.len());
    assert_no_503(&records);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_refuses_at_once() {
    let (sim, gate) = setup("[limits]\nqueue_capacity = 3").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let outcomes = join_all((0..20).map(|n| {
        let (c, call, url) = (&c, &call, &gate.url);
        async move { call.send(c, url, &format!("burst-{n}")).await }
    }))
    .await;
    let records = sim.records();
    let sent: HashSet<&str> = records.iter().map(id_of).collect();
    let (ok, refused): (Vec<&Outcome>, Vec<&Outcome>) =
        outcomes.iter().partition(|o| o.status == 200);
    println!(
        "queue_capacity 3: {} served, {} refused",
        ok.len(),
        refused.len()
    );

    assert!(refused.len() >= 10, "only {} of 20 refused", refused.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert!(o.json()["errorMsg"]
            .as_str()
            .unwrap()
            .contains("queue is full"));
        // Refused before queueing: no wait, no send.
        assert_eq!((o.attempts, o.queue_ms), (Some(0), Some(0)), "{o:?}");
        assert!(!sent.contains(o.id.as_str()));
    }
    assert_eq!(records.len(), ok.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tenant_cap_refuses_only_that_tenant() {
    let (sim, gate) = setup("[limits]\nmax_queued_per_tenant = 2").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let acme = join_all((0..12).map(|n| {
        let (c, call, url) = (&c, &call, &gate.url);
        async move { call.send(c, url, &format!("acme-{n}")).await }
    }));
    let beta = async {
        // Arrives while acme's share of the queue is full.
        sleep(Duration::from_millis(50)).await;
        Call::get("/api/v5/orders", Some(BETA_CLIENT))
            .send(&c, &gate.url, "beta")
            .await
    };
    let (acme, beta) = tokio::join!(acme, beta);
    let records = sim.records();
    let refused: Vec<&Outcome> = acme.iter().filter(|o| o.status != 200).collect();
    println!("tenant cap 2: {} of 12 acme refused", refused.len());

    assert!(refused.len() >= 6, "only {} of 12 refused", refused.len());
    for o in &refused {
        o.assert_gateway_error(503);
        assert!(
            o.json()["errorMsg"].as_str().unwrap().contains("tenant"),
            "{o:?}"
        );
    }
    assert_eq!(beta.status, 200, "{beta:?}");
    assert_eq!(records.len(), 12 - refused.len() + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_that_hangs_up_while_queued_is_never_sent() {
    // One slot per 1.02 s: the cancelled request would be third, at ~2 s.
    let (sim, gate) = setup("[limits]\ngeneral_per_second = 1").await;
    let c = client();
    let call = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    let send = |id: &'static str| {
        let (c, call, url) = (c.clone(), call.clone(), gate.url.clone());
        tokio::spawn(async move { call.send(&c, &url, id).await })
    };
    let first = send("first");
    sleep(Duration::from_millis(50)).await;
    let second = send("second");
    sleep(Duration::from_millis(50)).await;
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let cancelled = {
        let (call, url) = (call.clone(), gate.url.clone());
        tokio::spawn(async move { call.request(&impatient, &url, "cancelled").send().await })
    };
    sleep(Duration::from_millis(50)).await;
    let after = send("after");

    let gave_up = cancelled.await.unwrap();
    assert!(
        gave_up.as_ref().is_err_and(|e| e.is_timeout()),
        "expected a client timeout, got {gave_up:?}"
    );
    // Diagnostic only: did the gateway notice the hang-up before the slot?
    let mut withdrawn = false;
    for _ in 0..20 {
        if gate.gateway.scheduler.queued() <= 2 {
            withdrawn = true;
            break;
        }
        sleep(Duration::from_millis(25)).await;
    }
    // `after` queued behind the cancelled one: once it is answered, the
    // cancelled request's slot has come and gone.
    let after = after.await.unwrap();
    for o in [first.await.unwrap(), second.await.unwrap(), after] {
        assert_eq!(o.status, 200, "{o:?}");
    }
    let records = sim.records();
    let sent: Vec<&str> = records.iter().map(id_of).collect();
    println!("hang-up: withdrawn from the queue before its slot: {withdrawn}; sent {sent:?}");
    assert!(
        !sent.contains(&"cancelled"),
        "a request whose caller hung up was sent (withdrawn from the queue in time: {withdrawn}); sent {sent:?}"
    );
    assert_eq!(sent, ["first", "second", "after"]);
    assert_eq!(gate.gateway.scheduler.queued(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_503s_are_retried_without_duplicates() {
    let _load = LOAD.lock().await;
    let (sim, gate, _sim_thread) = isolated_setup(&format!(
        "{LIMITS}[limits.adaptive]\nrecovery_per_second = 10.0\n\
         [retry]\nmax_attempts = 10\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\""
    ))
    .await;
    sim.faults().set_random_503(0.3);
    let c = client();
    // Ten callers, four creates each.
    let outcomes: Vec<Outcome> = join_all((0..10).map(|caller| {
        let (c, url) = (&c, &gate.url);
        async move {
            let key = [ACME_CLIENT, ACME_CLIENT2][caller % 2];
            let mut seen = Vec::new();
            for k in 0..4 {
                let ext = format!("x-{}", caller * 4 + k);
                seen.push(Call::create(key, &ext).send(c, url, &ext).await);
            }
            seen
        }
    }))
    .await
    .into_iter()
    .flatten()
    .collect();
    sim.faults().clear();
    let records = sim.records();
    let attempts: Vec<u32> = outcomes.iter().map(|o| o.attempts.unwrap_or(0)).collect();
    println!(
        "random 503: {} creates, {} sends ({} answered 503), attempts {attempts:?}",
        outcomes.len(),
        records.len(),
        count_503(&records)
    );

    assert!(
        not_ok(&outcomes, 201).is_empty(),
        "{:?}",
        not_ok(&outcomes, 201)
    );
    let mut created: Vec<String> = sim
        .orders_created("acme")
        .iter()
        .map(|o| o["externalId"].as_str().unwrap_or("").to_string())
        .collect();
    created.sort();
    let mut expected: Vec<String> = (0..40).map(|n| format!("x-{n}")).collect();
    expected.sort();
    assert_eq!(created, expected, "each order exactly once");
    assert!(attempts.iter().any(|&a| a > 1), "no retries happened");
    // Every attempt the gateway counted reached the CRM, and no more.
    assert_eq!(records.len() as u32, attempts.iter().sum::<u32>());
    for (key, n) in per_window(&records) {
        assert!(n <= 10, "{key:?}: {n} arrivals in one second");
    }
}

#[tokio::test]
async fn a_reset_after_processing_is_retried_only_for_a_get() {
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"").await;
    let c = client();

    sim.faults().reset_after_processing_next(1);
    let post = Call::create(ACME_CLIENT, "x-reset")
        .send(&c, &gate.url, "post")
        .await;
    post.assert_gateway_error(502);
    assert_eq!(post.attempts, Some(1), "{post:?}");
    let created = sim.orders_created("acme");
    let ours = created.iter().filter(|o| o["externalId"] == "x-reset");
    assert_eq!(ours.count(), 1);
    let posts = sim.records().iter().filter(|r| id_of(r) == "post").count();
    assert_eq!(
        posts, 1,
        "the POST was resent after the CRM may have processed it"
    );

    sim.faults().reset_after_processing_next(1);
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&c, &gate.url, "get")
        .await;
    assert_eq!(get.status, 200, "{get:?}");
    assert_eq!(get.attempts, Some(2), "{get:?}");
    let gets = sim.records().iter().filter(|r| id_of(r) == "get").count();
    assert_eq!(gets, 2);
}

#[tokio::test]
async fn retry_after_is_honoured() {
    let (sim, gate) = setup("[retry]\ninitial_backoff = \"20ms\"").await;
    sim.faults().fail_next(1, Some("1".into()));
    let o = Call::get("/api/v5/orders", Some(ACME_CLIENT))
        .send(&client(), &gate.url, "ra")
        .await;
    assert_eq!(o.status, 200, "{o:?}");
    assert_eq!(o.attempts, Some(2), "{o:?}");
    let records = sim.records();
    let arrivals: Vec<&Received> = records.iter().filter(|r| id_of(r) == "ra").collect();
    assert_eq!(arrivals.len(), 2);
    assert_eq!((arrivals[0].status, arrivals[1].status), (503, 200));
    let gap = arrivals[1].at - arrivals[0].at;
    println!("Retry-After 1: resent after {gap:?}");
    assert!(
        gap >= Duration::from_millis(950),
        "resent after only {gap:?}"
    );
}

#[tokio::test]
async fn a_503_lowers_the_rate_until_it_recovers() {
    let (sim, gate) = setup(
        "[limits.adaptive]\ndecrease_factor = 0.5\nrecovery_per_second = 2.0\n\
         [retry]\ninitial_backoff = \"20ms\"",
    )
    .await;
    let c = client();
    let get = Call::get("/api/v5/orders", Some(ACME_CLIENT));
    assert_eq!(get.send(&c, &gate.url, "warm").await.status, 200);
    assert_eq!(general_budget(&gate).await, (10.0, 10.0));
    let throttled = [("class", "general"), ("status", "503")];
    let retried = [("class", "general"), ("reason", "throttled")];
    let throttled_before = metric(&gate, "crmgate_upstream_throttled_total", &throttled).await;
    let retried_before = metric(&gate, "crmgate_retries_total", &retried).await;

    sim.faults().fail_next(1, None);
    let o = get.send(&c, &gate.url, "cut").await;
    assert_eq!((o.status, o.attempts), (200, Some(2)), "{o:?}");
    let (cut, configured) = general_budget(&gate).await;
    println!("adaptive: effective rate {cut} of {configured} just after a 503");
    // Halved to 5, regaining 2/s: below 10 for 2.5 s after the 503.
    assert!(cut < configured, "effective rate {cut} after a 503");
    let throttled_after = metric(&gate, "crmgate_upstream_throttled_total", &throttled).await;
    let retried_after = metric(&gate, "crmgate_retries_total", &retried).await;
    assert_eq!(throttled_after - throttled_before, 1.0);
    assert_eq!(retried_after - retried_before, 1.0);

    let mut recovered = None;
    for _ in 0..100 {
        sleep(Duration::from_millis(100)).await;
        let (rate, _) = general_budget(&gate).await;
        if rate == configured {
            recovered = Some(rate);
            break;
        }
    }
    assert_eq!(
        recovered,
        Some(configured),
        "the rate did not recover in 10 s"
    );
}

#[tokio::test]
async fn a_refused_connection_is_retried_even_for_a_post() {
    let sim = sim().await;
    // A port that was just free: connecting to it is refused.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let text = format!(
        "{}\n[[tenants]]\nname = \"dead\"\nbase_url = \"http://{closed}\"\napi_key = \"dead-key\"\n",
        config_text(
            &sim,
            "[retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\""
        )
    );
    let gate = Gate::start(config(&text)).await;
    let retried = [("class", "general"), ("reason", "connect")];
    let before = metric(&gate, "crmgate_retries_total", &retried).await;
    let order = r#"{"externalId":"x-dead"}"#;
    let o = Call::post("/dead/api/v5/orders/create", None, &[("order", order)])
        .send(&client(), &gate.url, "dead")
        .await;
    o.assert_gateway_error(502);
    assert_eq!(o.attempts, Some(3), "{o:?}");
    assert_eq!(
        metric(&gate, "crmgate_retries_total", &retried).await - before,
        2.0
    );
    assert!(sim.records().is_empty());
}
