//! The retry rule: after one send, answer, wait and resend, or give up.
//!
//! [`decide`] is a pure function of what the send produced, the method, the
//! attempts made and the time left before the caller's deadline, so the
//! whole rule is one table (`tests`). It never resends a request the CRM
//! may have processed unless the method is GET or HEAD, and it never waits
//! past the caller's deadline: when the next attempt could not start before
//! it, the caller gets its answer now. It owns no I/O, no clock and no keys.

use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};

/// The longest `Retry-After` honoured; a longer one is read as this.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);

/// What one send produced, as far as the retry rule cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SendOutcome {
    /// An answer that is not 503/429 (2xx, 4xx, other 5xx): the caller's.
    Answer,
    /// 503 or 429: the CRM refused the request unprocessed, so any method
    /// may be resent. `retry_after` is the CRM's hint, capped.
    Throttled {
        /// The parsed `Retry-After`, if any.
        retry_after: Option<Duration>,
    },
    /// The connection could not be opened: nothing was written.
    ConnectFailed,
    /// The connection broke after the request may have been written.
    Broken,
    /// No answer within `upstream.request_timeout`.
    TimedOut,
}

/// Where the request stands when the outcome arrives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// GET or HEAD: safe to resend even if the CRM may have processed it.
    pub idempotent: bool,
    /// Sends made so far, this one included (≥ 1).
    pub made: u32,
    /// `retry.max_attempts`.
    pub max: u32,
    /// Time until the caller's deadline (zero once passed).
    pub time_left: Duration,
}

/// The backoff settings of `[retry]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first backoff.
    pub initial: Duration,
    /// Cap on one backoff.
    pub max: Duration,
}

impl Backoff {
    /// The wait before attempt `made + 1`: about `initial` after the first
    /// send, twice as long after each next one, capped at `max`, times
    /// `jitter` (0.5..=1.0) so that requests that failed together spread.
    pub fn after(&self, made: u32, jitter: f64) -> Duration {
        let base = self
            .initial
            .saturating_mul(1u32 << made.saturating_sub(1).min(16))
            .min(self.max);
        base.mul_f64(jitter.clamp(0.0, 1.0))
    }
}

/// Why a request is resent (the `reason` label of `crmgate_retries_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryReason {
    /// The CRM answered 503/429.
    Throttled,
    /// The connection could not be opened.
    Connect,
    /// The connection broke (GET/HEAD only).
    Reset,
    /// No answer in time (GET/HEAD only).
    Timeout,
}

impl RetryReason {
    /// Every reason, for metrics that must exist from the start.
    pub const ALL: [RetryReason; 4] = [
        RetryReason::Throttled,
        RetryReason::Connect,
        RetryReason::Reset,
        RetryReason::Timeout,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            RetryReason::Throttled => "throttled",
            RetryReason::Connect => "connect",
            RetryReason::Reset => "reset",
            RetryReason::Timeout => "timeout",
        }
    }
}

/// How a request that will not be resent ends, when it is not the CRM's
/// answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// 503 with `Retry-After`: the CRM kept refusing.
    Throttled {
        /// What to tell the caller.
        retry_after: Duration,
    },
    /// 502: the CRM could not be reached, or the connection broke.
    Unreachable,
    /// 504: the CRM did not answer in time.
    TimedOut,
}

/// What to do after one send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Stream the CRM's answer back.
    Answer,
    /// Wait `after`, then queue for a slot again.
    Retry {
        /// The wait before queueing again.
        after: Duration,
        /// Why.
        reason: RetryReason,
    },
    /// Answer the caller with this error.
    Fail(Failure),
}

/// The retry rule. `jitter` (0.5..=1.0) scales the backoff; pass a random
/// value in production and a fixed one in tests.
pub fn decide(outcome: SendOutcome, attempt: Attempt, backoff: Backoff, jitter: f64) -> Decision {
    let more = attempt.made < attempt.max;
    let wait = backoff.after(attempt.made, jitter);
    let (failure, reason, resendable, wait) = match outcome {
        SendOutcome::Answer => return Decision::Answer,
        SendOutcome::Throttled { retry_after } => {
            let retry_after = retry_after.map(|d| d.min(MAX_RETRY_AFTER));
            (
                Failure::Throttled {
                    retry_after: retry_after.unwrap_or(Duration::from_secs(1)),
                },
                RetryReason::Throttled,
                true,
                wait.max(retry_after.unwrap_or_default()),
            )
        }
        SendOutcome::ConnectFailed => (Failure::Unreachable, RetryReason::Connect, true, wait),
        SendOutcome::Broken => (
            Failure::Unreachable,
            RetryReason::Reset,
            attempt.idempotent,
            wait,
        ),
        SendOutcome::TimedOut => (
            Failure::TimedOut,
            RetryReason::Timeout,
            attempt.idempotent,
            wait,
        ),
    };
    // The next attempt must be able to start before the deadline; a wait
    // that outlives it only delays the same answer.
    if more && resendable && wait < attempt.time_left {
        Decision::Retry {
            after: wait,
            reason,
        }
    } else {
        Decision::Fail(failure)
    }
}

