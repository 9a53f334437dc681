//! The per-request service of one connection: gives the handler the peer
//! address, bounds pauses in the request body (`server.body_timeout`),
//! turns a stalled body into 408, and marks answers `Connection: close`
//! while draining.
//!
//! A waiting request keeps whatever its service future holds, so nothing
//! here allocates per request beyond what the router needs: the answer is
//! a named future (no box), and the stall flag is one per connection.
//! This module never reads a body itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::ConnectInfo;
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::error::{reject, GatewayError};
use crate::gateway::Gateway;
use crate::inbound::body::BodyStalled;

/// Which of a connection's requests had a stalled body: requests are
/// numbered from 1 as they come, and a stall records its number. On
/// HTTP/1 one request runs at a time; on HTTP/2 two bodies stalling at
/// once leave the later number, and the earlier request answers whatever
/// its handler made of the failed read.
#[derive(Default)]
struct Stalls {
    next: AtomicU64,
    stalled: AtomicU64,
}

/// The service of one connection.
pub(super) struct PerRequest {
    gw: Arc<Gateway>,
    app: Router,
    peer: SocketAddr,
    stalls: Arc<Stalls>,
}

impl PerRequest {
    /// The service for a connection from `peer`.
    pub(super) fn new(gw: Arc<Gateway>, app: Router, peer: SocketAddr) -> PerRequest {
        PerRequest {
            gw,
            app,
            peer,
            stalls: Arc::default(),
        }
    }
}

impl hyper::service::Service<hyper::Request<Incoming>> for PerRequest {
    type Response = Response;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: hyper::Request<Incoming>) -> ResponseFuture {
        // Read per request, so a reload reaches open connections too.
        let timeout = self.gw.snapshot().config.server.body_timeout;
        let number = self.stalls.next.fetch_add(1, Ordering::Relaxed) + 1;
        let stalls = (self.stalls.clone(), number);
        let mut req = req.map(|body| Body::new(IdleBody::new(body, timeout, stalls)));
        req.extensions_mut().insert(ConnectInfo(self.peer));
        // The router is always ready: no `poll_ready` needed.
        let call = self.app.clone().call(req);
        ResponseFuture {
            call,
            gw: self.gw.clone(),
            stalls: self.stalls.clone(),
            number,
            timeout,
        }
    }
}

/// The answer to one request: the router's future, then the finishing
/// touches.
pub(super) struct ResponseFuture {
    call: RouteFuture<Infallible>,
    gw: Arc<Gateway>,
    stalls: Arc<Stalls>,
    number: u64,
    timeout: Duration,
}

impl Future for ResponseFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(Ok(mut response)) = Pin::new(&mut this.call).poll(cx) else {
            return Poll::Pending;
        };
        // Draining: this connection is not reused, so the caller's next
        // request opens a new one (while the listener still accepts, or
        // elsewhere).
        if this.gw.drain.is_draining() {
            response.headers_mut().insert(
                axum::http::header::CONNECTION,
                axum::http::HeaderValue::from_static("close"),
            );
        }
        // Already a 408 (a handler that maps BodyStalled itself) was
        // counted where it was made.
        if this.stalls.stalled.load(Ordering::Relaxed) != this.number
            || response.status() == axum::http::StatusCode::REQUEST_TIMEOUT
        {
            return Poll::Ready(Ok(response));
        }
        // Whatever the handler made of the failed read, the client
        // stalled: say so, and close (the rest of the body is unread).
        let timeout = this.timeout;
        Poll::Ready(Ok(reject(
            GatewayError::BodyTimeout { timeout },
            &this.gw.metrics,
        )))
    }
}

/// A request body that fails with [`BodyStalled`] when no frame arrives for
/// `timeout` while it is being read, and marks `stalled` so the answer can
/// say 408. The timer is armed only while a read waits, so a body that is
/// never read (or already complete) costs no timer.
struct IdleBody {
    inner: Incoming,
    timeout: Duration,
    last_progress: Instant,
    sleep: Option<Pin<Box<Sleep>>>,
    /// The connection's stall record, and this request's number in it.
    stalled: (Arc<Stalls>, u64),
}

impl IdleBody {
    fn new(inner: Incoming, timeout: Duration, stalled: (Arc<Stalls>, u64)) -> IdleBody {
        IdleBody {
            inner,
            timeout,
            last_progress: Instant::now(),
            sleep: None,
            stalled,
        }
    }
}

impl HttpBody for IdleBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.last_progress = Instant::now();
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let deadline = this.last_progress + this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                if sleep.deadline() != deadline {
                    sleep.as_mut().reset(deadline);
                }
                if sleep.as_mut().poll(cx).is_ready() {
                    this.stalled
                        .0
                        .stalled
                        .store(this.stalled.1, Ordering::Relaxed);
                    return Poll::Ready(Some(Err(Box::new(BodyStalled(this.timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
