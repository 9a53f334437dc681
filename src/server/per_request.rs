//! The per-request service of one connection: runs the edge guard
//! ([`crate::guard::check`]) on the head, gives the app the peer address,
//! bounds pauses in the request body (`server.body_timeout`), turns a
//! stalled body into 408, and marks answers `Connection: close` while
//! draining.
//!
//! A waiting request keeps whatever its service future holds, so nothing
//! here allocates per request beyond what the app needs: the API handler
//! is called directly (no router, no middleware layer, one box for its
//! future), the answer is a named future, and the stall flag is one per
//! connection. This module never reads a body itself.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::routing::future::RouteFuture;
use axum::Router;
use hyper::body::{Body as HttpBody, Frame, Incoming, SizeHint};
use tokio::time::{Instant, Sleep};
use tower::Service;

use crate::error::{reject, GatewayError};
use crate::gateway::Gateway;
use crate::guard;
use crate::inbound::body::BodyStalled;
use crate::proxy;

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

/// What a connection serves.
#[derive(Clone)]
pub(super) enum App {
    /// The API: every request goes to [`proxy::handle`], called directly.
    Api,
    /// A router (the admin port).
    Router(Router),
}

/// What a listener serves, and whether it is bound to a loopback address
/// (then the guard's Host rule applies).
#[derive(Clone)]
pub(super) struct Served {
    pub app: App,
    pub loopback: bool,
}

/// The service of one connection.
pub(super) struct PerRequest {
    gw: Arc<Gateway>,
    app: App,
    peer: SocketAddr,
    /// Whether the listener is bound to a loopback address (the guard's
    /// Host rule applies).
    loopback: bool,
    stalls: Arc<Stalls>,
}

impl PerRequest {
    /// The service for a connection from `peer` to a listener serving
    /// `served`.
    pub(super) fn new(gw: Arc<Gateway>, served: &Served, peer: SocketAddr) -> PerRequest {
        PerRequest {
            gw,
            app: served.app.clone(),
            peer,
            loopback: served.loopback,
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
        let snap = self.gw.peek();
        let server = &snap.config.server;
        let timeout = server.body_timeout;
        let number = self.stalls.next.fetch_add(1, Ordering::Relaxed) + 1;
        let call = match guard::check(server, self.loopback, req.headers(), req.uri()) {
            Err(e) => Call::Ready(Some(reject(e, &self.gw.metrics))),
            Ok(()) => {
                let stalls = (self.stalls.clone(), number);
                let req = req.map(|body| Body::new(IdleBody::new(body, timeout, stalls)));
                match &self.app {
                    App::Api => Call::Api(Box::pin(proxy::handle(
                        self.gw.clone(),
                        self.peer,
                        Box::new(req),
                    ))),
                    // The router is always ready: no `poll_ready` needed.
                    App::Router(router) => Call::Router(Box::pin(router.clone().call(req))),
                }
            }
        };
        ResponseFuture {
            call,
            gw: self.gw.clone(),
            stalls: self.stalls.clone(),
            number,
            timeout,
        }
    }
}

/// The app's answer in the making.
enum Call {
    /// The API handler's future (one box: the future a waiting request
    /// holds).
    Api(Pin<Box<dyn Future<Output = Response> + Send>>),
    /// The router's future, boxed so an API connection's in-flight slot
    /// (hyper keeps one per connection) is not as large as it.
    Router(Pin<Box<RouteFuture<Infallible>>>),
    /// Refused by the guard.
    Ready(Option<Response>),
}

/// The answer to one request: the app's future, then the finishing
/// touches.
pub(super) struct ResponseFuture {
    call: Call,
    gw: Arc<Gateway>,
    stalls: Arc<Stalls>,
    number: u64,
    timeout: Duration,
}

impl Future for ResponseFuture {
    type Output = Result<Response, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut response = match &mut this.call {
            Call::Api(f) => match f.as_mut().poll(cx) {
                Poll::Ready(r) => r,
                Poll::Pending => return Poll::Pending,
            },
            Call::Router(f) => match f.as_mut().poll(cx) {
                Poll::Ready(Ok(r)) => r,
                Poll::Ready(Err(never)) => match never {},
                Poll::Pending => return Poll::Pending,
            },
            Call::Ready(r) => r.take().expect("a ready answer is polled once"),
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
