//! Listeners, connections, and graceful drain.
//!
//! [`Server::bind`] opens both listeners (so tests can bind port 0 and read
//! the addresses back); [`Server::run`] serves until the `shutdown` future
//! resolves, then drains: `/readyz` turns 503 at once; for
//! `server.drain_accept` it still accepts and queues new requests (an app
//! that got SIGTERM at the same moment may still be sending), answering
//! every request with `Connection: close`; then it stops accepting, lets
//! queued and in-flight requests finish within `server.shutdown_grace`
//! (counted from the signal), answers what is left with 503 JSON, and
//! reports how many were drained and cut off.
//!
//! The API listeners are served by `server.worker_threads` worker runtimes
//! ([`crate::workers`]): one acceptor per listener, on the caller's
//! runtime, hands each new connection to the worker with the fewest open
//! connections, which keeps it to the end (`accept.rs`). The admin port,
//! the acceptors, the drain's clock and everything shared stay on the
//! caller's runtime. Caps and drain span all workers.
//!
//! Connections are served by hyper's HTTP/1 server with a timer
//! (`axum::serve` installs none, so hyper's head timeout would never fire).
//! A slow or greedy client meets these limits before any handler runs:
//! - the whole request head must arrive within `server.header_timeout`, else
//!   the connection is closed without an answer (the same limit ends an idle
//!   keep-alive connection);
//! - a body that makes no progress for `server.body_timeout` ends its
//!   request with 408 JSON, and the connection with it;
//! - beyond `server.max_connections` open API connections
//!   ([`ADMIN_MAX_CONNECTIONS`] on the admin port) a new connection is
//!   accepted and closed at once, and counted;
//! - a head over [`MAX_HEAD_BUFFER`] bytes or 100 fields is refused by hyper
//!   itself: a bare 431 without a body, then close. Under those bounds the
//!   [`crate::guard`] in front of both routers answers 431 JSON.
//!
//! Cleartext, only HTTP/1.1 and 1.0 are served: RetailCRM and its clients
//! speak HTTP/1.1, and hyper's head timeout exists for HTTP/1 only, so
//! cleartext HTTP/2 would be a way around it. The optional HTTPS API
//! listener (`server.tls_listen`, label `api_tls`; certificate and
//! handshake in [`crate::tls_listener`]) serves the same API behind the
//! same guard, cap and timeouts: the TLS handshake within
//! `server.header_timeout`, then HTTP/1.1, or HTTP/2 when ALPN chose `h2`
//! (its idle peers found by pings). The admin port stays plain HTTP. This module never reads a body itself.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::IntGauge;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::admin;
use crate::config::Config;
use crate::gateway::Gateway;
use crate::tls_listener::{self, Generated};
use crate::workers;

pub use crate::drain::DrainReport;

mod accept;
mod per_request;
use accept::{Acceptor, Worker};
use per_request::{App, PerRequest, Served};

/// Open connections the admin port holds at most. Probes and scrapes need a
/// handful; the cap keeps a flood there from taking the process's file
/// descriptors from the API.
pub const ADMIN_MAX_CONNECTIONS: usize = 256;

/// hyper's read buffer per connection, at most: the request line and the
/// head must fit in it. Large enough for a long GET filter query.
pub const MAX_HEAD_BUFFER: usize = 64 * 1024;

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
    Client(#[from] crate::egress::BuildError),
    /// Serving failed.
    #[error("server error: {0}")]
    Io(#[from] std::io::Error),
    /// The HTTPS listener's certificate could not be made or its CA written.
    #[error("{0}")]
    Tls(String),
}

/// A bound, not yet serving, gateway.
pub struct Server {
    gateway: Arc<Gateway>,
    /// The API socket, which one acceptor serves every worker from.
    api: std::net::TcpListener,
    admin: TcpListener,
    /// The HTTPS API socket, and the certificate generated for it when no
    /// files are configured.
    tls: Option<(std::net::TcpListener, Option<Arc<Generated>>)>,
    /// Worker runtimes to start.
    workers: usize,
}

async fn bind(addr: SocketAddr) -> Result<TcpListener, ServeError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ServeError::Bind { addr, source })
}

/// The socket on `addr` that the workers' acceptor serves.
fn bind_workers(addr: SocketAddr) -> Result<std::net::TcpListener, ServeError> {
    workers::bind(addr).map_err(|source| ServeError::Bind { addr, source })
}

