//! The status page in a real browser: Debian's `chromium`, headless, driven
//! over the DevTools protocol against a gateway with the simulator behind it.
//!
//! It loads the page, checks that what it shows matches `/status`, sends
//! traffic and checks that the chart and the counters move and that every
//! section is swapped in from `/status/fragments`, stops the gateway and
//! checks that the page says its data stopped updating. Every
//! step waits for what the page shows, never for a fixed time.
//!
//! Without `chromium` on PATH the test skips loudly, unless
//! `CRMGATE_REQUIRE_ALL=1` or `CRMGATE_REQUIRE_BROWSER=1` (CI), where it fails. With
//! `CRMGATE_SCREENSHOT_DIR=docs` it also runs a minute of mixed traffic and
//! saves `status-page.png` (1280×800), `status-page-phone.png` and
//! `status-page-stopped.png` there (how the pictures in the docs are made).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use base64::Engine as _;
use common::*;
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// A headless chromium of this test's own, with one page attached. Its
/// whole process group is killed when dropped (fields drop in order: the
/// socket, then the processes, then their profile directory).
struct Chromium {
    ws: tokio::sync::Mutex<WebSocketStream<MaybeTlsStream<TcpStream>>>,
    _browser: Killer,
    _profile: tempfile::TempDir,
    session: String,
    next_id: AtomicU64,
}

fn running_as_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|s| {
        s.lines()
            .find(|l| l.starts_with("Uid:"))
            .and_then(|l| l.split_whitespace().nth(1))
            == Some("0")
    })
}

impl Chromium {
    /// Starts chromium, or returns `None` (after a loud message) when it is
    /// not installed and the browser is not required.
    async fn launch() -> Option<Chromium> {
        let profile = tempfile::tempdir().expect("temp dir");
        let mut cmd = Command::new("chromium");
        cmd.args([
            "--headless=new",
            "--remote-debugging-port=0",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-gpu",
            "--disable-extensions",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--mute-audio",
            "--hide-scrollbars",
            "--window-size=1280,800",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        if running_as_root() {
            // Chromium refuses to run its sandbox as root.
            cmd.arg("--no-sandbox");
        }
        // Its own process group, so dropping kills the renderers too.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing(Program::Chromium, &test_name());
                return None;
            }
            Err(e) => panic!("cannot start chromium: {e}"),
        };
        let browser = Killer(Some(child));
        // Chromium writes its port and browser path once it listens.
        let port_file = profile.path().join("DevToolsActivePort");
        let endpoint = wait_for_within(
            "chromium's DevToolsActivePort",
            Duration::from_secs(60),
            || {
                let text = std::fs::read_to_string(&port_file).ok();
                async move {
                    let mut lines = text?
                        .lines()
                        .map(str::to_string)
                        .collect::<Vec<_>>()
                        .into_iter();
                    let (port, path) = (lines.next()?, lines.next()?);
                    Some(format!("ws://127.0.0.1:{port}{path}"))
                }
            },
        )
        .await;
        let (ws, _) = tokio_tungstenite::connect_async(endpoint.as_str())
            .await
            .expect("DevTools websocket");
        let mut chromium = Chromium {
            ws: tokio::sync::Mutex::new(ws),
            _browser: browser,
            _profile: profile,
            session: String::new(),
            next_id: AtomicU64::new(0),
        };
        let target = chromium
            .call("Target.createTarget", json!({"url": "about:blank"}))
            .await;
        let attached = chromium
            .call(
                "Target.attachToTarget",
                json!({"targetId": target["targetId"], "flatten": true}),
            )
            .await;
        chromium.session = attached["sessionId"].as_str().expect("session").into();
        chromium.viewport(1280, 800, false).await;
        Some(chromium)
    }

