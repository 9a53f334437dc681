//! The admin listener: health, readiness, metrics, status, the status page
//! and reload.
//!
//! It is a separate port from the API so probes and scrapes never queue
//! behind CRM traffic and can be exposed to a different network. Nothing it
//! serves contains a key.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::json_error;
use crate::gateway::Gateway;
use crate::metrics::refresh_gauges;
use crate::reload::ReloadError;
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
    if gw.drain.is_ready() {
        // A Redis outage does not make crmgate unready: the fallback budget
        // keeps traffic flowing; the body says which budget is in use.
        Json(json!({"success": true, "status": "ready", "budget_backend": gw.backend_state()}))
            .into_response()
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

async fn reload(State(gw): State<Arc<Gateway>>) -> Response {
    // Reading and validating the file is blocking work: keep it off the
    // async workers.
    let result = tokio::task::spawn_blocking(move || {
        gw.reload().map(|()| gw.runtime().config.checksum.clone())
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
