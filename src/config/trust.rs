//! What crmgate trusts on the way to the CRM: the extra root certificates of
//! `upstream.ca_file`, and the warning for a tenant whose real key would
//! travel in clear (`http://` to a host that is not loopback).
//!
//! The default roots are the public web roots compiled into crmgate
//! (the `webpki-roots` crate, as the egress clients use them), not the system store: the
//! container image has no CA certificates, and compiled-in roots make the
//! binary self-contained and the same everywhere. `ca_file` adds to them
//! (a self-hosted CRM, a corporate proxy that re-signs TLS, tests); it never
//! replaces them.
//!
//! Never puts a file's contents in a message: problems name the field, the
//! file's path and what is wrong with it, nothing read from it.

use std::fmt;
use std::path::{Path, PathBuf};

use tokio_rustls::rustls::pki_types::pem::{self, PemObject};
use tokio_rustls::rustls::pki_types::CertificateDer;
use tokio_rustls::rustls::RootCertStore;
use url::{Host, Url};

/// Root certificates read from `upstream.ca_file`, each one already accepted
/// as a trust anchor by the same rustls code the egress clients use.
#[derive(Clone, PartialEq, Eq)]
pub struct CaBundle {
    /// The file they were read from (shown by `check`).
    pub path: PathBuf,
    /// The certificates, DER-encoded, in file order.
    pub certs: Vec<CertificateDer<'static>>,
}

impl fmt::Debug for CaBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The certificates are public, but thousands of bytes of DER help nobody.
        f.debug_struct("CaBundle")
            .field("path", &self.path)
            .field("certs", &self.certs.len())
            .finish()
    }
}

/// Reads a PEM bundle. The error says what is wrong with the file at `path`
/// (the caller prefixes the field path), without quoting its contents.
pub(super) fn read_ca_file(path: &Path) -> Result<CaBundle, String> {
    let shown = path.display();
    let bytes = std::fs::read(path).map_err(|e| format!("cannot read {shown}: {e}"))?;
    let mut certs = Vec::new();
    for (n, item) in CertificateDer::pem_slice_iter(&bytes).enumerate() {
        match item {
            Ok(cert) => certs.push(cert),
            Err(e) => {
                return Err(format!(
                    "{shown} is not a PEM certificate bundle (section {}: {})",
                    n + 1,
                    pem_problem(&e)
                ))
            }
        }
    }
    if certs.is_empty() {
        return Err(format!(
            "{shown} holds no PEM certificate (\"-----BEGIN CERTIFICATE-----\")"
        ));
    }
    // The check the egress clients make when they are built (`egress`):
    // done here, a bad certificate is a `check` error, not a failed start.
    let mut store = RootCertStore::empty();
    for (n, cert) in certs.iter().enumerate() {
        store.add(cert.clone()).map_err(|e| {
            format!(
                "{shown}: certificate {} cannot be a trusted root ({e})",
                n + 1
            )
        })?;
    }
    Ok(CaBundle {
        path: path.to_path_buf(),
        certs,
    })
}

/// What is wrong with a PEM section, without the bytes that
/// `pem::Error`'s own `Display` would quote.
fn pem_problem(e: &pem::Error) -> &'static str {
    match e {
        pem::Error::MissingSectionEnd { .. } => "no END line",
        pem::Error::IllegalSectionStart { .. } => "malformed BEGIN line",
        pem::Error::Base64Decode(_) => "bad base64",
        pem::Error::SectionTooLarge => "section too large",
        _ => "unreadable",
    }
}

/// The warning for a tenant whose base URL is `http://` to a host that is
/// not loopback: its real key would cross the network in clear. `None` for
/// `https://` and for loopback (the simulator, a local TLS-terminating proxy).
pub(super) fn cleartext_warning(field: &str, tenant: &str, url: &Url) -> Option<String> {
    if url.scheme() != "http" || is_loopback(url) {
        return None;
    }
    let host = url.host_str().unwrap_or_default();
    Some(format!(
        "{field}: tenant {tenant:?} uses http:// to {host}, which is not a loopback address: \
         its real API key would travel in clear; use https://"
    ))
}

