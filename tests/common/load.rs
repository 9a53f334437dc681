//! Load for the integration tests: one kind of request ([`Call`]) sent by
//! callers that repeat it back to back ([`Flood`]), what each caller saw
//! ([`Outcome`]), a simulator on a thread of its own ([`isolated_setup`]),
//! and the CRM-side checks of what arrived (per-window maxima, 503s).
//!
//! It drives and records; it never asserts a timing of the test's own (the
//! checks read the simulator's arrival stamps), and it never sleeps to
//! order requests: a test waits for what it can observe instead.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crmgate::sim::{max_in_window, Class, Received, SimConfig, Simulator};
use tokio::runtime::Runtime;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{client, config, config_text, Gate};

/// Taken by every test that floods the gateway, so that two floods of one
/// test binary never share the two cores and add scheduling jitter to each
/// other's measurements.
pub static LOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A telephony event body the simulator accepts.
pub const EVENT: &str = r#"{"phone":"+79990001122","type":"in","codes":["101"]}"#;

/// One kind of request, sent as often as a test likes.
#[derive(Clone)]
pub struct Call {
    /// HTTP method.
    pub method: reqwest::Method,
    /// Path on the gateway, e.g. `/api/v5/orders` or `/open/api/v5/orders`.
    pub path: String,
    /// Client key, sent as `X-API-KEY`.
    pub key: Option<&'static str>,
    /// Form fields, sent urlencoded.
    pub form: Option<Vec<(String, String)>>,
    /// Extra headers.
    pub headers: Vec<(&'static str, String)>,
}

impl Call {
    /// A GET of `path` (query included) with client key `key`.
    pub fn get(path: &str, key: Option<&'static str>) -> Call {
        Call {
            method: reqwest::Method::GET,
            path: path.into(),
            key,
            form: None,
            headers: Vec::new(),
        }
    }

