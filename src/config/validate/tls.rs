//! `server.tls_*`: the HTTPS listener. Paths are the operator's own and
//! are named in messages; the files' contents never are.

use std::path::PathBuf;
use std::sync::Arc;

use super::super::raw::RawServer;
use super::super::tls::{read_cert_files, TlsCert, TlsListen};
use super::Problems;

/// Validates the `tls_*` keys of `[server]`; `None` without `tls_listen`.
pub(super) fn tls(p: &mut Problems, s: &RawServer) -> Option<TlsListen> {
    let Some(listen) = s.tls_listen.as_deref() else {
        for (key, set) in [
            ("server.tls_cert_file", s.tls_cert_file.is_some()),
            ("server.tls_key_file", s.tls_key_file.is_some()),
            ("server.tls_names", s.tls_names.is_some()),
            ("server.tls_ca_out", s.tls_ca_out.is_some()),
        ] {
            if set {
                p.push(key, "has no effect without server.tls_listen");
            }
        }
        return None;
    };
    let listen = p.socket("server.tls_listen", Some(listen), "127.0.0.1:8443");
    let cert = match (&s.tls_cert_file, &s.tls_key_file) {
        (Some(cert), Some(key)) => {
            for (k, set) in [
                ("server.tls_names", s.tls_names.is_some()),
                ("server.tls_ca_out", s.tls_ca_out.is_some()),
            ] {
                if set {
                    p.push(
                        k,
                        "applies to a generated certificate only, not with server.tls_cert_file",
                    );
                }
            }
            match read_cert_files(cert.as_ref(), key.as_ref()) {
                Ok(files) => TlsCert::Files(Arc::new(files)),
                Err(e) => {
                    p.push("server.tls_cert_file", e);
                    return None;
                }
            }
        }
        (Some(_), None) => {
            p.push(
                "server.tls_key_file",
                "must be set with server.tls_cert_file",
            );
            return None;
        }
        (None, Some(_)) => {
            p.push(
                "server.tls_cert_file",
                "must be set with server.tls_key_file",
            );
            return None;
        }
        (None, None) => {
            let names = s.tls_names.clone().unwrap_or_default();
            for (i, n) in names.iter().enumerate() {
                let ok = n.parse::<std::net::IpAddr>().is_ok()
                    || (!n.is_empty()
                        && n.len() <= 253
                        && n.split('.').all(|l| {
                            !l.is_empty()
                                && l.len() <= 63
                                && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                        }));
                if !ok {
                    p.push(
                        &format!("server.tls_names[{i}]"),
                        "must be a DNS name or an IP address",
                    );
                }
            }
            TlsCert::Generated {
                names,
                ca_out: s.tls_ca_out.as_ref().map(PathBuf::from),
            }
        }
    };
    Some(TlsListen { listen, cert })
}

#[cfg(test)]
mod tests {
    use crate::config::{Config, TlsCert};

    const TENANT: &str = "[[tenants]]\nname = \"acme\"\nbase_url = \"https://acme.retailcrm.ru\"\napi_key = \"real-key-0001\"\n";

    fn load(server: &str) -> Result<Config, Vec<String>> {
        Config::from_toml(&format!("[server]\n{server}\n{TENANT}"), "t.toml", &|_| {
            None
        })
        .map_err(|e| e.problems)
    }

