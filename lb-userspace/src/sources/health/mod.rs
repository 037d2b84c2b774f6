//! Backend health checks: the probes, the rise/fall state machine, and a task per backend.
//!
//! A backend that stops answering must stop receiving new flows (weight 0 in its VIP's Maglev
//! table) without anyone editing the configuration, and come back by itself. This module only
//! observes: it publishes a [`HealthMap`] on a `watch` channel, and the desired-state stage turns
//! it into weights and VIP state, so the data flow stays one-way. The channel is woken only when
//! a backend flips or its error changes, so a healthy fleet costs the reconciler nothing.

use std::{
    collections::BTreeMap,
    hash::{DefaultHasher, Hash, Hasher},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, SystemTime},
};

use serde::{Deserialize, Serialize};
use tokio::{
    net::{TcpStream, UdpSocket},
    sync::watch,
    task::AbortHandle,
    time::Instant,
};

use crate::config::{CheckKind, HealthCheck, format_duration};
mod http;
#[cfg(test)]
mod http_tests;
mod local;
pub use local::{ErrorCounts, HealthErrors};

/// Most of an HTTP body searched for `expect_body`: health pages are small, and a huge one
/// must not cost the agent memory.
const MAX_BODY: usize = 64 * 1024;
/// Largest UDP reply.
const MAX_DATAGRAM: usize = 65535;

