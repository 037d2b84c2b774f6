//! Picking a backend of a route: weighted round robin, least outstanding requests, or a
//! weighted rendezvous hash of a header or cookie. Backends that are down or drained are
//! skipped, and so are the ones a retry already tried.

use std::{
    hash::{DefaultHasher, Hash, Hasher},
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
};

use super::config::Balance;

/// One backend of one l7 VIP, shared by every route that lists it and kept across reloads (so
/// that its requests in flight still count after a reload).
#[derive(Debug)]
pub struct BackendState {
    pub address: SocketAddr,
    /// `address:port`, the name health checks and drains use.
    pub identity: String,
    /// Up and not drained.
    serving: AtomicBool,
    outstanding: AtomicUsize,
}

impl BackendState {
    pub fn new(address: SocketAddr) -> Self {
        let identity = address.to_string();
        BackendState { address, identity, serving: AtomicBool::new(true), outstanding: AtomicUsize::new(0) }
    }

    pub fn is_serving(&self) -> bool {
        self.serving.load(Ordering::Relaxed)
    }

    pub fn set_serving(&self, serving: bool) {
        self.serving.store(serving, Ordering::Relaxed);
    }

    pub fn outstanding(&self) -> usize {
        self.outstanding.load(Ordering::Relaxed)
    }

    /// Counts a request in flight until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.outstanding.fetch_add(1, Ordering::Relaxed);
        InFlight(Arc::clone(self))
    }
}

