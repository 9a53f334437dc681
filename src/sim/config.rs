//! How a simulator is set up: [`SimConfig`] and its [`SimAccount`]s.
//!
//! Plain data with RetailCRM's documented defaults; it never logs or prints
//! an account's key.

use std::time::Duration;

use super::limiter::LimiterKind;

/// How a simulator behaves: its accounts, limits, data and latency.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The accounts; their keys are the only valid API keys.
    pub accounts: Vec<SimAccount>,
    /// Allowed general requests per source IP per window (RetailCRM: 10).
    pub general_per_second: u32,
    /// Allowed telephony requests per source IP per window (RetailCRM: 40).
    pub telephony_per_second: u32,
    /// Length of the limiter's window (RetailCRM: one second).
    pub window: Duration,
    /// How arrivals over the limit are judged (see [`LimiterKind`]). The
    /// default here is `Strict`, the worst case, which the gateway's own
    /// window-bound tests are written against; `crmgate sim` defaults to
    /// `leaky`, the most likely real one.
    pub limiter: LimiterKind,
    /// Orders pre-seeded in every account for `GET /api/v5/orders`.
    pub total_orders: u32,
    /// Uniform random latency `[min, max]` added before every answer.
    pub latency: (Duration, Duration),
    /// Serve HTTPS with a certificate generated at start-up; `None`: plain HTTP.
    pub tls: Option<SimTls>,
    /// One network round trip. Each new connection waits this long before
    /// its first byte is read (the TCP handshake), and each request half
    /// before it arrives and half before its answer leaves.
    pub rtt: Duration,
    /// Added before each TLS handshake (its round trip and crypto on a real
    /// link); ignored without `tls`.
    pub handshake: Duration,
}

/// How the simulator speaks TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SimTls {
    /// Offer HTTP/2 through ALPN (`h2`, then `http/1.1`); otherwise `http/1.1` only.
    pub http2: bool,
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
            limiter: LimiterKind::Strict,
            total_orders: 237,
            latency: (Duration::ZERO, Duration::ZERO),
            tls: None,
            rtt: Duration::ZERO,
            handshake: Duration::ZERO,
        }
    }
}

/// One simulated CRM account.
#[derive(Clone, PartialEq, Eq)]
pub struct SimAccount {
    /// Name used by [`super::Simulator::orders_created`].
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