/// Why one probe failed. Messages avoid per-attempt details (byte counts, reply text) so that
/// a backend failing the same way keeps the same `last_error` and does not wake the reconciler.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProbeError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("connect: no answer within {0}")]
    ConnectTimeout(String),
    /// A socket operation other than connect failed (`op` says which).
    #[error("{op}: {message}")]
    Io { op: &'static str, message: String },
    #[error("no HTTP response within {0}")]
    HttpTimeout(String),
    #[error("bad HTTP response: {0}")]
    BadResponse(String),
    #[error("HTTP status {got}, expected {expected}")]
    Status { got: u16, expected: String },
    #[error("HTTP body does not contain {expected:?}")]
    Body { expected: String },
    #[error("no reply within {0}")]
    NoReply(String),
    #[error("reply does not contain {expected:?}")]
    Reply { expected: String },
    /// This host could not run the probe (see `local.rs`): says nothing of the backend.
    #[error("{op}: {message} (this host's error, not the backend's)")]
    Local { op: &'static str, message: String },
}

impl ProbeError {
    pub fn is_local(&self) -> bool {
        matches!(self, ProbeError::Local { .. })
    }
}

/// Runs one check of `kind` against `addr`, bounded by `timeout` as a whole.
pub async fn probe(addr: IpAddr, kind: &CheckKind, timeout: Duration) -> Result<(), ProbeError> {
    let deadline = Instant::now() + timeout;
    let target = SocketAddr::new(addr, kind.port());
    match kind {
        CheckKind::Tcp { .. } => connect(target, deadline, timeout).await.map(drop),
        CheckKind::Http(check) => {
            let stream = connect(target, deadline, timeout).await?;
            tokio::time::timeout_at(deadline, http::probe_http(stream, target, check))
                .await
                .map_err(|_| ProbeError::HttpTimeout(format_duration(timeout)))?
        }
        CheckKind::Grpc(check) => {
            let stream = connect(target, deadline, timeout).await?;
            tokio::time::timeout_at(deadline, http::probe_grpc(stream, target, check))
                .await
                .map_err(|_| ProbeError::HttpTimeout(format_duration(timeout)))?
        }
        CheckKind::Udp { send, expect, .. } => tokio::time::timeout_at(deadline, udp_exchange(target, send, expect))
            .await
            .map_err(|_| ProbeError::NoReply(format_duration(timeout)))?,
    }
}

async fn connect(target: SocketAddr, deadline: Instant, timeout: Duration) -> Result<TcpStream, ProbeError> {
    match tokio::time::timeout_at(deadline, local::connect(target)).await {
        Err(_) => Err(ProbeError::ConnectTimeout(format_duration(timeout))),
        Ok(Err(e)) if e.local => Err(ProbeError::Local { op: "connect", message: describe(&e.error) }),
        Ok(Err(e)) => Err(ProbeError::Connect(describe(&e.error))),
        Ok(Ok(stream)) => Ok(stream),
    }
}

/// `Connection refused (os error 111)` → `connection refused`: the errno adds nothing for an
/// operator, and a stable text keeps `last_error` stable.
pub(super) fn describe(e: &io::Error) -> String {
    let text = e.to_string();
    let text = match text.find(" (os error ") {
        Some(i) => &text[..i],
        None => &text,
    };
    let mut chars = text.chars();
    match chars.next() {
        Some(first) => first.to_lowercase().chain(chars).collect(),
        None => String::new(),
    }
}

fn io_error(op: &'static str, e: &io::Error) -> ProbeError {
    ProbeError::Io { op, message: describe(e) }
}

/// The default Host header: the backend's address, with the port unless it is 80.
pub(super) fn host_header(target: SocketAddr) -> String {
    match (target.ip(), target.port()) {
        (IpAddr::V4(a), 80) => a.to_string(),
        (IpAddr::V6(a), 80) => format!("[{a}]"),
        _ => target.to_string(),
    }
}

async fn udp_exchange(target: SocketAddr, send: &[u8], expect: &Option<Vec<u8>>) -> Result<(), ProbeError> {
    let local: SocketAddr = match target {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let local_error = |op, e: &io::Error| ProbeError::Local { op, message: describe(e) };
    let socket = UdpSocket::bind(local).await.map_err(|e| local_error("bind", &e))?;
    // Connected, so that the kernel reports an ICMP port-unreachable as ECONNREFUSED. Connecting
    // a UDP socket only looks up our route: its errors are ours.
    socket.connect(target).await.map_err(|e| local_error("connect", &e))?;
    socket
        .send(send)
        .await
        .map_err(|e| if local::is_local(&e) { local_error("send", &e) } else { udp_error("send", &e) })?;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    let n = socket.recv(&mut buf).await.map_err(|e| udp_error("receive", &e))?;
    match expect {
        Some(expected) if !contains(&buf[..n], expected) => {
            Err(ProbeError::Reply { expected: String::from_utf8_lossy(expected).into_owned() })
        }
        _ => Ok(()),
    }
}

fn udp_error(op: &'static str, e: &io::Error) -> ProbeError {
    if e.kind() == io::ErrorKind::ConnectionRefused {
        ProbeError::Io { op, message: "connection refused (ICMP port unreachable)".to_owned() }
    } else {
        io_error(op, e)
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

pub(super) fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || find(haystack, needle).is_some()
}

/// Up/down with hysteresis: `rise` consecutive successes bring a down backend up, `fall`
/// consecutive failures take an up backend down.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    rise: u32,
    fall: u32,
    /// Consecutive results that disagree with `up`.
    streak: u32,
}

impl HealthState {
    /// Starts up: an agent restart must not drop traffic while the first checks run.
    /// Thresholds below 1 count as 1.
    pub fn new(rise: u32, fall: u32) -> Self {
        HealthState { up: true, rise: rise.max(1), fall: fall.max(1), streak: 0 }
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Records one probe result; returns the new state when it flips.
    pub fn record(&mut self, ok: bool) -> Option<bool> {
        if ok == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let threshold = if self.up { self.fall } else { self.rise };
        if self.streak < threshold {
            return None;
        }
        self.up = ok;
        self.streak = 0;
        Some(ok)
    }
}

/// One backend of one VIP to check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Target {
    pub vip: String,
    /// The backend's identity: its address as text.
    pub backend: String,
    pub addr: IpAddr,
    pub check: HealthCheck,
}

impl Target {
    fn key(&self) -> (String, String) {
        (self.vip.clone(), self.backend.clone())
    }
}

/// The latest health of one backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendHealth {
    pub up: bool,
    /// The most recent failure, kept after recovery so an operator can see why it flapped.
    pub last_error: Option<String>,
    /// Probes run, and how many of them failed.
    pub checks: u64,
    pub failures: u64,
    /// How long the probes took (the backend's, and this host's, answer time).
    #[serde(default)]
    pub latency: Latency,
}

impl Default for BackendHealth {
    fn default() -> Self {
        BackendHealth { up: true, last_error: None, checks: 0, failures: 0, latency: Latency::default() }
    }
}

/// Upper bounds (seconds) of the probe-duration histogram's buckets: a LAN answer is well under
/// a millisecond, a timeout a second or more.
pub const LATENCY_BOUNDS: [f64; 12] = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];

