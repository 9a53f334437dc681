//! The rate limiters the simulator can play: how a CRM (or the nginx in
//! front of it) decides that an arrival is over its limit.
//!
//! RetailCRM does not document its algorithm. Its 503 status line,
//! `503 Service Temporarily Unavailable`, is nginx's own, which points at
//! nginx `limit_req` (a leaky bucket that does not count refused requests),
//! but nothing rules out the others. Each [`LimiterKind`] is one reading:
//!
//! - **strict**: a sliding window of every arrival, refused ones included:
//!   at most `limit` arrivals in any `[t, t + window)`; a client that keeps
//!   sending over the limit never gets through (the worst case).
//! - **lenient**: a sliding window of *accepted* arrivals only: refusals
//!   cost nothing, so the CRM accepts exactly its limit whatever we send.
//! - **leaky** (nginx `limit_req zone=… burst=N nodelay`): a bucket that
//!   drains at `limit` per window; each accepted arrival adds one; an
//!   arrival that would make the excess over an empty bucket more than
//!   `burst` is refused and not counted. With `burst = 0` two arrivals
//!   closer than `window / limit` are refused, however few there are.
//!   Without `nodelay` nginx delays the accepted excess instead of
//!   answering it at once; which arrivals it refuses is the same (the
//!   delay does not enter its accounting), so only that latency is not
//!   modelled.
//! - **fixed**: fixed windows of `window` from the limiter's start, at most
//!   `limit` arrivals each (an `INCR`-and-expire counter; counting refused
//!   arrivals or not makes no difference: once over, the rest of the window
//!   is refused either way). Two windows' worth can pass around a boundary.
//!
//! Pure logic: time is passed in, nothing here sleeps, reads a clock or
//! knows about HTTP. It never sees a key.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::time::Duration;

use tokio::time::Instant;

/// Which limiter, and its parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimiterKind {
    /// Sliding window counting every arrival.
    Strict,
    /// Sliding window counting accepted arrivals only.
    Lenient,
    /// nginx `limit_req` with `burst` (and `nodelay`).
    Leaky {
        /// Arrivals allowed beyond the steady rate, at once.
        burst: u32,
    },
    /// Fixed windows from the limiter's start.
    Fixed,
}

impl LimiterKind {
    /// The model's name, as `crmgate sim --limiter` takes it.
    pub fn name(self) -> &'static str {
        match self {
            LimiterKind::Strict => "strict",
            LimiterKind::Lenient => "lenient",
            LimiterKind::Leaky { .. } => "leaky",
            LimiterKind::Fixed => "fixed",
        }
    }

    /// Parses `strict`, `lenient`, `leaky` or `fixed`; `burst` applies to
    /// `leaky` only and is an error with the others.
    pub fn parse(name: &str, burst: Option<u32>) -> Result<LimiterKind, String> {
        let kind = match name {
            "strict" => LimiterKind::Strict,
            "lenient" => LimiterKind::Lenient,
            "leaky" => LimiterKind::Leaky {
                burst: burst.unwrap_or(0),
            },
            "fixed" => LimiterKind::Fixed,
            other => {
                return Err(format!(
                    "unknown limiter {other:?}: expected strict, lenient, leaky or fixed"
                ))
            }
        };
        if burst.is_some() && !matches!(kind, LimiterKind::Leaky { .. }) {
            return Err(format!("--burst applies to the leaky limiter, not {name}"));
        }
        Ok(kind)
    }
}

impl std::fmt::Display for LimiterKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LimiterKind::Leaky { burst } => write!(f, "leaky (burst {burst})"),
            other => f.write_str(other.name()),
        }
    }
}

/// One key's state.
#[derive(Debug)]
enum State {
    /// Strict and lenient: the arrivals counted, oldest first.
    Log(VecDeque<Instant>),
    /// Leaky: the excess (in arrivals) as of the last accepted arrival.
    Bucket { excess: f64, last: Instant },
    /// Fixed: the current window's index and its count.
    Counter { index: u64, count: u32 },
}

