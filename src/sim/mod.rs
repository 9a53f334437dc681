//! A RetailCRM imitation for tests, benchmarks and `crmgate demo`/`crmgate sim`.
//!
//! The simulator answers the handful of API methods crmgate's tests need, with
//! RetailCRM's error shapes, and it enforces the documented limits per
//! (source IP, class) with one of four limiter models ([`limiter`]: strict,
//! lenient, leaky as nginx `limit_req`, fixed windows); the default is the
//! strictest, a sliding window that counts *every* arrival, rejected or not. It records everything it receives
//! so tests can prove what the gateway sent, and it can inject faults
//! (503s, resets before or after processing, stalls, garbage bodies).
//!
//! # Layout
//! Listed leaves first; each module uses only modules above it, so the
//! dependencies form a DAG and this file (the [`Simulator`] handle) is the
//! only one that sees them all.
//! - `lock`: poison-tolerant locking.
//! - [`class`]: the CRM's own rules for [`Class`] ([`classify`]) and form
//!   bodies, written from RetailCRM's documentation. Never the gateway's
//!   code, so the simulator can catch the gateway's mistakes.
//! - `multipart`: PHP's reading of `multipart/form-data` bodies (the
//!   fields of `$_POST`), quirks included.
//! - `config`: [`SimConfig`] and [`SimAccount`].
//! - `request`: per-request types: [`Received`], the connection context,
//!   the authenticated caller.
//! - `reply`: RetailCRM's JSON answers and nginx's 503 page.
//! - [`limiter`]: the limiter models ([`LimiterKind`]), pure logic over
//!   instants passed in.
//! - [`window`]: [`max_in_window`] over recorded arrivals.
//! - `record`: the ledger of arrivals, which owns the limiter.
//! - [`faults`]: [`Faults`], settable while the server runs.
//! - `store`: the orders created in each account; `reference`: the
//!   statuses dictionary and its two handlers.
//! - `entities`: customers and corporate customers, and lookups of all
//!   three by `externalId` or `id`; `edit`: `orders/{x}/edit`.
//! - `state`: what every handler shares (accounts, limits, ledger, store).
//! - `gate`: the middleware every request passes: record, limit, faults, auth.
//! - `listing`: the customers list (newest first, the `entities` ones),
//!   shared page parameters, and a switch that creates customers between
//!   two list requests.
//! - `history`: `orders/history` and `customers/history` by `sinceId`.
//! - `credentials`: `api-versions` and `credentials`, and what each
//!   account's key may do ([`KeyAccess`]: scopes, sites).
//! - `api`: the routes and their handlers.
//! - `upload`: batch methods with RetailCRM's item limits (460 on a
//!   partial upload).
//! - `tls`: the CA and server certificate generated at start-up, and the
//!   acceptor (ALPN `h2` and `http/1.1`).
//! - `server`: the accept loop, which can reset a connection on demand and
//!   sets each connection up (round trip, TLS handshake) in its own task.
//!
//! # Order of checks for one request
//! 0. (A new connection first waits `rtt`, then `handshake` and the TLS
//!    handshake.) Half of `rtt`: the request's trip.
//! 1. Record the arrival and let the limiter judge it (the strict one counts
//!    it even if rejected).
//! 2. Read the whole body and attach it to the record.
//! 3. Over the limit → nginx-style 503 HTML. Faults are not consumed.
//! 4. Faults before processing: reset, then `fail_next`, then random 503,
//!    then the exact share of 503s, then stall.
//! 5. Auth for `/api/...`: 403 JSON when the key is missing or unknown.
//! 6. Route and process.
//! 7. Faults after processing: reset, then garbage body.
//! 8. Configured latency and the other half of `rtt`, then answer.
//!
//! The simulator never talks to the real CRM and never logs keys or bodies.
//! It never uses the gateway's request path (`crate::classify`,
//! `crate::rewrite`, `crate::proxy`, ...): it judges the gateway by
//! RetailCRM's rules, not by the gateway's own reading of them.

mod api;
pub mod class;
mod config;
mod credentials;
mod edit;
mod entities;
pub mod faults;
mod gate;
mod history;
pub mod limiter;
mod listing;
mod lock;
mod multipart;
mod record;
mod reference;
mod reply;
mod request;
mod server;
mod state;
mod store;
mod tls;
mod upload;
pub mod window;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use class::{classify, Class};
pub use config::{SimAccount, SimConfig, SimTls};
pub use credentials::KeyAccess;
pub use faults::Faults;
pub use limiter::LimiterKind;
pub use request::Received;
pub use window::max_in_window;

use lock::lock;
use state::Shared;

/// A running (or ready to run) simulator. Cheap to clone: all clones share state.
#[derive(Clone)]
pub struct Simulator {
    /// What the request handlers see.
    shared: Arc<Shared>,
    /// The first address served on; shared by all clones.
    addr: Arc<OnceLock<SocketAddr>>,
    /// Stops a server started by [`Simulator::spawn`].
    shutdown: CancellationToken,
    /// How each connection is set up: round trip, TLS.
    setup: server::ConnSetup,
    /// The CA clients must trust, PEM (TLS only).
    ca_pem: Option<Arc<str>>,
}