    /// A self-signed pair in `dir`: (cert path, key path).
    fn pair(dir: &std::path::Path, name: &str) -> (String, String) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (
            dir.join(format!("{name}.crt")),
            dir.join(format!("{name}.key")),
        );
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.signing_key.serialize_pem()).unwrap();
        (cert.display().to_string(), key.display().to_string())
    }

    #[test]
    fn no_tls_listen_no_listener_and_its_keys_alone_are_refused() {
        assert!(load("").unwrap().server.tls.is_none());
        let p = load("tls_names = [\"gw.local\"]\ntls_ca_out = \"/tmp/x.pem\"").unwrap_err();
        assert_eq!(
            p,
            [
                "server.tls_names: has no effect without server.tls_listen",
                "server.tls_ca_out: has no effect without server.tls_listen"
            ]
        );
    }

    #[test]
    fn a_generated_certificate_names_loopback_and_tls_names() {
        let c = load("tls_listen = \"127.0.0.1:8443\"\ntls_names = [\"gw.local\", \"10.0.0.5\"]\ntls_ca_out = \"/run/crmgate/ca.pem\"").unwrap();
        let tls = c.server.tls.clone().unwrap();
        assert_eq!(tls.listen, "127.0.0.1:8443".parse().unwrap());
        let TlsCert::Generated { names, ca_out } = &tls.cert else {
            panic!("{tls:?}")
        };
        assert_eq!(names, &["gw.local", "10.0.0.5"]);
        assert_eq!(
            ca_out.as_deref(),
            Some(std::path::Path::new("/run/crmgate/ca.pem"))
        );
        assert!(c.summary().contains(
            "tls listen 127.0.0.1:8443: certificate generated at start-up for localhost, 127.0.0.1, ::1, gw.local, 10.0.0.5; its CA written to /run/crmgate/ca.pem"
        ), "{}", c.summary());
        let p =
            load("tls_listen = \"127.0.0.1:8443\"\ntls_names = [\"bad name\", \"\"]").unwrap_err();
        assert_eq!(
            p,
            [
                "server.tls_names[0]: must be a DNS name or an IP address",
                "server.tls_names[1]: must be a DNS name or an IP address"
            ]
        );
        let p = load("tls_listen = \"localhost\"").unwrap_err();
        assert!(
            p[0].starts_with("server.tls_listen: is not an address"),
            "{p:?}"
        );
        let p = load("listen = \"127.0.0.1:8443\"\ntls_listen = \"127.0.0.1:8443\"").unwrap_err();
        assert_eq!(
            p,
            ["server.tls_listen: must differ from server.listen and server.admin_listen"]
        );
    }

    #[test]
    fn certificate_files_are_read_and_checked_at_validation() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = pair(dir.path(), "a");
        let c = load(&format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\""
        ))
        .unwrap();
        let tls = c.server.tls.unwrap();
        assert!(matches!(tls.cert, TlsCert::Files(_)));
        assert!(tls
            .cert
            .describe()
            .starts_with(&format!("certificate from {cert} (key {key})")));
        // Debug shows the paths, never the key.
        let key_pem = std::fs::read_to_string(&key).unwrap();
        let shown = format!("{tls:?}");
        assert!(!shown.contains(key_pem.lines().nth(1).unwrap()), "{shown}");

        // Half a pair, options of a generated certificate, a key that is
        // not the certificate's, files that are missing or not PEM.
        let p = load(&format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{cert}\""
        ))
        .unwrap_err();
        assert_eq!(
            p,
            ["server.tls_key_file: must be set with server.tls_cert_file"]
        );
        let p = load(&format!("tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{key}\"\ntls_names = [\"x\"]")).unwrap_err();
        assert_eq!(p, ["server.tls_names: applies to a generated certificate only, not with server.tls_cert_file"]);
        let (_, other_key) = pair(dir.path(), "b");
        let p = load(&format!("tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{other_key}\"")).unwrap_err();
        assert!(
            p[0].starts_with("server.tls_cert_file: ")
                && p[0].contains("do not make a usable certificate"),
            "{p:?}"
        );
        let p = load(&format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{key}\"\ntls_key_file = \"{key}\""
        ))
        .unwrap_err();
        assert!(p[0].contains("holds no PEM certificate"), "{p:?}");
        let p = load(&format!(
            "tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{cert}\"\ntls_key_file = \"{cert}\""
        ))
        .unwrap_err();
        assert!(p[0].contains("holds no PEM private key"), "{p:?}");
        let p = load("tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"/nonexistent/c.pem\"\ntls_key_file = \"/nonexistent/k.pem\"").unwrap_err();
        assert!(
            p[0].starts_with("server.tls_cert_file: cannot read /nonexistent/c.pem"),
            "{p:?}"
        );
        for problem in p {
            assert!(!problem.contains("PRIVATE KEY"), "{problem}");
        }
    }
}
