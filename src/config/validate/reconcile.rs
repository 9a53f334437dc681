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

#[cfg(test)]
mod tests {
    use super::super::tests::*;
    use std::time::Duration;

    #[test]
    fn reconcile_delay_defaults_to_1s_and_is_bounded() {
        assert_eq!(load(GOOD).unwrap().reconcile.delay, Duration::from_secs(1));
        let c = load(&format!("[reconcile]\ndelay = \"250ms\"\n{GOOD}")).unwrap();
        assert_eq!(c.reconcile.delay, Duration::from_millis(250));
        let p = problems(&format!("[reconcile]\ndelay = \"5m\"\n{GOOD}"));
        assert!(has(&p, "reconcile.delay: must be at most 60s"), "{p:?}");
        let p = problems(&format!("[reconcile]\ndelay = \"SECRET-1\"\n{GOOD}"));
        assert!(
            has(&p, "reconcile.delay: is not a duration") && !has(&p, "SECRET"),
            "{p:?}"
        );
        let p = problems(&format!("[reconcile]\nwait = \"1s\"\n{GOOD}"));
        assert!(has(&p, "wait"), "unknown keys are refused: {p:?}");
    }
}
