//! Weighted fair queueing, nestable: the ordering half of the scheduler.
//!
//! [`Wfq`] is start-time fair queueing (SFQ) over keyed child queues. Each
//! child carries a virtual start tag; the child with the smallest tag is
//! served and its tag advances by `SCALE / weight`. A child that was idle
//! starts at the current virtual time, so a light caller is served at the
//! next slot instead of waiting behind a flood, yet cannot save up credit
//! while idle. Children nest (tenant → priority band → client) because a
//! `Wfq` is itself a [`Level`]. Every operation is O(log n) in the number of
//! active children at each level. Nothing here knows about time or HTTP.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::hash::Hash;

/// Virtual-time units per unit of service at weight 1.
const SCALE: u64 = 1 << 20;

/// A queue that can hand out its next item.
pub trait Level: Default {
    /// The queued item.
    type Item;
    /// Removes and returns the next item in fair order.
    fn pop(&mut self) -> Option<Self::Item>;
    /// True when nothing is queued.
    fn is_empty(&self) -> bool;
}

impl<T> Level for VecDeque<T> {
    type Item = T;

    fn pop(&mut self) -> Option<T> {
        self.pop_front()
    }

    fn is_empty(&self) -> bool {
        VecDeque::is_empty(self)
    }
}

struct Child<Q> {
    queue: Q,
    /// Virtual time consumed per item served.
    cost: u64,
    /// Start tag of the child's next item (meaningful while active).
    start: u64,
    /// Where its last served item finished: an idle child restarts from
    /// `max(vtime, finish)`, so it cannot jump ahead by going briefly idle.
    finish: u64,
    /// Tie-breaker for the active set, refreshed on each insert.
    seq: u64,
}

/// Start-time fair queueing over children keyed by `K`.
pub struct Wfq<K, Q> {
    children: HashMap<K, Child<Q>>,
    /// Active children ordered by (start tag, insertion sequence).
    active: BTreeSet<(u64, u64, K)>,
    vtime: u64,
    /// Largest finish tag handed out: the virtual time once the queue drains.
    max_finish: u64,
    seq: u64,
    /// Map size after the last sweep of idle children.
    swept_len: usize,
}

impl<K, Q> Default for Wfq<K, Q> {
    fn default() -> Self {
        Wfq {
            children: HashMap::new(),
            active: BTreeSet::new(),
            vtime: 0,
            max_finish: 0,
            seq: 0,
            swept_len: 0,
        }
    }
}

impl<K: Clone + Ord + Hash, Q: Level> Wfq<K, Q> {
    /// Adds work to child `key` (created on first use) through `push`, which
    /// receives the child's queue. `weight` (≥ 1) sets the child's share and
    /// is refreshed on every call, so a config reload takes effect at once.
    pub fn push_with(&mut self, key: K, weight: u32, push: impl FnOnce(&mut Q)) {
        let cost = SCALE / u64::from(weight.max(1));
        let vtime = self.vtime;
        let child = self.children.entry(key.clone()).or_insert_with(|| Child {
            queue: Q::default(),
            cost,
            start: vtime,
            finish: vtime,
            seq: 0,
        });
        child.cost = cost;
        let was_empty = child.queue.is_empty();
        push(&mut child.queue);
        if was_empty && !child.queue.is_empty() {
            self.seq += 1;
            child.start = vtime.max(child.finish);
            child.seq = self.seq;
            self.active.insert((child.start, child.seq, key));
        }
    }

    /// Drops idle children that carry no fairness memory, bounding the map
    /// by the number of recently active keys.
    fn collect_idle(&mut self) {
        // Sweep only when the map has doubled since the last sweep, so keys
        // that cannot be forgotten yet do not make every pop a full scan.
        if self.children.len() > 2 * self.swept_len.max(self.active.len()) + 64 {
            let vtime = self.vtime;
            self.children
                .retain(|_, c| !c.queue.is_empty() || c.finish > vtime);
            self.swept_len = self.children.len();
        }
    }
}

impl<K: Clone + Ord + Hash, Q: Level> Level for Wfq<K, Q> {
    type Item = Q::Item;

