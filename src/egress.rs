//! Outbound IPs: one pooled HTTP client per source address and worker.
//!
//! Each configured egress IP gets its own client (hyper-util's pooled
//! client over hyper-rustls) whose connector binds that address, so its
//! keep-alive pool and its budget always leave from the same address. With
//! no egress IPs there is one client on the OS default route. Each worker
//! runtime has its own set of clients (its *lane*, see [`Clients`]), so a
//! connection is only ever used by the thread that drives it; this module
//! never decides when or from which IP a request leaves (the scheduler
//! does), only on which socket. Nothing here reads proxy environment
//! variables (a proxy would hide which IP the CRM sees), and nothing
//! follows redirects (the caller answers them). A send
//! is one `Client::request`: no middleware stack, redirect policy or URL
//! conversion on the request path.
//!
//! Every connection a client opens for a request is reported to the
//! scheduler (start and end), because a request that waits for a new
//! connection reaches the CRM later than its slot said: the budget accounts
//! for that.
//!
//! Warm connections: each worker's egress keeps one connection per CRM
//! origin open ahead of need ([`keep_warm`]), so the first request after
//! start-up, a reload or a quiet spell does not pay the TCP and TLS
//! handshakes inside its slot; a worker whose own is gone takes another
//! worker's. A spare is a connect, never a request: the CRM counts nothing,
//! and the scheduler is not told (no request waits on it). It is handed to
//! the pool the first time the pool needs a new connection to that origin,
//! and replaced after [`SPARE_TTL`] unused.
//!
//! TLS is rustls (ring) with the public web roots compiled in (no system
//! store: the container image has none), plus the roots of
//! `upstream.ca_file` when set. Clients offer HTTP/2 and HTTP/1.1 through
//! ALPN and use what the CRM picks; plain `http://` is HTTP/1.1.
//!
//! The connect timeout and the trusted roots are fixed into a client when
//! it is built, so a reload that changes them builds a whole new set with
//! [`build`] (same IPs, same scheduler hooks) and the gateway swaps it in; a
//! client is never mutated. The wait for an answer and between its chunks
//! is timed by the caller (`forward`), from the config of each send.

use std::cell::Cell;
use std::collections::HashMap;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper::Uri;
use hyper_rustls::{HttpsConnector, MaybeHttpsStream};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use prometheus::IntCounter;
use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_rustls::rustls;
use tower::{Service, ServiceExt};

use crate::config::Config;
use crate::scheduler::Scheduler;

/// How long an unused pooled connection is kept open.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// How long a warm connection waits for its first request before it is
/// replaced: well under the 60 s after which nginx closes a connection
/// that has sent nothing (`client_header_timeout`).
pub const SPARE_TTL: Duration = Duration::from_secs(30);

/// How often the keeper looks at its spares (and retries a failed one).
const KEEPER_ROUND: Duration = Duration::from_secs(5);

/// The longest a warm connect (TCP and TLS) may take before it is dropped.
const WARM_CONNECT_LIMIT: Duration = Duration::from_secs(10);

/// The connector of an egress: TCP bound to its address, TLS when the URL
/// says `https`, a warm spare when there is one, every other connect
/// reported to the scheduler.
pub type Connector = Watched;

/// What the connector hands the pool: plain TCP or TLS over it.
type Conn = MaybeHttpsStream<TokioIo<TcpStream>>;

/// The TCP and TLS part of a connector, without the scheduler's reports.
type Dial = HttpsConnector<HttpConnector>;

/// An egress's pooled client. Requests carry their whole body.
pub type Client = hyper_util::client::legacy::Client<Connector, Full<Bytes>>;

/// Why the outbound clients could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// rustls refused the TLS set-up (a root certificate of
    /// `upstream.ca_file`, or the protocol versions).
    #[error("TLS set-up: {0}")]
    Tls(#[from] rustls::Error),
}

/// One way out.
#[derive(Clone)]
pub struct Egress {
    /// Source address, or `None` for the OS default.
    pub ip: Option<IpAddr>,
    /// Metric and log label: the IP, or `default`.
    pub label: String,
    /// Pooled client bound to `ip`.
    pub client: Client,
    /// Opens this egress's warm connections (see [`keep_warm`]).
    warmer: Warmer,
}

impl std::fmt::Debug for Egress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Egress")
            .field("ip", &self.ip)
            .field("label", &self.label)
            .finish_non_exhaustive()
    }
}

thread_local! {
    /// The worker this thread runs, once [`Clients::enter_worker`] said so.
    static LANE: Cell<Option<usize>> = const { Cell::new(None) };
}

