//! The rig every end-to-end scenario shares: a simulated CRM, a gateway in
//! front of it (both in this process, on loopback ports, started by the
//! integration tests' own helpers in `tests/common`), an optional jitter hop
//! between them, and the callers that load the gateway and record each
//! answer's queue wait. Nothing here judges results; `measure` does.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::Response;
use crmgate::config::Config;
use crmgate::sim::{SimConfig, Simulator};
use rand::Rng;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::common;

pub use crate::common::{Gate, ACME_CLIENT, ACME_CLIENT2, BETA_CLIENT};
use crate::common::{ACME_KEY, BETA_KEY};

/// The request every caller sends: a general-class read.
pub const PATH: &str = "/api/v5/orders?limit=20";

/// A simulator with RetailCRM's limits (10/s general, 40/s telephony, strict
/// 1 s window) and uniform random latency in `latency`.
pub async fn sim(latency: (Duration, Duration)) -> Simulator {
    common::spawn_sim(sim_config(latency)).await
}

/// The tests' simulator config (accounts "acme" and "beta") with uniform
/// random latency in `latency`, for a scenario that changes more of it
/// (TLS, RTT).
pub fn sim_config(latency: (Duration, Duration)) -> SimConfig {
    SimConfig {
        latency,
        ..common::sim_config()
    }
}

/// Gateway config with default limits (10/s general, 20 ms jitter allowance,
/// adaptive on) and two equal-weight tenants whose CRM is `upstream`:
/// acme (two client keys, two services) and beta (one).
pub fn gateway_config(upstream: &str, limits: &str) -> Config {
    gateway_config_with(upstream, limits, "")
}

/// [`gateway_config`] plus whole extra sections (such as `[redis]`). The
/// CRM is `upstream` rather than a simulator's own URL, as the jitter hop
/// sits between them. The cache stage is off unless `sections` has a
/// `[cache]` (see [`common::config`]): the shaping scenarios send identical
/// GETs to measure the budget, not the cache.
pub fn gateway_config_with(upstream: &str, limits: &str, sections: &str) -> Config {
    common::config(&format!(
        r#"[server]
listen = "127.0.0.1:0"
admin_listen = "127.0.0.1:0"
shutdown_grace = "2s"
# Stop accepting at once on shutdown: nothing new comes after a run.
drain_accept = "0s"

[limits]
{limits}

{sections}

[[tenants]]
name = "acme"
base_url = "{upstream}"
api_key = "{ACME_KEY}"
client_keys = ["{ACME_CLIENT}", "{ACME_CLIENT2}"]

[[tenants]]
name = "beta"
base_url = "{upstream}"
api_key = "{BETA_KEY}"
client_keys = ["{BETA_CLIENT}"]
"#
    ))
}

/// A reverse hop that holds every request for a random time in
/// `[0, max_jitter]` before forwarding it: arrival jitter between the
/// gateway's send and the CRM's count. It works per request (not per
/// connection), so pooled keep-alive connections are jittered too. Its
/// outgoing side is bound to 127.0.0.1, so the simulator still sees one
/// source IP, as the CRM would see one egress IP.
pub struct JitterHop {
    pub url: String,
    /// How long each request was actually held, receipt to forward.
    pub held: Arc<Mutex<Vec<Duration>>>,
    task: JoinHandle<()>,
}

struct Hop {
    client: reqwest::Client,
    target: String,
    max_jitter: Duration,
    held: Arc<Mutex<Vec<Duration>>>,
}

impl JitterHop {
    pub async fn start(target: String, max_jitter: Duration) -> JitterHop {
        let client = reqwest::Client::builder()
            .local_address(IpAddr::V4(Ipv4Addr::LOCALHOST))
            .no_proxy()
            .tcp_nodelay(true)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .expect("hop client builds");
        let held = Arc::new(Mutex::new(Vec::new()));
        let hop = Arc::new(Hop {
            client,
            target,
            max_jitter,
            held: held.clone(),
        });
        let app = axum::Router::new().fallback(forward).with_state(hop);
        let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .await
            .expect("hop binds");
        let url = format!("http://{}", listener.local_addr().expect("hop address"));
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        JitterHop { url, held, task }
    }

    pub fn stop(&self) {
        self.task.abort();
    }
}

async fn forward(State(hop): State<Arc<Hop>>, req: Request) -> Response {
    let received = Instant::now();
    let delay = rand::thread_rng().gen_range(Duration::ZERO..=hop.max_jitter);
    let (parts, body) = req.into_parts();
    let Ok(body) = to_bytes(body, 16 * 1024 * 1024).await else {
        return status_only(StatusCode::BAD_REQUEST);
    };
    hold_until(received + delay).await;
    hop.held
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push(received.elapsed());

    let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
    let mut headers = parts.headers;
    for h in ["host", "content-length", "connection", "transfer-encoding"] {
        headers.remove(h);
    }
    let sent = hop
        .client
        .request(parts.method, format!("{}{path}", hop.target))
        .headers(headers)
        .body(body)
        .send()
        .await;
    let Ok(resp) = sent else {
        return status_only(StatusCode::BAD_GATEWAY);
    };
    let status = resp.status();
    let mut headers = resp.headers().clone();
    for h in ["content-length", "connection", "transfer-encoding"] {
        headers.remove(h);
    }
    let body = resp.bytes().await.unwrap_or_default();
    let mut out = Response::new(Body::from(body));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    out
}