/// The worker runtimes `config` asks for: `server.worker_threads`, else one
/// per core.
pub fn worker_count(config: &Config) -> usize {
    config.server.worker_threads.map_or_else(
        || std::thread::available_parallelism().map_or(1, |n| n.get()),
        |n| n.get(),
    )
}

impl Server {
    /// Binds `server.listen`, `server.admin_listen` and, when set,
    /// `server.tls_listen` (generating its certificate and writing its CA to
    /// `server.tls_ca_out` when no certificate files are configured).
    pub async fn bind(config: Config, config_path: Option<PathBuf>) -> Result<Server, ServeError> {
        let workers = worker_count(&config);
        let api = bind_workers(config.server.listen)?;
        let admin = bind(config.server.admin_listen).await?;
        let tls = match &config.server.tls {
            None => None,
            Some(t) => {
                let listener = bind_workers(t.listen)?;
                let generated = match &t.cert {
                    crate::config::TlsCert::Files(_) => None,
                    crate::config::TlsCert::Generated { names, ca_out } => {
                        let g = tls_listener::generate(names).map_err(ServeError::Tls)?;
                        if let Some(path) = ca_out {
                            tls_listener::write_ca(path, &g.ca_pem).map_err(ServeError::Tls)?;
                        }
                        Some(Arc::new(g))
                    }
                };
                Some((listener, generated))
            }
        };
        let gateway = Gateway::with_workers(config, config_path, workers)?;
        Ok(Server {
            gateway,
            api,
            admin,
            tls,
            workers,
        })
    }

