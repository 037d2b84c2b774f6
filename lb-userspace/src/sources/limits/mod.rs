//! Global limits: one threshold held by all nodes together. Each node enforces its own share
//! (the L7 tier's token buckets read it); a task here renews the shares every
//! `global_limits.renew_every`: this node's recent demand per limit goes to Redis, every live
//! node's comes back, and the share follows (`share::share_of`; a concurrency limit's slots are
//! granted by Redis itself, see `redis::EXCHANGE`). No request waits on Redis.
//!
//! While Redis does not answer, each node takes threshold ÷ nodes (the count learned from Redis,
//! else `global_limits.nodes`), says so once in the log, in `xlb status` and in the metrics,
//! and goes back to shared mode at the first answer.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, Weak,
        atomic::{AtomicU32, Ordering},
    },
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::config::GlobalLimits;

mod metrics;
pub mod redis;
pub mod share;

pub use metrics::gather;
pub use share::{Share, ShareHandle, ShareKind, share_of};

/// How the shares are set now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LimitMode {
    /// No global limit configured.
    Off,
    /// Shares follow every node's demand, through Redis.
    Shared,
    /// Redis is unreachable: threshold ÷ nodes each.
    Fallback,
}

/// What readers (status, metrics) see of the global limits; published after each renewal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitsView {
    pub mode: LimitMode,
    pub redis: String,
    /// Live nodes Redis last reported (the largest count over the limits).
    pub nodes: u32,
    /// The last exchange's round trip, in milliseconds.
    pub latency_ms: f64,
    pub errors: u64,
    pub last_error: Option<String>,
    pub limits: Vec<LimitStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LimitStatus {
    pub name: String,
    pub threshold: u32,
    /// A concurrency limit (its share is slots: requests or connections at once).
    #[serde(default)]
    pub concurrent: bool,
    /// Requests/s this node may admit now, or for a concurrency limit its slots.
    pub share: f64,
    /// This node's recent demand (requests/s, admitted or not).
    pub demand: f64,
    pub admitted: u64,
    pub limited: u64,
}

// Its numbers are rates and latencies, never NaN: equality is total here.
impl Eq for LimitsView {}

impl LimitsView {
    /// The lines `xlb status` shows.
    pub fn render(&self) -> String {
        let mut out = match self.mode {
            LimitMode::Off => return String::new(),
            LimitMode::Shared => format!(
                "global limits: shared through Redis {} ({} nodes live, {:.1} ms round trip)\n",
                self.redis, self.nodes, self.latency_ms
            ),
            LimitMode::Fallback => format!(
                "global limits: FALLBACK — Redis {} unreachable ({}); each limit admits threshold ÷ {} here\n",
                self.redis,
                self.last_error.as_deref().unwrap_or("no answer"),
                self.nodes.max(1)
            ),
        };
        if !self.limits.is_empty() {
            out.push_str(&format!(
                "  {:<32} {:>10} {:>10} {:>10} {:>12} {:>12}\n",
                "limit", "threshold", "share", "demand/s", "admitted", "limited"
            ));
        }
        for l in &self.limits {
            let share = if l.concurrent { format!("{} slots", l.share as u64) } else { format!("{:.1}/s", l.share) };
            out.push_str(&format!(
                "  {:<32} {:>10} {:>10} {:>10.1} {:>12} {:>12}\n",
                l.name, l.threshold, share, l.demand, l.admitted, l.limited
            ));
        }
        out
    }

    fn off() -> Self {
        LimitsView {
            mode: LimitMode::Off,
            redis: String::new(),
            nodes: 0,
            latency_ms: 0.0,
            errors: 0,
            last_error: None,
            limits: Vec::new(),
        }
    }
}

/// The shares in use, by name; the L7 tier takes handles, the renewal task sets their rates.
#[derive(Debug, Default)]
struct Registry {
    shares: Mutex<BTreeMap<String, Weak<Share>>>,
    /// Nodes a share divides by until Redis answers.
    nodes: AtomicU32,
    /// A new share wants its first exchange now, not at the next renewal.
    added: tokio::sync::Notify,
}

