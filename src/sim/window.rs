//! The strict sliding window's arithmetic over recorded arrivals
//! ([`max_in_window`]), for tests to check a gateway: any half-open interval
//! `[t, t + window)` may hold at most `limit` arrivals, refused ones too.
//! Which limiter the simulator itself enforces is [`super::limiter`]'s.

use std::collections::HashMap;
use std::net::IpAddr;
use std::time::Duration;

use tokio::time::Instant;

use super::class::Class;
use super::request::Received;

/// Largest number of requests from one source IP in one class that arrived
/// within any half-open window `[t, t + window)`, over `records`. Every
/// arrival counts, accepted or not. Records need not be sorted.
pub fn max_in_window(records: &[Received], window: Duration) -> HashMap<(IpAddr, Class), usize> {
    let mut by_key: HashMap<(IpAddr, Class), Vec<Instant>> = HashMap::new();
    for r in records {
        by_key.entry((r.source_ip, r.class)).or_default().push(r.at);
    }
    by_key
        .into_iter()
        .map(|(key, mut times)| {
            times.sort_unstable();
            // Two pointers: `start` is the earliest arrival less than
            // `window` before `times[end]`.
            let mut best = 0;
            let mut start = 0;
            for end in 0..times.len() {
                while times[end].duration_since(times[start]) >= window {
                    start += 1;
                }
                best = best.max(end - start + 1);
            }
            (key, best)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use std::net::Ipv4Addr;

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 3));

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn rec(ip: IpAddr, class: Class, at: Instant) -> Received {
        Received {
            source_ip: ip,
            method: "GET".into(),
            version: axum::http::Version::HTTP_11,
            path: "/api/v5/orders".into(),
            query: None,
            headers: Vec::new(),
            body: Bytes::new(),
            form: Vec::new(),
            at,
            class,
            status: 200,
            api_key: None,
        }
    }

    #[test]
    fn max_in_window_over_hand_built_records() {
        let t0 = Instant::now();
        let records = vec![
            // A/general: 0, 500, 999 in one window; 1000 starts a new one
            // with 500 and 999 → best is 3.
            rec(A, Class::General, t0),
            rec(A, Class::General, t0 + ms(500)),
            rec(A, Class::General, t0 + ms(999)),
            rec(A, Class::General, t0 + ms(1000)),
            // Unsorted input and identical instants both count.
            rec(A, Class::Telephony, t0 + ms(2000)),
            rec(A, Class::Telephony, t0 + ms(100)),
            rec(A, Class::Telephony, t0 + ms(100)),
            rec(B, Class::General, t0),
            rec(B, Class::General, t0 + ms(1000)),
            rec(B, Class::General, t0 + ms(2000)),
        ];
        let got = max_in_window(&records, ms(1000));
        assert_eq!(got.len(), 3);
        assert_eq!(got[&(A, Class::General)], 3);
        assert_eq!(got[&(A, Class::Telephony)], 2);
        assert_eq!(got[&(B, Class::General)], 1);
        assert!(max_in_window(&[], ms(1000)).is_empty());
        // A longer window sees all four general arrivals from A.
        assert_eq!(max_in_window(&records, ms(1001))[&(A, Class::General)], 4);
    }
}
