//! `[reconcile]`: the wait before a create that failed after sending is
//! looked up. Never echoes a value.

use super::super::raw::RawReconcile;
use super::super::*;
use super::Problems;

/// The longest `reconcile.delay` accepted: the lookup waits this long while
/// the caller waits too, so a longer one is a typo.
const MAX_DELAY: Duration = Duration::from_secs(60);

/// Validates `[reconcile]`.
pub(super) fn reconcile(p: &mut Problems, r: &RawReconcile) -> ReconcileConfig {
    let delay = p.duration("reconcile.delay", r.delay.as_deref(), "1s");
    if delay > MAX_DELAY {
        p.push(
            "reconcile.delay",
            "must be at most 60s (the caller waits for the lookup)",
        );
    }
    ReconcileConfig { delay }
}