impl Registry {
    fn live(&self) -> Vec<Arc<Share>> {
        let mut shares = self.shares.lock().unwrap_or_else(|p| p.into_inner());
        shares.retain(|_, weak| weak.strong_count() > 0);
        shares.values().filter_map(Weak::upgrade).collect()
    }
}

/// The agent's handle on global limits: shares for the L7 tier, settings from reloads, the
/// view for readers.
#[derive(Debug, Clone)]
pub struct GlobalLimiter {
    registry: Arc<Registry>,
    settings: Arc<watch::Sender<Option<GlobalLimits>>>,
    view: Arc<ArcSwap<LimitsView>>,
}

impl GlobalLimiter {
    /// Starts the renewal task on the current runtime (idle until settings say where Redis is).
    pub fn start(settings: Option<GlobalLimits>) -> Self {
        let registry = Arc::new(Registry::default());
        registry.nodes.store(settings.as_ref().map_or(1, |s| s.nodes), Ordering::Relaxed);
        let (tx, rx) = watch::channel(settings);
        let view = Arc::new(ArcSwap::from_pointee(LimitsView::off()));
        tokio::spawn(renew(Arc::clone(&registry), rx, Arc::clone(&view)));
        GlobalLimiter { registry, settings: Arc::new(tx), view }
    }

    /// A reload's `global_limits` (the task reconnects if Redis moved).
    pub fn configure(&self, settings: Option<GlobalLimits>) {
        if let Some(s) = &settings
            && self.view.load().mode != LimitMode::Shared
        {
            self.registry.nodes.store(s.nodes, Ordering::Relaxed);
        }
        self.settings.send_if_modified(|current| {
            let changed = *current != settings;
            *current = settings;
            changed
        });
    }

    /// The share of limit `name` (`vip/route`) of `threshold`: the one in use while the
    /// threshold holds, else a new one (see `Share::new`), renewed at once.
    pub fn share(&self, name: &str, threshold: u32, kind: ShareKind) -> ShareHandle {
        let mut shares = self.registry.shares.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(share) =
            shares.get(name).and_then(Weak::upgrade).filter(|s| s.threshold == threshold && s.kind == kind)
        {
            return share;
        }
        let nodes = self.registry.nodes.load(Ordering::Relaxed);
        let share = Arc::new(Share::new(name.to_owned(), threshold, nodes, kind));
        shares.insert(name.to_owned(), Arc::downgrade(&share));
        self.registry.added.notify_one();
        share
    }

    pub fn view(&self) -> Arc<LimitsView> {
        self.view.load_full()
    }
}

/// Longest wait for Redis to accept a connection; reconnections are tried at most this often.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(250);
const RECONNECT_EVERY: Duration = Duration::from_millis(500);

/// The renewal loop: every `renew_every`, one exchange for all limits.
async fn renew(
    registry: Arc<Registry>,
    mut settings: watch::Receiver<Option<GlobalLimits>>,
    view: Arc<ArcSwap<LimitsView>>,
) {
    let mut state = Renewal::default();
    loop {
        let current = settings.borrow_and_update().clone();
        let Some(current) = current else {
            view.store(Arc::new(LimitsView::off()));
            if settings.changed().await.is_err() {
                return;
            }
            continue;
        };
        if state.redis.as_deref() != Some(current.redis.as_str()) {
            state.connection = None;
            state.redis = Some(current.redis.clone());
        }
        tokio::select! {
            changed = settings.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
            () = tokio::time::sleep(current.renew_every) => {}
            () = registry.added.notified() => {}
        }
        let shares = registry.live();
        let published = state.round(&current, &shares, &registry).await;
        view.store(Arc::new(published));
    }
}

/// What the renewal loop keeps between rounds.
#[derive(Default)]
struct Renewal {
    redis: Option<String>,
    connection: Option<::redis::aio::MultiplexedConnection>,
    last_connect: Option<Instant>,
    last_round: Option<Instant>,
    demands: BTreeMap<String, share::Demand>,
    mode: Option<LimitMode>,
    latency_ms: f64,
    errors: u64,
    last_error: Option<String>,
    nodes: u32,
}

