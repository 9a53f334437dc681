//! Hot reload: re-read the config file, keep what only a restart can change,
//! and put the rest in force without dropping a queued request.
//!
//! A reload is all or nothing: the file is validated (`upstream.ca_file`
//! re-read) and, when the upstream connect timeout or trusted roots change, new
//! egress clients are built before anything is swapped; any failure leaves the old config and clients in force. Requests
//! already sent finish on the clients they were sent with; the next sends use
//! the new ones. This module never logs a key or the Redis URL: a refused
//! restart-only setting is named, its value is not shown.

use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

use super::Gateway;
use crate::config::{Config, ConfigError, TlsCert, TlsListen};
use crate::egress;
use crate::live::Snapshot;

/// A reload that was refused; the old config stays in force.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// There is no file to re-read (the gateway was started from memory).
    #[error("no config file to reload from")]
    NoFile,
    /// The new file is invalid.
    #[error("{0}")]
    Invalid(#[from] ConfigError),
    /// New outbound clients (for changed timeouts) could not be built.
    #[error("cannot set up outbound HTTP clients: {0}")]
    Clients(#[from] crate::egress::BuildError),
}

/// Where a gateway's reloads read from, and the lock that keeps two reloads
/// (SIGHUP and `POST /reload` at once) from interleaving.
#[derive(Debug)]
pub(crate) struct Reloader {
    path: Option<PathBuf>,
    one_at_a_time: Mutex<()>,
}

impl Reloader {
    /// Reloads will read `path` (none: reloads are refused).
    pub(crate) fn new(path: Option<PathBuf>) -> Reloader {
        Reloader {
            path,
            one_at_a_time: Mutex::new(()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        self.one_at_a_time.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl Gateway {
    /// Re-reads the config file and applies it, or keeps the old config and
    /// returns every problem. Counted in `crmgate_config_reloads_total`.
    /// Blocking (file I/O): call it off the async workers.
    pub fn reload(&self) -> Result<(), ReloadError> {
        let result = match &self.reloader.path {
            None => Err(ReloadError::NoFile),
            Some(path) => Config::load(path)
                .map_err(ReloadError::from)
                .and_then(|c| self.apply(c)),
        };
        let outcome = if result.is_ok() { "success" } else { "failure" };
        self.metrics
            .config_reloads
            .with_label_values(&[outcome])
            .inc();
        match &result {
            Ok(()) => {
                tracing::info!(checksum = %self.snapshot().config.checksum, "config reloaded")
            }
            Err(e) => {
                for line in e.to_string().lines() {
                    tracing::error!(
                        problem = line,
                        "config reload rejected; keeping the old config"
                    );
                }
            }
        }
        result
    }

    /// Puts a validated config in force. Settings that need a restart keep
    /// their old values and are logged by name. When the upstream timeouts or
    /// trusted roots change, the egress clients are rebuilt and swapped with
    /// the config.
    pub fn apply(&self, mut new: Config) -> Result<(), ReloadError> {
        let _one_at_a_time = self.reloader.lock();
        let old = self.snapshot();
        for setting in keep_restart_only(&old.config, &mut new) {
            tracing::warn!(
                setting,
                "this setting cannot change on reload; restart to use the new value"
            );
        }
        // Built before anything changes, so a failure leaves the old state whole.
        let clients = if clients_outdated(&old.config, &new) {
            Some(egress::build(
                &new,
                self.clients.workers(),
                &self.scheduler,
                &self.metrics.upstream_connections,
                &self.metrics.upstream_warm_connections,
            )?)
        } else {
            None
        };
        for w in &new.warnings {
            tracing::warn!("{w}");
        }
        if clients.is_some() {
            tracing::info!(
                connect_timeout = ?new.upstream.connect_timeout,
                ca_file = ?new.upstream.ca.as_ref().map(|ca| &ca.path),
                extra_roots = new.upstream.ca.as_ref().map_or(0, |ca| ca.certs.len()),
                "upstream connect timeout or trusted roots changed: new sends use new clients; requests in flight finish on the old ones"
            );
        }
        self.scheduler.reconfigure(&new);
        // A tenant the reload adds has its series from the first scrape on.
        let egress = self.egress_all();
        let labels: Vec<&str> = egress.iter().map(|e| e.label.as_str()).collect();
        self.metrics.init_series(&new, &labels);
        self.cache.reconfigure(&new);
        self.put_in_force(Snapshot::new(new), clients);
        Ok(())
    }
}

/// True when `new` sets something that is fixed into an egress client when
/// it is built, so the egress clients must be rebuilt to honour it.
/// (`request_timeout` is not: forward reads it from each send's snapshot.)
fn clients_outdated(old: &Config, new: &Config) -> bool {
    let (o, n) = (&old.upstream, &new.upstream);
    // `ca` compares the certificates, not just the path: a reload re-reads
    // the file, so a CA rotated in place is picked up too.
    o.connect_timeout != n.connect_timeout || o.ca != n.ca
}

/// Puts back in `new` every setting that only a restart may change, and
/// names the ones that differed. Listeners are bound once; egress IPs index
/// the budgets; scope, backend and Redis shape the scheduler's lanes and
/// its Redis connection, which are built once.
fn keep_restart_only(old: &Config, new: &mut Config) -> Vec<&'static str> {
    let mut kept = Vec::new();
    macro_rules! keep {
        ($name:literal, $($field:tt).+) => {
            if new.$($field).+ != old.$($field).+ {
                new.$($field).+ = old.$($field).+.clone();
                kept.push($name);
            }
        };
    }
    keep!("server.listen", server.listen);
    keep!("server.admin_listen", server.admin_listen);
    keep!("server.worker_threads", server.worker_threads);
    if keep_tls_listener(&old.server.tls, &mut new.server.tls) {
        kept.push("server.tls_listen / tls_names / tls_ca_out");
    }
    keep!("upstream.egress_ips", upstream.egress_ips);
    keep!("upstream.egress_id", upstream.egress_id);
    keep!("limits.scope", limits.scope);
    keep!("limits.backend", limits.backend);
    keep!("redis.url / sentinels / cluster_nodes", redis.topology);
    keep!("redis.password_env / password_file", redis.password);
    keep!("redis.ca_file", redis.ca);
    keep!("redis.key_prefix", redis.key_prefix);
    keep!("redis.timeout", redis.timeout);
    keep!("redis.expected_replicas", redis.expected_replicas);
    keep!("cache.shared", cache.shared);
    kept
}

/// The HTTPS listener is bound once and a generated certificate made once:
/// only new certificate files (re-read by every reload) take effect; any
/// other change to `server.tls_*` keeps the old setting. True if it did.
fn keep_tls_listener(old: &Option<TlsListen>, new: &mut Option<TlsListen>) -> bool {
    let same = match (old, &*new) {
        (None, None) => true,
        (Some(o), Some(n)) => {
            o.listen == n.listen
                && match (&o.cert, &n.cert) {
                    (TlsCert::Files(_), TlsCert::Files(_)) => true,
                    (
                        TlsCert::Generated { names, ca_out },
                        TlsCert::Generated {
                            names: n_names,
                            ca_out: n_ca,
                        },
                    ) => names == n_names && ca_out == n_ca,
                    _ => false,
                }
        }
        _ => false,
    };
    if !same {
        *new = old.clone();
    }
    !same
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn config(extra: &str) -> Config {
        let text = format!(
            "[server]\nlisten = \"127.0.0.1:8080\"\nadmin_listen = \"127.0.0.1:9090\"\n{extra}\n\
             [[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\n\
             api_key = \"real-key-0001\"\n"
        );
        Config::from_toml(&text, "test config", &|_| None).expect("valid test config")
    }

    #[test]
    fn restart_only_settings_keep_their_old_values_and_are_named() {
        let old = config("");
        let mut new = config(
            "[upstream]\negress_ips = [\"127.0.0.1\"]\nrequest_timeout = \"7s\"\n\
             [limits]\nscope = \"egress_ip_and_account\"\ngeneral_per_second = 5\n\
             [redis]\nkey_prefix = \"other:\"\n",
        );
        new.server.listen = "127.0.0.1:8081".parse().unwrap();
        new.server.worker_threads = std::num::NonZeroUsize::new(3);
        let kept = keep_restart_only(&old, &mut new);
        assert_eq!(
            kept,
            [
                "server.listen",
                "server.worker_threads",
                "upstream.egress_ips",
                "limits.scope",
                "redis.key_prefix"
            ]
        );
        assert_eq!(new.server.listen, old.server.listen);
        assert_eq!(new.server.worker_threads, None);
        assert_eq!(new.upstream.egress_ips, old.upstream.egress_ips);
        assert_eq!(new.limits.scope, old.limits.scope);
        assert_eq!(new.redis.key_prefix, old.redis.key_prefix);
        // Reloadable settings are left as the file says.
        assert_eq!(new.upstream.request_timeout, Duration::from_secs(7));
        assert_eq!(new.limits.general_per_second.get(), 5);
    }

    #[test]
    fn only_a_connect_timeout_change_outdates_the_clients() {
        let old = config("");
        assert!(!clients_outdated(
            &old,
            &config("[limits]\ngeneral_per_second = 3\n")
        ));
        // Read from each send's snapshot, not fixed into a client.
        assert!(!clients_outdated(
            &old,
            &config("[upstream]\nrequest_timeout = \"7s\"\n")
        ));
        assert!(clients_outdated(
            &old,
            &config("[upstream]\nconnect_timeout = \"1s\"\n")
        ));
    }

    #[test]
    fn a_changed_ca_file_outdates_the_clients_even_at_the_same_path() {
        fn ca_pem() -> String {
            let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            let key = rcgen::KeyPair::generate().unwrap();
            params.self_signed(&key).unwrap().pem()
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        let with_ca = || {
            config(&format!(
                "[upstream]\nca_file = {:?}\n",
                path.display().to_string()
            ))
        };
        std::fs::write(&path, ca_pem()).unwrap();
        let first = with_ca();
        assert!(
            !clients_outdated(&first, &with_ca()),
            "same file, same roots"
        );
        assert!(clients_outdated(&config(""), &first), "roots added");
        assert!(clients_outdated(&first, &config("")), "roots removed");
        // Rotated in place: same path, new certificate.
        std::fs::write(&path, ca_pem()).unwrap();
        assert!(clients_outdated(&first, &with_ca()));
    }
}
