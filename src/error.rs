//! Every failure crmgate answers itself, and the one mapping to HTTP.
//!
//! Errors are small typed values; [`GatewayError::into_response`] is the only
//! place that turns them into a status and a RetailCRM-shaped JSON body
//! (`{"success":false,"errorMsg":"..."}`): official clients crash on anything
//! that is not JSON. Messages may name a tenant and a cause, never a key.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::metrics::Metrics;
use crate::scheduler::QueueError;

/// A request crmgate answers itself instead of forwarding it (or its answer).
#[derive(Debug, Clone, thiserror::Error)]
pub enum GatewayError {
    /// The path is not under `/api/` (or `/{tenant}/api/`).
    #[error("Not found: crmgate serves /api/... and /{{tenant}}/api/... only")]
    NotFound,
    /// A path prefix names no configured tenant.
    #[error("Account does not exist: no tenant named \"{0}\"")]
    UnknownTenant(String),
    /// No client key where one is required.
    #[error("\"apiKey\" is missing.")]
    MissingKey,
    /// A client key that no tenant (or not this tenant) accepts.
    #[error("Wrong \"apiKey\" value.")]
    WrongKey,
    /// The body is larger than `server.max_body_bytes`.
    #[error("Request body is larger than the {limit} bytes allowed")]
    BodyTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// A method RetailCRM does not use (only GET, HEAD and POST are
    /// forwarded: TRACE would echo the real key, CONNECT would tunnel).
    #[error("Method {0} is not allowed: crmgate forwards GET, HEAD and POST only")]
    MethodNotAllowed(String),
    /// A browser request (an `Origin` header, or `Sec-Fetch-Site` other
    /// than `none`) from an origin not in `server.allowed_origins`: a web
    /// page must not drive a tenant's real key, nor the admin port.
    #[error("Access denied: browser requests are refused unless their origin is listed in server.allowed_origins")]
    BrowserRefused,
    /// A loopback listener got a `Host` that is neither a loopback name nor
    /// in `server.allowed_hosts` (what DNS rebinding looks like).
    #[error("Misdirected request: this listener answers loopback host names and server.allowed_hosts only")]
    MisdirectedHost,
    /// Too many header fields, or too many header bytes.
    #[error("Request header fields too large: at most {max_fields} fields and {max_bytes} bytes")]
    HeadersTooLarge {
        /// Most header fields accepted.
        max_fields: usize,
        /// Most header bytes (names and values) accepted.
        max_bytes: usize,
    },
    /// The body stalled: no bytes for `server.body_timeout`.
    #[error("Request timeout: no request body bytes for {timeout:?}")]
    BodyTimeout {
        /// The configured `server.body_timeout`.
        timeout: Duration,
    },
    /// `POST /reload` without the right `Authorization: Bearer` token.
    #[error("Unauthorized: POST /reload needs Authorization: Bearer <server.admin_token>")]
    Unauthorized,
    /// The request itself is malformed (bad header, unreadable body).
    #[error("Bad request: {0}")]
    BadRequest(String),
    /// The bodies held for queued requests would pass
    /// `limits.max_buffered_bytes`.
    #[error("crmgate: too many request bodies are waiting; retry later")]
    BuffersFull,
    /// No slot could be had: queue full, deadline passed, or shutting down.
    #[error("crmgate: {0}; retry later")]
    Queue(#[from] QueueError),
    /// The CRM could not be reached (connect failed, reset before any answer).
    #[error("crmgate: tenant {tenant}: the CRM is unreachable ({cause})")]
    UpstreamUnreachable {
        /// Tenant name.
        tenant: String,
        /// What failed, without secrets.
        cause: String,
    },
    /// The CRM did not answer in time.
    #[error("crmgate: tenant {tenant}: the CRM did not answer within {timeout:?}")]
    UpstreamTimeout {
        /// Tenant name.
        tenant: String,
        /// The configured timeout.
        timeout: Duration,
    },
    /// The CRM kept answering 503/429 until attempts ran out.
    #[error(
        "crmgate: tenant {tenant}: the CRM is rate limiting ({attempts} attempts); retry later"
    )]
    UpstreamThrottled {
        /// Tenant name.
        tenant: String,
        /// How many sends were made.
        attempts: u32,
        /// When to retry, if known.
        retry_after: Duration,
    },
    /// A request that must not be resent blindly (not GET/HEAD) failed
    /// after it may have reached the CRM: the connection broke or timed out
    /// after sending, so the CRM may or may not have processed it. Answered
    /// exactly like the inner error (502 or 504); [`crate::reconcile`] tells
    /// it apart to ask the CRM what happened.
    #[error("{0}")]
    Ambiguous(Box<GatewayError>),
    /// A create failed after it was sent and [`crate::reconcile`] could not
    /// tell whether the CRM created it; the caller is told which
    /// `externalId` to check.
    #[error("crmgate: tenant {tenant}: the {entity} create with externalId \"{external_id}\" failed after it was sent; {detail}")]
    Unreconciled {
        /// Tenant name.
        tenant: String,
        /// The entity field: `order`, `customer`, `customerCorporate`.
        entity: &'static str,
        /// The create's `externalId` (the caller's own identifier).
        external_id: String,
        /// What is known, and what to do.
        detail: String,
    },
    /// A batch method carries more items than RetailCRM accepts in one
    /// call: refused before it spends a slot ([`crate::batch`]).
    #[error("Errors in the input parameters: {method} takes at most {limit} {items} per call, this one has {got}; split it into several calls")]
    BatchTooLarge {
        /// The method, e.g. `orders/upload`.
        method: &'static str,
        /// What is counted, e.g. `orders` or `ids`.
        items: &'static str,
        /// RetailCRM's limit.
        limit: usize,
        /// How many the request carries.
        got: usize,
    },
}