impl Simulator {
    /// Builds a simulator that is not serving yet; see [`Simulator::serve`].
    /// With `cfg.tls`, generates its CA and server certificate now.
    ///
    /// # Panics
    /// If the certificate cannot be generated (rcgen and ring with fixed
    /// names and key type: not expected to happen).
    pub fn new(cfg: SimConfig) -> Self {
        let material = cfg
            .tls
            .map(|t| tls::generate(t).expect("simulator certificate"));
        let setup = server::ConnSetup {
            rtt: cfg.rtt,
            handshake: cfg.handshake,
            tls: material.as_ref().map(|m| m.acceptor.clone()),
        };
        Simulator {
            ca_pem: material.map(|m| Arc::from(m.ca_pem)),
            shared: Arc::new(Shared::new(cfg)),
            addr: Arc::new(OnceLock::new()),
            shutdown: CancellationToken::new(),
            setup,
        }
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`), spawns the server on the current
    /// tokio runtime and returns at once. It runs until [`Simulator::shutdown`]
    /// or until the runtime ends.
    pub async fn spawn(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let sim = Simulator::new(cfg);
        // Set before spawning so `addr()` works as soon as we return.
        let _ = sim.addr.set(listener.local_addr()?);
        let stop = sim.shutdown.clone().cancelled_owned();
        let server = sim.clone();
        tokio::spawn(async move {
            if let Err(err) = server.serve(listener, stop).await {
                tracing::warn!(%err, "simulator stopped with an error");
            }
        });
        Ok(sim)
    }

    /// Serves on `listener` until `shutdown` resolves, then stops accepting,
    /// lets open connections finish for a short grace period and resets the rest.
    ///
    /// The bound address is recorded when `serve` is called, not when the
    /// future is first polled, so [`Simulator::addr`] works right after
    /// `tokio::spawn(sim.clone().serve(..))`. A simulator keeps the first
    /// address it was given.
    pub fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> impl Future<Output = std::io::Result<()>> + Send + 'static {
        let bound = listener.local_addr();
        if let Ok(addr) = bound {
            let _ = self.addr.set(addr);
        }
        async move {
            bound?;
            server::run(api::router(self.shared), listener, self.setup, shutdown).await
        }
    }

    /// Stops a server started with [`Simulator::spawn`] (no-op for `serve`,
    /// whose caller owns the shutdown future).
    pub fn shutdown(&self) {
        self.shutdown.cancel();
    }

    /// The bound address.
    ///
    /// # Panics
    /// If called before [`Simulator::spawn`] returned or [`Simulator::serve`] started.
    pub fn addr(&self) -> SocketAddr {
        *self
            .addr
            .get()
            .expect("Simulator::addr called before spawn/serve bound a listener")
    }

    /// `http://IP:PORT` (`https://` with TLS) of the bound address, without
    /// a trailing slash. The certificate names the loopback IPs, so the URL
    /// verifies as it is.
    pub fn base_url(&self) -> String {
        let scheme = if self.ca_pem.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{}", self.addr())
    }

    /// The CA that signed the server certificate, PEM, for clients to trust
    /// (crmgate's `upstream.ca_file`); `None` without TLS. Certificates are
    /// new at every start.
    pub fn ca_pem(&self) -> Option<&str> {
        self.ca_pem.as_deref()
    }

    /// Everything received, in arrival order, including rejected requests.
    pub fn records(&self) -> Vec<Received> {
        lock(&self.shared.ledger).records()
    }

    /// Forgets the records (window counters are kept: the server still remembers).
    pub fn clear_records(&self) {
        lock(&self.shared.ledger).clear_records();
    }

    /// Fault injection, settable while running.
    pub fn faults(&self) -> &Faults {
        &self.shared.faults
    }

    /// Changes the per-window limits; takes effect for the next arrival.
    pub fn set_limits(&self, general: u32, telephony: u32) {
        self.shared.set_limits(general, telephony);
    }

    /// Sets what the named account's key may do (scopes, sites), as
    /// `GET /api/credentials` reports it. Returns false for an unknown name.
    pub fn set_key_access(&self, account: &str, access: KeyAccess) -> bool {
        match self.shared.accounts.iter().position(|a| a.name == account) {
            Some(idx) => {
                self.shared.access.set(idx, access);
                true
            }
            None => false,
        }
    }

    /// The limiter model in force.
    pub fn limiter(&self) -> LimiterKind {
        lock(&self.shared.ledger).limiter()
    }

    /// Changes the limiter model; every key's count starts afresh.
    pub fn set_limiter(&self, kind: LimiterKind) {
        lock(&self.shared.ledger).set_limiter(kind);
    }

    /// Changes the uniform random latency added before every answer.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        *lock(&self.shared.latency) = (min, max);
    }

    /// Once `after` more `customers` list requests were answered, `n` new
    /// customers appear in every account (newest first, so they shift every
    /// later page): what another user creating customers during a walk does.
    pub fn add_customers_after(&self, after: u64, n: u64) {
        self.shared.listing.add_customers_after(after, n);
    }

    /// Creates `n` customers in every account now (as `customers/create`
    /// would, `externalId` `cust-{id}`): data for lists and history.
    pub fn add_customers(&self, n: u64) {
        listing::add_customers(&self.shared, n);
    }

    /// Customers (`corporate`: corporate customers) created through the API
    /// in the named account, in order. Empty for an unknown account name.
    pub fn customers_created(&self, account: &str, corporate: bool) -> Vec<serde_json::Value> {
        let kind = if corporate {
            entities::Kind::Corporate
        } else {
            entities::Kind::Customer
        };
        match self.shared.accounts.iter().position(|a| a.name == account) {
            Some(idx) => self.shared.entities.account(idx).all(kind),
            None => Vec::new(),
        }
    }

    /// Orders created through `orders/create` in the named account, in order.
    /// Empty for an unknown account name.
    pub fn orders_created(&self, account: &str) -> Vec<serde_json::Value> {
        match self.shared.accounts.iter().position(|a| a.name == account) {
            Some(idx) => self.shared.store.created(idx),
            None => Vec::new(),
        }
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of debug output.
        f.debug_struct("Simulator")
            .field("addr", &self.addr.get())
            .field("tls", &self.ca_pem.is_some())
            .field("accounts", &self.shared.accounts.len())
            .finish_non_exhaustive()
    }
}