/// A limiter over many keys (source IP and class, say).
#[derive(Debug)]
pub struct Limiter<K> {
    kind: LimiterKind,
    /// Where fixed windows start.
    epoch: Instant,
    keys: HashMap<K, State>,
}

impl<K: Hash + Eq> Limiter<K> {
    /// A limiter of `kind` whose fixed windows (if any) start at `epoch`.
    pub fn new(kind: LimiterKind, epoch: Instant) -> Self {
        Limiter {
            kind,
            epoch,
            keys: HashMap::new(),
        }
    }

    /// The model.
    pub fn kind(&self) -> LimiterKind {
        self.kind
    }

    /// Judges an arrival for `key` at `now` against `limit` per `window`:
    /// true if it is refused. `now` must not go backwards for one key.
    pub fn refuses(&mut self, key: K, now: Instant, window: Duration, limit: u32) -> bool {
        let limit_n = limit as usize;
        match self.kind {
            LimiterKind::Strict | LimiterKind::Lenient => {
                let State::Log(times) = self
                    .keys
                    .entry(key)
                    .or_insert_with(|| State::Log(VecDeque::new()))
                else {
                    unreachable!("a key keeps its limiter's state kind")
                };
                // An arrival exactly `window` ago is outside the half-open
                // interval that starts at it and ends at `now`.
                while times
                    .front()
                    .is_some_and(|&t| now.duration_since(t) >= window)
                {
                    times.pop_front();
                }
                if self.kind == LimiterKind::Strict {
                    times.push_back(now);
                    times.len() > limit_n
                } else if times.len() >= limit_n {
                    true
                } else {
                    times.push_back(now);
                    false
                }
            }
            LimiterKind::Leaky { burst } => {
                let state = self.keys.entry(key).or_insert(State::Bucket {
                    excess: -1.0,
                    last: now,
                });
                let State::Bucket { excess, last } = state else {
                    unreachable!("a key keeps its limiter's state kind")
                };
                // nginx: excess = excess - rate * elapsed + 1, at least 0;
                // over `burst`: refused, and the state is left as it was.
                // A new key starts empty (its first arrival leaves 0).
                let drained = f64::from(limit) * now.duration_since(*last).as_secs_f64()
                    / window.as_secs_f64();
                let next = (*excess - drained + 1.0).max(0.0);
                // A tolerance for float rounding at exactly the drain time.
                if next > f64::from(burst) + 1e-9 {
                    return true;
                }
                *excess = next;
                *last = now;
                false
            }
            LimiterKind::Fixed => {
                let index =
                    (now.duration_since(self.epoch).as_nanos() / window.as_nanos().max(1)) as u64;
                let state = self
                    .keys
                    .entry(key)
                    .or_insert(State::Counter { index, count: 0 });
                let State::Counter { index: at, count } = state else {
                    unreachable!("a key keeps its limiter's state kind")
                };
                if *at != index {
                    (*at, *count) = (index, 0);
                }
                *count = count.saturating_add(1);
                *count > limit
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Which of the arrivals at `at` (ms after `t0`) `kind` refuses, at
    /// `limit` per second.
    fn judge(kind: LimiterKind, limit: u32, at: &[u64]) -> Vec<bool> {
        let t0 = Instant::now();
        let mut l = Limiter::new(kind, t0);
        at.iter()
            .map(|a| l.refuses((), t0 + ms(*a), W, limit))
            .collect()
    }

    #[test]
    fn parse_names_and_burst() {
        assert_eq!(LimiterKind::parse("strict", None), Ok(LimiterKind::Strict));
        assert_eq!(
            LimiterKind::parse("leaky", Some(5)),
            Ok(LimiterKind::Leaky { burst: 5 })
        );
        assert_eq!(
            LimiterKind::parse("leaky", None),
            Ok(LimiterKind::Leaky { burst: 0 })
        );
        assert!(LimiterKind::parse("fixed", Some(1))
            .unwrap_err()
            .contains("--burst"));
        assert!(LimiterKind::parse("token", None)
            .unwrap_err()
            .contains("strict, lenient, leaky or fixed"));
        assert_eq!(
            LimiterKind::Leaky { burst: 5 }.to_string(),
            "leaky (burst 5)"
        );
    }

    #[test]
    fn strict_counts_refused_arrivals() {
        // 3 per second: the fourth is refused, and at 1000 ms the window
        // (10, 1000] still holds the refused fourth and two more.
        let got = judge(LimiterKind::Strict, 3, &[0, 1, 2, 10, 1000, 1001, 2000]);
        assert_eq!(got, [false, false, false, true, true, true, false]);
    }

    #[test]
    fn lenient_counts_accepted_arrivals_only() {
        // The same arrivals: the refused fourth costs nothing, so at 1000 ms
        // the first has left and one more fits, at 1001 the second, not a third.
        let got = judge(LimiterKind::Lenient, 3, &[0, 1, 2, 10, 1000, 1001, 1001]);
        assert_eq!(got, [false, false, false, true, false, false, true]);
        // Hammering at 10/s against 3/s: exactly 3 accepted per second.
        let at: Vec<u64> = (0..100).map(|i| i * 100).collect();
        let accepted = judge(LimiterKind::Lenient, 3, &at)
            .iter()
            .filter(|r| !**r)
            .count();
        assert_eq!(accepted, 30);
    }

    #[test]
    fn leaky_without_burst_keeps_gaps() {
        // 10/s: 100 ms apart is fine, 99 ms is not, and a refusal leaves the
        // bucket as it was (the next arrival 100 ms after the last accepted
        // one passes).
        let got = judge(
            LimiterKind::Leaky { burst: 0 },
            10,
            &[0, 100, 199, 200, 400],
        );
        assert_eq!(got, [false, false, true, false, false]);
    }

    #[test]
    fn leaky_burst_takes_a_burst_then_the_rate() {
        // 10/s, burst 5: six at once (one plus the burst), then refused until
        // the bucket drains one arrival's worth (100 ms).
        let got = judge(
            LimiterKind::Leaky { burst: 5 },
            10,
            &[0, 0, 0, 0, 0, 0, 0, 50, 100, 150, 200],
        );
        assert_eq!(
            got,
            [false, false, false, false, false, false, true, true, false, true, false]
        );
        // Over a long run the accepted rate is the limit.
        let at: Vec<u64> = (0..1000).map(|i| i * 50).collect();
        let accepted = judge(LimiterKind::Leaky { burst: 5 }, 10, &at)
            .iter()
            .filter(|r| !**r)
            .count();
        assert!((500..=506).contains(&accepted), "{accepted}");
    }

    #[test]
    fn fixed_windows_reset_at_their_boundaries() {
        // 3 per window: three late in one window and three early in the next
        // all pass (six within 20 ms), the fourth of a window does not.
        let got = judge(
            LimiterKind::Fixed,
            3,
            &[990, 995, 999, 1000, 1005, 1010, 1015],
        );
        assert_eq!(got, [false, false, false, false, false, false, true]);
    }

    #[test]
    fn sliding_windows_are_half_open() {
        for kind in [LimiterKind::Strict, LimiterKind::Lenient] {
            // Exactly one window after the last arrival is a fresh window.
            assert_eq!(judge(kind, 1, &[0, 999, 1999]), [false, true, false]);
        }
    }

    #[test]
    fn keys_are_independent() {
        let t0 = Instant::now();
        for kind in [
            LimiterKind::Strict,
            LimiterKind::Lenient,
            LimiterKind::Leaky { burst: 0 },
            LimiterKind::Fixed,
        ] {
            let mut l = Limiter::new(kind, t0);
            assert!(!l.refuses(1, t0, W, 1), "{kind}");
            assert!(l.refuses(1, t0 + ms(10), W, 1), "{kind}");
            assert!(!l.refuses(2, t0 + ms(10), W, 1), "{kind}");
        }
    }
}