/// Sleeps until `at` precisely: tokio's timer fires up to a millisecond or
/// two late, which would stretch "0–20 ms" to 0–25 ms on a busy machine, so
/// the last 2 ms are spent yielding. At ~10 requests/s that costs little.
async fn hold_until(at: Instant) {
    let early = at.checked_sub(Duration::from_millis(2));
    if let Some(early) = early.filter(|e| *e > Instant::now()) {
        tokio::time::sleep_until(early).await;
    }
    while Instant::now() < at {
        tokio::task::yield_now().await;
    }
}

fn status_only(status: StatusCode) -> Response {
    let mut r = Response::new(Body::empty());
    *r.status_mut() = status;
    r
}

/// What one caller saw for one request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub status: u16,
    /// `x-crmgate-queue-ms`, when the gateway set it.
    pub queue_ms: Option<u64>,
    /// Send to the end of the answer's body, as the caller saw it (ms).
    pub answer_ms: f64,
}

/// Load generators; every request's outcome lands in `samples`.
pub struct Load {
    stop: CancellationToken,
    /// Callers send no new request once this is cancelled (see [`Load::finish`]).
    finish: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    samples: Arc<Mutex<Vec<Sample>>>,
}

/// What a flood-and-trickle run saw: the light tenant's and the flooding
/// tenant's answers, and the CRM's records at the end of the run.
pub struct FloodAndTrickle {
    pub light: Vec<Sample>,
    pub flood: Vec<Sample>,
    pub records: Vec<crmgate::sim::Received>,
}

/// Tenant A floods with `callers`; after 500 ms (so the light tenant meets
/// a full queue, not an empty gateway) tenant B sends one request every
/// `every`, for `run`. The CRM's records are read when B stops, before the
/// flood's queue drains.
pub async fn flood_and_trickle(
    client: &reqwest::Client,
    gate: &str,
    sim: &crmgate::sim::Simulator,
    callers: usize,
    run: Duration,
    every: Duration,
) -> FloodAndTrickle {
    let flood = Load::flood(client, gate, ACME_CLIENT, callers);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let light = Load::trickle(client, gate, BETA_CLIENT, every);
    tokio::time::sleep(run).await;
    let light = light.stop().await;
    let records = sim.records();
    let flood = flood.stop().await;
    FloodAndTrickle {
        light,
        flood,
        records,
    }
}

pub use crate::common::client;

/// What a caller sends, and with which client key.
#[derive(Debug, Clone, Copy)]
pub enum Req {
    /// `GET` [`PATH`] with the key in `X-API-KEY`.
    Get(&'static str),
    /// `GET` of another path (query included), key in `X-API-KEY`.
    GetPath(&'static str, &'static str),
    /// `POST /api/v5/orders/create` as RetailCRM's PHP client sends it: an
    /// array in `CURLOPT_POSTFIELDS`, which curl encodes as
    /// `multipart/form-data`, with `apiKey` one of the parts next to
    /// `order` (a new `externalId` each time).
    Multipart(&'static str),
}

/// Numbers the multipart orders' `externalId`s and boundaries.
static SEQ: AtomicU64 = AtomicU64::new(0);

/// A multipart body as libcurl writes one (its boundary style, CRLF line
/// ends, no part headers beyond `Content-Disposition`): `(content type, body)`.
pub fn multipart_create(key: &str) -> (String, Vec<u8>) {
    let n = SEQ.fetch_add(1, Ordering::Relaxed);
    let boundary = format!(
        "------------------------{:016x}",
        0x6d70_6172_7400_0000u64 ^ n
    );
    let order = format!(
        r#"{{"externalId":"bench-mp-{}-{n}","firstName":"Bench","lastName":"Multipart","phone":"+79990001122","items":[{{"productName":"Item","quantity":1,"initialPrice":100}}]}}"#,
        std::process::id()
    );
    let mut body = String::new();
    for (name, value) in [("apiKey", key), ("order", order.as_str())] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{name}\"\r\n\r\n{value}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    (
        format!("multipart/form-data; boundary={boundary}"),
        body.into_bytes(),
    )
}

async fn one(client: &reqwest::Client, gate: &str, req: Req) -> Sample {
    let sent = Instant::now();
    let request = match req {
        Req::Get(key) => client.get(format!("{gate}{PATH}")).header("X-API-KEY", key),
        Req::GetPath(path, key) => client.get(format!("{gate}{path}")).header("X-API-KEY", key),
        Req::Multipart(key) => {
            let (content_type, body) = multipart_create(key);
            client
                .post(format!("{gate}/api/v5/orders/create"))
                .header("Content-Type", content_type)
                .body(body)
        }
    };
    match request.send().await {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let queue_ms = resp
                .headers()
                .get("x-crmgate-queue-ms")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            let _ = resp.bytes().await;
            Sample {
                status,
                queue_ms,
                answer_ms: sent.elapsed().as_secs_f64() * 1000.0,
            }
        }
        // 0: transport error (the gateway never answered).
        Err(_) => Sample {
            status: 0,
            queue_ms: None,
            answer_ms: sent.elapsed().as_secs_f64() * 1000.0,
        },
    }
}

