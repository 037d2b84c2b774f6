//! A node's share of a global threshold, from every live node's recent demand: proportional to
//! demand, so a node with more traffic gets more, and the shares of one snapshot add up to the
//! threshold. A node with little or no demand keeps a floor (a twentieth of an even split), so
//! traffic that starts there is admitted at once while its demand is being learned.
//!
//! A rate share may overshoot for a renewal while the nodes' views differ; a concurrency share
//! may not (requests already in progress stay), so Redis grants those slots itself
//! (`redis::EXCHANGE`): a node never holds more than the threshold minus what the others hold.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, AtomicUsize, Ordering},
    },
    time::Duration,
};

/// Requests/s this node may admit of `threshold`, given its own demand and every live node's
/// (its own included; requests/s each).
pub fn share_of(threshold: f64, own: f64, all: &[f64]) -> f64 {
    let nodes = all.len().max(1) as f64;
    let floor = threshold / nodes / 20.0;
    let weight = |demand: f64| if demand.is_finite() { demand.max(floor) } else { floor };
    let total: f64 = all.iter().map(|d| weight(*d)).sum::<f64>().max(weight(own));
    threshold * weight(own) / total
}

/// What a global limit bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShareKind {
    /// Requests per second: the share is a rate.
    Rate,
    /// Requests in progress at once: the share is a whole number of slots Redis granted.
    Concurrency,
}

/// One global limit as this node runs it: the threshold, the share the coordinator keeps
/// current, and what the limit's users saw since the coordinator last looked.
#[derive(Debug)]
pub struct Share {
    /// `vip/route`: the Redis key's tail and the metrics label.
    pub name: String,
    pub threshold: u32,
    pub kind: ShareKind,
    /// Requests in progress here (concurrency limits; the L7 tier's slots count it).
    in_flight: Arc<AtomicUsize>,
    /// Requests/s this node may admit, in thousandths.
    rate_milli: AtomicU64,
    /// Requests seen (admitted + limited) when the coordinator last took them.
    taken: AtomicU64,
    admitted: AtomicU64,
    limited: AtomicU64,
}

impl Share {
    /// A rate share starts at `threshold ÷ nodes` until the first exchange; a concurrency
    /// share at no slot, since until Redis answers this node cannot know what the others hold
    /// (a new share asks for a renewal at once).
    pub fn new(name: String, threshold: u32, nodes: u32, kind: ShareKind) -> Self {
        let share = Share {
            name,
            threshold,
            kind,
            in_flight: Arc::default(),
            rate_milli: AtomicU64::new(0),
            taken: AtomicU64::new(0),
            admitted: AtomicU64::new(0),
            limited: AtomicU64::new(0),
        };
        if kind == ShareKind::Rate {
            share.set_rate(f64::from(threshold) / f64::from(nodes.max(1)));
        }
        share
    }

    /// Slots this node may fill (a concurrency share).
    pub fn slots(&self) -> usize {
        (self.rate_milli.load(Ordering::Relaxed) / 1000) as usize
    }

    /// Sets the slots of a concurrency share (none is allowed: the others hold them all).
    pub fn set_slots(&self, slots: u32) {
        let slots = u64::from(slots.min(self.threshold));
        self.rate_milli.store(slots * 1000, Ordering::Relaxed);
    }

    /// The slots to fall back on without Redis: an even split, rounded down.
    pub fn fallback(&self, nodes: u32) {
        match self.kind {
            ShareKind::Rate => self.set_rate(f64::from(self.threshold) / f64::from(nodes.max(1))),
            ShareKind::Concurrency => self.set_slots(self.threshold / nodes.max(1)),
        }
    }

    /// The in-progress count the L7 tier's slots keep.
    pub fn in_flight_counter(&self) -> Arc<AtomicUsize> {
        Arc::clone(&self.in_flight)
    }

    /// Sets the in-progress count from a count kept elsewhere (a VIP's open connections).
    pub fn set_in_flight(&self, open: u64) {
        self.in_flight.store(usize::try_from(open).unwrap_or(usize::MAX), Ordering::Release);
    }

    /// What this node may have in progress until its next exchange is heard: its slots, or
    /// more while requests admitted under a larger grant are still running.
    pub fn holding(&self) -> u32 {
        let in_flight = u32::try_from(self.in_flight.load(Ordering::Acquire)).unwrap_or(u32::MAX);
        in_flight.max(self.slots() as u32)
    }

    /// Requests/s this node may admit now.
    pub fn rate(&self) -> f64 {
        self.rate_milli.load(Ordering::Relaxed) as f64 / 1000.0
    }

