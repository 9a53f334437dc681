//! Room in the queue, shared fairly: when a tenant's queue (`max_queued`)
//! or the whole gateway's (`limits.queue_capacity`) is full, a new request
//! is still admitted if its own line is shorter than the longest one, and
//! the longest line gives up its newest waiting request ("longest queue
//! drop", as fq_codel does). Lines are a tenant's clients at `max_queued`,
//! and tenants (their counts divided by their weights) at `queue_capacity`.
//! So a runaway service that holds a thousand requests open cannot keep a
//! light sibling, or a light tenant, out of the queue.
//!
//! The displaced request is answered like a refused one (503 JSON with
//! `Retry-After`); its capacity passes straight to the newcomer, so the
//! bounds hold at every moment. This module decides and takes the victim;
//! it never grants slots and never sees keys (a client is an opaque name).

use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::time::Instant;

use super::lane::{Lane, DISPLACED, DISPLACED_GRANT, QUEUED};
use super::{Inner, Ticket};

/// One tenant's share of the room: its waiting requests, its weight and
/// how its requests fared when the room was full.
#[derive(Debug, Default)]
pub struct TenantRoom {
    /// Requests of this tenant waiting, in all lanes.
    pub(super) count: AtomicUsize,
    /// The tenant's weight, as its latest request gave it.
    pub(super) weight: AtomicU32,
    /// Waiting requests that gave up their place to a shorter line.
    pub(super) displaced: AtomicU64,
}

/// A waiting request chosen to give up its place.
struct Victim {
    lane: Arc<Lane>,
    id: u64,
    tenant: Arc<str>,
    enqueued: Instant,
}

/// How many times a displacement is tried when the chosen victim was
/// granted (or left) in the meantime.
const TRIES: usize = 3;

/// Makes room at `max_queued` for `ticket`: displaces the newest waiting
/// request of the tenant's longest client line if the ticket's client has
/// a shorter one. The victim's tenant count is released (the newcomer's
/// stays). Returns whether room was made.
pub(super) fn within_tenant(inner: &Inner, ticket: &Ticket) -> bool {
    for _ in 0..TRIES {
        let mut own = 0usize;
        let mut longest: Option<(usize, Arc<str>)> = None;
        let mut by_client: std::collections::HashMap<Arc<str>, usize> = Default::default();
        for lane in inner.lanes.iter() {
            let st = lane.lock();
            for ((tenant, client), n) in &st.lines {
                if *tenant == ticket.tenant {
                    *by_client.entry(client.clone()).or_default() += n;
                }
            }
        }
        for (client, n) in by_client {
            if client == ticket.client {
                own = n;
            }
            if longest.as_ref().is_none_or(|(l, _)| n > *l) {
                longest = Some((n, client));
            }
        }
        let Some((n, client)) = longest else {
            return false;
        };
        if own >= n || own + 1 >= n {
            // Its line is the longest (or would be once it joins): no one
            // has more than it to give up.
            return false;
        }
        let Some(victim) = newest(inner, &ticket.tenant, Some(&client)) else {
            return false;
        };
        if displace(inner, victim, false) {
            return true;
        }
    }
    false
}

/// Makes room at `queue_capacity` for `ticket`: displaces the newest
/// waiting request of the tenant with the longest line per unit of weight,
/// from its longest client line, if the ticket's tenant has a shorter one.
/// The victim's counts are released (the newcomer's total stays). Returns
/// whether room was made.
pub(super) fn within_total(inner: &Inner, ticket: &Ticket) -> bool {
    for _ in 0..TRIES {
        let own_weight = u128::from(ticket.weight.max(1));
        let own = inner
            .tenant_queued
            .get(&ticket.tenant)
            .map_or(0, |t| t.count.load(Ordering::Acquire)) as u128;
        // Longest by count / weight, compared as cross products.
        let mut longest: Option<(u128, u128, Arc<str>)> = None;
        for t in inner.tenant_queued.iter() {
            let count = t.count.load(Ordering::Acquire) as u128;
            let weight = u128::from(t.weight.load(Ordering::Relaxed).max(1));
            if count > 0
                && longest
                    .as_ref()
                    .is_none_or(|(c, w, _)| count * *w > *c * weight)
            {
                longest = Some((count, weight, t.key().clone()));
            }
        }
        let Some((count, weight, tenant)) = longest else {
            return false;
        };
        // The newcomer's line, once it joins, must still be shorter.
        if (own + 1) * weight >= count * own_weight {
            return false;
        }
        let Some(victim) = newest(inner, &tenant, longest_client(inner, &tenant).as_ref()) else {
            return false;
        };
        if displace(inner, victim, true) {
            return true;
        }
    }
    false
}

/// The longest client line of `tenant`, over all lanes.
fn longest_client(inner: &Inner, tenant: &Arc<str>) -> Option<Arc<str>> {
    let mut by_client: std::collections::HashMap<Arc<str>, usize> = Default::default();
    for lane in inner.lanes.iter() {
        let st = lane.lock();
        for ((t, client), n) in &st.lines {
            if t == tenant {
                *by_client.entry(client.clone()).or_default() += n;
            }
        }
    }
    by_client
        .into_iter()
        .max_by_key(|(_, n)| *n)
        .map(|(client, _)| client)
}

/// The newest waiting request of `tenant` (of `client`, if given), over
/// all lanes.
fn newest(inner: &Inner, tenant: &Arc<str>, client: Option<&Arc<str>>) -> Option<Victim> {
    let mut best: Option<Victim> = None;
    for lane in inner.lanes.iter() {
        let st = lane.lock();
        let found = st
            .waiting
            .iter()
            .rev()
            .find(|(_, w)| w.tenant == *tenant && client.is_none_or(|c| w.client == *c));
        if let Some((id, w)) = found {
            if best.as_ref().is_none_or(|b| w.enqueued > b.enqueued) {
                best = Some(Victim {
                    lane: lane.clone(),
                    id: *id,
                    tenant: w.tenant.clone(),
                    enqueued: w.enqueued,
                });
            }
        }
    }
    best
}

/// Takes `victim` out of its queue and answers it (503, displaced),
/// releasing its tenant count, and with `total` its share of the total
/// too. False if it was granted or left first.
fn displace(inner: &Inner, victim: Victim, total: bool) -> bool {
    let mut st = victim.lane.lock();
    let Some(state) = st.waiting.get(&victim.id).map(|w| w.state.clone()) else {
        return false;
    };
    if state
        .compare_exchange(QUEUED, DISPLACED, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return false;
    }
    let waiter = st.take(victim.id).expect("a live waiter is listed");
    st.garbage += 1;
    drop(st);
    if let Some(t) = inner.tenant_queued.get(&victim.tenant) {
        t.count.fetch_sub(1, Ordering::AcqRel);
        t.displaced.fetch_add(1, Ordering::Relaxed);
    }
    if total {
        inner.queued_total.fetch_sub(1, Ordering::AcqRel);
    }
    // The waiter may have gone in the meantime: nothing to answer then.
    let _ = waiter.tx.send((DISPLACED_GRANT, Instant::now(), None));
    true
}
