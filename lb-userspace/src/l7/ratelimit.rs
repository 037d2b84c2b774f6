//! A route's token bucket: `rate` tokens a second up to `burst`; a request takes one, or is
//! refused with the time until the next token (the 429's Retry-After). A global limit's bucket
//! runs at this node's share (`sources::limits`), its burst scaled alike, and counts what it
//! sees for the share's renewal.

use std::{
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use super::config::{ConcurrencyLimit, RateLimit};
use crate::sources::limits::ShareHandle;

#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    rate: f64,
    burst: f64,
    /// A global limit's share of its threshold, which sets the rate.
    share: Option<ShareHandle>,
    /// Tokens, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        Self::with_share(limit, None, now)
    }

    /// A bucket whose rate is `share`'s (when given) instead of the limit's.
    pub fn with_share(limit: RateLimit, share: Option<ShareHandle>, now: Instant) -> Self {
        let burst = f64::from(limit.burst.max(1));
        let rate = f64::from(limit.rate.max(1));
        TokenBucket { limit, rate, burst, share, state: Mutex::new((burst, now)) }
    }

    /// The configuration it was made from.
    pub fn limit(&self) -> &RateLimit {
        &self.limit
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let (rate, burst) = match &self.share {
            // The share's part of the burst, at least one request.
            Some(share) => {
                let rate = share.rate();
                (rate, (self.burst * rate / self.rate).max(1.0))
            }
            None => (self.rate, self.burst),
        };
        let taken = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (tokens, last) = *state;
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            let tokens = (tokens + elapsed * rate).min(burst);
            if tokens >= 1.0 {
                *state = (tokens - 1.0, now.max(last));
                Ok(())
            } else {
                *state = (tokens, now.max(last));
                Err(Duration::from_secs_f64((1.0 - tokens) / rate))
            }
        };
        if let Some(share) = &self.share {
            share.count(taken.is_ok());
        }
        taken
    }
}

/// A route's requests in progress against its concurrency limit (a global one's: the slots
/// Redis granted this node, which may be none while the other nodes hold them all).
#[derive(Debug)]
pub struct Concurrency {
    limit: ConcurrencyLimit,
    in_flight: Arc<AtomicUsize>,
    share: Option<ShareHandle>,
}

/// A request counted in progress until dropped.
#[derive(Debug)]
pub struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

impl Concurrency {
    pub fn new(limit: ConcurrencyLimit, share: Option<ShareHandle>) -> Self {
        // A global limit's count lives in its share, which reports it to Redis.
        let in_flight = share.as_ref().map_or_else(Arc::default, |s| s.in_flight_counter());
        Concurrency { limit, in_flight, share }
    }

    pub fn limit(&self) -> &ConcurrencyLimit {
        &self.limit
    }

    /// Requests this node lets in progress at once now.
    pub fn allowed(&self) -> usize {
        match &self.share {
            Some(share) => share.slots(),
            None => self.limit.requests as usize,
        }
    }

    /// A slot for one more request, unless the route is at its limit.
    pub fn try_enter(&self) -> Option<Slot> {
        let before = self.in_flight.fetch_add(1, Ordering::AcqRel);
        // Taken either way: dropping it gives the count back.
        let slot = Slot(Arc::clone(&self.in_flight));
        let admitted = before < self.allowed();
        if let Some(share) = &self.share {
            share.count(admitted);
        }
        admitted.then_some(slot)
    }
}

/// Retry-After in whole seconds, rounded up (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sources::limits::{Share, ShareKind};

    fn limit(rate: u32, burst: u32) -> RateLimit {
        RateLimit { rate, burst, scope: Default::default(), on_limit: Default::default() }
    }

    #[test]
    fn a_global_limits_bucket_runs_at_its_share_and_counts_for_it() {
        let t0 = Instant::now();
        let share = Arc::new(Share::new("web/api".into(), 100, 4, ShareKind::Rate));
        let bucket = TokenBucket::with_share(limit(100, 20), Some(Arc::clone(&share)), t0);
        // A quarter of the rate and of the burst.
        let ok = (0..20).filter(|_| bucket.take(t0).is_ok()).count();
        assert_eq!(ok, 5);
        let t1 = t0 + Duration::from_secs(2);
        let ok = (0..100).filter(|_| bucket.take(t1).is_ok()).count();
        assert_eq!(ok, 5, "the burst caps at the share's part");
        share.set_rate(50.0);
        let passed = (1..=1000u64).filter(|i| bucket.take(t1 + Duration::from_millis(*i)).is_ok()).count();
        assert!((49..=61).contains(&passed), "{passed} in a second at 50/s (+ a burst of 10)");
        assert_eq!(share.take_seen(), 1120);
        assert_eq!(share.totals().0 as usize, 10 + passed);
    }

    #[test]
    fn a_route_admits_up_to_its_concurrency_and_slots_give_back() {
        let limit = ConcurrencyLimit { requests: 3, scope: Default::default(), on_limit: Default::default() };
        let local = Concurrency::new(limit.clone(), None);
        let held: Vec<Slot> = (0..3).map(|_| local.try_enter().expect("below the limit")).collect();
        assert!(local.try_enter().is_none(), "the fourth waits for a slot");
        drop(held);
        assert!(local.try_enter().is_some(), "slots given back");
        // A global limit: none before Redis grants any, then the 2 slots granted; the share
        // sees what is in progress.
        let share = Arc::new(Share::new("web/api#concurrency".into(), 10, 4, ShareKind::Concurrency));
        let global = Concurrency::new(limit, Some(Arc::clone(&share)));
        assert!(global.try_enter().is_none(), "no slot granted yet");
        share.set_slots(2);
        let held: Vec<Option<Slot>> = (0..3).map(|_| global.try_enter()).collect();
        assert_eq!(held.iter().filter(|s| s.is_some()).count(), 2);
        assert_eq!((share.totals(), share.holding()), ((2, 2), 2));
        share.set_slots(0);
        assert_eq!(share.holding(), 2, "the two admitted still run");
        drop(held);
        assert_eq!(share.holding(), 0);
    }

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(limit(10, 5), t0);
        for _ in 0..5 {
            assert!(bucket.take(t0).is_ok());
        }
        let wait = bucket.take(t0).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        // 1 s later: 10 tokens made, capped at the burst of 5.
        let t1 = t0 + Duration::from_secs(1);
        let ok = (0..20).filter(|_| bucket.take(t1).is_ok()).count();
        assert_eq!(ok, 5);
        // Over 10 s at 100 attempts a second, 10 a second pass (plus nothing: the bucket is empty).
        let mut passed = 0;
        for i in 1..=1000u64 {
            if bucket.take(t1 + Duration::from_millis(10 * i)).is_ok() {
                passed += 1;
            }
        }
        assert!((99..=101).contains(&passed), "{passed}");
        // A clock that goes backwards takes nothing out of the bucket.
        assert!(bucket.take(t0).is_err());
    }

    #[test]
    fn retry_after_rounds_up() {
        assert_eq!(retry_after_secs(Duration::from_millis(100)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1000)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