/// The one way crmgate refuses a request: counts `e` in
/// `crmgate_rejections_total` when it is a rejection (not a CRM failure),
/// then answers it.
pub fn reject(e: GatewayError, metrics: &Metrics) -> Response {
    if let Some(reason) = e.rejection() {
        metrics.rejections.with_label_values(&[reason]).inc();
    }
    e.into_response()
}

impl GatewayError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NotFound | GatewayError::UnknownTenant(_) => StatusCode::NOT_FOUND,
            GatewayError::MissingKey | GatewayError::WrongKey => StatusCode::FORBIDDEN,
            GatewayError::BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::BadRequest(_) | GatewayError::BatchTooLarge { .. } => {
                StatusCode::BAD_REQUEST
            }
            GatewayError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            GatewayError::BrowserRefused => StatusCode::FORBIDDEN,
            GatewayError::MisdirectedHost => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::HeadersTooLarge { .. } => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::BodyTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            GatewayError::Unauthorized => StatusCode::UNAUTHORIZED,
            GatewayError::Queue(_)
            | GatewayError::BuffersFull
            | GatewayError::UpstreamThrottled { .. } => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::UpstreamUnreachable { .. } | GatewayError::Unreconciled { .. } => {
                StatusCode::BAD_GATEWAY
            }
            GatewayError::UpstreamTimeout { .. } => StatusCode::GATEWAY_TIMEOUT,
            GatewayError::Ambiguous(inner) => inner.status(),
        }
    }

    /// The rejection reason for metrics, when this is a rejection.
    pub fn rejection(&self) -> Option<&'static str> {
        Some(match self {
            GatewayError::NotFound | GatewayError::UnknownTenant(_) => "unknown_tenant",
            GatewayError::MissingKey | GatewayError::WrongKey => "bad_key",
            GatewayError::BodyTooLarge { .. } => "body_too_large",
            GatewayError::BadRequest(_) | GatewayError::MethodNotAllowed(_) => "bad_request",
            GatewayError::Queue(QueueError::Full(..)) => "queue_full",
            GatewayError::Queue(QueueError::Displaced(_)) => "displaced",
            GatewayError::BuffersFull => "buffers_full",
            GatewayError::Queue(QueueError::Deadline(_)) => "deadline",
            GatewayError::Queue(QueueError::ShuttingDown) => "shutdown",
            GatewayError::BrowserRefused => "browser",
            GatewayError::MisdirectedHost => "host",
            GatewayError::HeadersTooLarge { .. } => "headers_too_large",
            GatewayError::BodyTimeout { .. } => "body_timeout",
            GatewayError::Unauthorized => "unauthorized",
            GatewayError::BatchTooLarge { .. } => "batch_too_large",
            _ => return None,
        })
    }

    fn retry_after(&self) -> Option<Duration> {
        match self {
            GatewayError::Queue(q) => Some(q.retry_after()),
            GatewayError::BuffersFull => Some(Duration::from_secs(1)),
            GatewayError::UpstreamThrottled { retry_after, .. } => Some(*retry_after),
            _ => None,
        }
    }
}