/// True for `localhost`, `*.localhost`, 127.0.0.0/8 and `::1`.
fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(Host::Ipv4(ip)) => ip.is_loopback(),
        Some(Host::Ipv6(ip)) => ip.is_loopback(),
        // `Url` lowercases domains; RFC 6761 keeps `.localhost` on the machine.
        Some(Host::Domain(d)) => d == "localhost" || d.ends_with(".localhost"),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::super::{Config, ConfigError};
    use super::*;

    const TENANT: &str =
        "[[tenants]]\nname = \"acme\"\nsubdomain = \"acme\"\napi_key = \"real-acme-key\"\n";

    fn load(text: &str) -> Result<Config, ConfigError> {
        Config::from_toml(text, "test.toml", &|_| None)
    }

    fn ca_pem() -> String {
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let key = rcgen::KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().pem()
    }

    fn file_with(contents: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(contents.as_bytes()).unwrap();
        f
    }

    fn with_ca_file(path: &Path) -> String {
        format!(
            "[upstream]\nca_file = \"{}\"\n{TENANT}",
            path.display().to_string().replace('\\', "\\\\")
        )
    }

    #[test]
    fn a_bundle_of_two_roots_is_read_in_order() {
        let (a, b) = (ca_pem(), ca_pem());
        let file = file_with(&format!("# comment lines are skipped\n{a}\n{b}"));
        let c = load(&with_ca_file(file.path())).unwrap();
        let ca = c.upstream.ca.clone().expect("ca_file read");
        assert_eq!(ca.path, file.path());
        assert_eq!(ca.certs.len(), 2);
        assert_eq!(
            ca.certs[0],
            CertificateDer::from_pem_slice(a.as_bytes()).unwrap()
        );
        assert!(
            c.summary().contains("2 extra root(s) from"),
            "{}",
            c.summary()
        );
        assert!(format!("{ca:?}").contains("certs: 2"));
    }

    #[test]
    fn no_ca_file_means_the_compiled_in_roots_only() {
        let c = load(TENANT).unwrap();
        assert!(c.upstream.ca.is_none());
        assert!(c
            .summary()
            .contains("trusted roots: compiled-in web roots\n"));
    }

    #[test]
    fn an_unreadable_file_names_the_field_and_the_path() {
        let p = load(&with_ca_file(Path::new("/nonexistent/ca.pem")))
            .unwrap_err()
            .problems;
        assert_eq!(p.len(), 1, "{p:?}");
        assert!(
            p[0].starts_with("upstream.ca_file: cannot read /nonexistent/ca.pem: "),
            "{p:?}"
        );
    }

    #[test]
    fn a_file_without_certificates_is_rejected_without_quoting_it() {
        let secretish =
            "-----BEGIN PRIVATE KEY-----\nc2VjcmV0LWJ5dGVz\n-----END PRIVATE KEY-----\n";
        let file = file_with(secretish);
        let p = load(&with_ca_file(file.path())).unwrap_err().problems;
        assert!(p[0].starts_with("upstream.ca_file: "), "{p:?}");
        assert!(p[0].contains("holds no PEM certificate"), "{p:?}");
        assert!(p[0].contains(&file.path().display().to_string()), "{p:?}");
        assert!(!p[0].contains("c2VjcmV0"), "{p:?}");
    }

    #[test]
    fn broken_pem_and_bad_certificates_are_rejected_without_quoting_them() {
        let broken = file_with("-----BEGIN CERTIFICATE-----\nAAAA-secret-line\n");
        let p = load(&with_ca_file(broken.path())).unwrap_err().problems;
        assert!(
            p[0].contains("is not a PEM certificate bundle (section 1: no END line)"),
            "{p:?}"
        );
        assert!(!p[0].contains("secret-line"), "{p:?}");
        // Valid PEM and base64, but not a certificate.
        let junk = file_with("-----BEGIN CERTIFICATE-----\nanVuaw==\n-----END CERTIFICATE-----\n");
        let p = load(&with_ca_file(junk.path())).unwrap_err().problems;
        assert!(
            p[0].contains("certificate 1 cannot be a trusted root"),
            "{p:?}"
        );
    }

    #[test]
    fn cleartext_to_a_remote_host_is_a_warning_naming_tenant_and_field() {
        let c = Config::from_toml(
            "[[tenants]]\nname = \"far\"\nbase_url = \"http://crm.example.com:8080\"\napi_key_env = \"K\"\n",
            "test.toml",
            &|_| Some("k".into()),
        )
        .unwrap();
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(
            c.warnings[0]
                .starts_with("tenants[0].base_url: tenant \"far\" uses http:// to crm.example.com"),
            "{:?}",
            c.warnings
        );
        assert!(c.summary().contains("would travel in clear"));
    }

    #[test]
    fn cleartext_through_the_template_names_the_template() {
        let text = format!("[upstream]\nbase_url = \"http://{{subdomain}}.crm.lan\"\n{TENANT}");
        let c = load(&text).unwrap();
        assert!(
            c.warnings.iter().any(|w| w
                .starts_with("upstream.base_url: tenant \"acme\" uses http:// to acme.crm.lan")),
            "{:?}",
            c.warnings
        );
    }

    #[test]
    fn https_and_loopback_are_not_warned_about() {
        for url in [
            "https://acme.retailcrm.ru",
            "http://127.0.0.1:9000",
            "http://127.0.0.2",
            "http://[::1]:9000",
            "http://localhost:9000",
            "http://sim.localhost",
        ] {
            let u = Url::parse(url).unwrap();
            assert_eq!(cleartext_warning("f", "t", &u), None, "{url}");
        }
        for url in [
            "http://10.0.0.5",
            "http://[fe80::1]",
            "http://localhost.example",
        ] {
            let u = Url::parse(url).unwrap();
            assert!(cleartext_warning("f", "t", &u).is_some(), "{url}");
        }
    }
}
