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
//! The request path, in order:
//! - [`tenant`]: who is asking (path prefix or client key);
//! - [`rewrite`]: strip the caller's key, add the real one and `site`, keep
//!   everything else byte-exact;
//! - [`classify`]: which budget (general or telephony);
//! - [`scheduler`]: wait for a slot, fairly, within bounds;
//! - [`egress`]: which outbound IP, and its pooled client;
//! - [`proxy`]: send, retry when safe, stream back; the access log line.
//!
//! Around it:
//! - [`config`]: the TOML file, validated into types that cannot be wrong;
//! - [`gateway`]: shared state and hot reload;
//! - [`error`]: every error crmgate answers itself, and its JSON;
//! - [`metrics`], [`admin`]: Prometheus, health, readiness, status, reload;
//! - [`server`]: listeners and graceful drain;
//! - [`sim`]: a RetailCRM simulator for tests, benchmarks and `crmgate demo`.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod admin;
pub mod classify;
pub mod config;
pub mod drain;
pub mod egress;
pub mod error;
pub mod gateway;
pub mod metrics;
pub mod proxy;
pub mod reload;
pub mod rewrite;
pub mod scheduler;
pub mod server;
pub mod sim;
pub mod status;
pub mod tenant;
