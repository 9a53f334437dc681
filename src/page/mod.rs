//! The status page: `GET /`, its sections `GET /status/fragments` and its
//! data `GET /status/history`, on the admin port.
//!
//! One self-contained HTML document (CSS and JS embedded in the binary, no
//! external font or script) that the server renders with the numbers
//! already in it, so it reads without JavaScript. This module is the one
//! renderer: every section, charts included, is drawn here. `page.js` only
//! fetches the same sections once a second (`/status/fragments`), swaps
//! them in, and says so plainly when they stop coming. This module owns
//! that markup and the ring's sampler start; it must never show a key (it
//! renders only [`Status`] and [`HistoryDoc`], which cannot hold one), never
//! take input from the request, and never serve anything but GETs.

use std::fmt::Write as _;
use std::sync::{Arc, LazyLock};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::State;
use axum::http::header;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use base64::Engine as _;
use sha2::{Digest, Sha256};

use crate::gateway::Gateway;
use crate::history::{BudgetSeries, History, HistoryDoc, CAPACITY};
use crate::status::Status;

const TEMPLATE: &str = include_str!("page.html");
const STYLE: &str = include_str!("page.css");
const SCRIPT: &str = include_str!("page.js");

/// Allows exactly the embedded style and script (by hash) and fetches to
/// this origin: nothing else runs, even if a name were ever mis-escaped.
static CSP: LazyLock<String> = LazyLock::new(|| {
    let hash = |text: &str| {
        base64::engine::general_purpose::STANDARD.encode(Sha256::digest(text.as_bytes()))
    };
    format!(
        "default-src 'none'; style-src 'sha256-{}'; script-src 'sha256-{}'; \
         connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; \
         frame-ancestors 'none'",
        hash(STYLE),
        hash(SCRIPT)
    )
});

#[derive(Clone)]
struct PageState {
    gateway: Arc<Gateway>,
    history: Arc<History>,
}

/// `GET /` (the page) and `GET /status/history` (its per-second series),
/// with a ring sampled once a second from `gateway` for as long as the
/// router lives (see [`History::start`]).
pub fn routes(gateway: Arc<Gateway>) -> Router {
    let history = History::start(&gateway);
    Router::new()
        .route("/", get(page))
        .route("/status/history", get(history_doc))
        .route("/status/fragments", get(fragments_doc))
        .with_state(PageState { gateway, history })
}

async fn history_doc(State(st): State<PageState>) -> Response {
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(st.history.doc()),
    )
        .into_response()
}

async fn fragments_doc(State(st): State<PageState>) -> Response {
    let status = Status::collect(&st.gateway);
    let history = st.history.doc();
    (
        [(header::CACHE_CONTROL, "no-store")],
        Json(Fragments::render(&status, &history)),
    )
        .into_response()
}

async fn page(State(st): State<PageState>) -> Response {
    let status = Status::collect(&st.gateway);
    let history = st.history.doc();
    let html = render(&status, &history, unix_now());
    (
        [
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        Html(html),
    )
        .into_response()
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The page's live sections for one moment, as `GET /status/fragments`
/// serves them: each the inner HTML of its container, escaped, which
/// `page.js` swaps in as it is.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Fragments {
    /// The facts list (`#facts`): state, budget backend, uptime, queue,
    /// config checksum, last reload.
    pub facts: String,
    /// The budget cards with their charts (`#budgets`).
    pub budgets: String,
    /// The tenants table's rows (`#tenants tbody`).
    pub tenants: String,
}

impl Fragments {
    /// Renders every section from one status and one history.
    pub fn render(status: &Status, history: &HistoryDoc) -> Fragments {
        Fragments {
            facts: facts(status, history),
            budgets: budgets(status, history),
            tenants: tenants(status),
        }
    }
}

/// The whole page for one moment: the template around [`Fragments`].
pub fn render(status: &Status, history: &HistoryDoc, unix_seconds: u64) -> String {
    let s = unix_seconds % 86_400;
    let rendered_at = format!("{:02}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60);
    let sections = Fragments::render(status, history);
    TEMPLATE
        .replace("{{style}}", STYLE)
        .replace("{{script}}", SCRIPT)
        .replace("{{version}}", &esc(status.version))
        .replace("{{rendered_at}}", &rendered_at)
        .replace("{{facts}}", &sections.facts)
        .replace("{{budgets}}", &sections.budgets)
        .replace("{{tenants}}", &sections.tenants)
}

/// Escapes text for HTML content and quoted attributes.
fn esc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A number rounded to `decimals` places, written without trailing zeros.
fn num(v: f64, decimals: i32) -> String {
    let scale = 10f64.powi(decimals);
    format!("{}", (v * scale).round() / scale)
}

fn rate(v: f64) -> String {
    format!("{}/s", num(v, 2))
}

/// Milliseconds with the precision a person reads: 0.1 ms under 10 ms,
/// whole ms under a second, then 0.1 s.
fn millis(v: f64) -> String {
    if v < 10.0 {
        format!("{} ms", num(v, 1))
    } else if v < 1000.0 {
        format!("{} ms", num(v, 0))
    } else {
        format!("{} s", num(v / 1000.0, 1))
    }
}

fn duration(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d} d {h} h")
    } else if h > 0 {
        format!("{h} h {m:02} min")
    } else if m > 0 {
        format!("{m} min {s:02} s")
    } else {
        format!("{s} s")
    }
}

