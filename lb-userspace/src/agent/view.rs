//! What the agent publishes for its readers — the admin socket, `/metrics`, the housekeeping
//! thread. The control thread swaps in a new [`AgentView`] after each pass (and every
//! `PUBLISH_EVERY` during a long one); readers load it without a lock and read the counters
//! through their own map handles, so no reader ever waits on a reconcile pass.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex, OnceLock, atomic::AtomicU64},
};

use arc_swap::ArcSwap;
use lb_common::{NodeConfig, VipKey};
use tokio::sync::watch;

use super::{sd_notify::Notifier, state_file::StateStatus};
use crate::{
    announce::bgp::{Announce, PeerStatus, Speaker},
    apply::conns::ConnCounts,
    apply::dataplane::{Counters, DataplaneError, FlowTableCounter, FlowTableUsage, NatTables},
    apply::nat::NatUsage,
    apply::reconcile::AppliedVip,
    config::Config,
    l7,
    serve::admin::{AttachmentStatus, ReloadOutcome, Status},
    serve::metrics,
    serve::page,
    serve::stats::Snapshot,
    serve::summary::{NodeState, Summary},
    sources::health::{HealthErrors, HealthMap},
    sources::jiffies::KernelClock,
    sources::limits::{self, GlobalLimiter, LimitMode},
};

/// The agent's state as of its last published pass.
#[derive(Debug, Clone)]
pub struct AgentView {
    pub config: Arc<Config>,
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    /// `xlb drain node` in effect.
    pub node_drained: bool,
    /// What the maps hold, VIP by VIP.
    pub applied: BTreeMap<VipKey, AppliedVip>,
    /// The node settings last written (`None` before the first pass).
    pub node: Option<NodeConfig>,
    /// VIPs still to write: a pass in progress.
    pub pending_vips: usize,
    /// Why the last pass stopped short, while it is being retried.
    pub reconcile_error: Option<String>,
    /// The state file: where, what was restored at start, whether writes fail.
    pub state: StateStatus,
}

impl AgentView {
    /// Before the first pass.
    pub fn empty(config: Arc<Config>) -> Self {
        AgentView {
            config,
            config_generation: 1,
            last_reload: None,
            node_drained: false,
            applied: BTreeMap::new(),
            node: None,
            pending_vips: 0,
            reconcile_error: None,
            state: StateStatus::default(),
        }
    }
}

/// Counts the housekeeping thread keeps (each a copy under a lock held only to copy it).
#[derive(Debug, Clone, Default)]
pub struct Usage {
    pub flow_table: FlowTableUsage,
    pub nat: NatUsage,
    /// Live connections per backend slot (shared: a copy of the lock's content stays cheap).
    pub conns: Arc<ConnCounts>,
    /// The kernel's jiffies clock, once measured (`None`: not yet, or unreadable).
    pub clock: Option<KernelClock>,
    /// The source prefixes the new-flow limits refused most lately.
    pub limited_sources: Vec<crate::apply::source_report::LimitedSource>,
    /// VIPs in SYN cookies' automatic mode that are over their threshold (answering with cookies).
    pub syn_cookies_on: Vec<String>,
}

