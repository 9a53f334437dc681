//! The HTTPS listener's settings (`server.tls_*`): where it listens and
//! where its certificate comes from — PEM files (read, checked and turned
//! into a rustls server config at validation, so `check` and every reload
//! see a broken pair), or one generated at start-up for the loopback names.
//! The private key is held in memory only, never printed (its `Debug`
//! shows the paths alone), never written.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::ServerConfig;

/// The names a generated certificate always holds.
pub const GENERATED_NAMES: [&str; 3] = ["localhost", "127.0.0.1", "::1"];

/// `server.tls_listen` and its certificate.
#[derive(Debug, Clone)]
pub struct TlsListen {
    /// The HTTPS listener's address.
    pub listen: SocketAddr,
    /// Where its certificate comes from.
    pub cert: TlsCert,
}

/// Where the HTTPS listener's certificate comes from.
#[derive(Debug, Clone)]
pub enum TlsCert {
    /// `server.tls_cert_file` + `server.tls_key_file`, re-read on reload.
    Files(Arc<CertFiles>),
    /// Generated at start-up (restart-only): [`GENERATED_NAMES`] plus
    /// `names` (`server.tls_names`); its CA written to `ca_out`
    /// (`server.tls_ca_out`) when set.
    Generated {
        /// Extra DNS names or IP addresses.
        names: Vec<String>,
        /// Where to write the CA certificate (PEM).
        ca_out: Option<PathBuf>,
    },
}

impl TlsCert {
    /// Where the certificate comes from, in words (no secrets), for `check`.
    pub fn describe(&self) -> String {
        match self {
            TlsCert::Files(f) => format!(
                "certificate from {} (key {})",
                f.cert_file.display(),
                f.key_file.display()
            ),
            TlsCert::Generated { names, ca_out } => {
                let all: Vec<&str> = GENERATED_NAMES
                    .iter()
                    .copied()
                    .chain(names.iter().map(String::as_str))
                    .collect();
                let ca = match ca_out {
                    Some(p) => format!("its CA written to {}", p.display()),
                    None => "its CA not written (set server.tls_ca_out)".into(),
                };
                format!(
                    "certificate generated at start-up for {}; {ca}",
                    all.join(", ")
                )
            }
        }
    }
}

/// A certificate chain and its key, read from PEM files, and the rustls
/// config serving them (HTTP/2 and HTTP/1.1 through ALPN).
pub struct CertFiles {
    /// The certificate chain's file.
    pub cert_file: PathBuf,
    /// The private key's file.
    pub key_file: PathBuf,
    /// What the listener serves with.
    pub server: Arc<ServerConfig>,
}

impl fmt::Debug for CertFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CertFiles")
            .field("cert_file", &self.cert_file)
            .field("key_file", &self.key_file)
            .finish_non_exhaustive()
    }
}

/// Reads both PEM files and builds the server config; the error says what
/// is wrong without quoting either file.
pub(super) fn read_cert_files(cert_file: &Path, key_file: &Path) -> Result<CertFiles, String> {
    let cert_bytes = std::fs::read(cert_file)
        .map_err(|e| format!("cannot read {}: {}", cert_file.display(), e.kind()))?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_bytes)
        .collect::<Result<_, _>>()
        .map_err(|_| format!("{} is not a PEM certificate chain", cert_file.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")",
            cert_file.display()
        ));
    }
    let key_bytes = std::fs::read(key_file)
        .map_err(|e| format!("cannot read {}: {}", key_file.display(), e.kind()))?;
    let key = PrivateKeyDer::from_pem_slice(&key_bytes)
        .map_err(|_| format!("{} holds no PEM private key", key_file.display()))?;
    let server = server_config(chain, key).map_err(|e| {
        format!(
            "{} and {} do not make a usable certificate ({e})",
            cert_file.display(),
            key_file.display()
        )
    })?;
    Ok(CertFiles {
        cert_file: cert_file.to_path_buf(),
        key_file: key_file.to_path_buf(),
        server,
    })
}

/// A rustls server config for `chain` and `key`, offering `h2` and
/// `http/1.1` through ALPN. The key must match the chain's first
/// certificate.
pub fn server_config(
    chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
) -> Result<Arc<ServerConfig>, String> {
    // The provider is named, as for the outgoing clients: nothing depends
    // on a process-wide default.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| e.to_string())?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