fn fact(out: &mut String, label: &str, id: &str, value: &str, inner: &str) {
    let _ = write!(
        out,
        "<div><dt>{label}</dt><dd id=\"{id}\" data-value=\"{}\">{inner}</dd></div>",
        esc(value)
    );
}

fn facts(s: &Status, h: &HistoryDoc) -> String {
    let mut out = String::new();
    let (value, state) = if s.ready {
        ("true", "<span class=\"pill ok\">Ready</span>")
    } else if s.draining {
        (
            "draining",
            "<span class=\"pill warn\">Draining</span> finishing queued and in-flight requests",
        )
    } else {
        (
            "false",
            "<span class=\"pill bad\">Not ready</span> starting, or Redis required and not in use",
        )
    };
    fact(&mut out, "State", "f-state", value, state);
    let backend = match s.budget_backend {
        "local" => "Local".to_string(),
        "shared" => "Redis (shared)".to_string(),
        "connecting" => "<span class=\"pill warn\">Connecting to Redis</span>".to_string(),
        "fallback" => format!(
            "<span class=\"pill warn\">Fallback: Redis unreachable</span> {}",
            esc(s.budget_backend_cause.as_deref().unwrap_or_default())
        ),
        other => esc(other),
    };
    fact(
        &mut out,
        "Budget backend",
        "f-backend",
        s.budget_backend,
        &backend,
    );
    fact(
        &mut out,
        "Uptime",
        "f-uptime",
        &s.uptime_seconds.to_string(),
        &duration(s.uptime_seconds),
    );
    fact(
        &mut out,
        "Queued",
        "f-queued",
        &s.queued_total.to_string(),
        &format!("{} of {}", s.queued_total, s.queue_capacity),
    );
    let short: String = s.config_checksum.chars().take(12).collect();
    let _ = write!(
        out,
        "<div><dt>Config checksum</dt><dd id=\"f-checksum\" data-value=\"{0}\" title=\"{0}\">{1}</dd></div>",
        esc(&s.config_checksum),
        esc(&short)
    );
    let reload = match h.reloads.last {
        None => "None since start".to_string(),
        Some(last) => {
            let ago = duration(s.uptime_seconds.saturating_sub(last.uptime_seconds));
            if last.outcome == "success" {
                format!("<span class=\"pill ok\">Applied</span> {ago} ago")
            } else {
                format!("<span class=\"pill bad\">Rejected</span> {ago} ago, old config kept")
            }
        }
    };
    let outcome = h.reloads.last.map_or("none", |l| l.outcome);
    fact(&mut out, "Last reload", "f-reload", outcome, &reload);
    out
}

/// The numbers of one budget card: the `/status` rows of that egress and
/// class added up (one row unless budgets are per account).
#[derive(Default)]
struct CardNumbers {
    configured: f64,
    effective: f64,
    sent: usize,
    queued: usize,
    oldest_ms: u64,
}

fn budgets(s: &Status, h: &HistoryDoc) -> String {
    let mut keys: Vec<(&str, crate::classify::Class)> = Vec::new();
    for b in &s.budgets {
        if !keys.contains(&(b.egress.as_str(), b.class)) {
            keys.push((b.egress.as_str(), b.class));
        }
    }
    let mut out = String::new();
    for (egress, class) in keys {
        let mut n = CardNumbers::default();
        for b in s
            .budgets
            .iter()
            .filter(|b| b.egress == egress && b.class == class)
        {
            n.configured += f64::from(b.configured_rate);
            n.effective += b.effective_rate;
            n.sent += b.sent_last_window;
            n.queued += b.queued;
            n.oldest_ms = n.oldest_ms.max(b.oldest_wait_ms);
        }
        let series = h
            .budgets
            .iter()
            .find(|x| x.egress == egress && x.class == class);
        let _ = write!(
            out,
            "<article class=\"budget\" data-egress=\"{e}\" data-class=\"{c}\">\
             <h3>{e} <span class=\"class\">· {c}</span></h3><dl class=\"nums\">\
             <div><dt>Configured</dt><dd data-field=\"configured\" data-value=\"{cv}\">{cr}</dd></div>\
             <div><dt>Effective</dt><dd data-field=\"effective\" data-value=\"{ev}\">{er}</dd></div>\
             <div><dt>Sent, last window</dt><dd data-field=\"sent\" data-value=\"{sent}\">{sent}</dd></div>\
             <div><dt>Waiting</dt><dd data-field=\"queued\" data-value=\"{q}\">{q}</dd></div>\
             <div><dt>Oldest wait</dt><dd data-field=\"oldest\" data-value=\"{o}\">{om}</dd></div>\
             </dl>{chart}{LEGEND}</article>",
            e = esc(egress),
            c = class.as_str(),
            cv = num(n.configured, 2),
            cr = rate(n.configured),
            ev = num(n.effective, 2),
            er = rate(n.effective),
            sent = n.sent,
            q = n.queued,
            o = n.oldest_ms,
            om = millis(n.oldest_ms as f64),
            chart = chart(series),
        );
    }
    out
}