    pub fn set_rate(&self, rate: f64) {
        let milli = (rate * 1000.0).clamp(1.0, f64::from(self.threshold) * 1000.0);
        self.rate_milli.store(milli as u64, Ordering::Relaxed);
    }

    /// A request met the limit; `admitted` says how it went.
    pub fn count(&self, admitted: bool) {
        let counter = if admitted { &self.admitted } else { &self.limited };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    /// Sets the counts from a counter kept elsewhere (a VIP's bucket in the data plane).
    pub fn observe_totals(&self, admitted: u64, limited: u64) {
        self.admitted.store(admitted, Ordering::Relaxed);
        self.limited.store(limited, Ordering::Relaxed);
    }

    /// Requests seen (admitted or not) since the last call.
    pub fn take_seen(&self) -> u64 {
        let (admitted, limited) = self.totals();
        let total = admitted + limited;
        total.saturating_sub(self.taken.swap(total, Ordering::Relaxed))
    }

    /// Admitted and limited requests since the start.
    pub fn totals(&self) -> (u64, u64) {
        (self.admitted.load(Ordering::Relaxed), self.limited.load(Ordering::Relaxed))
    }
}

/// Demand in requests/s, smoothed over a few renewals (the newest counts half).
#[derive(Debug, Default, Clone, Copy)]
pub struct Demand(f64);

impl Demand {
    pub fn observe(&mut self, seen: u64, over: Duration) -> f64 {
        let now = seen as f64 / over.as_secs_f64().max(1e-3);
        self.0 = if self.0 == 0.0 { now } else { 0.5 * self.0 + 0.5 * now };
        self.0
    }

    pub fn get(self) -> f64 {
        self.0
    }
}

/// A share handed out to the L7 tier: the same `Arc` while the limit keeps its name and
/// threshold, so a reload neither resets it nor its counts.
pub type ShareHandle = Arc<Share>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shares_follow_demand_and_add_up_to_the_threshold() {
        let all = [300.0, 100.0, 0.0];
        let shares: Vec<f64> = all.iter().map(|own| share_of(1000.0, *own, &all)).collect();
        let total: f64 = shares.iter().sum();
        assert!((total - 1000.0).abs() < 1e-6, "{shares:?}");
        assert!(shares[0] > 2.9 * shares[1] && shares[0] < 3.1 * shares[1], "{shares:?}");
        // The idle node keeps its floor: 1000 / 3 / 20.
        let floor = 1000.0 / 3.0 / 20.0;
        assert!((shares[2] - 1000.0 * floor / (400.0 + floor)).abs() < 1e-6, "{shares:?}");
    }

    #[test]
    fn alone_a_node_takes_the_whole_threshold_and_nothing_divides_by_zero() {
        assert_eq!(share_of(500.0, 0.0, &[0.0]), 500.0);
        assert_eq!(share_of(500.0, 80.0, &[80.0]), 500.0);
        assert_eq!(share_of(500.0, 80.0, &[]), 500.0);
        assert!(share_of(500.0, f64::NAN, &[f64::NAN, 10.0]).is_finite());
    }

    #[test]
    fn a_share_counts_and_clamps() {
        let share = Share::new("web/api".into(), 100, 4, ShareKind::Rate);
        assert_eq!(share.rate(), 25.0);
        share.set_rate(1e9);
        assert_eq!(share.rate(), 100.0);
        share.set_rate(0.0);
        assert_eq!(share.rate(), 0.001);
        share.count(true);
        share.count(false);
        assert_eq!((share.take_seen(), share.take_seen(), share.totals()), (2, 0, (1, 1)));
    }

    #[test]
    fn a_concurrency_share_starts_without_slots_and_holds_what_runs() {
        let share = Share::new("web/api#concurrency".into(), 10, 4, ShareKind::Concurrency);
        assert_eq!((share.slots(), share.holding()), (0, 0));
        share.fallback(4);
        assert_eq!(share.slots(), 2, "10 ÷ 4, rounded down");
        share.set_slots(99);
        assert_eq!(share.slots(), 10, "never above the threshold");
        share.in_flight_counter().store(7, Ordering::Relaxed);
        share.set_slots(3);
        assert_eq!(share.holding(), 7, "requests admitted under the larger grant still run");
    }

    #[test]
    fn demand_is_smoothed() {
        let mut d = Demand::default();
        assert_eq!(d.observe(10, Duration::from_millis(100)), 100.0);
        assert_eq!(d.observe(30, Duration::from_millis(100)), 200.0);
    }
}