/// Probe durations, counted per bucket of `LATENCY_BOUNDS` (and beyond the last).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Latency {
    /// Probes per bucket, not cumulative; one more than the bounds: beyond the last.
    pub counts: [u64; LATENCY_BOUNDS.len() + 1],
    pub sum_micros: u64,
}

impl Latency {
    pub fn record(&mut self, took: Duration) {
        let seconds = took.as_secs_f64();
        let bucket = LATENCY_BOUNDS.iter().position(|bound| seconds <= *bound).unwrap_or(LATENCY_BOUNDS.len());
        self.counts[bucket] += 1;
        self.sum_micros = self.sum_micros.saturating_add(u64::try_from(took.as_micros()).unwrap_or(u64::MAX));
    }
}

/// Health by (VIP name, backend identity). Backends without a check are absent (always healthy).
pub type HealthMap = BTreeMap<(String, String), BackendHealth>;

/// Runs one task per target and publishes their results.
///
/// Counters in the published map are updated in place on every probe, but receivers are woken
/// only when a backend flips or its `last_error` changes.
#[derive(Debug)]
pub struct Checker {
    tx: watch::Sender<HealthMap>,
    errors: Arc<HealthErrors>,
    running: BTreeMap<(String, String), Running>,
}

#[derive(Debug)]
struct Running {
    target: Target,
    task: AbortHandle,
    /// Set under the channel's lock when the target is removed: a task that is aborted while
    /// running finishes its current poll, and must not write into a successor's entry.
    stopped: Arc<AtomicBool>,
}

impl Checker {
    /// Starts checking `targets` (must be called within a tokio runtime). The receiver starts
    /// with every target up; targets share no (vip, backend) key (a later duplicate wins).
    pub fn start(targets: Vec<Target>) -> (Checker, watch::Receiver<HealthMap>) {
        let targets = dedup(targets);
        let map = targets.keys().map(|key| (key.clone(), BackendHealth::default())).collect();
        let (tx, rx) = watch::channel(map);
        let mut checker = Checker { tx, errors: Arc::default(), running: BTreeMap::new() };
        for (key, target) in targets {
            checker.spawn(key, target);
        }
        (checker, rx)
    }

    /// Switches to a new set of targets (a reload). Targets whose (vip, backend, addr, check)
    /// is unchanged keep their task and state; changed and new ones start afresh (up); removed
    /// ones stop. Receivers are woken if the set changed.
    pub fn replace(&mut self, targets: Vec<Target>) {
        let mut targets = dedup(targets);
        let removed: Vec<(String, String)> = self
            .running
            .iter()
            .filter(|(key, running)| targets.get(*key) != Some(&running.target))
            .map(|(key, _)| key.clone())
            .collect();
        let stopped: Vec<Running> = removed.iter().filter_map(|key| self.running.remove(key)).collect();
        targets.retain(|key, _| !self.running.contains_key(key));
        self.tx.send_if_modified(|map| {
            for running in &stopped {
                running.stopped.store(true, Ordering::Relaxed);
                map.remove(&running.target.key());
            }
            for key in targets.keys() {
                map.insert(key.clone(), BackendHealth::default());
            }
            !stopped.is_empty() || !targets.is_empty()
        });
        for running in stopped {
            running.task.abort();
        }
        for (key, target) in targets {
            self.spawn(key, target);
        }
    }

