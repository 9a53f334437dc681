//! The hand-off of API connections to the worker runtimes: one acceptor per
//! listener (on the caller's runtime) accepts, applies the listener's cap,
//! picks the worker with the fewest open connections ([`Spread`]) and sends
//! it the socket; each worker registers the sockets it is sent with its own
//! runtime and serves them until its channel closes, then drains them.
//!
//! The acceptor only counts and hands over: it never reads from a
//! connection and never serves one, and it costs once per connection, never
//! per request. A connection stays on the worker it was handed to until it
//! ends.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::AtomicUsize;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender};
use tokio::task::JoinSet;

use super::per_request::Served;
use super::{admit, spawn_connection, Counted, Side};
use crate::gateway::Gateway;
use crate::workers::Spread;

/// A connection on its way from the acceptor to its worker, counted on both
/// (dropped unserved, it uncounts itself).
pub(super) struct Incoming {
    /// Came in on the HTTPS listener.
    tls: bool,
    stream: std::net::TcpStream,
    peer: SocketAddr,
    counted: Counted,
}

/// What one listener's acceptor needs.
pub(super) struct Acceptor {
    pub gw: Arc<Gateway>,
    /// `Api` or `Tls`: the metrics' label and the cap.
    pub side: Side,
    /// The listener's open connections, across all workers.
    pub open: Arc<AtomicUsize>,
    pub spread: Arc<Spread>,
    /// One channel per worker, indexed as the spread's workers.
    pub workers: Arc<Vec<UnboundedSender<Incoming>>>,
}

/// Accepts on `listener` until `stop` resolves, handing each connection to
/// the least loaded worker; then closes the listener. A worker whose thread
/// is gone drops what it is sent, and the count with it.
pub(super) async fn accept(
    on: Acceptor,
    listener: std::net::TcpListener,
    stop: impl Future<Output = ()>,
) {
    let Acceptor {
        gw,
        side,
        open: count,
        spread,
        workers,
    } = on;
    let label = side.label();
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(err) => {
            tracing::error!(listener = label, %err, "cannot serve");
            return;
        }
    };
    let metrics = &gw.metrics;
    let open = metrics.connections_open.with_label_values(&[label]);
    let refused = metrics.connections_refused.with_label_values(&[label]);
    let per_worker: Vec<_> = (0..workers.len())
        .map(|w| {
            let w = w.to_string();
            (
                metrics.connections_accepted.with_label_values(&[label, &w]),
                metrics.worker_connections.with_label_values(&[&w]),
            )
        })
        .collect();
    let tls = matches!(side, Side::Tls(_));
    tokio::pin!(stop);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(conn) => conn,
            Err(err) => {
                // Usually out of file descriptors: back off instead of
                // spinning; the workers keep serving what they have.
                tracing::warn!(listener = label, %err, "accept failed");
                tokio::select! {
                    () = &mut stop => break,
                    () = tokio::time::sleep(Duration::from_millis(50)) => continue,
                }
            }
        };
        // Taken off this runtime (still non-blocking) for its worker's.
        let stream = match stream.into_std() {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(listener = label, %err, "cannot hand over a connection");
                continue;
            }
        };
        if !admit(&count, side.cap(&gw), &refused) {
            drop(stream);
            continue;
        }
        let slot = spread.assign();
        let worker = slot.worker();
        let (accepted, worker_open) = &per_worker[worker];
        accepted.inc();
        let counted = Counted::new(
            open.clone(),
            count.clone(),
            Some((worker_open.clone(), slot)),
        );
        let incoming = Incoming {
            tls,
            stream,
            peer,
            counted,
        };
        // Fails only when the worker has ended: the connection closes.
        let _ = workers[worker].send(incoming);
    }
}

/// What a worker serves: the API and, with `server.tls_listen`, the HTTPS
/// side's API and certificate.
pub(super) struct Worker {
    pub gw: Arc<Gateway>,
    pub api: Served,
    pub tls: Option<(Served, Side)>,
}

/// Serves every connection sent on `incoming`, on the current (worker)
/// runtime, until every acceptor has ended (the channel closes); then asks
/// each connection to finish its request in progress and close, and
/// returns when all have. Dropping the returned future (aborting the
/// worker) closes every connection at once.
pub(super) async fn serve_worker(on: Worker, mut incoming: UnboundedReceiver<Incoming>) {
    let graceful = GracefulShutdown::new();
    // Connections live in this set, so they end with this future.
    let mut connections = JoinSet::new();
    loop {
        let Incoming {
            tls,
            stream,
            peer,
            counted,
        } = tokio::select! {
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            next = incoming.recv() => match next {
                Some(next) => next,
                None => break,
            },
        };
        let (side, app) = match (tls, &on.tls) {
            (false, _) => (&Side::Api, &on.api),
            (true, Some((app, side))) => (side, app),
            (true, None) => continue,
        };
        // Non-blocking already (`into_std` leaves it so).
        let stream = match TcpStream::from_std(stream) {
            Ok(stream) => stream,
            Err(err) => {
                tracing::debug!(%err, "cannot serve an accepted connection");
                continue;
            }
        };
        spawn_connection(
            &on.gw,
            side,
            app,
            &graceful,
            &mut connections,
            (stream, peer),
            counted,
        );
    }
    graceful.shutdown().await;
}
