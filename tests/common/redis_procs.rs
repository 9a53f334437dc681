//! Real Redis deployments for the tests, each started by the test on free
//! loopback ports and torn down when dropped: a TLS server with a password
//! and a CA made here, a Sentinel set (master, replica, Sentinel), and a
//! three-master Cluster made with `redis-cli --cluster create`.
//!
//! Without `redis-server` on PATH each start returns `None` after
//! [`super::require`] decided (a loud skip, or a failure when required), as
//! for [`super::RedisServer`]. Processes are killed by their own handles only.

use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::poll_until;

/// A free loopback port (bound, then released).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Whether `redis-server` can run here; when it cannot,
/// [`super::require::missing`] decides (a loud skip, or a failure in CI).
pub fn redis_available() -> bool {
    super::require::runs(
        super::require::Program::Redis,
        "redis-server",
        &["--version"],
        &super::require::test_name(),
    )
}

/// One redis-server (or Sentinel) process, killed when dropped.
pub struct Proc {
    /// Its port (the TLS port for a TLS server).
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
}

impl Proc {
    /// Starts `redis-server ARGS` and waits until `port` accepts.
    pub async fn start(port: u16, args: Vec<String>) -> Proc {
        let mut p = Proc {
            port,
            args,
            child: None,
        };
        p.spawn().await;
        p
    }

    async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(&self.args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let port = self.port;
        let up = poll_until(Duration::from_secs(10), || async move {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()
                .map(|_| ())
        })
        .await;
        assert!(
            up.is_some(),
            "redis-server on {port} did not listen within 10 s"
        );
    }

    /// Kills it (SIGKILL, like a crash).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

fn base_args(port: u16, dir: &Path) -> Vec<String> {
    [
        "--port",
        &port.to_string(),
        "--bind",
        "127.0.0.1",
        "--save",
        "",
        "--appendonly",
        "no",
        "--dir",
        &dir.display().to_string(),
    ]
    .map(String::from)
    .to_vec()
}

/// A throwaway CA and a server certificate for 127.0.0.1 and localhost,
/// written as PEM files into `dir`: (ca, cert, key).
pub fn write_certificates(dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.distinguished_name
        .push(DnType::CommonName, "crmgate test Redis CA");
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().unwrap();
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let mut leaf = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    leaf.subject_alt_names
        .push(SanType::IpAddress(IpAddr::V4(Ipv4Addr::LOCALHOST)));
    leaf.distinguished_name
        .push(DnType::CommonName, "crmgate test Redis");
    leaf.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    leaf.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let leaf_key = KeyPair::generate().unwrap();
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();
    let paths = (
        dir.join("ca.pem"),
        dir.join("redis.pem"),
        dir.join("redis.key"),
    );
    std::fs::write(&paths.0, ca_cert.pem()).unwrap();
    std::fs::write(&paths.1, leaf_cert.pem()).unwrap();
    std::fs::write(&paths.2, leaf_key.serialize_pem()).unwrap();
    (paths.0, paths.1, paths.2)
}

/// A redis-server that speaks TLS only (its plain port is off), with a
/// password, its certificate signed by a CA made here.
pub struct TlsRedis {
    /// The server.
    pub proc: Proc,
    /// The CA's PEM file (what `redis.ca_file` names).
    pub ca_file: PathBuf,
    /// The password (`--requirepass`).
    pub password: String,
    _dir: tempfile::TempDir,
}

impl TlsRedis {
    /// Starts one; `None` (after a loud notice) without redis-server.
    pub async fn start() -> Option<TlsRedis> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (ca, cert, key) = write_certificates(dir.path());
        let port = free_port();
        let password = format!("tls-pw-{port}-x9");
        let mut args = base_args(0, dir.path());
        args.extend(
            [
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &cert.display().to_string(),
                "--tls-key-file",
                &key.display().to_string(),
                "--tls-ca-cert-file",
                &ca.display().to_string(),
                "--tls-auth-clients",
                "no",
                "--requirepass",
                &password,
            ]
            .map(String::from),
        );
        Some(TlsRedis {
            proc: Proc::start(port, args).await,
            ca_file: ca,
            password,
            _dir: dir,
        })
    }

    /// `rediss://127.0.0.1:PORT` (no password: the tests give it apart).
    pub fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}", self.proc.port)
    }
}