/// A request in flight to a backend.
#[derive(Debug)]
pub struct InFlight(Arc<BackendState>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A route's backends and how it spreads requests over them.
#[derive(Debug)]
pub struct Pool {
    backends: Vec<(Arc<BackendState>, u32)>,
    balance: Balance,
    /// Requests in flight a backend may have (0: no limit).
    max_in_flight: usize,
    next: AtomicUsize,
}

impl Pool {
    pub fn new(backends: Vec<(Arc<BackendState>, u32)>, balance: Balance, max_in_flight: usize) -> Self {
        Pool { backends, balance, max_in_flight, next: AtomicUsize::new(0) }
    }

    pub fn balance(&self) -> &Balance {
        &self.balance
    }

    /// Picks a serving backend not in `exclude`; `key` is the hashed header or cookie value
    /// (a hash route without one falls back to round robin).
    pub fn pick(&self, key: Option<&[u8]>, exclude: &[SocketAddr]) -> Option<Arc<BackendState>> {
        thread_local! {
            /// The candidates' indexes, in a buffer each thread reuses (a pick per request).
            static CANDIDATES: std::cell::RefCell<Vec<usize>> = const { std::cell::RefCell::new(Vec::new()) };
        }
        let below_limit = |b: &BackendState| self.max_in_flight == 0 || b.outstanding() < self.max_in_flight;
        CANDIDATES.with_borrow_mut(|candidates| {
            candidates.clear();
            candidates.extend(
                self.backends
                    .iter()
                    .enumerate()
                    .filter(|(_, (b, _))| b.is_serving() && below_limit(b) && !exclude.contains(&b.address))
                    .map(|(i, _)| i),
            );
            if candidates.is_empty() {
                return None;
            }
            let backends = &self.backends;
            let chosen = match (&self.balance, key) {
                (Balance::HashHeader(_) | Balance::HashCookie(_), Some(key)) => rendezvous(backends, candidates, key),
                (Balance::LeastOutstanding, _) => {
                    // Ties (an idle pool, typically) rotate instead of all going to the first.
                    let start = self.next.fetch_add(1, Ordering::Relaxed) % candidates.len();
                    candidates.rotate_left(start);
                    least_outstanding(backends, candidates)
                }
                _ => self.round_robin(candidates),
            };
            Some(Arc::clone(&backends[chosen].0))
        })
    }

    /// Weighted round robin over the candidates (indexes into the backends).
    fn round_robin(&self, candidates: &[usize]) -> usize {
        let weight = |i: &usize| u64::from(self.backends[*i].1);
        let total: u64 = candidates.iter().map(weight).sum();
        let mut n = (self.next.fetch_add(1, Ordering::Relaxed) as u64) % total.max(1);
        for c in candidates {
            if n < weight(c) {
                return *c;
            }
            n -= weight(c);
        }
        candidates[0]
    }
}

/// Fewest requests in flight per unit of weight; ties go to the first candidate.
fn least_outstanding(backends: &[(Arc<BackendState>, u32)], candidates: &[usize]) -> usize {
    let load = |i: usize| (backends[i].0.outstanding() as u64, u64::from(backends[i].1));
    let mut best = candidates[0];
    for &c in &candidates[1..] {
        let ((a, wa), (b, wb)) = (load(c), load(best));
        // a/wa < b/wb ⇔ a·wb < b·wa
        if a * wb < b * wa {
            best = c;
        }
    }
    best
}

/// Weighted rendezvous (highest random weight) hashing: a key keeps its backend while that
/// backend serves, and only the keys of a backend that leaves move.
fn rendezvous(backends: &[(Arc<BackendState>, u32)], candidates: &[usize], key: &[u8]) -> usize {
    let score = |i: usize| {
        let (backend, weight) = &backends[i];
        let mut h = DefaultHasher::new();
        key.hash(&mut h);
        backend.address.hash(&mut h);
        // Uniform in (0, 1): -w / ln(u) is the weighted score.
        let u = ((h.finish() >> 11) as f64 + 0.5) / (1u64 << 53) as f64;
        -f64::from(*weight) / u.ln()
    };
    let mut best = candidates[0];
    let mut best_score = score(best);
    for &c in &candidates[1..] {
        let s = score(c);
        if s > best_score {
            (best, best_score) = (c, s);
        }
    }
    best
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn backends(weights: &[u32]) -> Vec<(Arc<BackendState>, u32)> {
        weights
            .iter()
            .enumerate()
            .map(|(i, w)| (Arc::new(BackendState::new(format!("10.0.0.{}:80", i + 1).parse().unwrap())), *w))
            .collect()
    }

    fn spread(pool: &Pool, n: usize, key: impl Fn(usize) -> Option<Vec<u8>>) -> BTreeMap<SocketAddr, usize> {
        let mut seen = BTreeMap::new();
        for i in 0..n {
            let b = pool.pick(key(i).as_deref(), &[]).unwrap();
            *seen.entry(b.address).or_insert(0) += 1;
        }
        seen
    }

    #[test]
    fn round_robin_follows_weights_and_skips_down_and_excluded() {
        let pool = Pool::new(backends(&[1, 2, 1]), Balance::RoundRobin, 0);
        let seen = spread(&pool, 400, |_| None);
        assert_eq!(seen.values().copied().collect::<Vec<_>>(), vec![100, 200, 100]);
        pool.backends[1].0.set_serving(false);
        let seen = spread(&pool, 100, |_| None);
        assert_eq!(seen.len(), 2, "{seen:?}");
        let first = pool.backends[0].0.address;
        for _ in 0..10 {
            assert_ne!(pool.pick(None, &[first]).unwrap().address, first);
        }
        pool.backends[2].0.set_serving(false);
        assert!(pool.pick(None, &[first]).is_none(), "nothing left");
    }

    #[test]
    fn least_outstanding_prefers_idle_backends_by_weight() {
        let pool = Pool::new(backends(&[1, 1, 2]), Balance::LeastOutstanding, 0);
        let mut held = Vec::new();
        for _ in 0..8 {
            let b = pool.pick(None, &[]).unwrap();
            held.push(b.begin());
        }
        let counts: Vec<usize> = pool.backends.iter().map(|(b, _)| b.outstanding()).collect();
        assert_eq!(counts, vec![2, 2, 4], "in flight proportional to weight");
        held.clear();
        assert!(pool.backends.iter().all(|(b, _)| b.outstanding() == 0), "guards release");
        // Idle: ties rotate over every backend.
        assert_eq!(spread(&pool, 30, |_| None).len(), 3);
    }

    #[test]
    fn backends_at_their_in_flight_limit_are_skipped() {
        let pool = Pool::new(backends(&[1, 1]), Balance::RoundRobin, 2);
        let held: Vec<InFlight> = (0..4).map(|_| pool.pick(None, &[]).expect("below the limit").begin()).collect();
        assert!(pool.pick(None, &[]).is_none(), "both at 2 in flight");
        drop(held);
        assert!(pool.pick(None, &[]).is_some());
    }

    #[test]
    fn consistent_hash_keeps_keys_and_moves_few() {
        let pool = Pool::new(backends(&[1, 1, 1, 1]), Balance::HashHeader("x-user".into()), 0);
        let key = |i: usize| Some(format!("user-{i}").into_bytes());
        let before: Vec<SocketAddr> = (0..1000).map(|i| pool.pick(key(i).as_deref(), &[]).unwrap().address).collect();
        let again: Vec<SocketAddr> = (0..1000).map(|i| pool.pick(key(i).as_deref(), &[]).unwrap().address).collect();
        assert_eq!(before, again, "the same key, the same backend");
        let seen = spread(&pool, 1000, key);
        assert!(seen.values().all(|n| (180..=320).contains(n)), "even spread: {seen:?}");
        let gone = pool.backends[2].0.address;
        pool.backends[2].0.set_serving(false);
        for (i, was) in before.iter().enumerate() {
            let now = pool.pick(key(i).as_deref(), &[]).unwrap().address;
            if *was != gone {
                assert_eq!(now, *was, "only the keys of the backend that left move");
            }
        }
        // No key: round robin.
        assert_eq!(spread(&pool, 300, |_| None).len(), 3);
    }
}