impl Load {
    /// `callers` concurrent callers of `GET` [`PATH`], each sending its
    /// next request as soon as the previous one is answered.
    pub fn flood(client: &reqwest::Client, gate: &str, key: &'static str, callers: usize) -> Load {
        Load::flood_req(client, gate, Req::Get(key), callers, Duration::ZERO)
    }

    /// `callers` concurrent callers of `req`, each sending its next request
    /// as soon as the previous one is answered, or `after_refusal` after a
    /// 503 (a client's pause before it tries again; zero for none).
    pub fn flood_req(
        client: &reqwest::Client,
        gate: &str,
        req: Req,
        callers: usize,
        after_refusal: Duration,
    ) -> Load {
        let stop = CancellationToken::new();
        let finish = CancellationToken::new();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let tasks = (0..callers)
            .map(|_| {
                let (client, gate, stop, finish, samples) = (
                    client.clone(),
                    gate.to_string(),
                    stop.clone(),
                    finish.clone(),
                    samples.clone(),
                );
                tokio::spawn(async move {
                    while !finish.is_cancelled() {
                        let sample = tokio::select! {
                            s = one(&client, &gate, req) => s,
                            _ = stop.cancelled() => return,
                        };
                        let refused = sample.status == 503;
                        samples
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push(sample);
                        if refused && !after_refusal.is_zero() {
                            tokio::select! {
                                _ = tokio::time::sleep(after_refusal) => {}
                                _ = stop.cancelled() => return,
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            finish,
            tasks,
            samples,
        }
    }

    /// One `GET` [`PATH`] every `every`, each on its own task so a slow
    /// answer does not delay the next send.
    pub fn trickle(
        client: &reqwest::Client,
        gate: &str,
        key: &'static str,
        every: Duration,
    ) -> Load {
        Load::trickle_req(client, gate, Req::Get(key), every)
    }

    /// One `req` every `every`, each on its own task.
    pub fn trickle_req(client: &reqwest::Client, gate: &str, req: Req, every: Duration) -> Load {
        let stop = CancellationToken::new();
        let finish = CancellationToken::new();
        let samples = Arc::new(Mutex::new(Vec::new()));
        let url = gate.to_string();
        let (client2, stop2, finish2, samples2) = (
            client.clone(),
            stop.clone(),
            finish.clone(),
            samples.clone(),
        );
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut sent = Vec::new();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop2.cancelled() => return,
                    _ = finish2.cancelled() => break,
                }
                let (client, url, stop, samples) = (
                    client2.clone(),
                    url.clone(),
                    stop2.clone(),
                    samples2.clone(),
                );
                sent.push(tokio::spawn(async move {
                    let sample = tokio::select! {
                        s = one(&client, &url, req) => s,
                        _ = stop.cancelled() => return,
                    };
                    samples
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(sample);
                }));
            }
            // Wound down: the answers to what was sent are still awaited.
            for request in sent {
                let _ = request.await;
            }
        });
        Load {
            stop,
            finish,
            tasks: vec![task],
            samples,
        }
    }

    /// Flood callers send nothing new from now on; what they sent is still
    /// awaited. [`Load::finish`] waits for it.
    pub fn wind_down(&self) {
        self.finish.cancel();
    }

    /// [`Load::wind_down`], then waits for the answers to what the callers
    /// sent (queued requests included) for at most `grace`, then
    /// [`Load::stop`]. Nothing is abandoned in the gateway's queue unless
    /// the grace runs out.
    pub async fn finish(mut self, grace: Duration) -> Vec<Sample> {
        self.wind_down();
        let deadline = Instant::now() + grace;
        // A finished handle must not be awaited again: keep only the others.
        let mut left = Vec::new();
        for mut t in std::mem::take(&mut self.tasks) {
            if !left.is_empty() || tokio::time::timeout_at(deadline, &mut t).await.is_err() {
                left.push(t);
            }
        }
        self.tasks = left;
        self.stop().await
    }

    /// Stops sending (requests in flight are abandoned) and returns what
    /// was answered.
    pub async fn stop(self) -> Vec<Sample> {
        self.stop.cancel();
        for t in self.tasks {
            let _ = t.await;
        }
        let samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
        samples.clone()
    }
}