impl Renewal {
    async fn round(&mut self, settings: &GlobalLimits, shares: &[Arc<Share>], registry: &Registry) -> LimitsView {
        let now = Instant::now();
        let over = self.last_round.map_or(settings.renew_every, |t| now - t);
        self.last_round = Some(now);
        self.demands.retain(|name, _| shares.iter().any(|s| &s.name == name));
        let offers: Vec<redis::Offer> = shares
            .iter()
            .map(|s| redis::Offer {
                demand: self.demands.entry(s.name.clone()).or_default().observe(s.take_seen(), over),
                slots: (s.kind == ShareKind::Concurrency).then(|| (s.holding(), s.threshold)),
            })
            .collect();
        // Also with no limit in use: the mode then still says whether Redis answers.
        let outcome = self.exchange(settings, shares, &offers).await;
        match outcome {
            Ok(per_limit) => {
                for ((share, offer), answer) in shares.iter().zip(&offers).zip(&per_limit) {
                    match answer.slots {
                        Some(slots) => share.set_slots(slots),
                        None => {
                            let all: Vec<f64> = answer.live.iter().map(|(_, d)| *d).collect();
                            share.set_rate(share_of(f64::from(share.threshold), offer.demand, &all));
                        }
                    }
                }
                if let Some(most) = per_limit.iter().map(|answer| answer.live.len()).max() {
                    self.nodes = most as u32;
                    registry.nodes.store(self.nodes.max(1), Ordering::Relaxed);
                }
                if self.mode == Some(LimitMode::Fallback) {
                    tracing::info!(redis = %settings.redis, nodes = self.nodes, "global limits: Redis answers again; shares follow demand");
                }
                self.mode = Some(LimitMode::Shared);
            }
            Err(e) => {
                self.connection = None;
                self.errors += 1;
                let nodes = registry.nodes.load(Ordering::Relaxed).max(1);
                self.nodes = nodes;
                for share in shares {
                    share.fallback(nodes);
                }
                if self.mode != Some(LimitMode::Fallback) {
                    tracing::warn!(
                        redis = %settings.redis,
                        error = %e,
                        nodes,
                        "global limits: Redis unreachable; each limit admits threshold ÷ {nodes} here until it answers"
                    );
                }
                self.last_error = Some(e.to_string());
                self.mode = Some(LimitMode::Fallback);
            }
        }
        LimitsView {
            mode: self.mode.unwrap_or(LimitMode::Shared),
            redis: settings.redis.clone(),
            nodes: self.nodes,
            latency_ms: self.latency_ms,
            errors: self.errors,
            last_error: self.last_error.clone(),
            limits: shares
                .iter()
                .zip(&offers)
                .map(|(s, offer)| {
                    let (admitted, limited) = s.totals();
                    LimitStatus {
                        name: s.name.clone(),
                        threshold: s.threshold,
                        concurrent: s.kind == ShareKind::Concurrency,
                        share: s.rate(),
                        demand: offer.demand,
                        admitted,
                        limited,
                    }
                })
                .collect(),
        }
    }

    async fn exchange(
        &mut self,
        settings: &GlobalLimits,
        shares: &[Arc<Share>],
        offers: &[redis::Offer],
    ) -> Result<Vec<redis::Exchanged>, redis::ExchangeError> {
        if self.connection.is_none() {
            if self.last_connect.is_some_and(|t| t.elapsed() < RECONNECT_EVERY) {
                return Err(redis::ExchangeError::Redis(
                    self.last_error.clone().unwrap_or_else(|| "not connected".into()),
                ));
            }
            self.last_connect = Some(Instant::now());
            self.connection = Some(redis::connect(&settings.redis, CONNECT_TIMEOUT).await?);
        }
        let Some(connection) = self.connection.as_mut() else { unreachable!("connected above") };
        let keys: Vec<String> = shares.iter().map(|s| format!("{}:limit:{}", settings.key_prefix, s.name)).collect();
        // A node counts as gone after three renewals without news.
        let stale = (settings.renew_every * 3).max(Duration::from_millis(300));
        let started = Instant::now();
        let answer = redis::exchange(connection, &keys, &settings.node, offers, stale, settings.renew_every).await?;
        self.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        Ok(answer)
    }
}
