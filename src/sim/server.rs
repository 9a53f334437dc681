//! The accept loop. It is ours rather than `axum::serve` because the
//! simulator must be able to reset a connection mid-request: each connection
//! gets a [`CancellationToken`]; a handler that wants a reset cancels it, and
//! the connection task drops the socket with `SO_LINGER` 0, so the peer
//! sees a TCP RST instead of a clean close (over TLS too: no close_notify).
//!
//! Each connection is set up in its own task, so a slow one never holds up
//! `accept`: it waits out the configured round trip before its first byte is
//! read, then (with TLS) the handshake delay and the handshake, and only
//! then is HTTP/1.1 or HTTP/2 served on it.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::http::Request;
use axum::Router;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::request::ConnCtx;

/// How long open connections may finish after shutdown before they are cut.
const GRACE: Duration = Duration::from_secs(5);

/// What happens to a connection between `accept` and serving HTTP on it.
#[derive(Clone, Default)]
pub(crate) struct ConnSetup {
    /// TLS acceptor; `None` serves plain HTTP.
    pub(crate) tls: Option<TlsAcceptor>,
    /// Waited before the first byte is read: the TCP handshake's round trip.
    pub(crate) rtt: Duration,
    /// Waited before the TLS handshake (TLS only).
    pub(crate) handshake: Duration,
}

/// A byte stream HTTP can be served on: plain TCP or TLS over it.
trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// Serves `app` on `listener`, giving each request a [`ConnCtx`], until
/// `shutdown` resolves; then drains for [`GRACE`].
pub(crate) async fn run(
    app: Router,
    listener: TcpListener,
    setup: ConnSetup,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let graceful = GracefulShutdown::new();
    // Parent of every connection's token: cancelling it cuts all of them.
    let cut = CancellationToken::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Usually out of file descriptors: back off instead of
                    // spinning, and keep serving the connections we have.
                    tracing::warn!(%err, "simulator accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let reset = cut.child_token();
        let ctx = ConnCtx {
            peer,
            reset: reset.clone(),
        };
        let svc = app.clone().map_request(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(ctx.clone());
            req
        });
        let stream = ResetOnDrop {
            stream,
            reset: reset.clone(),
        };
        // Taken now, so a connection still in set-up at shutdown is waited
        // for (and cut after the grace period) like the others.
        let watcher = graceful.watcher();
        let setup = setup.clone();
        tokio::spawn(async move {
            let serve = async move {
                let Some(io) = open(stream, &setup, peer).await else {
                    return;
                };
                let conn = Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(io), TowerToHyperService::new(svc))
                    .into_owned();
                if let Err(err) = watcher.watch(conn).await {
                    tracing::debug!(%peer, %err, "simulator connection ended with an error");
                }
            };
            tokio::select! {
                // Biased so a requested reset wins over a response that is
                // ready at the same time.
                biased;
                () = reset.cancelled() => tracing::debug!(%peer, "simulator reset a connection"),
                () = serve => {}
            }
        });
    }
    drop(listener);
    tokio::select! {
        () = graceful.shutdown() => {}
        () = tokio::time::sleep(GRACE) => {
            tracing::info!("simulator grace period over; resetting open connections");
            cut.cancel();
        }
    }
    Ok(())
}

/// Waits out the connect's round trip and, with TLS, the handshake delay and
/// the handshake. `None` when the handshake fails (e.g. the client does not
/// trust the certificate): nothing is served on that connection.
async fn open(stream: ResetOnDrop, setup: &ConnSetup, peer: SocketAddr) -> Option<Box<dyn Io>> {
    // The client's bytes wait in the kernel meanwhile, as they would on the
    // wire: the first request (or ClientHello) is read one round trip late.
    if !setup.rtt.is_zero() {
        tokio::time::sleep(setup.rtt).await;
    }
    let Some(acceptor) = &setup.tls else {
        return Some(Box::new(stream));
    };
    if !setup.handshake.is_zero() {
        tokio::time::sleep(setup.handshake).await;
    }
    match acceptor.accept(stream).await {
        Ok(tls) => Some(Box::new(tls)),
        Err(err) => {
            tracing::debug!(%peer, %err, "simulator TLS handshake failed");
            None
        }
    }
}

/// A TCP stream that, once its token is cancelled, closes with a reset.
///
/// `SO_LINGER` 0 is set only at drop and only when a reset was asked for: set
/// on every socket, a normal close would also reset and could destroy an
/// answer still unread in the peer's buffer.
struct ResetOnDrop {
    stream: TcpStream,
    reset: CancellationToken,
}

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if self.reset.is_cancelled() {
            if let Err(err) = self.stream.set_zero_linger() {
                tracing::debug!(%err, "could not set SO_LINGER 0");
            }
        }
    }
}

impl AsyncRead for ResetOnDrop {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for ResetOnDrop {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }
}
