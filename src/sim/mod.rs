//! A RetailCRM imitation for tests, benchmarks and `crmgate demo`/`crmgate sim`.
//!
//! The simulator answers the handful of API methods crmgate's tests need, with
//! RetailCRM's error shapes, and it enforces the documented limits as strictly
//! as the real server could: a sliding window per (source IP, class) that
//! counts *every* arrival, rejected or not. It records everything it receives
//! so tests can prove what the gateway sent, and it can inject faults
//! (503s, resets before or after processing, stalls, garbage bodies).
//!
//! # Layout
//! - [`window`]: the strict sliding-window counter and [`max_in_window`].
//! - [`record`]: [`Received`] and the ledger of arrivals.
//! - [`faults`]: [`Faults`], settable while the server runs.
//! - `gate`: the middleware every request passes: record, limit, faults, auth.
//! - `api`: the routes and the per-account order store.
//! - `reply`: RetailCRM's JSON answers and nginx's 503 page.
//! - `server`: the accept loop, which can reset a connection on demand.
//!
//! # Order of checks for one request
//! 1. Record the arrival and count it in its window (always, even if rejected).
//! 2. Read the whole body and attach it to the record.
//! 3. Over the limit → nginx-style 503 HTML. Faults are not consumed.
//! 4. Faults before processing: reset, then `fail_next`, then random 503, then stall.
//! 5. Auth for `/api/...`: 403 JSON when the key is missing or unknown.
//! 6. Route and process.
//! 7. Faults after processing: reset, then garbage body.
//! 8. Configured latency, then answer.
//!
//! The simulator never talks to the real CRM and never logs keys or bodies.

mod api;
pub mod faults;
mod gate;
pub mod record;
mod reply;
mod server;
pub mod window;

#[cfg(test)]
mod tests;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use crate::classify::Class;
pub use faults::Faults;
pub use record::Received;
pub use window::max_in_window;

use api::Store;
use record::Ledger;

/// How a simulator behaves: its accounts, limits, data and latency.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The accounts; their keys are the only valid API keys.
    pub accounts: Vec<SimAccount>,
    /// Allowed general requests per source IP per window (RetailCRM: 10).
    pub general_per_second: u32,
    /// Allowed telephony requests per source IP per window (RetailCRM: 40).
    pub telephony_per_second: u32,
    /// Length of the sliding window (RetailCRM: one second).
    pub window: Duration,
    /// Orders pre-seeded in every account for `GET /api/v5/orders`.
    pub total_orders: u32,
    /// Uniform random latency `[min, max]` added before every answer.
    pub latency: (Duration, Duration),
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            accounts: vec![SimAccount {
                name: "demo".into(),
                api_key: "demo-crm-key".into(),
                sites: vec!["main".into()],
            }],
            general_per_second: 10,
            telephony_per_second: 40,
            window: Duration::from_secs(1),
            total_orders: 237,
            latency: (Duration::ZERO, Duration::ZERO),
        }
    }
}

/// One simulated CRM account.
#[derive(Clone, PartialEq, Eq)]
pub struct SimAccount {
    /// Name used by [`Simulator::orders_created`].
    pub name: String,
    /// The API key that authenticates as this account.
    pub api_key: String,
    /// Store codes the key can reach; the first one is the default site.
    pub sites: Vec<String>,
}

impl std::fmt::Debug for SimAccount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The key is a secret even here: debug output ends up in CI logs.
        f.debug_struct("SimAccount")
            .field("name", &self.name)
            .field("api_key", &"<redacted>")
            .field("sites", &self.sites)
            .finish()
    }
}

/// A running (or ready to run) simulator. Cheap to clone: all clones share state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

/// State shared by the server tasks and every handle.
struct Inner {
    accounts: Vec<SimAccount>,
    window: Duration,
    total_orders: u32,
    general_limit: AtomicU32,
    telephony_limit: AtomicU32,
    latency: Mutex<(Duration, Duration)>,
    faults: Faults,
    ledger: Mutex<Ledger>,
    store: Store,
    addr: OnceLock<SocketAddr>,
    /// Stops a server started by [`Simulator::spawn`].
    shutdown: CancellationToken,
}