    /// Probe failures since the start, by whose fault (every task counts into these).
    pub fn errors(&self) -> Arc<HealthErrors> {
        Arc::clone(&self.errors)
    }

    /// The targets being checked.
    pub fn targets(&self) -> impl Iterator<Item = &Target> {
        self.running.values().map(|r| &r.target)
    }

    fn spawn(&mut self, key: (String, String), target: Target) {
        let stopped = Arc::new(AtomicBool::new(false));
        // Different per target and per agent start, so checks of many backends (and of many
        // agents checking the same backend) spread over the interval.
        let mut hasher = DefaultHasher::new();
        (&target.vip, &target.backend, SystemTime::now()).hash(&mut hasher);
        let jitter = Jitter(hasher.finish());
        let errors = Arc::clone(&self.errors);
        let task =
            tokio::spawn(run(target.clone(), key.clone(), self.tx.clone(), Arc::clone(&stopped), jitter, errors))
                .abort_handle();
        self.running.insert(key, Running { target, task, stopped });
    }
}

impl Drop for Checker {
    fn drop(&mut self) {
        for running in self.running.values() {
            running.task.abort();
        }
    }
}

fn dedup(targets: Vec<Target>) -> BTreeMap<(String, String), Target> {
    targets.into_iter().map(|t| (t.key(), t)).collect()
}

/// The probe loop of one target.
async fn run(
    target: Target,
    key: (String, String),
    tx: watch::Sender<HealthMap>,
    stopped: Arc<AtomicBool>,
    mut jitter: Jitter,
    errors: Arc<HealthErrors>,
) {
    let check = &target.check;
    tokio::time::sleep(check.interval.mul_f64(jitter.unit())).await;
    let mut state = HealthState::new(check.rise, check.fall);
    let mut next = Instant::now();
    loop {
        let started = Instant::now();
        let result = probe(target.addr, &check.kind, check.timeout).await;
        let took = started.elapsed();
        if let Err(e) = &result {
            if e.is_local() {
                // Counts toward neither rise nor fall: the backend keeps its state.
                errors.local_error(&target.vip, &target.backend, &e.to_string());
                next = (next + check.interval.mul_f64(0.9 + 0.2 * jitter.unit())).max(Instant::now());
                tokio::time::sleep_until(next).await;
                continue;
            }
            errors.backend_failure();
        }
        let flip = state.record(result.is_ok());
        let error = result.err().map(|e| e.to_string());
        let mut live = true;
        tx.send_if_modified(|map| {
            // The channel's lock orders this against `replace`, which sets the flag under it.
            let entry = if stopped.load(Ordering::Relaxed) { None } else { map.get_mut(&key) };
            let Some(health) = entry else {
                live = false;
                return false;
            };
            health.checks += 1;
            health.latency.record(took);
            let mut changed = false;
            if let Some(up) = flip {
                health.up = up;
                changed = true;
            }
            if let Some(e) = &error {
                health.failures += 1;
                if health.last_error.as_ref() != Some(e) {
                    health.last_error = Some(e.clone());
                    changed = true;
                }
            }
            changed
        });
        if !live {
            return;
        }
        let (vip, backend) = (&target.vip, &target.backend);
        let error = error.as_deref().unwrap_or_default();
        match flip {
            Some(false) => tracing::warn!(vip, backend, error, fall = check.fall, "backend down: health check failing"),
            Some(true) => tracing::info!(vip, backend, rise = check.rise, "backend up: health check passing"),
            None if !error.is_empty() => tracing::debug!(vip, backend, error, "health check failed"),
            None => {}
        }
        next += check.interval.mul_f64(0.9 + 0.2 * jitter.unit());
        // A probe ends within its timeout, shorter than the interval; only a stalled runtime
        // leaves `next` behind, and then checking now beats a burst of catch-up probes.
        next = next.max(Instant::now());
        tokio::time::sleep_until(next).await;
    }
}

/// SplitMix64: a few bits of randomness per probe without a `rand` dependency.
#[derive(Debug, Clone)]
struct Jitter(u64);

impl Jitter {
    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests;
