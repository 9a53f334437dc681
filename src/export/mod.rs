//! Export: every page of a list, or history since a cursor, as one NDJSON
//! stream (`X-Crmgate-Export: ndjson` on a GET).
//!
//! A stage between [`crate::inbound`] and [`crate::forward`]: it asks for
//! the first page (the caller's parameters, `limit = export.page_limit`),
//! answers `200` with `X-Crmgate-Export-Total` / `-Pages` once that page is
//! in, and a task ([`walk::pump`]) fetches the rest, `export.prefetch`
//! pages ahead at most, while the body streams one item per line and a
//! summary line last ([`ndjson`]). Each page is an ordinary request
//! through [`crate::forward`]: the same scheduler, budget, retry
//! rule and `max_queue_wait` (per page), at `low` priority unless the
//! caller chose one. Pages held are counted in `limits.max_buffered_bytes`.
//! It never logs a query or an item, and never sees the real key.

pub mod cli;
pub mod ndjson;
pub mod progress;
pub mod walk;

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{header, HeaderMap, HeaderValue, Method};
use axum::response::Response;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::access::Trace;
use crate::bodies::{BodyLease, BodyPool};
use crate::error::GatewayError;
use crate::forward::{Forward, Forwarder};
use crate::inbound::{body, Inbound, PRIORITY_HEADER};
use crate::metrics::Metrics;
use crate::scheduler::Priority;
use walk::{Chunk, Ending, Fetched, Plan, Walk};

/// Request header that asks for an export; its one value is `ndjson`.
pub const EXPORT_HEADER: &str = "x-crmgate-export";
/// Response header: the CRM's `totalCount` on the first page.
pub const TOTAL_HEADER: &str = "x-crmgate-export-total";
/// Response header: the CRM's `totalPageCount` on the first page.
pub const PAGES_HEADER: &str = "x-crmgate-export-pages";

/// An export asked for: what the request head said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// The caller set `X-Crmgate-Priority` (else pages go at `low`).
    pub priority_given: bool,
}

/// Whether the request head asks for an export: `None` without the header,
/// 400 for a value other than `ndjson`.
pub fn wanted(headers: &HeaderMap) -> Result<Option<Wanted>, GatewayError> {
    let Some(value) = headers.get(EXPORT_HEADER) else {
        return Ok(None);
    };
    if !value
        .to_str()
        .is_ok_and(|v| v.trim().eq_ignore_ascii_case("ndjson"))
    {
        return Err(GatewayError::BadRequest(format!(
            "{EXPORT_HEADER} must be ndjson"
        )));
    }
    Ok(Some(Wanted {
        priority_given: headers.contains_key(PRIORITY_HEADER),
    }))
}

/// The priority of every page: the caller's when it set one, else `low`
/// (an export is batch work; interactive callers keep their turn).
pub fn page_priority(wanted: Wanted, asked: Priority) -> Priority {
    if wanted.priority_given {
        asked
    } else {
        Priority::Low
    }
}

/// Counts one export in progress (the gauge and `/status`) until dropped.
struct InProgress(prometheus::IntGauge);

