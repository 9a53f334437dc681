//! The admin listener: health, readiness, metrics, status, the status page
//! and reload.
//!
//! It is a separate port from the API so probes and scrapes never queue
//! behind CRM traffic and can be exposed to a different network. Nothing it
//! serves contains a key. `POST /reload` is the one route that changes
//! anything: it needs `server.admin_token` as a Bearer token when one is set
//! (always when the port is not loopback), and it never runs for a browser,
//! whatever `server.allowed_origins` lists. The token is compared in
//! constant time and never logged or echoed.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::ServerConfig;
use crate::error::{json_error, reject, GatewayError};
use crate::gateway::reload::ReloadError;
use crate::gateway::Gateway;
use crate::guard::is_browser;
use crate::status::refresh_gauges;
use crate::status::Status;

/// The admin router.
pub fn router(gateway: Arc<Gateway>) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({"success": true, "status": "alive"})) }),
        )
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/status", get(status))
        .route("/reload", post(reload))
        .fallback(|| async {
            json_error(
                StatusCode::NOT_FOUND,
                "Not found: /, /healthz, /readyz, /metrics, /status, /status/history, POST /reload",
            )
        })
        .with_state(gateway.clone())
        // The status page (GET /) and its series (GET /status/history).
        .merge(crate::page::routes(gateway))
}

async fn readyz(State(gw): State<Arc<Gateway>>) -> Response {
    if gw.is_ready() {
        // A Redis outage does not make crmgate unready (unless
        // `redis.required`): the fallback budget keeps traffic flowing; the
        // body says which budget is in use.
        Json(json!({"success": true, "status": "ready", "budget_backend": gw.backend_state()}))
            .into_response()
    } else if gw.drain.is_ready() {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            &format!(
                "not ready: redis.required is set and Redis is not in use (budget_backend {})",
                gw.backend_state()
            ),
        )
    } else {
        json_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: starting up or shutting down",
        )
    }
}

async fn metrics(State(gw): State<Arc<Gateway>>) -> Response {
    refresh_gauges(&gw);
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        gw.metrics.render(),
    )
        .into_response()
}

async fn status(State(gw): State<Arc<Gateway>>) -> Json<Status> {
    Json(Status::collect(&gw))
}

/// Whether a `POST /reload` with these headers may run.
pub fn authorize(server: &ServerConfig, headers: &HeaderMap) -> Result<(), GatewayError> {
    // The guard already refused browsers from unlisted origins; a listed
    // origin may read the admin port, but it may not change the config.
    if is_browser(headers) {
        return Err(GatewayError::BrowserRefused);
    }
    let Some(token) = &server.admin_token else {
        // Validation requires a token off loopback; this also covers a
        // reload that dropped the token while the (restart-only) listener
        // kept its old, non-loopback address.
        return if server.admin_open() {
            Ok(())
        } else {
            Err(GatewayError::Unauthorized)
        };
    };
    let presented = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default();
    // Hashing first makes the comparison independent of both lengths too.
    let (a, b) = (
        Sha256::digest(presented.trim().as_bytes()),
        Sha256::digest(token.expose().as_bytes()),
    );
    if bool::from(a.as_slice().ct_eq(b.as_slice())) {
        Ok(())
    } else {
        Err(GatewayError::Unauthorized)
    }
}

async fn reload(State(gw): State<Arc<Gateway>>, headers: HeaderMap) -> Response {
    if let Err(e) = authorize(&gw.snapshot().config.server, &headers) {
        tracing::warn!(
            status = e.status().as_u16(),
            "POST /reload refused: no valid token, or sent by a browser"
        );
        return reject(e, &gw.metrics);
    }
    // Reading and validating the file is blocking work: keep it off the
    // async workers.
    let result = tokio::task::spawn_blocking(move || {
        gw.reload().map(|()| gw.snapshot().config.checksum.clone())
    })
    .await;
    match result {
        Ok(Ok(checksum)) => {
            Json(json!({"success": true, "config_checksum": checksum})).into_response()
        }
        Ok(Err(ReloadError::Invalid(e))) => {
            let body = json!({"success": false, "errorMsg": "config rejected; the old config stays in force", "errors": e.problems});
            (StatusCode::BAD_REQUEST, Json(body)).into_response()
        }
        Ok(Err(e @ ReloadError::NoFile)) => json_error(StatusCode::CONFLICT, &e.to_string()),
        Ok(Err(e @ ReloadError::Clients(_))) => {
            json_error(StatusCode::INTERNAL_SERVER_ERROR, &e.to_string())
        }
        Err(e) => json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            &format!("reload failed: {e}"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TOKEN: &str = "admin-token-0123456789abcdef";

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (name, value) in pairs {
            h.insert(*name, value.parse().unwrap());
        }
        h
    }

    #[test]
    fn without_a_token_loopback_reload_is_open_to_non_browsers() {
        let s = ServerConfig::for_tests("");
        assert!(authorize(&s, &headers(&[])).is_ok());
        let from_page = headers(&[("origin", "http://evil.example")]);
        assert!(matches!(
            authorize(&s, &from_page),
            Err(GatewayError::BrowserRefused)
        ));
    }

    #[test]
    fn with_a_token_only_the_exact_bearer_token_passes() {
        let s = ServerConfig::for_tests(&format!("admin_token = \"{TOKEN}\""));
        let bearer = |v: &str| headers(&[("authorization", v)]);
        assert!(authorize(&s, &bearer(&format!("Bearer {TOKEN}"))).is_ok());
        for wrong in [
            String::new(),
            format!("Bearer {TOKEN}x"),
            format!("Bearer {}", &TOKEN[1..]),
            format!("Basic {TOKEN}"),
            TOKEN.to_string(),
        ] {
            assert!(
                matches!(
                    authorize(&s, &bearer(&wrong)),
                    Err(GatewayError::Unauthorized)
                ),
                "{wrong:?}"
            );
        }
        assert!(matches!(
            authorize(&s, &headers(&[])),
            Err(GatewayError::Unauthorized)
        ));
        // Even with the token, a browser may not reload.
        let page = headers(&[
            ("authorization", &format!("Bearer {TOKEN}")),
            ("sec-fetch-site", "same-origin"),
        ]);
        assert!(matches!(
            authorize(&s, &page),
            Err(GatewayError::BrowserRefused)
        ));
    }

    #[test]
    fn a_non_loopback_listener_without_a_token_refuses_reload() {
        // Validation rejects this config; it can only arise when a reload
        // drops the token and the listener keeps its old address.
        let mut s = ServerConfig::for_tests("");
        s.admin_listen = "0.0.0.0:9090".parse().unwrap();
        assert!(matches!(
            authorize(&s, &headers(&[])),
            Err(GatewayError::Unauthorized)
        ));
    }
}