/// Everything readers share with the control thread.
#[derive(Debug)]
pub struct Shared {
    pub view: ArcSwap<AgentView>,
    pub usage: Mutex<Usage>,
    /// The BGP speaker (when configured): started, replaced and stopped by the control thread
    /// under this lock, which is never held during a pass.
    pub speaker: Mutex<Option<Speaker>>,
    /// The L7 tier (its own listeners and routes); locked only for its own short operations.
    pub l7: Mutex<l7::Tier>,
    /// Global limits' shares and their state (read without the L7 tier's lock).
    pub global_limits: GlobalLimiter,
    /// What the VIPs' connection limits did, published by the limits thread every second.
    pub conn_limits: ArcSwap<Vec<crate::apply::conn_limits::ConnLimitStatus>>,
    /// What the speaker announces.
    pub announce: watch::Sender<Announce>,
    pub health: watch::Receiver<HealthMap>,
    pub config_path: String,
    /// The runtime the BGP sessions and BFD run on: a thread of their own, so neither health
    /// checks nor readers on the agent's runtime can delay a keepalive.
    pub bgp_runtime: tokio::runtime::Handle,
    /// Counted by the control thread at every step and idle tick: the watchdog pings only while
    /// it moves.
    pub heartbeat: Arc<AtomicU64>,
    /// systemd's notification socket (does nothing outside systemd).
    pub notifier: Notifier,
    /// XDP on each interface, as the attachment watch last saw it. The watch holds the lock
    /// while it checks (and perhaps re-attaches) an interface; readers copy it.
    pub attachments: Mutex<Vec<AttachmentStatus>>,
    /// The health checker's failure counters.
    pub health_errors: Arc<HealthErrors>,
    /// The connection table, mapped for reading (set once by the housekeeping thread).
    pub flow_table: OnceLock<FlowTableCounter>,
    /// Held by an `xlb conns` scan: one at a time.
    pub conns_scan: Mutex<()>,
    /// The NAT tables, for `xlb conns` of a NAT VIP (handles of its own; set once at start).
    pub nat_reader: OnceLock<Mutex<NatTables>>,
    counters: Counters,
}