const LEGEND: &str = "<div class=\"legend\"><span><i class=\"l-sends\"></i>sends/s</span>\
     <span><i class=\"l-throttled\"></i>CRM 503/429 per s</span>\
     <span><i class=\"l-limit\"></i>limit (effective rate)</span></div>";

// The chart's geometry, in SVG user units.
const W: f64 = 600.0;
const H: f64 = 160.0;
const LEFT: f64 = 46.0;
const RIGHT: f64 = 594.0;
const TOP: f64 = 12.0;
const BOTTOM: f64 = 136.0;

/// The smallest of 1, 2, 2.5, 5 × 10ⁿ at or above `v`.
fn nice_ceiling(v: f64) -> f64 {
    let v = v.max(1.0);
    let mut p = 10f64.powf(v.log10().floor());
    loop {
        for m in [1.0, 2.0, 2.5, 5.0] {
            if m * p >= v - 1e-9 {
                return m * p;
            }
        }
        p *= 10.0;
    }
}

/// An SVG path through the points that exist, a new stroke after each gap.
fn line(points: &[(f64, Option<f64>)], area: bool, y0: f64) -> String {
    let mut d = String::new();
    let mut run: Vec<(f64, f64)> = Vec::new();
    let flush = |run: &mut Vec<(f64, f64)>, d: &mut String| {
        if run.is_empty() {
            return;
        }
        for (i, (x, y)) in run.iter().enumerate() {
            let _ = write!(
                d,
                "{}{},{}",
                if i == 0 { "M" } else { "L" },
                num(*x, 1),
                num(*y, 1)
            );
        }
        if area {
            let (first, last) = (run[0].0, run[run.len() - 1].0);
            let _ = write!(
                d,
                "L{},{}L{},{}Z",
                num(last, 1),
                num(y0, 1),
                num(first, 1),
                num(y0, 1)
            );
        }
        run.clear();
    };
    for (x, y) in points {
        match y {
            Some(y) => run.push((*x, *y)),
            None => flush(&mut run, &mut d),
        }
    }
    flush(&mut run, &mut d);
    d
}