    fn pop(&mut self) -> Option<Q::Item> {
        loop {
            let (start, _, key) = self.active.pop_first()?;
            let child = self.children.get_mut(&key).expect("active child exists");
            let item = child.queue.pop();
            self.vtime = self.vtime.max(start);
            child.finish = start + child.cost;
            self.max_finish = self.max_finish.max(child.finish);
            if !child.queue.is_empty() {
                self.seq += 1;
                child.start = child.finish;
                child.seq = self.seq;
                self.active.insert((child.start, child.seq, key));
            } else if self.active.is_empty() {
                // End of a busy period: everyone is even again.
                self.vtime = self.max_finish;
            }
            self.collect_idle();
            if item.is_some() {
                return item;
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.active.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    type Flat = Wfq<&'static str, VecDeque<u32>>;

    fn drain<Q: Level>(q: &mut Q, n: usize) -> Vec<Q::Item> {
        (0..n).filter_map(|_| q.pop()).collect()
    }

    #[test]
    fn equal_weights_alternate() {
        let mut q = Flat::default();
        for i in 0..4 {
            q.push_with("a", 1, |c| c.push_back(i));
        }
        for i in 10..14 {
            q.push_with("b", 1, |c| c.push_back(i));
        }
        assert_eq!(drain(&mut q, 8), vec![0, 10, 1, 11, 2, 12, 3, 13]);
        assert!(q.is_empty());
    }

    #[test]
    fn weights_set_the_share() {
        let mut q = Flat::default();
        for i in 0..30 {
            q.push_with("heavy", 3, |c| c.push_back(i));
            q.push_with("light", 1, |c| c.push_back(100 + i));
        }
        let first = drain(&mut q, 20);
        let heavy = first.iter().filter(|v| **v < 100).count();
        assert_eq!(heavy, 15, "weight 3 vs 1 should get 3/4 of 20: {first:?}");
    }

    #[test]
    fn a_newcomer_is_served_next_not_after_the_backlog() {
        let mut q = Flat::default();
        for i in 0..50 {
            q.push_with("flood", 1, |c| c.push_back(i));
        }
        drain(&mut q, 10);
        q.push_with("light", 1, |c| c.push_back(999));
        assert_eq!(q.pop(), Some(999));
    }

    #[test]
    fn going_idle_does_not_buy_priority() {
        // A caller that keeps one request queued at a time (re-queues as soon
        // as it is served) must get its fair share, not every slot.
        let mut q = Flat::default();
        for i in 0..100 {
            q.push_with("flood", 1, |c| c.push_back(i));
        }
        let mut light = 0;
        q.push_with("echo", 1, |c| c.push_back(1000));
        for _ in 0..40 {
            if q.pop() == Some(1000) {
                light += 1;
                q.push_with("echo", 1, |c| c.push_back(1000));
            }
        }
        assert_eq!(light, 20, "two backlogged callers split slots evenly");
    }

    #[test]
    fn nesting_shares_per_level() {
        // Tenant a has three clients, tenant b one: tenants split 50/50 and
        // a's half is split between its clients.
        type Nested = Wfq<&'static str, Wfq<&'static str, VecDeque<&'static str>>>;
        let mut q = Nested::default();
        for _ in 0..12 {
            for client in ["a1", "a2", "a3"] {
                q.push_with("a", 1, |t| t.push_with(client, 1, |c| c.push_back(client)));
            }
            q.push_with("b", 1, |t| t.push_with("b1", 1, |c| c.push_back("b1")));
        }
        let served = drain(&mut q, 12);
        let count = |name| served.iter().filter(|s| **s == name).count();
        assert_eq!(count("b1"), 6);
        assert_eq!((count("a1"), count("a2"), count("a3")), (2, 2, 2));
    }

    #[test]
    fn idle_children_are_forgotten() {
        let mut q = Flat::default();
        for i in 0..1000u32 {
            let key: &'static str = Box::leak(i.to_string().into_boxed_str());
            q.push_with(key, 1, |c| c.push_back(i));
            q.pop();
        }
        assert!(q.children.len() <= 66, "map grew to {}", q.children.len());
    }
}