    /// Sends one DevTools command (to the page once attached) and returns
    /// its result; events in between are skipped.
    async fn call(&self, method: &str, params: Value) -> Value {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut msg = json!({"id": id, "method": method, "params": params});
        if !self.session.is_empty() {
            msg["sessionId"] = json!(self.session);
        }
        let mut ws = self.ws.lock().await;
        ws.send(Message::text(msg.to_string()))
            .await
            .expect("DevTools send");
        let answer = async {
            while let Some(frame) = ws.next().await {
                let Ok(Message::Text(text)) = frame else {
                    continue;
                };
                let v: Value = serde_json::from_str(text.as_str()).expect("DevTools JSON");
                if v["id"] == id {
                    return v;
                }
            }
            panic!("DevTools connection closed during {method}");
        };
        let v = tokio::time::timeout(Duration::from_secs(60), answer)
            .await
            .unwrap_or_else(|_| panic!("no DevTools answer to {method}"));
        assert!(v.get("error").is_none(), "{method} failed: {v}");
        v["result"].clone()
    }

    /// Evaluates `expr` in the page and returns its value.
    async fn eval(&self, expr: &str) -> Value {
        let r = self
            .call(
                "Runtime.evaluate",
                json!({"expression": expr, "returnByValue": true}),
            )
            .await;
        assert!(r.get("exceptionDetails").is_none(), "{expr} threw: {r}");
        r["result"]["value"].clone()
    }

    async fn viewport(&self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile}),
        )
        .await;
    }

    async fn navigate(&self, url: &str) {
        self.call("Page.navigate", json!({"url": url})).await;
    }

    async fn screenshot(&self, path: &Path) {
        let shot = self
            .call("Page.captureScreenshot", json!({"format": "png"}))
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().expect("png data"))
            .expect("base64 png");
        std::fs::write(path, png).expect("write screenshot");
        eprintln!("screenshot: {}", path.display());
    }
}

/// Kills a child's process group; used while chromium starts, and by
/// [`Chromium`]'s drop.
struct Killer(Option<Child>);

impl Drop for Killer {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            // The group id is the child's pid (process_group(0)): this ends
            // chromium and its helpers, and nothing else.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{}", child.id())])
                .stderr(Stdio::null())
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Text of the first element matching `selector`, or null.
fn text_of(selector: &str) -> String {
    format!("(document.querySelector({selector:?}) || {{}}).textContent ?? null")
}

/// `data-value` (or the attribute named) of the first match, or null.
fn attr_of(selector: &str, attr: &str) -> String {
    format!("(() => {{ const e = document.querySelector({selector:?}); return e ? e.getAttribute({attr:?}) : null; }})()")
}

impl Chromium {
    /// Waits until the JavaScript expression `cond` is true in the page.
    async fn until(&self, what: &str, cond: &str) {
        wait_for(what, || async {
            (self.eval(cond).await == true).then_some(())
        })
        .await;
    }

    /// Waits until the page has redrawn from fresh JSON once more.
    async fn redrawn(&self) {
        let now = self.eval(UPDATES).await.as_u64().unwrap_or(0);
        self.until("the page to redraw", &format!("{UPDATES} > {now}"))
            .await;
    }

    /// The number an element shows, if it shows one.
    async fn number(&self, selector: &str) -> Option<u64> {
        self.eval(&text_of(selector))
            .await
            .as_str()?
            .trim()
            .parse()
            .ok()
    }
}

/// How many times the script redrew the page from JSON.
const UPDATES: &str = "Number((document.body && document.body.dataset.updates) || 0)";

/// The sum of `totals_by_status` of `tenant` over codes in `class` (2 = 2xx).
fn answers(status: &Value, tenant: &str, class: char) -> u64 {
    let t = status["tenants"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == tenant))
        .unwrap_or_else(|| panic!("no tenant {tenant} in {status}"));
    t["totals_by_status"]
        .as_object()
        .unwrap()
        .iter()
        .filter(|(code, _)| code.starts_with(class))
        .map(|(_, n)| n.as_u64().unwrap())
        .sum()
}

