//! crmgate: a local rate-limiting gateway for the RetailCRM REST API.
//!
//! Services call crmgate instead of `https://{account}.retailcrm.ru`; crmgate
//! swaps their client keys for the real one, queues every request through a
//! per-outbound-IP budget (10/s general, 40/s telephony) shared fairly
//! between tenants and clients, retries the CRM's 503s safely, and streams
//! the answers back.
//!
//! # Layout
//!
//! Arrows run one way: no module imports one that imports it back (the
//! simulator aside), and the stages take narrow handles, never the
//! [`gateway`]; `tests/structure.rs` fails the build otherwise.
//!
//! The request path, in order ([`proxy`] composes it), behind [`guard`]
//! (header limits, Host and browser rules, on both listeners):
//! 1. [`inbound`]: read, limit, identify, rewrite → a typed request, using
//!    - [`tenant`]: who is asking (path prefix or client key);
//!    - [`classify`]: which budget (general or telephony);
//!    - [`rewrite`]: strip the caller's key, add `site`, keep everything
//!      else byte-exact;
//! 2. the stages between inbound and the scheduler, each its own module,
//!    each taking a [`forward::Forwarder`] plus its own state:
//!    - [`batch`]: a batch over RetailCRM's item limit is refused (400)
//!      before it spends a slot;
//!    - [`reconcile`]: a create that failed after sending is looked up by
//!      `externalId` (found, or resent) instead of ending as 502;
//!    - [`cache`]: identical GETs coalesced while queued, reference data
//!      kept per tenant for a TTL;
//!    - [`export`]: `X-Crmgate-Export: ndjson` walks every page of a list
//!      (or history by cursor) through forward and streams one item per
//!      line;
//! 3. [`forward`]: the [`forward::Forwarder`] handle: wait in the
//!    [`scheduler`] for a slot, fairly, within bounds; send through an
//!    [`egress`] client (which outbound IP), adding the real key; resend
//!    when [`forward::retry`] says it is safe; stream back;
//! 4. [`access`]: the access log line, keys masked.
//!
//! Around it:
//! - [`config`]: the TOML file, validated into types that cannot be wrong;
//! - [`live`]: the config in force, one [`live::Snapshot`] per request;
//! - [`bodies`]: the pool of buffered bytes every stage holds bodies in;
//! - [`gateway`]: the composition root, which builds every part and wires
//!   them (only proxy, admin, server, status, history, page and online
//!   take it); [`gateway::reload`]: hot reload, atomic, restart-only
//!   settings kept;
//! - [`redis_link`]: the one connection to Redis (server, Sentinel or
//!   Cluster; TLS, auth) and the truth about its state;
//! - [`drain`]: readiness and the drain's counts;
//! - [`status`]: the `/status` document, typed, and the scrape-time gauges;
//! - [`history`], [`page`]: the status page on the admin port (`GET /`),
//!   its sections rendered by the server alone (`/status/fragments`), and
//!   its five-minute ring of per-second samples (`/status/history`);
//! - [`error`]: every error crmgate answers itself, its JSON, and the one
//!   way a refusal is counted and answered ([`error::reject`]);
//! - [`metrics`]: a leaf the stages write into: every series, its label
//!   values, per-tenant queue-wait windows;
//! - [`admin`]: Prometheus, health, readiness, status, reload;
//! - [`online`]: `crmgate check --online`, each tenant's key asked about
//!   at the CRM (accepted, v5, sites, scopes), through the budget;
//! - [`server`]: listeners, connection limits and timeouts, graceful drain;
//!   [`tls_listener`]: the HTTPS listener's certificate and handshake;
//!   [`workers`]: the worker threads and runtimes that serve the API, each
//!   with its own socket;
//! - [`guard`]: who may call at all, from the request head alone;
//! - [`sim`]: a RetailCRM simulator for tests, benchmarks and `crmgate demo`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod access;
pub mod access_line;
pub mod admin;
pub mod batch;
pub mod bodies;
pub mod cache;
pub mod classify;
pub mod config;
pub mod drain;
pub mod egress;
pub mod error;
pub mod export;
pub mod forward;
pub mod gateway;
pub mod guard;
pub mod history;
pub mod inbound;
pub mod live;
pub mod log_writer;
pub mod metrics;
pub mod online;
pub mod page;
pub mod proxy;
pub mod reconcile;
pub mod redis_link;
pub mod rewrite;
pub mod scheduler;
pub mod server;
pub mod sim;
pub mod status;
pub mod tenant;
pub mod tls_listener;
pub mod workers;