/// Where warm connections are read from: the CRM origins in force.
pub type Origins = Arc<dyn Fn() -> Vec<Uri> + Send + Sync>;

/// The egress clients in force, indexed like the scheduler's budgets: one
/// set (a *lane*) per worker runtime and one for every other thread (the
/// control runtime, tests, the CLI).
///
/// Each worker sends on its own lane's pools, so a connection's I/O, its
/// hyper task and the request that uses it live on one thread: a send never
/// wakes another thread (a pool shared by the workers woke the thread that
/// drove the connection, and that thread woke the sender back). nginx keeps
/// per-worker upstream pools for the same reason. The budgets stay
/// process-wide: lanes share the scheduler, which decides when and from
/// which IP; a lane only decides which socket.
///
/// Replaced as a whole when a reload changes client settings (timeouts,
/// trusted roots); a client in use is never mutated.
pub struct Clients {
    current: ArcSwap<Vec<Vec<Arc<Egress>>>>,
    /// Each worker's runtime, once the worker has entered: its lane's warm
    /// connections are opened there (a socket is driven by the runtime it
    /// was opened on).
    runtimes: Mutex<Vec<Option<Handle>>>,
    origins: Origins,
}

impl Clients {
    /// `lanes` in force: one per worker, then the one for every other
    /// thread (at least that one). Warm connections of `origins` are kept
    /// for each worker's lane once the worker enters.
    pub fn new(lanes: Vec<Vec<Egress>>, origins: Origins) -> Clients {
        assert!(!lanes.is_empty(), "the lane of non-worker threads");
        let workers = lanes.len() - 1;
        Clients {
            current: ArcSwap::from_pointee(shared(lanes)),
            runtimes: Mutex::new(vec![None; workers]),
            origins,
        }
    }

    /// Marks the calling thread as worker `worker`'s, whose sends use its
    /// lane from now on, and starts that lane's warm connections on the
    /// current runtime (the worker's). Call once, on the worker's thread,
    /// inside its runtime.
    pub fn enter_worker(&self, worker: usize) {
        LANE.with(|lane| lane.set(Some(worker)));
        let runtime = tokio::runtime::Handle::current();
        let mut runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(slot) = runtimes.get_mut(worker) {
            // Under the lock a reload takes to swap lanes, so the lane read
            // here is warmed here or by that reload, never by neither.
            if let Some(lane) = self.current.load().get(worker) {
                keep_warm(&runtime, lane, &self.origins);
            }
            *slot = Some(runtime);
        }
    }

    /// Egress `i` of the calling thread's lane, as it is now (the
    /// scheduler's permit names `i`). Take it per send: a request keeps the
    /// client it sent on until its answer is streamed, even if a reload
    /// replaces the clients meanwhile.
    pub fn get(&self, i: usize) -> Arc<Egress> {
        let lanes = self.current.load();
        let other = lanes.len() - 1;
        let lane = LANE.with(Cell::get).filter(|&w| w < other).unwrap_or(other);
        lanes[lane][i].clone()
    }

    /// How many worker lanes there are (a reload builds as many).
    pub fn workers(&self) -> usize {
        self.current.load().len() - 1
    }

    /// Every egress as it is now, in budget order (the non-worker lane's:
    /// every lane has the same IPs and labels).
    pub fn all(&self) -> Vec<Arc<Egress>> {
        self.current.load().last().cloned().unwrap_or_default()
    }

    /// Puts new lanes in force (as many as before) and starts the warm
    /// connections of every entered worker's new lane on its runtime; the
    /// old lanes' keepers end with them. Only a reload calls this, under
    /// its lock.
    pub(crate) fn replace(&self, lanes: Vec<Vec<Egress>>) {
        let runtimes = self.runtimes.lock().unwrap_or_else(|p| p.into_inner());
        let lanes = shared(lanes);
        for (runtime, lane) in runtimes.iter().zip(&lanes) {
            if let Some(runtime) = runtime {
                keep_warm(runtime, lane, &self.origins);
            }
        }
        self.current.store(Arc::new(lanes));
    }
}

fn shared(lanes: Vec<Vec<Egress>>) -> Vec<Vec<Arc<Egress>>> {
    lanes
        .into_iter()
        .map(|lane| lane.into_iter().map(Arc::new).collect())
        .collect()
}

/// Reports connection set-up on one egress to the scheduler.
#[derive(Clone)]
struct ConnectWatch {
    egress: usize,
    scheduler: Scheduler,
    opened: IntCounter,
}