    /// The HTTPS API address actually bound, when `server.tls_listen` is set.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok())
    }

    /// The CA certificate (PEM) of the certificate generated at start-up,
    /// if any: what a client that verifies must trust.
    pub fn tls_ca_pem(&self) -> Option<&str> {
        self.tls
            .as_ref()
            .and_then(|(_, g)| g.as_deref())
            .map(|g| g.ca_pem.as_str())
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
            tls,
            workers,
        } = self;
        let (stop_tx, stop_rx) = watch::channel(false);
        // The admin listener outlives the drain, so probes see /readyz turn
        // 503 and the last metrics can still be scraped.
        let (admin_stop_tx, admin_stop_rx) = watch::channel(false);
        let stopped = |mut rx: watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };

        // The guard runs in front of each app (see `per_request`); it knows
        // whether its listener is loopback (then the Host rule applies).
        let served = |app, addr: Option<SocketAddr>| Served {
            app,
            loopback: addr.is_some_and(|a| a.ip().is_loopback()),
        };
        let admin_app = served(
            App::Router(admin::router(gw.clone())),
            admin.local_addr().ok(),
        );
        let api_app = served(App::Api, api.local_addr().ok());
        let (tls_socket, tls_app) = match tls {
            None => (None, None),
            Some((socket, generated)) => {
                let app = served(App::Api, socket.local_addr().ok());
                (Some(socket), Some((app, Side::Tls(generated))))
            }
        };
        // Each worker serves what the acceptors hand it, of both listeners:
        // one runtime, so aborting it closes both kinds of its connections.
        let spread = workers::Spread::new(workers);
        let (senders, receivers): (Vec<_>, Vec<_>) =
            (0..workers).map(|_| mpsc::unbounded_channel()).unzip();
        for w in 0..workers {
            // Every worker's series exists from the start.
            gw.metrics
                .worker_connections
                .with_label_values(&[&w.to_string()]);
        }
        let wgw = gw.clone();
        let tls_side = tls_app.as_ref().map(|(_, side)| side.clone());
        let mut workers = workers::spawn(receivers, move |i, incoming| {
            // This worker's sends use its own outbound pools from now on.
            wgw.clients.enter_worker(i);
            let on = Worker {
                gw: wgw.clone(),
                api: api_app.clone(),
                tls: tls_app.clone(),
            };
            accept::serve_worker(on, incoming)
        })?;
        // The acceptors hold the only senders: once both have stopped, each
        // worker's channel closes and the worker drains.
        let senders = Arc::new(senders);
        let mut acceptors = JoinSet::new();
        let (api_open, tls_open) = (Arc::default(), Arc::default());
        let acceptor = |side, open| Acceptor {
            gw: gw.clone(),
            side,
            open,
            spread: spread.clone(),
            workers: senders.clone(),
        };
        acceptors.spawn(accept::accept(
            acceptor(Side::Api, api_open),
            api,
            stopped(stop_rx.clone()),
        ));
        if let (Some(socket), Some(side)) = (tls_socket, tls_side) {
            acceptors.spawn(accept::accept(
                acceptor(side, tls_open),
                socket,
                stopped(stop_rx.clone()),
            ));
        }
        drop(senders);
        let admin_task = tokio::spawn(serve(
            Listening {
                gw: gw.clone(),
                side: Side::Admin,
                worker: "control".into(),
                app: admin_app,
                open: Arc::default(),
            },
            admin,
            stopped(admin_stop_rx),
        ));
        gw.drain.set_ready(true);
        tracing::info!("crmgate ready");

        shutdown.await;
        let signalled = Instant::now();
        let (grace, accept) = {
            let snap = gw.snapshot();
            (
                snap.config.server.shutdown_grace,
                snap.config.server.drain_accept,
            )
        };
        gw.drain.begin();
        if !accept.is_zero() {
            tracing::info!(
                queued = gw.scheduler.queued(),
                ?accept,
                ?grace,
                "shutting down: not ready; still accepting and queueing new requests, answered with Connection: close"
            );
            tokio::time::sleep(accept).await;
        }
        tracing::info!(
            queued = gw.scheduler.queued(),
            ?grace,
            "shutting down: listener closed; draining queued and in-flight requests"
        );
        gw.scheduler.close();
        let _ = stop_tx.send(true);
        // The listeners close at once; the workers drain what they hold.
        while acceptors.join_next().await.is_some() {}

        let left = grace.saturating_sub(signalled.elapsed());
        let drained_in_time = tokio::time::timeout(left, workers.finished()).await.is_ok();
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
            if tokio::time::timeout(Duration::from_secs(5), workers.finished())
                .await
                .is_err()
            {
                tracing::warn!("some in-flight requests did not finish; closing their connections");
                workers.abort();
                workers.finished().await;
            }
        }
        let _ = admin_stop_tx.send(true);
        let mut admin_task = admin_task;
        if tokio::time::timeout(Duration::from_secs(1), &mut admin_task)
            .await
            .is_err()
        {
            tracing::debug!("admin listener did not close within 1 s; closing its connections");
            admin_task.abort();
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

/// Which listener a connection came in on.
#[derive(Clone)]
enum Side {
    Api,
    /// The HTTPS API listener, with the certificate generated at start-up
    /// (`None`: the configured files, read from the current snapshot).
    Tls(Option<Arc<Generated>>),
    Admin,
}

impl Side {
    /// The `listener` label of the connection metrics.
    fn label(&self) -> &'static str {
        match self {
            Side::Api => "api",
            Side::Tls(_) => "api_tls",
            Side::Admin => "admin",
        }
    }

    /// Open connections allowed now (the API cap follows reloads, and
    /// holds for each API listener, across all workers).
    fn cap(&self, gw: &Gateway) -> usize {
        match self {
            Side::Api | Side::Tls(_) => gw.snapshot().config.server.max_connections.get(),
            Side::Admin => ADMIN_MAX_CONNECTIONS,
        }
    }
}

/// The HTTP/1 side of a connection: hyper's head timeout (which also ends
/// an idle keep-alive connection) and head size limit.
fn http1_builder(header_timeout: Duration) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_HEAD_BUFFER);
    b
}

/// The HTTP/2 side of a TLS connection (ALPN `h2`): head size and stream
/// limits, and pings that close a connection whose peer went silent
/// (HTTP/2 has no head timeout; the TLS handshake has `header_timeout`).
fn http2_builder(header_timeout: Duration) -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .max_header_list_size(MAX_HEAD_BUFFER as u32)
        .max_concurrent_streams(256)
        .keep_alive_interval(Some(header_timeout))
        .keep_alive_timeout(header_timeout);
    b
}

/// What one listener serves, and the count of its open connections.
struct Listening {
    gw: Arc<Gateway>,
    side: Side,
    /// The runtime's label in the metrics.
    worker: String,
    app: Served,
    open: Arc<AtomicUsize>,
}

/// Counts one more open connection in `count`, unless `cap` are open
/// already: then it counts a refusal in `refused` and says no (the caller
/// closes the connection).
fn admit(count: &AtomicUsize, cap: usize, refused: &prometheus::IntCounter) -> bool {
    if count.fetch_add(1, Ordering::AcqRel) >= cap {
        count.fetch_sub(1, Ordering::AcqRel);
        refused.inc();
        return false;
    }
    true
}

