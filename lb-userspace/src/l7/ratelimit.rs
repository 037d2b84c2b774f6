//! A route's token bucket: `rate` tokens a second up to `burst`; a request takes one, or is
//! refused with the time until the next token (the 429's Retry-After).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use super::config::RateLimit;

#[derive(Debug)]
pub struct TokenBucket {
    limit: RateLimit,
    rate: f64,
    burst: f64,
    /// Tokens, and when they were counted.
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    /// Starts full.
    pub fn new(limit: RateLimit, now: Instant) -> Self {
        let burst = f64::from(limit.burst.max(1));
        TokenBucket { limit, rate: f64::from(limit.rate.max(1)), burst, state: Mutex::new((burst, now)) }
    }

    /// The configuration it was made from.
    pub fn limit(&self) -> RateLimit {
        self.limit
    }

    /// Takes a token at `now`, or says how long until one is there.
    pub fn take(&self, now: Instant) -> Result<(), Duration> {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let (tokens, last) = *state;
        let elapsed = now.saturating_duration_since(last).as_secs_f64();
        let tokens = (tokens + elapsed * self.rate).min(self.burst);
        if tokens >= 1.0 {
            *state = (tokens - 1.0, now.max(last));
            Ok(())
        } else {
            *state = (tokens, now.max(last));
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }
}

/// Retry-After in whole seconds, rounded up (at least 1).
pub fn retry_after_secs(wait: Duration) -> u64 {
    wait.as_secs() + u64::from(wait.subsec_nanos() > 0).max(u64::from(wait.is_zero()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_rate() {
        let t0 = Instant::now();
        let bucket = TokenBucket::new(RateLimit { rate: 10, burst: 5 }, t0);
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