    /// A POST of `path` with `form` urlencoded.
    pub fn post(path: &str, key: Option<&'static str>, form: &[(&str, &str)]) -> Call {
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
    pub fn create(key: &'static str, external_id: &str) -> Call {
        let order = format!(r#"{{"externalId":"{external_id}","firstName":"Test"}}"#);
        Call::post("/api/v5/orders/create", Some(key), &[("order", &order)])
    }

    /// `POST /api/v5/telephony/call/event` (the telephony class).
    pub fn telephony(key: &'static str) -> Call {
        Call::post(
            "/api/v5/telephony/call/event",
            Some(key),
            &[("event", EVENT)],
        )
    }

    /// Adds a header.
    pub fn header(mut self, name: &'static str, value: &str) -> Call {
        self.headers.push((name, value.into()));
        self
    }

    /// The request, to send in a test's own way (another client, a
    /// timeout).
    pub fn request(&self, c: &reqwest::Client, base: &str, id: &str) -> reqwest::RequestBuilder {
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
    pub async fn send(&self, c: &reqwest::Client, base: &str, id: &str) -> Outcome {
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
pub struct Outcome {
    /// The request id it was sent with.
    pub id: String,
    /// HTTP status.
    pub status: u16,
    /// `X-Crmgate-Attempts`: sends to the CRM (0: never sent).
    pub attempts: Option<u32>,
    /// `X-Crmgate-Queue-Ms`: time spent queued.
    pub queue_ms: Option<u64>,
    /// `Retry-After`, as sent.
    pub retry_after: Option<String>,
    /// The body.
    pub body: String,
}

impl Outcome {
    /// Reads the headers and body of the answer to request `id`.
    pub async fn read(id: &str, resp: reqwest::Response) -> Outcome {
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

    /// The body as JSON; fails the test if it is not.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("{}: not JSON ({e}): {}", self.id, self.body))
    }

    /// Checks the shape of an answer crmgate gave itself instead of the CRM:
    /// RetailCRM-style JSON and, for 503, a whole-seconds `Retry-After`.
    pub fn assert_gateway_error(&self, status: u16) {
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

/// Stops the simulator's thread when dropped.
pub struct SimThread(Option<oneshot::Sender<()>>);

impl Drop for SimThread {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

/// A simulator for `cfg` on a thread and runtime of its own, as the CRM
/// runs on another machine: its arrival stamps never wait in a task queue
/// behind the gateway and the test's callers. The thread ends when the
/// [`SimThread`] is dropped.
pub async fn isolated_sim(cfg: SimConfig) -> (Simulator, SimThread) {
    let (ready, sim) = oneshot::channel();
    let (stop, stopped) = oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("simulator runtime");
        rt.block_on(async move {
            let _ = ready.send(super::spawn_sim(cfg).await);
            let _ = stopped.await;
        });
    });
    let sim = sim.await.expect("simulator thread");
    (sim, SimThread(Some(stop)))
}

/// Like [`super::setup`], but the simulator is an [`isolated_sim`]. The
/// gateway starts cold (no pooled connections), as after a restart: the
/// first sends of a flood open connections, which the budget accounts for.
pub async fn isolated_setup(extra: &str) -> (Simulator, Gate, SimThread) {
    let (sim, thread) = isolated_sim(super::sim_config()).await;
    let gate = Gate::start(config(&config_text(&sim, extra))).await;
    (sim, gate, thread)
}

/// Callers that each repeat one [`Call`] back to back until stopped. They
/// run on a runtime of their own, as callers run in other processes, so the
/// gateway's tasks do not queue behind theirs.
pub struct Flood {
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<Vec<Outcome>>>,
    runtime: Option<Runtime>,
}

/// Starts one caller per call; request ids are `{tag}-{caller}-{n}`.
pub fn flood(base: &str, tag: &str, calls: Vec<Call>) -> Flood {
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
    /// Stops issuing new requests (those already made go on). Stop several
    /// floods first and then finish each, or the later ones keep issuing
    /// while the earlier ones drain.
    pub fn stop(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops issuing, waits for every request already made, and returns all
    /// outcomes.
    pub async fn finish(mut self) -> Vec<Outcome> {
        self.stop();
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

/// The `X-Request-Id` the CRM received (empty if none).
pub fn id_of(r: &Received) -> &str {
    r.header("x-request-id").unwrap_or("")
}

/// The most arrivals per (source IP, class) in any 1 s window.
pub fn per_window(records: &[Received]) -> HashMap<(IpAddr, Class), usize> {
    max_in_window(records, Duration::from_secs(1))
}

/// Arrivals the CRM answered 503.
pub fn count_503(records: &[Received]) -> usize {
    records.iter().filter(|r| r.status == 503).count()
}

/// Arrivals per second between the first and the last one (for the report).
pub fn arrival_rate(records: &[Received]) -> f64 {
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
pub fn assert_no_503(records: &[Received]) {
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

/// Up to five outcomes whose status is not `ok` (for a failure message).
pub fn not_ok(outcomes: &[Outcome], ok: u16) -> Vec<&Outcome> {
    outcomes.iter().filter(|o| o.status != ok).take(5).collect()
}

/// Waits until the simulator has received arrivals spanning `span` (one at
/// least `span` after the first): a load test's measurement window, counted
/// in the CRM's own arrival stamps, so a slow start never shortens it.
/// Arrivals are stamped in order under one lock, so every arrival before
/// `first + span` is recorded by then.
pub async fn wait_for_arrivals_spanning(sim: &Simulator, span: Duration) {
    super::wait_until(&format!("arrivals at the CRM spanning {span:?}"), || {
        let records = sim.records();
        let first = records.iter().map(|r| r.at).min();
        first.is_some_and(|first| records.iter().any(|r| r.at >= first + span))
    })
    .await;
}

/// `[limits]` for floods that assert what the CRM received: the defaults
/// (20 ms jitter allowance), so the tests check what users run. Extra keys
/// are appended after it.
pub const LIMITS: &str = "[limits]\n";