/// One master, one replica and one Sentinel (quorum 1) watching them,
/// tuned to fail over within a few seconds of the master's death.
pub struct SentinelSet {
    /// The master when started.
    pub master: Proc,
    /// Its replica (the master after a failover).
    pub replica: Proc,
    /// The Sentinel.
    pub sentinel: Proc,
    /// The monitored name.
    pub name: &'static str,
    dir: tempfile::TempDir,
}

impl SentinelSet {
    /// Starts all three and waits until the Sentinel sees the replica.
    pub async fn start() -> Option<SentinelSet> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let (m, r, s) = (free_port(), free_port(), free_port());
        let sub = |name: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir_all(&d).unwrap();
            d
        };
        let master = Proc::start(m, base_args(m, &sub("master"))).await;
        let mut replica_args = base_args(r, &sub("replica"));
        replica_args.extend(["--replicaof", "127.0.0.1", &m.to_string()].map(String::from));
        let replica = Proc::start(r, replica_args).await;
        let name = "crmgate-test";
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {s}\nbind 127.0.0.1\ndir {}\nsentinel monitor {name} 127.0.0.1 {m} 1\n\
                 sentinel down-after-milliseconds {name} 1000\nsentinel failover-timeout {name} 4000\n\
                 sentinel parallel-syncs {name} 1\n",
                sub("sentinel").display()
            ),
        )
        .unwrap();
        let sentinel = Proc::start(
            s,
            vec![conf.display().to_string(), "--sentinel".to_string()],
        )
        .await;
        let set = SentinelSet {
            master,
            replica,
            sentinel,
            name,
            dir,
        };
        // The Sentinel learns of the replica from the master's INFO.
        let seen = poll_until(Duration::from_secs(20), || async {
            let out = cli(set.sentinel.port, &["SENTINEL", "REPLICAS", set.name]);
            out.contains(&set.replica.port.to_string()).then_some(())
        })
        .await;
        assert!(seen.is_some(), "the Sentinel never saw the replica");
        Some(set)
    }

    /// `redis://127.0.0.1:PORT` of the Sentinel.
    pub fn sentinel_url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.sentinel.port)
    }

    /// The master's port as the Sentinel reports it now.
    pub fn master_port(&self) -> Option<u16> {
        let out = cli(
            self.sentinel.port,
            &["SENTINEL", "GET-MASTER-ADDR-BY-NAME", self.name],
        );
        out.lines().nth(1).and_then(|l| l.trim().parse().ok())
    }

    /// The directory the processes keep their files in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

/// Three masters (no replicas) joined with `redis-cli --cluster create`.
pub struct Cluster {
    /// The nodes.
    pub nodes: Vec<Proc>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// Starts the nodes, creates the cluster and waits until it is `ok`.
    pub async fn start() -> Option<Cluster> {
        if !redis_available() {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let mut nodes = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let d = dir.path().join(format!("node{i}"));
            std::fs::create_dir_all(&d).unwrap();
            let mut args = base_args(port, &d);
            args.extend(
                [
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "2000",
                ]
                .map(String::from),
            );
            nodes.push(Proc::start(port, args).await);
        }
        let mut create = vec!["--cluster".to_string(), "create".to_string()];
        create.extend(nodes.iter().map(|n| format!("127.0.0.1:{}", n.port)));
        create.extend(["--cluster-replicas", "0", "--cluster-yes"].map(String::from));
        let out = Command::new("redis-cli")
            .args(&create)
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ports: Vec<u16> = nodes.iter().map(|n| n.port).collect();
        let ok = poll_until(Duration::from_secs(20), || {
            let ports = ports.clone();
            async move {
                ports
                    .iter()
                    .all(|p| cli(*p, &["CLUSTER", "INFO"]).contains("cluster_state:ok"))
                    .then_some(())
            }
        })
        .await;
        assert!(ok.is_some(), "the cluster never reached cluster_state:ok");
        Some(Cluster { nodes, _dir: dir })
    }

    /// The nodes' URLs (`redis.cluster_nodes`).
    pub fn urls(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(|n| format!("redis://127.0.0.1:{}", n.port))
            .collect()
    }

    /// The `cluster_nodes = [...]` line.
    pub fn config_line(&self) -> String {
        let quoted: Vec<String> = self.urls().iter().map(|u| format!("\"{u}\"")).collect();
        format!("cluster_nodes = [{}]", quoted.join(", "))
    }
}

/// `redis-cli -p PORT ARGS...`'s output (empty if it failed).
pub fn cli(port: u16, args: &[&str]) -> String {
    Command::new("redis-cli")
        .args(["-p", &port.to_string()])
        .args(args)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}
