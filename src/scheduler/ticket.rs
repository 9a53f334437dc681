//! What a caller hands the scheduler and what it may get back: the
//! [`Ticket`] (who asks, which class, how urgent, until when) and the
//! [`QueueError`]s that end a wait without a slot. Plain data: it never
//! touches a lane or a budget.

use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;

use crate::classify::Class;

/// How urgent a request is, from the `X-Crmgate-Priority` header.
///
/// Priority orders requests *within* a tenant's share: high is served about
/// twice as often as normal and four times as often as low while all three
/// wait, so nothing starves and no tenant can take another's share.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Interactive work.
    High,
    /// The default.
    Normal,
    /// Batch work that can wait.
    Low,
}

impl Priority {
    /// Parses a header value (`high`, `normal`, `low`, any case).
    pub fn parse(value: &str) -> Option<Priority> {
        match value.trim().to_ascii_lowercase().as_str() {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }

    pub(super) fn weight(self) -> u32 {
        match self {
            Priority::High => 4,
            Priority::Normal => 2,
            Priority::Low => 1,
        }
    }
}

/// What a request asks the scheduler for.
#[derive(Debug, Clone)]
pub struct Ticket {
    /// Tenant name (from config).
    pub tenant: Arc<str>,
    /// The tenant's share relative to others.
    pub weight: u32,
    /// The tenant's cap on waiting requests.
    pub max_queued: usize,
    /// Who inside the tenant is asking (client key or source address): the
    /// unit of fairness within a tenant. Never logged.
    pub client: Arc<str>,
    /// Urgency within the tenant's share.
    pub priority: Priority,
    /// Which budget.
    pub class: Class,
    /// Give up (503) if no slot is granted by then.
    pub deadline: Instant,
}

/// Why a request got no slot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QueueError {
    /// Total or per-tenant capacity is used up.
    #[error("the queue is full ({0})")]
    Full(&'static str, Duration),
    /// The queue filled up and this request, the newest of the longest
    /// line, gave up its place to a request from a shorter one.
    #[error("the queue is full; this request gave its place to a shorter line")]
    Displaced(Duration),
    /// The deadline passed while waiting.
    #[error("no slot within the allowed wait")]
    Deadline(Duration),
    /// The gateway is shutting down.
    #[error("the gateway is shutting down")]
    ShuttingDown,
}

impl QueueError {
    /// A sensible `Retry-After` for the caller.
    pub fn retry_after(&self) -> Duration {
        match self {
            QueueError::Full(_, d) | QueueError::Deadline(d) | QueueError::Displaced(d) => *d,
            QueueError::ShuttingDown => Duration::from_secs(1),
        }
    }
}
