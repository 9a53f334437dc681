//! The simulator's HTTPS: a throwaway CA and a server certificate signed by
//! it, generated at start-up with `rcgen`, and the rustls acceptor that
//! serves them with HTTP/2 and HTTP/1.1 (or HTTP/1.1 only) through ALPN.
//!
//! The certificate names `localhost` and the loopback addresses tests and
//! benchmarks reach the simulator on, so a client that trusts the CA (the
//! gateway's `upstream.ca_file`) verifies it like a real CRM's. Only the CA
//! certificate leaves this module (as PEM, for the caller to write where it
//! likes); the private keys stay in memory and are never written or logged.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;

use super::config::SimTls;

/// How many of 127.0.0.1, 127.0.0.2, ... the certificate names.
const LOOPBACK_NAMES: u8 = 8;

/// What a TLS simulator serves with.
pub(crate) struct Material {
    /// The CA that signed the server certificate, PEM: what clients must trust.
    pub(crate) ca_pem: String,
    /// Performs the server side of each handshake.
    pub(crate) acceptor: TlsAcceptor,
}

/// Generates a CA and a server certificate for the loopback names, and the
/// acceptor that offers `h2` (when `tls.http2`) and `http/1.1`.
pub(crate) fn generate(tls: SimTls) -> Result<Material, String> {
    let err = |e: rcgen::Error| format!("cannot generate the simulator's certificate: {e}");

    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "crmgate simulator CA (throwaway)");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(err)?;
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = Issuer::new(ca, ca_key);

    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).map_err(err)?;
    leaf.subject_alt_names.extend(
        (1..=LOOPBACK_NAMES)
            .map(|n| SanType::IpAddress(IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))))
            .chain([SanType::IpAddress(IpAddr::V6(Ipv6Addr::LOCALHOST))]),
    );
    leaf.distinguished_name
        .push(DnType::CommonName, "crmgate simulator");
    leaf.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.use_authority_key_identifier_extension = true;
    let leaf_key = KeyPair::generate().map_err(err)?;
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).map_err(err)?;

    // The provider is named rather than taken from the process default, so
    // the simulator works whatever else in the process installed one.
    let mut config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("cannot set up TLS: {e}"))?
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf_cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der())),
        )
        .map_err(|e| format!("cannot set up TLS: {e}"))?;
    config.alpn_protocols = if tls.http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok(Material {
        ca_pem: ca_cert.pem(),
        acceptor: TlsAcceptor::from(Arc::new(config)),
    })
}