const ACME_2XX: &str = "tr[data-tenant=\"acme\"] [data-field=\"2xx\"]";
const GENERAL_CHART: &str = "article[data-egress=\"default\"][data-class=\"general\"] svg";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_status_page_shows_live_numbers_and_says_when_they_stop() {
    let Some(b) = Chromium::launch().await else {
        return;
    };
    let (sim, gate) = setup("").await;
    b.navigate(&format!("{}/", gate.admin)).await;

    // The server-rendered snapshot is there, and the script took over.
    b.until("the page to redraw from JSON", &format!("{UPDATES} >= 1"))
        .await;
    assert_eq!(
        b.eval("document.getElementById('stale').hidden").await,
        true,
        "not stale while the gateway answers"
    );

    // What the page shows matches /status.
    let status = status_doc(&gate).await;
    let shown_tenants = b
        .eval("[...document.querySelectorAll('#tenants tbody tr')].map(r => r.dataset.tenant)")
        .await;
    let status_tenants: Vec<&str> = status["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(shown_tenants, json!(status_tenants));
    assert_eq!(
        b.eval(&attr_of("#f-checksum", "data-value")).await,
        status["config_checksum"]
    );
    assert_eq!(b.eval(&attr_of("#f-state", "data-value")).await, "true");
    assert_eq!(b.eval(&text_of("#f-state")).await, "Ready");
    assert_eq!(b.eval(&attr_of("#f-backend", "data-value")).await, "local");
    assert_eq!(
        b.eval(&text_of("#f-queued")).await,
        format!("0 of {}", status["queue_capacity"])
    );
    for budget in status["budgets"].as_array().unwrap() {
        let card = format!(
            "article[data-egress={:?}][data-class={:?}]",
            budget["egress"].as_str().unwrap(),
            budget["class"].as_str().unwrap()
        );
        let configured = budget["configured_rate"].as_u64().unwrap();
        assert_eq!(
            b.eval(&text_of(&format!("{card} [data-field=configured]")))
                .await,
            format!("{configured}/s"),
            "{card}"
        );
    }
    for t in status["tenants"].as_array().unwrap() {
        let row = format!("tr[data-tenant={:?}]", t["name"].as_str().unwrap());
        assert_eq!(
            b.number(&format!("{row} [data-field=weight]")).await,
            t["weight"].as_u64(),
            "{row}"
        );
        assert_eq!(
            b.number(&format!("{row} [data-field=\"2xx\"]")).await,
            Some(0)
        );
    }
    let uptime: u64 = b
        .eval(&attr_of("#f-uptime", "data-value"))
        .await
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let status_uptime = status_doc(&gate).await["uptime_seconds"].as_u64().unwrap();
    assert!(
        uptime <= status_uptime && status_uptime - uptime <= 3,
        "page uptime {uptime} s, /status {status_uptime} s"
    );

    // Traffic: the counters and the chart move.
    let sends = format!("Number({})", attr_of(GENERAL_CHART, "data-total-sends"));
    let sends_before = b.eval(&sends).await.as_u64().expect("a chart");
    let traffic = flood(
        &gate.url,
        "page",
        vec![
            Call::get("/api/v5/orders", Some(ACME_CLIENT)),
            Call::get("/api/v5/orders", Some(ACME_CLIENT2)),
            Call::get("/api/v5/orders", Some(BETA_CLIENT)),
        ],
    );
    b.until(
        "the chart and acme's 2xx count to move",
        &format!(
            "{sends} > {sends_before} && Number({}) > 0",
            text_of(ACME_2XX)
        ),
    )
    .await;
    b.until(
        "acme's queue wait p95 to be shown",
        &format!(
            "({}) !== ''",
            attr_of("tr[data-tenant=\"acme\"] [data-field=p95]", "data-value")
        ),
    )
    .await;

    if let Some(dir) = std::env::var_os("CRMGATE_SCREENSHOT_DIR").map(PathBuf::from) {
        screenshots(&b, &sim, &gate, &dir).await;
    }
    let outcomes = traffic.finish().await;
    assert!(
        outcomes.iter().all(|o| o.status == 200),
        "{:?}",
        not_ok(&outcomes, 200)
    );

    // Once traffic stops, the page settles on exactly what /status says.
    let want = answers(&status_doc(&gate).await, "acme", '2');
    assert!(want > 0);
    b.until(
        &format!("the page's acme 2xx to be {want}, as in /status"),
        &format!("Number({}) === {want}", text_of(ACME_2XX)),
    )
    .await;
    // Every section was swapped in from the server's fragments after a
    // live update: the facts, one card with its chart per budget, one row
    // per tenant; with the numbers at rest, the tenants table is the very
    // markup the server renders.
    b.redrawn().await;
    for id in [
        "f-state",
        "f-backend",
        "f-uptime",
        "f-queued",
        "f-checksum",
        "f-reload",
    ] {
        assert_ne!(
            b.eval(&attr_of(&format!("#facts #{id}"), "data-value"))
                .await,
            Value::Null,
            "#{id}"
        );
    }
    let status = status_doc(&gate).await;
    for budget in status["budgets"].as_array().unwrap() {
        let chart = format!(
            "#budgets article[data-egress={:?}][data-class={:?}] svg.chart",
            budget["egress"].as_str().unwrap(),
            budget["class"].as_str().unwrap()
        );
        let samples = b.eval(&attr_of(&chart, "data-samples")).await;
        assert!(
            samples.as_str().and_then(|n| n.parse::<u64>().ok()) > Some(0),
            "{chart}: {samples}"
        );
    }
    let fragments = json(
        client()
            .get(format!("{}/status/fragments", gate.admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let drawn = b
        .eval("document.querySelector('#tenants tbody').innerHTML")
        .await;
    assert_eq!(drawn, fragments["tenants"]);

    let history = json(
        client()
            .get(format!("{}/status/history", gate.admin))
            .send()
            .await
            .unwrap(),
    )
    .await;
    let sent: u64 = history["budgets"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["class"] == "general")
        .flat_map(|s| s["sends"].as_array().unwrap().iter())
        .filter_map(Value::as_u64)
        .sum();
    assert!(sent > 0, "{history}");

    // The gateway goes away: the page says so.
    gate.shutdown().await;
    b.until(
        "the page to say its data stopped updating",
        "!document.getElementById('stale').hidden \
         && document.getElementById('stale').textContent.includes('stopped updating')",
    )
    .await;
    assert_eq!(b.eval(&text_of("#live-text")).await, "Not updating");
    if let Some(dir) = std::env::var_os("CRMGATE_SCREENSHOT_DIR").map(PathBuf::from) {
        b.screenshot(&dir.join("status-page-stopped.png")).await;
    }
}

/// A minute more of mixed traffic, with the CRM throttling now and then so
/// the picture shows every part of the chart; then the page at 1280×800 and
/// at phone width.
async fn screenshots(b: &Chromium, sim: &crmgate::sim::Simulator, gate: &Gate, dir: &Path) {
    let telephony = flood(&gate.url, "page-tel", vec![Call::telephony(ACME_CLIENT); 3]);
    let samples = format!("Number({})", attr_of(GENERAL_CHART, "data-samples"));
    let start = b.eval(&samples).await.as_u64().unwrap_or(0);
    for more in [15, 30, 45, 60] {
        let cond = format!("{samples} >= {}", start + more);
        wait_for_within("more history", Duration::from_secs(120), || async {
            (b.eval(&cond).await == true).then_some(())
        })
        .await;
        sim.faults().fail_next(2, None);
    }
    b.redrawn().await;
    b.screenshot(&dir.join("status-page.png")).await;
    b.viewport(390, 844, true).await;
    b.redrawn().await;
    b.screenshot(&dir.join("status-page-phone.png")).await;
    b.viewport(1280, 800, false).await;
    telephony.finish().await;
}