/// A RetailCRM-shaped error body with the given status.
pub fn json_error(status: StatusCode, message: &str) -> Response {
    let body = json!({ "success": false, "errorMsg": message }).to_string();
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        let mut response = json_error(self.status(), &self.to_string());
        if let GatewayError::MethodNotAllowed(_) = self {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD, POST"));
        }
        if let GatewayError::Unauthorized = self {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        // The rest of that request is unread (or never came): reading on
        // would misframe the next one, so the connection ends here.
        if let GatewayError::HeadersTooLarge { .. } | GatewayError::BodyTimeout { .. } = self {
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        if let Some(after) = self.retry_after() {
            let secs = after.as_secs_f64().ceil().max(1.0) as u64;
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(secs));
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn body(e: GatewayError) -> (StatusCode, Option<String>, serde_json::Value) {
        let r = e.into_response();
        let status = r.status();
        let retry = r
            .headers()
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_string());
        let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
        (status, retry, serde_json::from_slice(&bytes).unwrap())
    }

    #[tokio::test]
    async fn errors_are_retailcrm_json() {
        let (s, _, v) = body(GatewayError::MissingKey).await;
        assert_eq!(s, 403);
        assert_eq!(
            v,
            json!({"success": false, "errorMsg": "\"apiKey\" is missing."})
        );
        let (s, _, v) = body(GatewayError::WrongKey).await;
        assert_eq!(
            (s.as_u16(), v["errorMsg"].as_str()),
            (403, Some("Wrong \"apiKey\" value."))
        );
    }

    #[test]
    fn every_rejection_reason_is_pre_registered() {
        let errors = [
            GatewayError::NotFound,
            GatewayError::UnknownTenant("x".into()),
            GatewayError::MissingKey,
            GatewayError::WrongKey,
            GatewayError::BodyTooLarge { limit: 1 },
            GatewayError::BadRequest("x".into()),
            GatewayError::MethodNotAllowed("TRACE".into()),
            GatewayError::BuffersFull,
            GatewayError::Queue(QueueError::Full("total", Duration::ZERO)),
            GatewayError::Queue(QueueError::Displaced(Duration::ZERO)),
            GatewayError::Queue(QueueError::Deadline(Duration::ZERO)),
            GatewayError::Queue(QueueError::ShuttingDown),
            GatewayError::BrowserRefused,
            GatewayError::MisdirectedHost,
            GatewayError::HeadersTooLarge {
                max_fields: 1,
                max_bytes: 1,
            },
            GatewayError::BodyTimeout {
                timeout: Duration::ZERO,
            },
            GatewayError::Unauthorized,
            GatewayError::BatchTooLarge {
                method: "orders/upload",
                items: "orders",
                limit: 50,
                got: 51,
            },
        ];
        for e in errors {
            let reason = e.rejection().expect("a rejection");
            assert!(
                crate::metrics::REJECTION_REASONS.contains(&reason),
                "{reason} missing from REJECTION_REASONS"
            );
        }
    }

    #[tokio::test]
    async fn an_ambiguous_failure_answers_as_the_failure_it_wraps() {
        let inner = || GatewayError::UpstreamTimeout {
            tenant: "acme".into(),
            timeout: Duration::from_secs(30),
        };
        let wrapped = GatewayError::Ambiguous(Box::new(inner()));
        assert_eq!(wrapped.to_string(), inner().to_string());
        assert_eq!(wrapped.rejection(), None);
        let (s, _, v) = body(wrapped).await;
        assert_eq!((s.as_u16(), &v["success"]), (504, &json!(false)));
        let (s, _, v) = body(GatewayError::Unreconciled {
            tenant: "acme".into(),
            entity: "order",
            external_id: "ext-42".into(),
            detail: "check it".into(),
        })
        .await;
        assert_eq!(s, 502);
        assert!(
            v["errorMsg"].as_str().unwrap().contains("\"ext-42\""),
            "{v}"
        );
    }

    #[tokio::test]
    async fn queue_errors_are_503_with_retry_after() {
        let (s, retry, v) = body(GatewayError::Queue(QueueError::Full(
            "total",
            Duration::from_millis(2500),
        )))
        .await;
        assert_eq!(s, 503);
        assert_eq!(retry.as_deref(), Some("3"));
        assert_eq!(v["success"], false);
    }

    #[tokio::test]
    async fn edge_refusals_have_their_status_and_close_when_the_request_is_unread() {
        let cases = [
            (GatewayError::BrowserRefused, 403, None),
            (GatewayError::MisdirectedHost, 421, None),
            (
                GatewayError::HeadersTooLarge {
                    max_fields: 64,
                    max_bytes: 16384,
                },
                431,
                Some("close"),
            ),
            (
                GatewayError::BodyTimeout {
                    timeout: Duration::from_secs(30),
                },
                408,
                Some("close"),
            ),
            (GatewayError::Unauthorized, 401, None),
        ];
        for (e, status, connection) in cases {
            let r = e.into_response();
            assert_eq!(r.status(), status);
            assert_eq!(
                r.headers().get("connection").map(|v| v.to_str().unwrap()),
                connection
            );
            if status == 401 {
                assert_eq!(r.headers()["www-authenticate"], "Bearer");
            }
            let bytes = axum::body::to_bytes(r.into_body(), 1 << 16).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert_eq!(v["success"], false);
        }
    }
}