impl Simulator {
    /// Builds a simulator that is not serving yet; see [`Simulator::serve`].
    pub fn new(cfg: SimConfig) -> Self {
        let store = Store::new(cfg.accounts.len());
        Simulator {
            inner: Arc::new(Inner {
                accounts: cfg.accounts,
                window: cfg.window,
                total_orders: cfg.total_orders,
                general_limit: AtomicU32::new(cfg.general_per_second),
                telephony_limit: AtomicU32::new(cfg.telephony_per_second),
                latency: Mutex::new(cfg.latency),
                faults: Faults::default(),
                ledger: Mutex::new(Ledger::default()),
                store,
                addr: OnceLock::new(),
                shutdown: CancellationToken::new(),
            }),
        }
    }

    /// Binds `addr` (e.g. `127.0.0.1:0`), spawns the server on the current
    /// tokio runtime and returns at once. It runs until [`Simulator::shutdown`]
    /// or until the runtime ends.
    pub async fn spawn(cfg: SimConfig, addr: SocketAddr) -> std::io::Result<Simulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let sim = Simulator::new(cfg);
        // Set before spawning so `addr()` works as soon as we return.
        let _ = sim.inner.addr.set(listener.local_addr()?);
        let stop = sim.inner.shutdown.clone().cancelled_owned();
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
            let _ = self.inner.addr.set(addr);
        }
        async move {
            bound?;
            server::run(self, listener, shutdown).await
        }
    }

    /// Stops a server started with [`Simulator::spawn`] (no-op for `serve`,
    /// whose caller owns the shutdown future).
    pub fn shutdown(&self) {
        self.inner.shutdown.cancel();
    }

    /// The bound address.
    ///
    /// # Panics
    /// If called before [`Simulator::spawn`] returned or [`Simulator::serve`] started.
    pub fn addr(&self) -> SocketAddr {
        *self
            .inner
            .addr
            .get()
            .expect("Simulator::addr called before spawn/serve bound a listener")
    }

    /// `http://IP:PORT` of the bound address, without a trailing slash.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr())
    }

    /// Everything received, in arrival order, including rejected requests.
    pub fn records(&self) -> Vec<Received> {
        lock(&self.inner.ledger).records()
    }

    /// Forgets the records (window counters are kept: the server still remembers).
    pub fn clear_records(&self) {
        lock(&self.inner.ledger).clear_records();
    }

    /// Fault injection, settable while running.
    pub fn faults(&self) -> &Faults {
        &self.inner.faults
    }

    /// Changes the per-window limits; takes effect for the next arrival.
    pub fn set_limits(&self, general: u32, telephony: u32) {
        self.inner.general_limit.store(general, Ordering::Relaxed);
        self.inner
            .telephony_limit
            .store(telephony, Ordering::Relaxed);
    }

    /// Changes the uniform random latency added before every answer.
    pub fn set_latency(&self, min: Duration, max: Duration) {
        *lock(&self.inner.latency) = (min, max);
    }

    /// Orders created through `orders/create` in the named account, in order.
    /// Empty for an unknown account name.
    pub fn orders_created(&self, account: &str) -> Vec<serde_json::Value> {
        match self.inner.accounts.iter().position(|a| a.name == account) {
            Some(idx) => self.inner.store.created(idx),
            None => Vec::new(),
        }
    }

    fn limit(&self, class: Class) -> u32 {
        match class {
            Class::General => self.inner.general_limit.load(Ordering::Relaxed),
            Class::Telephony => self.inner.telephony_limit.load(Ordering::Relaxed),
        }
    }
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Keys stay out of debug output.
        f.debug_struct("Simulator")
            .field("addr", &self.inner.addr.get())
            .field("accounts", &self.inner.accounts.len())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, ignoring poisoning: a panicked test thread must not hide
/// the records from the assertions that explain it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