/// A connector, watched: it hands over a warm spare when it has one, and
/// every connect it makes is reported.
#[derive(Clone)]
pub struct Watched {
    inner: Dial,
    watch: ConnectWatch,
    /// This lane's warm connections.
    spares: Arc<Spares>,
    /// The other lanes' for the same egress, taken when this lane's is
    /// gone: over HTTP/1.1 a lane may need a second connection while its
    /// own spare is still being replaced, and a connect in a slot costs
    /// the budget (at 60 ms RTT, a third connection on one IP cost 0.006
    /// of the whole run's utilisation). A borrowed socket stays driven by
    /// the runtime that opened it: a wake-up across threads for its I/O,
    /// never a wrong answer.
    others: Vec<Weak<Spares>>,
}

/// One egress's warm connections, one per CRM origin (`scheme://host:port`),
/// each with the instant it opened.
#[derive(Default)]
struct Spares {
    ready: Mutex<HashMap<String, (Conn, Instant)>>,
    /// A spare was taken: the keeper opens the next one at once.
    taken: Notify,
}

impl Spares {
    /// The spare for `origin`, if it is young enough and still open.
    fn take(&self, origin: &str) -> Option<Conn> {
        let (conn, opened) = self
            .ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(origin)?;
        self.taken.notify_one();
        (opened.elapsed() < SPARE_TTL && still_open(&conn)).then_some(conn)
    }

    /// Whether `origin` needs a new spare: none, or one that will age out
    /// before the keeper's next round.
    fn needs(&self, origin: &str) -> bool {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(origin)
            .is_none_or(|(_, opened)| opened.elapsed() + KEEPER_ROUND >= SPARE_TTL)
    }

    fn put(&self, origin: String, conn: Conn) {
        self.ready
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(origin, (conn, Instant::now()));
    }
}

/// Whether the peer has not closed `conn`: the socket is not at its end
/// (bytes waiting, such as TLS 1.3 session tickets, are fine).
fn still_open(conn: &Conn) -> bool {
    let tcp: &TcpStream = match conn {
        MaybeHttpsStream::Http(io) => io.inner(),
        MaybeHttpsStream::Https(io) => io.inner().get_ref().0.inner().inner(),
    };
    let mut byte = [MaybeUninit::<u8>::uninit(); 1];
    match socket2::SockRef::from(tcp).peek(&mut byte) {
        Ok(n) => n > 0,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    }
}

/// The origin a connection serves, as the spares are keyed.
fn origin_of(uri: &Uri) -> String {
    let scheme = uri.scheme_str().unwrap_or("http");
    let host = uri.host().unwrap_or("");
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    format!("{scheme}://{host}:{port}")
}

/// Opens one egress's warm connections: a clone of its connector's dialer
/// (no scheduler reports) and a weak hold on its spares, so the keeper ends
/// once the client it serves is gone.
#[derive(Clone)]
struct Warmer {
    dial: Dial,
    spares: Weak<Spares>,
    label: String,
    opened: IntCounter,
}

impl Warmer {
    /// Keeps one spare per origin of `origins()` until the spares are
    /// dropped (the client was replaced by a reload, or the gateway ended).
    async fn run(mut self, origins: Origins) {
        loop {
            let Some(spares) = self.spares.upgrade() else {
                return;
            };
            for uri in origins() {
                let origin = origin_of(&uri);
                if !spares.needs(&origin) {
                    continue;
                }
                let dial = async { self.dial.ready().await?.call(uri).await };
                match tokio::time::timeout(WARM_CONNECT_LIMIT, dial).await {
                    Ok(Ok(conn)) => {
                        self.opened.inc();
                        spares.put(origin, conn);
                    }
                    // The next round tries again; a request meanwhile
                    // connects as it would without warm connections.
                    Ok(Err(e)) => {
                        tracing::debug!(egress = %self.label, error = %e, "warm connection failed")
                    }
                    Err(_) => tracing::debug!(egress = %self.label, "warm connection timed out"),
                }
            }
            tokio::select! {
                () = spares.taken.notified() => {}
                () = tokio::time::sleep(KEEPER_ROUND) => {}
            }
        }
    }
}

/// Keeps one warm connection per CRM origin of `origins()` (read each
/// round, so a reload that adds a tenant is followed) on every egress of
/// `lane`, on `runtime`, until those clients are dropped.
fn keep_warm(runtime: &Handle, lane: &[Arc<Egress>], origins: &Origins) {
    for e in lane {
        runtime.spawn(e.warmer.clone().run(origins.clone()));
    }
}

/// Ends a connect's report when the connect finishes or is dropped.
struct Connecting {
    watch: ConnectWatch,
    started: Instant,
}

impl Drop for Connecting {
    fn drop(&mut self) {
        self.watch
            .scheduler
            .connect_finished(self.watch.egress, self.started);
    }
}