/// Accepts and serves connections on `listener` (the admin port's, on the
/// caller's runtime) until `stop` resolves, then asks every connection to
/// finish its request in progress and close, and returns when all have.
/// Dropping the returned future (aborting its task) closes every
/// connection at once.
async fn serve(on: Listening, listener: TcpListener, stop: impl Future<Output = ()>) {
    let Listening {
        gw,
        side,
        worker,
        app,
        open: count,
    } = on;
    let graceful = GracefulShutdown::new();
    // Connections live in this set, so they end with this future.
    let mut connections = JoinSet::new();
    let open = gw
        .metrics
        .connections_open
        .with_label_values(&[side.label()]);
    let refused = gw
        .metrics
        .connections_refused
        .with_label_values(&[side.label()]);
    let accepted = gw
        .metrics
        .connections_accepted
        .with_label_values(&[side.label(), &worker]);
    tokio::pin!(stop);
    loop {
        let conn = tokio::select! {
            () = &mut stop => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(listener = side.label(), %err, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        if !admit(&count, side.cap(&gw), &refused) {
            drop(conn);
            continue;
        }
        accepted.inc();
        let counted = Counted::new(open.clone(), count.clone(), None);
        spawn_connection(&gw, &side, &app, &graceful, &mut connections, conn, counted);
    }
    drop(listener);
    graceful.shutdown().await;
}

/// Serves one accepted connection of `side` in a task of `connections`
/// (on the current runtime), watched by `graceful`; `counted` lives as long
/// as the connection.
fn spawn_connection(
    gw: &Arc<Gateway>,
    side: &Side,
    app: &Served,
    graceful: &GracefulShutdown,
    connections: &mut JoinSet<()>,
    (stream, peer): (tokio::net::TcpStream, SocketAddr),
    counted: Counted,
) {
    // Answers are small JSON writes: send them now, not after Nagle's delay.
    let _ = stream.set_nodelay(true);
    let snap = gw.snapshot();
    let header_timeout = snap.config.server.header_timeout;
    let service = PerRequest::new(gw.clone(), app, peer);
    if let Side::Tls(generated) = side {
        let cert = snap.config.server.tls.as_ref().map(|t| &t.cert);
        let Some(acceptor) = tls_listener::acceptor(cert, generated.as_deref()) else {
            return;
        };
        let watcher = graceful.watcher();
        connections.spawn(async move {
            let _counted = counted;
            let Some((tls, h2)) = tls_listener::handshake(acceptor, stream, header_timeout).await
            else {
                return;
            };
            let io = TokioIo::new(tls);
            let served = if h2 {
                let conn = http2_builder(header_timeout).serve_connection(io, service);
                watcher.watch(conn).await
            } else {
                let conn = http1_builder(header_timeout).serve_connection(io, service);
                watcher.watch(conn).await
            };
            if let Err(err) = served {
                tracing::debug!(%err, "client connection ended with an error");
            }
        });
        return;
    }
    let conn = http1_builder(header_timeout).serve_connection(TokioIo::new(stream), service);
    // `map`, not `async move { conn.await }`: an async block keeps the
    // moved-in connection and the one it awaits in separate slots, so every
    // connection's task would hold hyper's state twice.
    let conn = graceful.watch(conn).map(move |served| {
        drop(counted);
        if let Err(err) = served {
            // A head timeout, a reset, a malformed request: the
            // client's doing, and hyper has answered what it could.
            tracing::debug!(%err, "client connection ended with an error");
        }
    });
    connections.spawn(conn);
}

/// One open connection, counted in its listener's gauge and count (already
/// reserved) and, on a worker, in that worker's gauge and load, until
/// dropped.
struct Counted {
    gauge: IntGauge,
    count: Arc<AtomicUsize>,
    worker: Option<(IntGauge, workers::Slot)>,
}

impl Counted {
    fn new(
        gauge: IntGauge,
        count: Arc<AtomicUsize>,
        worker: Option<(IntGauge, workers::Slot)>,
    ) -> Counted {
        gauge.inc();
        if let Some((worker_gauge, _)) = &worker {
            worker_gauge.inc();
        }
        Counted {
            gauge,
            count,
            worker,
        }
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.gauge.dec();
        self.count.fetch_sub(1, Ordering::AcqRel);
        if let Some((worker_gauge, _)) = &self.worker {
            worker_gauge.dec();
        }
    }
}
