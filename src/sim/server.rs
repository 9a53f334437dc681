//! The accept loop. It is ours rather than `axum::serve` because the
//! simulator must be able to reset a connection mid-request: each connection
//! gets a [`CancellationToken`]; a handler that wants a reset cancels it, and
//! the connection task drops the socket with `SO_LINGER` 0, so the peer
//! sees a TCP RST instead of a clean close.

use std::future::Future;
use std::io;
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
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::request::ConnCtx;

/// How long open connections may finish after shutdown before they are cut.
const GRACE: Duration = Duration::from_secs(5);

/// Serves `app` on `listener`, giving each request a [`ConnCtx`], until
/// `shutdown` resolves; then drains for [`GRACE`].
pub(crate) async fn run(
    app: Router,
    listener: TcpListener,
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
        let io = TokioIo::new(ResetOnDrop {
            stream,
            reset: reset.clone(),
        });
        let conn = Builder::new(TokioExecutor::new())
            .serve_connection(io, TowerToHyperService::new(svc))
            .into_owned();
        let conn = graceful.watch(conn);
        tokio::spawn(async move {
            tokio::select! {
                // Biased so a requested reset wins over a response that is
                // ready at the same time.
                biased;
                () = reset.cancelled() => tracing::debug!(%peer, "simulator reset a connection"),
                res = conn => if let Err(err) = res {
                    tracing::debug!(%peer, %err, "simulator connection ended with an error");
                },
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