/// Locks a mutex whose holder may have panicked: the data behind it stays usable.
pub fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Shared {
    /// `health`: the checker's results and its failure counters.
    pub fn new(
        view: AgentView,
        l7: l7::Tier,
        (health, health_errors): (watch::Receiver<HealthMap>, Arc<HealthErrors>),
        counters: Counters,
        config_path: String,
        bgp_runtime: tokio::runtime::Handle,
        notifier: Notifier,
    ) -> Self {
        Shared {
            view: ArcSwap::from_pointee(view),
            usage: Mutex::new(Usage::default()),
            speaker: Mutex::new(None),
            global_limits: l7.global_limits().clone(),
            conn_limits: ArcSwap::from_pointee(Vec::new()),
            l7: Mutex::new(l7),
            // Nothing until XDP is attached.
            announce: watch::Sender::new(Announce::new()),
            health,
            config_path,
            bgp_runtime,
            heartbeat: Arc::new(AtomicU64::new(0)),
            notifier,
            attachments: Mutex::new(Vec::new()),
            health_errors,
            flow_table: OnceLock::new(),
            nat_reader: OnceLock::new(),
            conns_scan: Mutex::new(()),
            counters,
        }
    }

    /// Marks `iface` detached by the operator, so the watch leaves it alone; false if the agent
    /// does not run on it.
    pub fn operator_detach(&self, iface: &str) -> bool {
        let mut table = lock(&self.attachments);
        let Some(status) = table.iter_mut().find(|s| s.iface == iface) else { return false };
        status.operator_detached = true;
        status.attached = false;
        status.reason = Some("detached by the operator (xlb detach)".to_owned());
        true
    }

    pub fn peers(&self) -> Vec<PeerStatus> {
        lock(&self.speaker).as_ref().map(Speaker::status).unwrap_or_default()
    }

    /// Counters as of now, with the VIPs and health as of the last published pass.
    pub fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        self.snapshot_of(&self.view.load())
    }

    /// The snapshot of one loaded view (a reply built from two loads could mix two passes).
    fn snapshot_of(&self, view: &AgentView) -> Result<Snapshot, DataplaneError> {
        let health = self.health.borrow().clone();
        let usage = lock(&self.usage).clone();
        let mut snapshot = Snapshot::read(&self.counters, &view.applied, &health, &usage.conns)?;
        snapshot.nat = usage.nat;
        snapshot.flow_table = usage.flow_table;
        snapshot.limited_sources = usage.limited_sources;
        snapshot.mark_syn_cookies_on(&usage.syn_cookies_on);
        snapshot.l7 = lock(&self.l7).status();
        Ok(snapshot)
    }

    pub fn status(&self) -> Result<Status, DataplaneError> {
        let view = self.view.load();
        let snapshot = self.snapshot_of(&view)?;
        Ok(Status {
            node: self.node_state(&view),
            announced: self.announce.borrow().iter().map(ToString::to_string).collect(),
            snapshot,
        })
    }

    /// The agent's own state as of `view`, which heads both status replies.
    fn node_state(&self, view: &AgentView) -> NodeState {
        NodeState {
            config_path: self.config_path.clone(),
            config_generation: view.config_generation,
            last_reload: view.last_reload.clone(),
            node_drained: view.node_drained,
            peers: self.peers(),
            pending_vips: view.pending_vips,
            reconcile_error: view.reconcile_error.clone(),
            state: Some(Box::new(view.state.clone())),
            interfaces: lock(&self.attachments).clone(),
            global_limits: Some(self.global_limits.view()).filter(|v| v.mode != LimitMode::Off).map(|v| (*v).clone()),
            conn_limits: (**self.conn_limits.load()).clone(),
        }
    }

    /// What `xlb status` shows: from the view and the housekeeping counts alone, no map read.
    pub fn summary(&self) -> Summary {
        let view = self.view.load();
        let usage = lock(&self.usage).clone();
        let node = self.node_state(&view);
        let announced = self.announce.borrow().len();
        let mut summary = Summary::of(node, &view.applied, announced, usage.flow_table, usage.nat);
        summary.limited_sources = usage.limited_sources;
        summary.syn_cookies_on = usage.syn_cookies_on;
        summary
    }

    /// The status page's JSON: the view, one counter snapshot of it, and the announcements.
    pub fn status_page(&self) -> Result<String, String> {
        let view = self.view.load();
        let snapshot = self.snapshot_of(&view).map_err(|e| e.to_string())?;
        let at_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let announce = self.announce.borrow().clone();
        let page = page::StatusPage::of(self.node_state(&view), &snapshot, &view.applied, &announce, at_ms);
        serde_json::to_string(&page).map_err(|e| e.to_string())
    }

    /// `/readyz`: the agent serves — its first configuration is in the data plane, the last
    /// pass did not fail, and XDP is attached to every interface with the link up. From the
    /// published view: never waits on the control thread.
    pub fn readiness(&self) -> Result<String, String> {
        let view = self.view.load();
        if view.config_generation == 0 {
            return Err("not ready: the configuration is not in the data plane yet".to_owned());
        }
        if let Some(error) = &view.reconcile_error {
            return Err(format!("not ready: the last pass failed: {error}"));
        }
        for a in lock(&self.attachments).iter() {
            if !a.attached {
                return Err(format!("not ready: XDP is not attached to {}", a.iface));
            }
            if a.link_down {
                return Err(format!("not ready: the link of {} is down", a.iface));
            }
        }
        Ok(format!("ready: configuration {} applied, XDP attached", view.config_generation))
    }

    /// The `/metrics` text.
    pub fn metrics(&self) -> Result<String, String> {
        let view = self.view.load();
        let snapshot = self.snapshot_of(&view).map_err(|e| e.to_string())?;
        let mut l7 = lock(&self.l7).metrics().gather();
        l7.extend(limits::gather(&self.global_limits.view()));
        l7.extend(crate::apply::conn_limits::ConnLimitStatus::gather(&self.conn_limits.load()));
        Ok(metrics::render(
            &snapshot,
            &metrics::AgentInfo {
                config_generation: view.config_generation,
                last_reload: view.last_reload.clone(),
                peers: self.peers(),
                attachments: lock(&self.attachments).clone(),
                health_errors: self.health_errors.snapshot(),
                health: self.health.borrow().clone(),
                l7,
            },
        ))
    }
}
