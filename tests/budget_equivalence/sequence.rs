//! The hand-written sequence: one table of events whose comments are the
//! slots the reference gives, so it reads as one story.

use std::time::Duration;

/// What happens to the budgets, at a time (ms) in [`sequence`].
#[derive(Debug, Clone, Copy)]
pub(crate) enum Event {
    /// A replica asks for the next slot on any egress.
    Reserve,
    /// The CRM answered 503 through `egress` to the send made at `sent` (ms).
    Throttled {
        egress: usize,
        sent: u64,
        retry_after: Option<Duration>,
    },
    /// A connection to the CRM starts opening through `egress`.
    ConnectStarted { egress: usize },
    /// The connection through `egress` that started at `started` (ms) is open.
    ConnectFinished { egress: usize, started: u64 },
    /// The send in `egress`'s latest slot left `by` after it (a late
    /// wake-up, a slow hand-off): `Budget::left_late`, `RedisBudget::departed`.
    Late { egress: usize, by: Duration },
    /// The config is reloaded with adaptation switched on or off.
    Reload { adaptive: bool },
}

/// The events, with the slots the reference gave in the comments (two
/// egresses e0 and e1, 4 per 1020 ms: paced 255 ms apart at full rate;
/// adaptation's test halves the rate and a good rate rises 1 req/s per
/// second).
///
/// The comments are the slots the reference gives (`e0 @ 255`: egress 0 at
/// 255 ms); a failure prints the whole table with the rule that decided
/// each slot. Longer runs of adaptation are compared by
/// `the_redis_scripts_adapt_as_the_rust_budget_against_model_crms`.
#[rustfmt::skip]
pub(crate) fn sequence() -> Vec<(u64, Event)> {
    use Event::*;
    let ms = Duration::from_millis;
    let throttled = |egress, sent, retry_ms: Option<u64>| Throttled { egress, sent, retry_after: retry_ms.map(ms) };
    vec![
        // Pacing, and the choice between egresses: both free (ties go to the
        // first), then the one free first.
        (0, Reserve), // e0 @ 0
        (0, Reserve), // e1 @ 0
        (0, Reserve), // e0 @ 255
        (0, Reserve), // e1 @ 255
        (300, ConnectStarted { egress: 0 }),
        // During the connect: e0 holds only two sends, so no slot waits on
        // it (the local budget would hold one that did; Redis does not).
        (300, Reserve), // e0 @ 510
        // The connect took 300 ms: e0's sends since 200 ms count from 600.
        (600, ConnectFinished { egress: 0, started: 300 }),
        (600, Reserve), // e1 @ 600: e1 has been free longest
        (600, Reserve), // e0 @ 855 (paced from the moved sends)
        (600, Reserve), // e1 @ 855
        (600, Reserve), // e0 @ 1110
        (600, Reserve), // e1 @ 1110
        (600, Reserve), // e1 @ 1365: e0 waits for the window
        // The sliding-log bound: e0's last four are 600, 600, 855, 1110, so
        // its next slot is 600 + 1020, not 1110 + 255.
        (600, Reserve), // e0 @ 1620
        // 503s (adaptation, src/scheduler/adapt.rs). e1's pauses it for
        // Retry-After (until 7000). e0's is an onset: two windows from its
        // 1620 send (to 3660) are observed at 4/s.
        (2000, throttled(1, 1365, Some(5000))),
        (2000, throttled(0, 1620, None)),
        (2000, Reserve), // e0 @ 2000
        (2000, Reserve), // e0 @ 2255
        // More refusals in e0's observation: at its end e0 is tested at 2/s.
        (2300, throttled(0, 2000, None)),
        (2400, throttled(0, 2255, None)),
        (2400, Reserve), // e0 @ 2510
        (2600, throttled(0, 2510, None)),
        (2700, Reserve), // e0 @ 2765
        (2700, Reserve), // e0 @ 3020
        (2700, Reserve), // e0 @ 3275
        (2700, Reserve), // e0 @ 3530
        (2700, Reserve), // e0 @ 3785 (paced from 3530 at 4/s)
        // The cut: 0.95 × the rate the CRM accepted while observed (4/s ×
        // 4 of 7), 2.17/s; once the late refusal below is in, 4/s × 3 of 7
        // is under the factor's 2/s, which then decides (a blind cut).
        (2700, Reserve), // e0 @ 4254.737
        // A late refusal of a send made before the cut.
        (5100, throttled(0, 3530, None)),
        (6300, Reserve), // e0 @ 6300
        (6300, Reserve), // e0 @ 6810 (2/s)
        (6900, Reserve), // e1 @ 7000: the end of its pause
        (6900, Reserve), // e1 @ 7255
        // e1: an onset at its 7000 send, and more refusals in the two
        // windows observed at 4/s (to 9040); then e1 is tested at 2/s.
        (7300, throttled(1, 7000, None)),
        (7300, throttled(1, 7255, None)),
        (7300, Reserve), // e0 @ 7320 (2/s)
        (7300, Reserve), // e1 @ 7510
        (7600, throttled(1, 7510, None)),
        (7600, Reserve), // e1 @ 7765
        (7800, throttled(1, 7765, None)),
        (7800, Reserve), // e0 @ 7830
        (7800, Reserve), // e1 @ 8020
        (7800, Reserve), // e1 @ 8275
        (8900, Reserve), // e0 @ 8900
        (8900, Reserve), // e1 @ 8900
        (8900, Reserve), // e1 @ 9155
        (8900, Reserve), // e0 @ 9410
        // Refusals in the first window after e1's cut, which the test
        // ignores (the CRM's window still holds the old rate's arrivals).
        (9500, throttled(1, 9410, None)),
        (9500, Reserve), // e1 @ 9665 (2/s from 9040)
        // e0's test proved its rate the cause; after a hold at 2/s its probe
        // rises by 1 req/s per second.
        (9500, Reserve), // e0 @ 9867.399
        (10_000, throttled(1, 9665, None)),
        (10_000, Reserve), // e1 @ 10175
        (10_000, Reserve), // e0 @ 10241.025
        // A refusal of a send above e0's good rate is a failed probe. e0's
        // tested rate was the factor's blind cut, so half way to the failed
        // rate is the good rate now: one window at good × 0.5, then good.
        (12_400, Reserve), // e0 @ 12400
        (12_450, throttled(0, 12_400, None)),
        (12_450, Reserve), // e1 @ 12450
        (12_450, Reserve), // e1 @ 12960 (e1's test goes on at 2/s)
        (12_450, Reserve), // e0 @ 13080: 1.5/s during the dip (good 3/s)
        (12_450, Reserve), // e1 @ 13470
        (12_450, Reserve), // e0 @ 13760 (1.5/s: the dip lasts to 13470)
        // A refusal at that good rate, above the tested one: back to the
        // tested rate (2/s) after a window at 1/s.
        (14_000, Reserve), // e1 @ 14000
        (14_000, Reserve), // e0 @ 14100
        (14_200, throttled(0, 14_100, None)),
        (14_200, Reserve), // e1 @ 14510
        (14_200, Reserve), // e1 @ 15020 (e0 waits: 1/s until 15220)
        // A refusal at the tested rate itself is a new onset from it.
        (15_300, Reserve), // e0 @ 15300
        (15_400, throttled(0, 15_300, None)),
        (15_400, Reserve), // e1 @ 15530
        (15_400, Reserve), // e0 @ 15810
        // The send in e0's latest slot (15810) left 90 ms late: it and any
        // send between its slot and its departure count from 15900.
        (15_900, Late { egress: 0, by: ms(90) }),
        (16_000, Reserve), // e1 @ 16040
        (16_000, Reserve), // e0 @ 16410 (paced from 15900)
        // A reload that switches adaptation off ends any cut at once.
        (16_100, Reload { adaptive: false }),
        (16_100, Reserve), // e1 @ 16295 (4/s)
        (16_100, Reserve), // e1 @ 16550
    ]
}