impl InProgress {
    fn new(gauge: &prometheus::IntGauge) -> InProgress {
        gauge.inc();
        InProgress(gauge.clone())
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Runs an export for an inbound GET: the first page's failure is the
/// answer; otherwise a `200` NDJSON stream whose walk goes on in a task.
/// Pages go through `forward`; exports, pages and items are counted in
/// `metrics`.
pub async fn export(
    forward: &Forwarder,
    metrics: &Metrics,
    req: Inbound,
    wanted: Wanted,
    trace: &mut Trace,
) -> Result<Response, GatewayError> {
    let outcome = |o: &str| metrics.exports.with_label_values(&[o]).inc();
    if req.out.method != Method::GET {
        outcome("refused");
        return Err(GatewayError::BadRequest(
            "an export (X-Crmgate-Export) walks a list: only GET can be exported".into(),
        ));
    }
    let in_progress = InProgress::new(&metrics.exports_in_progress);
    let snap = forward.snapshot();
    let settings = snap.config.export.clone();
    let Inbound {
        tenant,
        mut ticket,
        mut out,
        lease,
    } = req;
    ticket.priority = page_priority(wanted, ticket.priority);
    // Each page may wait as long as the request itself could.
    let max_wait = ticket.deadline.saturating_duration_since(Instant::now());
    // The walk reads every page: ask for it unencoded and unconditional.
    for name in [
        header::ACCEPT_ENCODING,
        header::RANGE,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
    ] {
        out.headers.remove(name);
    }
    let plan = Plan::new(&out.path, out.query.as_deref(), settings.page_limit);
    let mut walk = Walk::new(plan);
    let pages = PageSource {
        forward: forward.clone(),
        bodies: lease.pool().clone(),
        tenant,
        ticket,
        out: *out,
        max_wait,
        max_page_bytes: settings.max_page_bytes,
    };

    let first_query = walk.next_query().unwrap_or_default().to_owned();
    let first = match pages.send(first_query, trace).await {
        Ok(Ok(fetched)) => fetched,
        Ok(Err(answer)) => {
            outcome("refused");
            return Ok(answer);
        }
        Err(e) => {
            outcome("refused");
            return Err(e);
        }
    };
    let page = match ndjson::read_page(&first.body) {
        Ok(page) => page,
        Err(why) => {
            outcome("refused");
            return Err(GatewayError::BadRequest(format!(
                "this method cannot be exported: {why}"
            )));
        }
    };
    let lines = walk.take(&page);
    let pagination = page.pagination;
    drop(page);
    let tenant_name = pages.tenant.name.clone();
    let (pages_done, items_done) = (
        metrics.export_pages.with_label_values(&[&tenant_name]),
        metrics.export_items.with_label_values(&[&tenant_name]),
    );
    pages_done.inc();
    items_done.inc_by(lines.written);

    let (tx, rx) = mpsc::channel::<Chunk>(settings.prefetch.max(1));
    let first_chunk = Chunk {
        bytes: Bytes::from(lines.text),
        lease: first.lease,
    };
    let exports = metrics.exports.clone();
    let source = Arc::new(pages);
    let fetch: walk::Fetch = Box::new(move |query| {
        let source = source.clone();
        Box::pin(async move { source.later(query).await })
    });
    tokio::spawn(async move {
        let _in_progress = in_progress;
        let tally = move |written: u64| {
            pages_done.inc();
            items_done.inc_by(written);
        };
        let ending = walk::pump(walk, tx, fetch, tally).await;
        let label = match ending {
            Ending::Complete => "complete",
            Ending::Failed => "failed",
            Ending::HungUp => "hung_up",
        };
        exports.with_label_values(&[label]).inc();
    });

    let stream =
        futures_util::stream::unfold((Some(first_chunk), rx), |(mut first, mut rx)| async move {
            let chunk = match first.take() {
                Some(c) => c,
                None => rx.recv().await?,
            };
            // The page's lease ends here: its bytes now belong to the body.
            let Chunk { bytes, lease } = chunk;
            drop(lease);
            Some((Ok::<_, std::convert::Infallible>(bytes), (None, rx)))
        });
    let mut response = Response::new(Body::from_stream(stream));
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-ndjson"),
    );
    if let Some(total) = pagination.total_count {
        h.insert(TOTAL_HEADER, HeaderValue::from(total));
    }
    if let Some(pages) = pagination.total_page_count {
        h.insert(PAGES_HEADER, HeaderValue::from(pages));
    }
    Ok(response)
}

/// What every page request shares: the caller's request as rewritten,
/// re-sent with another query per page.
struct PageSource {
    forward: Forwarder,
    /// Where pages held are counted (the caller's request's pool).
    bodies: Arc<BodyPool>,
    tenant: Arc<crate::tenant::Tenant>,
    ticket: crate::scheduler::Ticket,
    out: crate::inbound::Outgoing,
    max_wait: Duration,
    max_page_bytes: usize,
}

impl PageSource {
    /// One page through [`Forward::send`]: `Ok(Ok(page))` for a
    /// 2xx answer read whole, `Ok(Err(answer))` for any other answer of
    /// the CRM (handed back as it came), `Err` when crmgate gave up.
    async fn send(
        &self,
        query: String,
        trace: &mut Trace,
    ) -> Result<Result<Fetched, Response>, GatewayError> {
        let mut ticket = self.ticket.clone();
        ticket.deadline = Instant::now() + self.max_wait;
        let mut out = self.out.clone();
        out.query = Some(query);
        let inbound = Inbound {
            tenant: self.tenant.clone(),
            ticket,
            out: Box::new(out),
            lease: BodyLease::new(&self.bodies),
        };
        let answer = self.forward.send(inbound, trace).await?;
        if !answer.status().is_success() {
            let (mut parts, stream) = answer.into_parts();
            // Bounded like a page; what the CRM said is passed on whole
            // (its length is set again from what was read).
            let bytes = axum::body::to_bytes(stream, self.max_page_bytes)
                .await
                .unwrap_or_default();
            parts.headers.remove(header::CONTENT_LENGTH);
            return Ok(Err(Response::from_parts(parts, Body::from(bytes))));
        }
        let (parts, stream) = answer.into_parts();
        let limit = self
            .forward
            .snapshot()
            .config
            .limits
            .max_buffered_bytes
            .get();
        let read = body::read(
            &parts.headers,
            stream,
            self.max_page_bytes,
            &self.bodies,
            limit,
        )
        .await;
        match read {
            Ok((body, lease)) => Ok(Ok(Fetched {
                body,
                lease: Some(lease),
            })),
            Err(GatewayError::BodyTooLarge { limit }) => Err(GatewayError::UpstreamUnreachable {
                tenant: self.tenant.name.to_string(),
                cause: format!("a page is larger than export.max_page_bytes ({limit} bytes)"),
            }),
            Err(GatewayError::BuffersFull) => Err(GatewayError::BuffersFull),
            Err(_) => Err(GatewayError::UpstreamUnreachable {
                tenant: self.tenant.name.to_string(),
                cause: "a page's body broke off".into(),
            }),
        }
    }

    /// A page after the first: any failure is a message for the summary.
    async fn later(&self, query: String) -> Result<Fetched, String> {
        let mut trace = Trace::default();
        match self.send(query, &mut trace).await {
            Ok(Ok(page)) => Ok(page),
            Ok(Err(answer)) => Err(format!(
                "the CRM answered {} to a later page",
                answer.status().as_u16()
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.insert(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn the_export_header_asks_for_ndjson_and_pages_go_low_unless_told() {
        assert_eq!(wanted(&head(&[])).unwrap(), None);
        let w = wanted(&head(&[("x-crmgate-export", "NDJSON ")]))
            .unwrap()
            .unwrap();
        assert!(!w.priority_given);
        assert_eq!(page_priority(w, Priority::Normal), Priority::Low);
        let w = wanted(&head(&[
            ("x-crmgate-export", "ndjson"),
            ("x-crmgate-priority", "high"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(page_priority(w, Priority::High), Priority::High);
        let bad = wanted(&head(&[("x-crmgate-export", "csv")])).unwrap_err();
        assert_eq!(bad.status(), 400);
    }
}
