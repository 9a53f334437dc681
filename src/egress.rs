//! Outbound IPs: one pooled HTTP client per source address.
//!
//! Each configured egress IP gets its own reqwest client bound with
//! `local_address`, so its keep-alive pool and its budget always leave from
//! the same address. With no egress IPs there is one client on the OS
//! default route. Clients ignore proxy environment variables (a proxy would
//! hide which IP the CRM sees) and never follow redirects (the caller does).
//!
//! Every connection a client opens is reported to the scheduler (start and
//! end), because a request that waits for a new connection reaches the CRM
//! later than its slot said: the budget accounts for that.
//!
//! TLS is rustls with the public web roots compiled in (no system store: the
//! container image has none), plus the roots of `upstream.ca_file` when set.
//! Clients offer HTTP/2 and HTTP/1.1 through ALPN and use what the CRM picks.
//!
//! The timeouts and the trusted roots are fixed into a client when it is
//! built, so a reload that changes them builds a whole new set with [`build`]
//! (same IPs, same scheduler hooks) and the gateway swaps it in; a client is
//! never mutated.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use arc_swap::ArcSwap;
use prometheus::IntCounter;
use tokio::time::Instant;

use crate::config::Config;
use crate::scheduler::Scheduler;

/// How much longer reqwest's own read timer runs than `request_timeout`, so
/// the caller's timer decides a wait for headers (504, retried only if safe).
const READ_TIMEOUT_MARGIN: Duration = Duration::from_millis(250);

/// One way out.
#[derive(Debug, Clone)]
pub struct Egress {
    /// Source address, or `None` for the OS default.
    pub ip: Option<IpAddr>,
    /// Metric and log label: the IP, or `default`.
    pub label: String,
    /// Pooled client bound to `ip`.
    pub client: reqwest::Client,
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

/// Reports connection set-up on one egress to the scheduler (a tower layer
/// around reqwest's connector).
#[derive(Clone)]
struct ConnectWatch {
    egress: usize,
    scheduler: Scheduler,
    opened: IntCounter,
}

impl<S> tower::Layer<S> for ConnectWatch {
    type Service = Watched<S>;

    fn layer(&self, inner: S) -> Watched<S> {
        Watched {
            inner,
            watch: self.clone(),
        }
    }
}

/// The connector, watched.
#[derive(Clone)]
struct Watched<S> {
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

/// Builds one client per configured egress IP (one in all when none are),
/// reporting connection set-up to `scheduler` and counting it in `opened`
/// (labelled by egress).
pub fn build(
    config: &Config,
    scheduler: &Scheduler,
    opened: &prometheus::IntCounterVec,
) -> Result<Vec<Egress>, reqwest::Error> {
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
    // Checked when the config was validated, so adding them cannot fail here.
    let extra_roots: Vec<reqwest::Certificate> = match &config.upstream.ca {
        Some(ca) => ca
            .certs
            .iter()
            .map(|der| reqwest::Certificate::from_der(der))
            .collect::<Result<_, _>>()?,
        None => Vec::new(),
    };
    ips.into_iter()
        .enumerate()
        .map(|(egress, ip)| {
            let label = ip.map_or_else(|| "default".to_string(), |ip| ip.to_string());
            let watch = ConnectWatch {
                egress,
                scheduler: scheduler.clone(),
                opened: opened.with_label_values(&[&label]),
            };
            let mut builder = reqwest::Client::builder();
            for root in &extra_roots {
                builder = builder.add_root_certificate(root.clone());
            }
            let client = builder
                .connector_layer(watch)
                .local_address(ip)
                .connect_timeout(config.upstream.connect_timeout)
                // Between body chunks; the wait for headers is timed by the caller.
                // reqwest also runs this timer while waiting for headers, and
                // it starts first: without the margin it always beats the
                // caller's and a slow CRM shows up as 502 instead of 504.
                .read_timeout(config.upstream.request_timeout + READ_TIMEOUT_MARGIN)
                .pool_idle_timeout(Duration::from_secs(60))
                .tcp_nodelay(true)
                .no_proxy()
                .redirect(reqwest::redirect::Policy::none())
                .user_agent(concat!("crmgate/", env!("CARGO_PKG_VERSION")))
                .build()?;
            Ok(Egress { ip, label, client })
        })
        .collect()
}
