//! Outbound IPs: one pooled HTTP client per source address.
//!
//! Each configured egress IP gets its own reqwest client bound with
//! `local_address`, so its keep-alive pool and its budget always leave from
//! the same address. With no egress IPs there is one client on the OS
//! default route. Clients ignore proxy environment variables (a proxy would
//! hide which IP the CRM sees) and never follow redirects (the caller does).

use std::net::IpAddr;
use std::time::Duration;

use crate::config::Config;

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

/// Builds one client per configured egress IP (one in all when none are).
pub fn build(config: &Config) -> Result<Vec<Egress>, reqwest::Error> {
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
    ips.into_iter()
        .map(|ip| {
            let client = reqwest::Client::builder()
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
            Ok(Egress {
                ip,
                label: ip.map_or_else(|| "default".to_string(), |ip| ip.to_string()),
                client,
            })
        })
        .collect()
}
