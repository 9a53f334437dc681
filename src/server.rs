//! Listeners, serving, and graceful drain.
//!
//! [`Server::bind`] opens both listeners (so tests can bind port 0 and read
//! the addresses back); [`Server::run`] serves until the `shutdown` future
//! resolves, then drains: it stops accepting, lets queued and in-flight
//! requests finish within `server.shutdown_grace`, answers what is left
//! with 503 JSON, and reports how many were drained and cut off.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::Config;
use crate::gateway::Gateway;
use crate::{admin, proxy};

pub use crate::drain::DrainReport;

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The HTTP clients could not be built (e.g. an egress IP not on this host).
    #[error("cannot set up outbound HTTP clients: {0}")]
    Client(#[from] reqwest::Error),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
}

/// A bound, not yet serving, gateway.
pub struct Server {
    gateway: Arc<Gateway>,
    api: TcpListener,
    admin: TcpListener,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

impl Server {
    /// Binds `server.listen` and `server.admin_listen`.
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
        let api = bind(config.server.listen).await?;
        let admin = bind(config.server.admin_listen).await?;
        let gateway = Gateway::new(config, config_path)?;
        Ok(Server {
            gateway,
            api,
            admin,
        })
    }

    /// The API address actually bound.
    pub fn api_addr(&self) -> SocketAddr {
        self.api
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The admin address actually bound.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin
            .local_addr()
            .expect("bound listener has an address")
    }

    /// The shared state (for reload triggers and tests).
    pub fn gateway(&self) -> Arc<Gateway> {
        self.gateway.clone()
    }

    /// Serves until `shutdown` resolves, then drains.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<DrainReport, ServeError> {
        let Server {
            gateway: gw,
            api,
            admin,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The admin listener outlives the drain, so probes see /readyz turn
        // 503 and the last metrics can still be scraped.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        let api_app = proxy::router(gw.clone()).into_make_service_with_connect_info::<SocketAddr>();
        let api_serve = axum::serve(api, api_app).with_graceful_shutdown(stopped(stop_rx.clone()));
        let api_task = tokio::spawn(async move { api_serve.await });
        let admin_serve = axum::serve(admin, admin::router(gw.clone()))
            .with_graceful_shutdown(stopped(admin_stop_rx));
        let admin_task = tokio::spawn(async move { admin_serve.await });
        gw.drain.set_ready(true);
        tracing::info!("crmgate ready");

        shutdown.await;
        let grace = gw.runtime().config.server.shutdown_grace;
        tracing::info!(
            queued = gw.scheduler.queued(),
            ?grace,
            "shutting down: draining queued and in-flight requests"
        );
        gw.drain.begin();
        gw.scheduler.close();
        let _ = stop_tx.send(true);

        let mut api_task = api_task;
        let drained_in_time = tokio::time::timeout(grace, &mut api_task).await.is_ok();
        // Shutdown 503s so far were new requests refused during the drain;
        // from here on they are requests the grace could not serve.
        gw.drain.grace_over();
        if !drained_in_time {
            tracing::warn!(
                queued = gw.scheduler.queued(),
                "grace period over: answering the rest with 503"
            );
            gw.scheduler.cut_off();
            // Queued requests now answer at once; requests already sent to
            // the CRM get a short last chance to finish.
            if tokio::time::timeout(Duration::from_secs(5), &mut api_task)
                .await
                .is_err()
            {
                tracing::warn!("some in-flight requests did not finish; closing their connections");
                api_task.abort();
            }
        }
        let _ = admin_stop_tx.send(true);
        if tokio::time::timeout(Duration::from_secs(1), admin_task)
            .await
            .is_err()
        {
            tracing::debug!("admin listener did not close within 1 s");
        }
        let report = gw.drain.report();
        tracing::info!(
            drained = report.drained,
            cut_off = report.cut_off,
            refused = report.refused,
            "crmgate stopped"
        );
        Ok(report)
    }
}
