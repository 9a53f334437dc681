//! Opening a connection to Redis by topology: one server, the master the
//! Sentinels name now, or a Cluster; with TLS roots and the password from
//! config.
//!
//! Owns the `redis` crate's client objects and nothing else: no state, no
//! retries (the [`super::RedisLink`] decides when to connect again), and no
//! text that could hold a URL or password (errors go through
//! [`super::Redactor`] before anyone sees them).

use std::time::Duration;

use base64::Engine;
use redis::aio::{ConnectionLike, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::sentinel::{SentinelClient, SentinelClientBuilder, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionInfo, IntoConnectionInfo, Pipeline, RedisError,
    RedisFuture, RedisResult, TlsCertificates, TlsMode, Value,
};

use crate::config::{CaBundle, RedisConfig, RedisTopology, Secret};

/// One open connection, whatever the topology. Cheap to clone (all clones
/// share one multiplexed socket, or one cluster connection).
#[derive(Clone)]
pub enum Conn {
    /// One server, or the Sentinels' current master.
    Node(MultiplexedConnection),
    /// A Redis Cluster: commands go to the node owning their keys' slot.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Node(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Node(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Node(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
        }
    }
}

/// How to reach Redis, built once from config.
pub(super) enum Target {
    Single(Client),
    /// Asked for the master on every connect, so a failover is followed.
    Sentinel(tokio::sync::Mutex<SentinelClient>),
    Cluster(ClusterClient),
}

/// The roots of `redis.ca_file` as the PEM redis-rs takes.
fn certificates(ca: &Option<CaBundle>) -> Option<TlsCertificates> {
    let ca = ca.as_ref()?;
    let mut pem = String::new();
    for cert in &ca.certs {
        pem.push_str("-----BEGIN CERTIFICATE-----\n");
        let b64 = base64::engine::general_purpose::STANDARD.encode(cert.as_ref());
        for line in b64.as_bytes().chunks(64) {
            pem.push_str(std::str::from_utf8(line).unwrap_or_default());
            pem.push('\n');
        }
        pem.push_str("-----END CERTIFICATE-----\n");
    }
    Some(TlsCertificates {
        client_tls: None,
        root_cert: Some(pem.into_bytes()),
    })
}

/// A URL's connection info, with the configured password if there is one.
fn info(url: &Secret, password: &Option<Secret>) -> RedisResult<ConnectionInfo> {
    let mut info = url.expose().into_connection_info()?;
    if let Some(p) = password {
        info.redis.password = Some(p.expose().to_string());
    }
    Ok(info)
}

impl Target {
    pub(super) fn new(config: &RedisConfig) -> RedisResult<Target> {
        let certs = certificates(&config.ca);
        let tls = config.tls.then_some(TlsMode::Secure);
        Ok(match &config.topology {
            RedisTopology::Single(url) => {
                let info = info(url, &config.password)?;
                match certs {
                    Some(certs) => Client::build_with_tls(info, certs)?,
                    None => Client::open(info)?,
                }
            }
            .into(),
            RedisTopology::Sentinel { sentinels, master } => {
                let infos = sentinels
                    .iter()
                    .map(|s| info(s, &None))
                    .collect::<RedisResult<Vec<_>>>()?;
                let first = infos.first().map(|i| i.redis.clone()).unwrap_or_default();
                let mut b = SentinelClientBuilder::new(
                    infos.into_iter().map(|i| i.addr),
                    master.clone(),
                    SentinelServerType::Master,
                )?;
                if let Some(tls) = tls {
                    b = b
                        .set_client_to_sentinel_tls_mode(tls)
                        .set_client_to_redis_tls_mode(tls);
                    if let Some(certs) = certs {
                        b = b
                            .set_client_to_sentinel_certificates(certs.clone())
                            .set_client_to_redis_certificates(certs);
                    }
                }
                if let Some(user) = &first.username {
                    b = b.set_client_to_sentinel_username(user.clone());
                }
                if let Some(p) = &first.password {
                    b = b.set_client_to_sentinel_password(p.clone());
                }
                // The master's password: the configured one, else the
                // Sentinels' (one password everywhere is the common setup).
                match (&config.password, &first.password) {
                    (Some(p), _) => b = b.set_client_to_redis_password(p.expose().to_string()),
                    (None, Some(p)) => b = b.set_client_to_redis_password(p.clone()),
                    (None, None) => {}
                }
                Target::Sentinel(tokio::sync::Mutex::new(b.build()?))
            }
            RedisTopology::Cluster(nodes) => {
                let infos = nodes
                    .iter()
                    .map(|n| info(n, &config.password))
                    .collect::<RedisResult<Vec<_>>>()?;
                let mut b = redis::cluster::ClusterClientBuilder::new(infos)
                    .connection_timeout(config.timeout)
                    .response_timeout(config.timeout)
                    .retries(2);
                if let Some(p) = &config.password {
                    b = b.password(p.expose().to_string());
                }
                if let Some(certs) = certs {
                    b = b.certs(certs);
                }
                Target::Cluster(b.build()?)
            }
        })
    }

    /// Opens a connection (the caller bounds the time).
    pub(super) async fn connect(&self, timeout: Duration) -> Result<Conn, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(timeout)
            .set_response_timeout(timeout);
        match self {
            Target::Single(client) => Ok(Conn::Node(
                client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?,
            )),
            Target::Sentinel(sentinel) => {
                // Asks the Sentinels who the master is now.
                let client = sentinel.lock().await.async_get_client().await?;
                let mut conn = client
                    .get_multiplexed_async_connection_with_config(&config)
                    .await?;
                // A demoted master that has not heard of the failover yet
                // still answers: make sure this one takes writes.
                let role: Vec<Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
                match role.first() {
                    Some(Value::BulkString(r)) if r.as_slice() == b"master" => Ok(Conn::Node(conn)),
                    _ => Err(RedisError::from((
                        redis::ErrorKind::ReadOnly,
                        "the node the Sentinels named is not a master (yet)",
                    ))),
                }
            }
            Target::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
        }
    }
}

impl From<Client> for Target {
    fn from(client: Client) -> Target {
        Target::Single(client)
    }
}
