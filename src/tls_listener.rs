//! The HTTPS API listener's certificate: read from PEM files (through the
//! config, so a reload brings a renewed pair to the next handshake) or
//! generated once at start-up for the loopback names, with its CA written
//! where `server.tls_ca_out` says so that clients which verify can trust
//! it. Also the TLS handshake of one connection and the protocol ALPN chose.
//!
//! PHP's RetailCRM modules refuse any URL without `https://`, and switch
//! certificate checks off; so a local HTTPS port is what lets them use
//! crmgate unchanged. The private keys stay in memory: never written,
//! never logged; only the CA certificate (public) leaves this module.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio::net::TcpStream;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::{server_config, TlsCert, GENERATED_NAMES};

/// A certificate generated at start-up: the server config serving it and
/// its CA certificate (PEM).
pub struct Generated {
    /// What the listener serves with.
    pub server: Arc<ServerConfig>,
    /// The CA that signed it, PEM: what clients that verify must trust.
    pub ca_pem: String,
}

/// Generates a throwaway CA and a server certificate signed by it for
/// `localhost`, `127.0.0.1`, `::1` and `extra` names (DNS names or IPs).
pub fn generate(extra: &[String]) -> Result<Generated, String> {
    let err = |e: rcgen::Error| format!("cannot generate the HTTPS certificate: {e}");
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name.push(
        DnType::CommonName,
        "crmgate local CA (generated at start-up)",
    );
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    for name in GENERATED_NAMES
        .iter()
        .copied()
        .chain(extra.iter().map(String::as_str))
    {
        let san = match name.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(name.try_into().map_err(err)?),
        };
        leaf.subject_alt_names.push(san);
    }
    leaf.distinguished_name.push(DnType::CommonName, "crmgate");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
    let server = server_config(vec![leaf_cert.der().clone()], key)
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    Ok(Generated {
        server,
        ca_pem: ca_cert.pem(),
    })
}

/// Writes the CA certificate to `path` (replacing the file atomically).
pub fn write_ca(path: &Path, ca_pem: &str) -> Result<(), String> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, ca_pem)
        .and_then(|()| std::fs::rename(&tmp, path))
        .map_err(|e| format!("cannot write server.tls_ca_out {}: {e}", path.display()))
}

/// The acceptor in force for a new connection: the files' config from the
/// current snapshot (so a reload reaches the next handshake), else the
/// certificate generated at start-up.
pub fn acceptor(cert: Option<&TlsCert>, generated: Option<&Generated>) -> Option<TlsAcceptor> {
    match cert {
        Some(TlsCert::Files(f)) => Some(TlsAcceptor::from(f.server.clone())),
        _ => generated.map(|g| TlsAcceptor::from(g.server.clone())),
    }
}

/// Performs the server side of the handshake within `timeout`; returns the
/// stream and whether the client chose HTTP/2.
pub async fn handshake(
    acceptor: TlsAcceptor,
    tcp: TcpStream,
    timeout: Duration,
) -> Option<(TlsStream<TcpStream>, bool)> {
    match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
        Ok(Ok(stream)) => {
            let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
            Some((stream, h2))
        }
        Ok(Err(err)) => {
            tracing::debug!(%err, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::debug!("TLS handshake timed out");
            None
        }
    }
}