/// True for the answers that mean "refused, not processed": 503 and 429.
/// Every other status is the CRM's answer and goes to the caller as it is,
/// among them 460 (an upload that partly succeeded: resending it would
/// create the uploaded part twice).
pub fn is_throttle(status: StatusCode) -> bool {
    status == StatusCode::SERVICE_UNAVAILABLE || status == StatusCode::TOO_MANY_REQUESTS
}

/// Parses `Retry-After`: seconds, or an HTTP date (a past date is zero).
pub fn parse_retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(header::RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = httpdate::parse_http_date(v).ok()?;
    Some(
        at.duration_since(std::time::SystemTime::now())
            .unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Decision::*;
    use Failure::*;

    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn every_retry_reason_has_its_own_series() {
        let labels = RetryReason::ALL.map(RetryReason::as_str);
        assert_eq!(labels, crate::metrics::RETRY_REASONS);
    }
    const S: fn(u64) -> Duration = Duration::from_secs;

    const BACKOFF: Backoff = Backoff {
        initial: Duration::from_millis(200),
        max: Duration::from_secs(5),
    };

    fn at(idempotent: bool, made: u32, time_left: Duration) -> Attempt {
        Attempt {
            idempotent,
            made,
            max: 4,
            time_left,
        }
    }

    fn retry(after: Duration, reason: RetryReason) -> Decision {
        Retry { after, reason }
    }

    /// (outcome × method × attempts made (max 4) × time left) → decision,
    /// with jitter fixed at 1.0 (backoff after n sends: 200 ms · 2^(n-1)).
    #[test]
    fn the_retry_table() {
        let throttled = |s: Option<u64>| SendOutcome::Throttled {
            retry_after: s.map(S),
        };
        let (get, post) = (true, false);
        #[rustfmt::skip]
        let table: Vec<(SendOutcome, bool, u32, Duration, Decision)> = vec![
            // Answers are the caller's, whatever the status (2xx, 4xx, 500).
            (SendOutcome::Answer, get, 1, S(30), Answer),
            (SendOutcome::Answer, post, 4, S(0), Answer),
            // 503/429: resent for any method, after the backoff or the CRM's
            // Retry-After, whichever is longer.
            (throttled(None), post, 1, S(30), retry(MS(200), RetryReason::Throttled)),
            (throttled(None), get, 2, S(30), retry(MS(400), RetryReason::Throttled)),
            (throttled(Some(3)), post, 1, S(30), retry(S(3), RetryReason::Throttled)),
            (throttled(Some(0)), get, 3, S(30), retry(MS(800), RetryReason::Throttled)),
            // A huge Retry-After is capped at 60 s ...
            (throttled(Some(3600)), get, 1, S(120), retry(S(60), RetryReason::Throttled)),
            // ... and never waited past the deadline: answer now.
            (throttled(Some(3600)), get, 1, S(30), Fail(Throttled { retry_after: S(60) })),
            (throttled(Some(5)), post, 1, S(5), Fail(Throttled { retry_after: S(5) })),
            (throttled(None), get, 1, MS(150), Fail(Throttled { retry_after: S(1) })),
            (throttled(None), get, 1, S(0), Fail(Throttled { retry_after: S(1) })),
            // Out of attempts.
            (throttled(Some(2)), get, 4, S(30), Fail(Throttled { retry_after: S(2) })),
            (throttled(None), post, 4, S(30), Fail(Throttled { retry_after: S(1) })),
            // Connect errors: nothing was sent, any method is resent.
            (SendOutcome::ConnectFailed, post, 1, S(30), retry(MS(200), RetryReason::Connect)),
            (SendOutcome::ConnectFailed, get, 3, S(30), retry(MS(800), RetryReason::Connect)),
            (SendOutcome::ConnectFailed, post, 4, S(30), Fail(Unreachable)),
            (SendOutcome::ConnectFailed, get, 2, MS(400), Fail(Unreachable)),
            (SendOutcome::ConnectFailed, get, 2, MS(401), retry(MS(400), RetryReason::Connect)),
            // A reset after sending: only GET/HEAD may go again.
            (SendOutcome::Broken, get, 1, S(30), retry(MS(200), RetryReason::Reset)),
            (SendOutcome::Broken, post, 1, S(30), Fail(Unreachable)),
            (SendOutcome::Broken, get, 4, S(30), Fail(Unreachable)),
            (SendOutcome::Broken, get, 1, MS(100), Fail(Unreachable)),
            // A timeout: the CRM may be processing it; only GET/HEAD again.
            (SendOutcome::TimedOut, get, 2, S(30), retry(MS(400), RetryReason::Timeout)),
            (SendOutcome::TimedOut, post, 1, S(30), Fail(TimedOut)),
            (SendOutcome::TimedOut, get, 4, S(30), Fail(TimedOut)),
            (SendOutcome::TimedOut, get, 1, S(0), Fail(TimedOut)),
        ];
        for (i, (outcome, idempotent, made, left, want)) in table.into_iter().enumerate() {
            let got = decide(outcome, at(idempotent, made, left), BACKOFF, 1.0);
            assert_eq!(
                got, want,
                "row {i}: {outcome:?}, idempotent {idempotent}, made {made}, left {left:?}"
            );
        }
    }

    /// Which CRM statuses are resent at all: only 503 and 429. A 460 (an
    /// upload that partly succeeded) is an answer, for POST as for GET, on
    /// the first send as on the last.
    #[test]
    fn statuses_the_crm_answers_are_resent_only_when_throttled() {
        let outcome = |code: u16| {
            if is_throttle(StatusCode::from_u16(code).unwrap()) {
                SendOutcome::Throttled { retry_after: None }
            } else {
                SendOutcome::Answer
            }
        };
        #[rustfmt::skip]
        let table: Vec<(u16, bool, Decision)> = vec![
            (200, false, Answer),
            (201, false, Answer),
            (400, false, Answer),
            (404, true, Answer),
            (460, false, Answer),
            (460, true, Answer),
            (500, false, Answer),
            (502, true, Answer),
            (503, false, retry(MS(200), RetryReason::Throttled)),
            (429, true, retry(MS(200), RetryReason::Throttled)),
        ];
        for (code, idempotent, want) in table {
            let got = decide(outcome(code), at(idempotent, 1, S(30)), BACKOFF, 1.0);
            assert_eq!(got, want, "status {code}, idempotent {idempotent}");
        }
    }

    #[test]
    fn a_retry_never_outlives_the_deadline() {
        // Every combination: when the decision is to wait, the wait ends
        // before the deadline.
        for made in 1..=6 {
            for left_ms in (0..3000).step_by(37) {
                for jitter in [0.5, 0.75, 1.0] {
                    for outcome in [
                        SendOutcome::Throttled { retry_after: None },
                        SendOutcome::Throttled {
                            retry_after: Some(S(1)),
                        },
                        SendOutcome::ConnectFailed,
                        SendOutcome::Broken,
                        SendOutcome::TimedOut,
                    ] {
                        let a = Attempt {
                            idempotent: true,
                            made,
                            max: 8,
                            time_left: MS(left_ms),
                        };
                        if let Retry { after, .. } = decide(outcome, a, BACKOFF, jitter) {
                            assert!(after < a.time_left, "{outcome:?} {a:?} waits {after:?}");
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn backoff_doubles_with_jitter_and_is_capped() {
        assert_eq!(BACKOFF.after(1, 1.0), MS(200));
        assert_eq!(BACKOFF.after(2, 1.0), MS(400));
        assert_eq!(BACKOFF.after(1, 0.5), MS(100));
        assert_eq!(BACKOFF.after(10, 1.0), S(5));
        assert_eq!(BACKOFF.after(u32::MAX, 1.0), S(5));
    }

    #[test]
    fn retry_after_in_seconds_or_as_a_date() {
        let mut h = HeaderMap::new();
        assert_eq!(parse_retry_after(&h), None);
        h.insert(header::RETRY_AFTER, "7".parse().unwrap());
        assert_eq!(parse_retry_after(&h), Some(S(7)));
        h.insert(
            header::RETRY_AFTER,
            "Wed, 21 Oct 2015 07:28:00 GMT".parse().unwrap(),
        );
        assert_eq!(parse_retry_after(&h), Some(Duration::ZERO));
        let later = httpdate::fmt_http_date(std::time::SystemTime::now() + S(120));
        h.insert(header::RETRY_AFTER, later.parse().unwrap());
        let got = parse_retry_after(&h).unwrap();
        assert!(got > S(115) && got <= S(120), "{got:?}");
        h.insert(header::RETRY_AFTER, "soon".parse().unwrap());
        assert_eq!(parse_retry_after(&h), None);
    }
}