impl Service<Uri> for Watched {
    type Response = Conn;
    type Error = <Dial as Service<Uri>>::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Conn, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        let origin = origin_of(&dst);
        let spare = self.spares.take(&origin).or_else(|| {
            self.others
                .iter()
                .filter_map(Weak::upgrade)
                .find_map(|s| s.take(&origin))
        });
        if let Some(conn) = spare {
            // Open already: nothing for the request to wait on.
            return Box::pin(async move { Ok(conn) });
        }
        let started = self.watch.scheduler.connect_started(self.watch.egress);
        self.watch.opened.inc();
        let connecting = Connecting {
            watch: self.watch.clone(),
            started,
        };
        let connect = self.inner.call(dst);
        Box::pin(async move {
            let result = connect.await;
            drop(connecting);
            result
        })
    }
}

/// The TLS settings every client shares: the compiled-in web roots plus
/// `upstream.ca_file`'s, ring as the provider, TLS 1.2 and 1.3.
fn tls_config(config: &Config) -> Result<rustls::ClientConfig, BuildError> {
    let mut roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    if let Some(ca) = &config.upstream.ca {
        // Checked when the config was validated (`config::trust`).
        for der in &ca.certs {
            roots.add(der.clone())?;
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Builds the lanes of [`Clients`]: one per worker of `workers`, then the
/// one of every other thread. Each holds one client per configured egress
/// IP (one in all when none are), reporting connection set-up to
/// `scheduler` and counting it in `opened`, and warm connections in
/// `warmed` (both labelled by egress, summed over lanes). A worker's warm
/// connections start when it enters ([`Clients::enter_worker`]).
pub fn build(
    config: &Config,
    workers: usize,
    scheduler: &Scheduler,
    opened: &prometheus::IntCounterVec,
    warmed: &prometheus::IntCounterVec,
) -> Result<Vec<Vec<Egress>>, BuildError> {
    let tls = tls_config(config)?;
    let ips = egress_ips(config);
    // Every lane's spares, by egress then lane: a lane takes its own first,
    // then another lane's (see `Watched::call`).
    let spares: Vec<Vec<Arc<Spares>>> = ips
        .iter()
        .map(|_| (0..=workers).map(|_| Arc::default()).collect())
        .collect();
    Ok((0..=workers)
        .map(|lane| build_lane(config, &tls, &ips, lane, &spares, scheduler, opened, warmed))
        .collect())
}

/// The configured egress IPs, or the OS default alone.
fn egress_ips(config: &Config) -> Vec<Option<IpAddr>> {
    if config.upstream.egress_ips.is_empty() {
        vec![None]
    } else {
        config
            .upstream
            .egress_ips
            .iter()
            .copied()
            .map(Some)
            .collect()
    }
}

/// Lane `lane` of [`build`]: one client per IP of `ips`, with its spares
/// from `spares` (and the other lanes' to borrow).
#[allow(clippy::too_many_arguments)] // One private step of `build`.
fn build_lane(
    config: &Config,
    tls: &rustls::ClientConfig,
    ips: &[Option<IpAddr>],
    lane: usize,
    spares: &[Vec<Arc<Spares>>],
    scheduler: &Scheduler,
    opened: &prometheus::IntCounterVec,
    warmed: &prometheus::IntCounterVec,
) -> Vec<Egress> {
    ips.iter()
        .copied()
        .enumerate()
        .map(|(egress, ip)| {
            let label = ip.map_or_else(|| "default".to_string(), |ip| ip.to_string());
            let mut tcp = HttpConnector::new();
            tcp.enforce_http(false);
            tcp.set_local_address(ip);
            tcp.set_connect_timeout(Some(config.upstream.connect_timeout));
            tcp.set_nodelay(true);
            let https = hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(tls.clone())
                .https_or_http()
                .enable_all_versions()
                .wrap_connector(tcp);
            let own = spares[egress][lane].clone();
            let others = spares[egress]
                .iter()
                .enumerate()
                .filter(|(l, _)| *l != lane)
                .map(|(_, s)| Arc::downgrade(s))
                .collect();
            let warmer = Warmer {
                dial: https.clone(),
                spares: Arc::downgrade(&own),
                label: label.clone(),
                opened: warmed.with_label_values(&[&label]),
            };
            let connector = Watched {
                inner: https,
                watch: ConnectWatch {
                    egress,
                    scheduler: scheduler.clone(),
                    opened: opened.with_label_values(&[&label]),
                },
                spares: own,
                others,
            };
            let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector);
            Egress {
                ip,
                label,
                client,
                warmer,
            }
        })
        .collect()
}
