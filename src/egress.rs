//! Outbound IPs: one pooled HTTP client per source address.
//!
//! Each configured egress IP gets its own client (hyper-util's pooled
//! client over hyper-rustls) whose connector binds that address, so its
//! keep-alive pool and its budget always leave from the same address. With
//! no egress IPs there is one client on the OS default route. Nothing here
//! reads proxy environment variables (a proxy would hide which IP the CRM
//! sees), and nothing follows redirects (the caller answers them). A send
//! is one `Client::request`: no middleware stack, redirect policy or URL
//! conversion on the request path.
//!
//! Every connection a client opens is reported to the scheduler (start and
//! end), because a request that waits for a new connection reaches the CRM
//! later than its slot said: the budget accounts for that.
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

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::Full;
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use prometheus::IntCounter;
use tokio::time::Instant;
use tokio_rustls::rustls;

use crate::config::Config;
use crate::scheduler::Scheduler;

/// How long an unused pooled connection is kept open.
const POOL_IDLE: Duration = Duration::from_secs(60);

/// The connector of an egress: TCP bound to its address, TLS when the URL
/// says `https`, every connect reported to the scheduler.
pub type Connector = Watched<HttpsConnector<HttpConnector>>;

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
#[derive(Debug, Clone)]
pub struct Egress {
    /// Source address, or `None` for the OS default.
    pub ip: Option<IpAddr>,
    /// Metric and log label: the IP, or `default`.
    pub label: String,
    /// Pooled client bound to `ip`.
    pub client: Client,
}

/// The egress clients in force, indexed like the scheduler's budgets.
/// Replaced as a whole when a reload changes client settings (timeouts,
/// trusted roots); a client in use is never mutated.
pub struct Clients {
    current: ArcSwap<Vec<Egress>>,
}

impl Clients {
    /// `clients` in force.
    pub fn new(clients: Vec<Egress>) -> Clients {
        Clients {
            current: ArcSwap::from_pointee(clients),
        }
    }

    /// Egress `i` as it is now (the scheduler's permit names `i`). Take it
    /// per send: a request keeps the client it sent on until its answer is
    /// streamed, even if a reload replaces the clients meanwhile.
    pub fn get(&self, i: usize) -> Egress {
        self.current.load()[i].clone()
    }

    /// Every egress as it is now, in budget order.
    pub fn all(&self) -> Arc<Vec<Egress>> {
        self.current.load_full()
    }

    /// Puts new clients in force. Only a reload calls this, under its lock.
    pub(crate) fn replace(&self, clients: Vec<Egress>) {
        self.current.store(Arc::new(clients));
    }
}

/// Reports connection set-up on one egress to the scheduler.
#[derive(Clone)]
struct ConnectWatch {
    egress: usize,
    scheduler: Scheduler,
    opened: IntCounter,
}

/// A connector, watched: every connect it makes is reported.
#[derive(Clone)]
pub struct Watched<S> {
    inner: S,
    watch: ConnectWatch,
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

impl<S, R> tower::Service<R> for Watched<S>
where
    S: tower::Service<R>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, dst: R) -> Self::Future {
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

/// Builds one client per configured egress IP (one in all when none are),
/// reporting connection set-up to `scheduler` and counting it in `opened`
/// (labelled by egress).
pub fn build(
    config: &Config,
    scheduler: &Scheduler,
    opened: &prometheus::IntCounterVec,
) -> Result<Vec<Egress>, BuildError> {
    let ips: Vec<Option<IpAddr>> = if config.upstream.egress_ips.is_empty() {
        vec![None]
    } else {
        config
            .upstream
            .egress_ips
            .iter()
            .copied()
            .map(Some)
            .collect()
    };
    let tls = tls_config(config)?;
    Ok(ips
        .into_iter()
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
            let connector = Watched {
                inner: https,
                watch: ConnectWatch {
                    egress,
                    scheduler: scheduler.clone(),
                    opened: opened.with_label_values(&[&label]),
                },
            };
            let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_idle_timeout(POOL_IDLE)
                .pool_timer(TokioTimer::new())
                .timer(TokioTimer::new())
                .build(connector);
            Egress { ip, label, client }
        })
        .collect())
}