/// The five-minute chart of one budget: sends/s, CRM throttling and the
/// effective limit.
fn chart(series: Option<&BudgetSeries>) -> String {
    let (no_counts, no_rates) = (Vec::new(), Vec::new());
    let (sends, throttled, limit) = series.map_or((&no_counts, &no_counts, &no_rates), |s| {
        (&s.sends, &s.throttled, &s.limit)
    });
    let len = sends.len();
    let step = (RIGHT - LEFT) / (CAPACITY as f64 - 1.0);
    let x = |i: usize| LEFT + (CAPACITY - len + i) as f64 * step;
    let top_value = sends
        .iter()
        .chain(throttled)
        .flatten()
        .map(|v| *v as f64)
        .chain(limit.iter().flatten().copied())
        .fold(1.0, f64::max);
    let ymax = nice_ceiling(top_value * 1.1);
    let y = |v: f64| BOTTOM - (v / ymax) * (BOTTOM - TOP);
    let total: u64 = sends.iter().flatten().sum();
    let mut out = format!(
        "<svg class=\"chart\" viewBox=\"0 0 {W} {H}\" role=\"img\" \
         aria-label=\"sends per second over the last 5 minutes\" data-total-sends=\"{total}\" \
         data-samples=\"{len}\">"
    );
    for v in [0.0, ymax / 2.0, ymax] {
        let _ = write!(
            out,
            "<line class=\"grid\" x1=\"{LEFT}\" x2=\"{RIGHT}\" y1=\"{yy}\" y2=\"{yy}\"></line>\
             <text x=\"{tx}\" y=\"{ty}\" text-anchor=\"end\">{label}</text>",
            yy = num(y(v), 1),
            tx = LEFT - 4.0,
            ty = num(y(v) + 4.0, 1),
            label = rate(v),
        );
    }
    for (slot, label) in [
        (0, "−5 min"),
        (60, "−4 min"),
        (120, "−3 min"),
        (180, "−2 min"),
        (240, "−1 min"),
        (299, "now"),
    ] {
        let anchor = match slot {
            0 => "start",
            299 => "end",
            _ => "middle",
        };
        let _ = write!(
            out,
            "<text x=\"{}\" y=\"{}\" text-anchor=\"{anchor}\">{label}</text>",
            num(LEFT + slot as f64 * step, 1),
            H - 6.0
        );
    }
    let points = |values: Vec<Option<f64>>| -> Vec<(f64, Option<f64>)> {
        values
            .into_iter()
            .enumerate()
            .map(|(i, v)| (x(i), v.map(y)))
            .collect()
    };
    let sends_pts = points(sends.iter().map(|v| v.map(|v| v as f64)).collect());
    let _ = write!(
        out,
        "<path class=\"sends-area\" d=\"{}\"></path><path class=\"sends\" d=\"{}\"></path>",
        line(&sends_pts, true, BOTTOM),
        line(&sends_pts, false, BOTTOM)
    );
    for (i, v) in throttled.iter().enumerate() {
        if let Some(v) = v.filter(|v| *v > 0) {
            let top = y(v as f64);
            let _ = write!(
                out,
                "<rect class=\"throttled\" x=\"{}\" y=\"{}\" width=\"{}\" height=\"{}\"></rect>",
                num(x(i) - step / 2.0, 1),
                num(top, 1),
                num(step.max(1.5), 1),
                num(BOTTOM - top, 1)
            );
        }
    }
    let _ = write!(
        out,
        "<path class=\"limit\" d=\"{}\"></path></svg>",
        line(&points(limit.clone()), false, BOTTOM)
    );
    out
}

fn tenants(s: &Status) -> String {
    let mut out = String::new();
    for t in &s.tenants {
        let mut by_class = [0u64; 4];
        for (code, n) in &t.totals_by_status {
            let class = code.chars().next().and_then(|c| c.to_digit(10));
            if let Some(c @ 2..=5) = class {
                by_class[c as usize - 2] += n;
            }
        }
        let wait = |v: Option<f64>| {
            match v {
            Some(v) => format!("data-value=\"{}\">{}", num(v, 1), millis(v)),
            None => "data-value=\"\"><span class=\"na\" title=\"nothing waited in the last minute\">–</span>".to_string(),
        }
        };
        let q = t.queue_wait_last_minute;
        let _ = write!(
            out,
            "<tr data-tenant=\"{name}\"><td>{name}</td>\
             <td class=\"n\" data-field=\"weight\">{w}</td>\
             <td class=\"n\" data-field=\"waiting\">{queued}</td>\
             <td class=\"n\" data-field=\"inflight\">{inflight}</td>\
             <td class=\"n\" data-field=\"displaced\">{displaced}</td>\
             <td class=\"n\" data-field=\"p50\" {p50}</td>\
             <td class=\"n\" data-field=\"p95\" {p95}</td>\
             <td class=\"n\" data-field=\"2xx\">{a2}</td>\
             <td class=\"n\" data-field=\"3xx\">{a3}</td>\
             <td class=\"n\" data-field=\"4xx\">{a4}</td>\
             <td class=\"n\" data-field=\"5xx\">{a5}</td>\
             <td class=\"n\" data-field=\"cache\" {ratio}</td>\
             <td class=\"n\" data-field=\"coalesced\">{saved}</td>\
             <td class=\"n\" data-field=\"exports\">{exports}</td></tr>",
            name = esc(&t.name),
            w = t.weight,
            queued = t.queued,
            inflight = t.inflight,
            displaced = t.displaced,
            p50 = wait(q.map(|q| q.p50_ms)),
            p95 = wait(q.map(|q| q.p95_ms)),
            a2 = by_class[0],
            a3 = by_class[1],
            a4 = by_class[2],
            a5 = by_class[3],
            ratio = hit_ratio(&t.cache_last_minute),
            saved = t.cache_last_minute.slots_saved_last_minute,
            exports = t.export_pages,
        );
    }
    out
}

/// The cache's hit ratio over the last minute as a cell's value and text;
/// "–" when no GET went through the stage in that minute.
fn hit_ratio(c: &crate::cache::stats::CacheStatus) -> String {
    if c.requests_last_minute == 0 {
        return "data-value=\"\"><span class=\"na\" title=\"no GET in the last minute\">–</span>"
            .to_string();
    }
    format!(
        "data-value=\"{}\">{}%",
        num(c.hit_ratio, 3),
        num(c.hit_ratio * 100.0, 0)
    )
}

#[cfg(test)]
mod tests;
