//! What the simulator knows about one request, as plain types shared by the
//! modules that fill them in: the accept loop ([`ConnCtx`]), the gate
//! ([`Caller`]) and the ledger ([`Received`]).
//!
//! A leaf: it holds data and depends on nothing else in the simulator but
//! the [`Class`] type, so any module may use it without forming a cycle.

use std::net::{IpAddr, SocketAddr};

use axum::http::Version;
use bytes::Bytes;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::class::Class;

/// One request as the simulator saw it.
#[derive(Debug, Clone)]
pub struct Received {
    /// The TCP peer's address (the gateway's egress IP).
    pub source_ip: IpAddr,
    /// HTTP method, e.g. `GET`.
    pub method: String,
    /// HTTP version it came over (`HTTP_2` when the client chose `h2`
    /// through ALPN).
    pub version: Version,
    /// Path without the query.
    pub path: String,
    /// Raw query string exactly as received (no re-encoding).
    pub query: Option<String>,
    /// Headers in received order, names lowercase, values lossily UTF-8.
    pub headers: Vec<(String, String)>,
    /// The raw body.
    pub body: Bytes,
    /// Decoded form fields, from an `application/x-www-form-urlencoded` or
    /// a `multipart/form-data` body as PHP reads it (empty otherwise).
    pub form: Vec<(String, String)>,
    /// Arrival time (before the body was read).
    pub at: Instant,
    /// The rate-limit class the simulator counted the path in.
    pub class: Class,
    /// Status answered; 0 if the connection was reset or the answer never
    /// went out (stalled and the client gave up, or still in progress).
    pub status: u16,
    /// The key presented: `X-API-KEY` header, else `apiKey` in the query,
    /// else `apiKey` in a form or multipart body.
    pub api_key: Option<String>,
}

impl Received {
    /// The first value of header `name` (any case).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Per-connection facts the accept loop hands to the gate through request
/// extensions.
#[derive(Debug, Clone)]
pub(crate) struct ConnCtx {
    /// The TCP peer, i.e. the client's source address.
    pub(crate) peer: SocketAddr,
    /// Cancel to reset this connection.
    pub(crate) reset: CancellationToken,
}

/// The authenticated caller, set by the gate for `/api/` paths so handlers
/// can rely on it.
#[derive(Debug, Clone)]
pub(crate) struct Caller {
    /// Index into the simulator's accounts.
    pub(crate) account: usize,
    /// Decoded form fields (urlencoded or multipart; empty otherwise).
    pub(crate) form: Vec<(String, String)>,
}

impl Caller {
    /// The first value of form field `name`.
    pub(crate) fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}
