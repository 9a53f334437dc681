//! The HTTPS API listener (`server.tls_listen`): the same API as the plain
//! port behind the same guard, over HTTP/2 or HTTP/1.1 as ALPN chooses,
//! with a certificate generated at start-up (its CA written out) or read
//! from files and re-read on reload. What PHP's RetailCRM modules need:
//! an `https://` URL on this host.
mod common;

use std::path::Path;

use common::*;
use reqwest::{Certificate, Version};

/// A CA and a `localhost` / `127.0.0.1` certificate signed by it, written
/// as `{name}.crt` and `{name}.key` in `dir`; returns the CA (PEM).
fn ca_signed_pair(dir: &Path, name: &str) -> String {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress("127.0.0.1".parse().unwrap()));
    let key = KeyPair::generate().unwrap();
    let cert = leaf.signed_by(&key, &issuer).unwrap();
    std::fs::write(dir.join(format!("{name}.crt")), cert.pem()).unwrap();
    std::fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    ca_cert.pem()
}

fn trusting(ca_pem: &str, http1_only: bool) -> reqwest::Client {
    let b = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .add_root_certificate(Certificate::from_pem(ca_pem.as_bytes()).unwrap());
    let b = if http1_only { b.http1_only() } else { b };
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_certificate_serves_h2_and_http1_behind_the_same_guard() {
    let dir = tempfile::tempdir().unwrap();
    let ca_out = dir.path().join("ca.pem");
    let sim = sim().await;
    let extra = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         tls_listen = \"127.0.0.1:0\"\ntls_names = [\"gw.test\"]\ntls_ca_out = \"{}\"\n",
        ca_out.display()
    );
    let gate = Gate::start(config(&config_text(&sim, &extra))).await;
    let port = gate.tls.expect("an HTTPS listener").port();
    let ca = std::fs::read_to_string(&ca_out).expect("the CA was written");

    // HTTP/2 through ALPN, verified against the CA, by address and name.
    let h2 = trusting(&ca, false);
    for host in ["127.0.0.1", "localhost"] {
        let r = h2
            .get(format!("https://{host}:{port}/api/v5/orders?limit=20"))
            .header("X-API-KEY", ACME_CLIENT)
            .send()
            .await
            .unwrap();
        assert_eq!(
            (r.status().as_u16(), r.version()),
            (200, Version::HTTP_2),
            "{host}"
        );
    }
    let r = h2
        .post(format!("https://127.0.0.1:{port}/api/v5/orders/create"))
        .form(&[
            ("apiKey", ACME_CLIENT),
            ("order", r#"{"externalId":"tls-1"}"#),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    // HTTP/1.1 when the client offers only that.
    let h1 = trusting(&ca, true);
    let r = h1
        .get(format!(
            "https://127.0.0.1:{port}/api/v5/orders?limit=20&apiKey={ACME_CLIENT}"
        ))
        .send()
        .await
        .unwrap();
    assert_eq!((r.status().as_u16(), r.version()), (200, Version::HTTP_11));
    // The guard: a Host that is not loopback (DNS rebinding) on a
    // loopback listener, and a browser from another origin.
    let r = h1
        .get(format!("https://127.0.0.1:{port}/api/v5/orders"))
        .header("Host", "evil.example")
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 421);
    let r = h2
        .get(format!("https://127.0.0.1:{port}/api/v5/orders"))
        .header("Origin", "https://evil.example")
        .header("X-API-KEY", ACME_CLIENT)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);
    assert_eq!(json(r).await["success"], false);
    // Its connections are counted under their own label.
    let open = gate
        .gateway
        .metrics
        .connections_open
        .with_label_values(&["api_tls"]);
    assert!(open.get() >= 2, "{}", open.get());
    // A client without the CA is refused at the handshake.
    let untrusting = reqwest::Client::builder()
        .tls_built_in_root_certs(false)
        .build()
        .unwrap();
    assert!(untrusting
        .get(format!("https://127.0.0.1:{port}/api/v5/orders"))
        .send()
        .await
        .is_err());
    // What PHP's modules do: curl with verification off.
    if runs(Program::Curl, "curl", &["--version"], &test_name()) {
        let out = tokio::process::Command::new("curl")
            .args([
                "-sS",
                "-k",
                "-o",
                "/dev/null",
                "-w",
                "%{http_code} %{http_version}",
            ])
            .arg(format!(
                "https://127.0.0.1:{port}/api/v5/orders?apiKey={ACME_CLIENT}"
            ))
            .output()
            .await
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "200 2");
    }
    assert_no_client_key(&sim.records());
    assert_eq!(sim.orders_created("acme").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_files_are_served_and_a_reload_brings_new_ones() {
    let dir = tempfile::tempdir().unwrap();
    let ca_a = ca_signed_pair(dir.path(), "a");
    let ca_b = ca_signed_pair(dir.path(), "b");
    let (cert, key) = (dir.path().join("live.crt"), dir.path().join("live.key"));
    std::fs::copy(dir.path().join("a.crt"), &cert).unwrap();
    std::fs::copy(dir.path().join("a.key"), &key).unwrap();
    let sim = sim().await;
    let extra = format!(
        "[server]\nlisten = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n\
         tls_listen = \"127.0.0.1:0\"\ntls_cert_file = \"{}\"\ntls_key_file = \"{}\"\n\
         [cache]\nenabled = false\n",
        cert.display(),
        key.display()
    );
    let path = dir.path().join("crmgate.toml");
    let gate = Gate::from_file(&path, &config_text(&sim, &extra)).await;
    let url = format!(
        "https://localhost:{}/api/v5/orders?apiKey={ACME_CLIENT}",
        gate.tls.unwrap().port()
    );
    let get = |ca: String| {
        let url = url.clone();
        async move {
            trusting(&ca, false)
                .get(url)
                .send()
                .await
                .map(|r| r.status().as_u16())
        }
    };
    assert_eq!(get(ca_a.clone()).await.unwrap(), 200);
    assert!(get(ca_b.clone()).await.is_err(), "not yet b's");

    // Renewed files, then a reload: the next handshake serves them.
    std::fs::copy(dir.path().join("b.crt"), &cert).unwrap();
    std::fs::copy(dir.path().join("b.key"), &key).unwrap();
    let gw = gate.gateway.clone();
    tokio::task::spawn_blocking(move || gw.reload())
        .await
        .unwrap()
        .expect("reload");
    assert_eq!(get(ca_b).await.unwrap(), 200);
    assert!(get(ca_a).await.is_err(), "a's certificate is gone");
    // A broken pair is a failed reload, and the old one stays.
    std::fs::write(&key, "not a key").unwrap();
    let gw = gate.gateway.clone();
    assert!(tokio::task::spawn_blocking(move || gw.reload())
        .await
        .unwrap()
        .is_err());
    assert_no_client_key(&sim.records());
}
