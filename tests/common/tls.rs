//! The production path under test: a simulator that speaks HTTPS (its own
//! CA, ALPN, round-trip and handshake delays) and a gateway that trusts it
//! through `upstream.ca_file`, as it would trust a self-hosted CRM.
//!
//! Starts things and writes the CA file; it asserts nothing itself.

use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use crmgate::sim::{SimConfig, SimTls, Simulator};

use super::{config, config_text, isolated_sim, sim_config, spawn_sim, Gate, SimThread};

/// The simulator config of [`super::sim`] (accounts "acme" and "beta",
/// RetailCRM's limits), serving HTTPS; HTTP/2 is offered through ALPN when
/// `http2`, else HTTP/1.1 only.
pub fn tls_sim_config(http2: bool) -> SimConfig {
    SimConfig {
        tls: Some(SimTls { http2 }),
        ..sim_config()
    }
}

/// A running TLS simulator and its CA written to a file (removed on drop).
/// Derefs to the [`Simulator`].
pub struct TlsSim {
    /// The simulator.
    pub sim: Simulator,
    /// Its CA certificate, PEM: the gateway's `upstream.ca_file`.
    pub ca_file: PathBuf,
    _dir: tempfile::TempDir,
    /// Stops a simulator running on a thread of its own.
    _thread: Option<SimThread>,
}

impl Deref for TlsSim {
    type Target = Simulator;

    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl TlsSim {
    fn new(sim: Simulator, thread: Option<SimThread>) -> TlsSim {
        let dir = tempfile::tempdir().expect("temp dir");
        let ca_file = dir.path().join("sim-ca.pem");
        std::fs::write(&ca_file, sim.ca_pem().expect("a TLS simulator")).expect("CA written");
        TlsSim {
            sim,
            ca_file,
            _dir: dir,
            _thread: thread,
        }
    }

    /// Gateway config text for this simulator (the tenants of
    /// [`config_text`]) with `upstream.ca_file` set, merged into `extra`'s
    /// `[upstream]` table when it has one.
    pub fn config_text(&self, extra: &str) -> String {
        let ca = format!("ca_file = {:?}\n", self.ca_file.display().to_string());
        let extra = if extra.contains("[upstream]\n") {
            extra.replacen("[upstream]\n", &format!("[upstream]\n{ca}"), 1)
        } else {
            format!("[upstream]\n{ca}{extra}")
        };
        config_text(&self.sim, &extra)
    }
}

/// A TLS simulator on the test's runtime.
pub async fn tls_sim(cfg: SimConfig) -> TlsSim {
    TlsSim::new(spawn_sim(cfg).await, None)
}

/// A TLS simulator and a gateway that trusts it, with `extra` config.
pub async fn tls_setup(cfg: SimConfig, extra: &str) -> (TlsSim, Gate) {
    let sim = tls_sim(cfg).await;
    let gate = Gate::start(config(&sim.config_text(extra))).await;
    (sim, gate)
}

/// Like [`tls_setup`], but the simulator runs on a thread and runtime of its
/// own (see [`super::isolated_sim`]): for load tests whose verdict is the
/// simulator's arrival stamps. The gateway starts cold.
pub async fn tls_isolated_setup(cfg: SimConfig, extra: &str) -> (TlsSim, Gate) {
    let (sim, thread) = isolated_sim(cfg).await;
    let sim = TlsSim::new(sim, Some(thread));
    let gate = Gate::start(config(&sim.config_text(extra))).await;
    (sim, gate)
}

/// The RTT and handshake of a CRM "60 ms and one TLS handshake away".
pub const FAR: (Duration, Duration) = (Duration::from_millis(60), Duration::from_millis(60));
