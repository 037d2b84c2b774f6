//! The control thread: the one owner of the agent's sources of desired state (config, health,
//! neighbours, drains and runtime weights) and of the maps' writer. It runs on its own OS
//! thread, at a lower CPU priority than the runtime that serves BGP, health checks, admin and
//! metrics, so neither a reload of thousands of VIPs nor its Maglev builds can hold those up.
//!
//! A pass goes in steps (`reconcile::STEP_VIPS` VIPs each, one RCU wait per step); between
//! steps it takes in whatever health and neighbour changes arrived, and VIPs losing a serving
//! backend go first. News also cuts short a step's wait for its Maglev builds (see
//! `apply::pass`) — so a backend going down is out within the writes of a step, reload or not.

use std::{
    collections::BTreeSet,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::sync::{mpsc, oneshot, watch};

mod overrides;
pub use overrides::{Override, prune_overrides};

use super::{
    RunOptions,
    config_reader::{ConfigRead, ConfigReader},
    node_facts,
    state_file::{Overrides, StateFile, StateStatus},
    view::AgentView,
    view::Shared,
    view::lock,
};
use crate::{
    announce::bgp::{Announce, Speaker},
    apply::dataplane::{Maps, TableSizes},
    apply::plan,
    apply::reconcile::{Changes, ReconcileError, Reconciler, STEP_VIPS},
    apply::{
        pass::{NewsWait, Pass},
        table_builds::BuildDone,
    },
    config::{self, Config},
    l7,
    serve::admin::{ReloadOutcome, Reply},
    sources::health::{Checker, HealthMap, Target},
    sources::neighbor::{MacMap, Resolver},
    state::desired::{self, BackendRef, BackendStates, DesiredState, NodeFacts},
    state::vip_state::Transitions,
};

/// How often readers see a long pass's progress.
const PUBLISH_EVERY: Duration = Duration::from_millis(250);
/// A failed pass is retried after this, doubling up to `RETRY_MAX`.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// What the rest of the agent asks of the control thread.
#[derive(Debug)]
pub enum Command {
    /// XDP is attached: VIPs that are up may be announced (and the BGP speaker starts).
    Attached,
    /// The attachment watch (or `xlb detach`) says XDP on `iface` is attached or not; with a
    /// `reply`, once the announcements follow.
    Attachment {
        iface: String,
        attached: bool,
        reply: Option<oneshot::Sender<Reply>>,
    },
    /// Re-read the config file (SIGHUP, or the file changed).
    Reload,
    /// A drain or runtime weight of one backend (`xlb drain`, `xlb weight`).
    Backend {
        vip: String,
        backend: String,
        change: Override,
        reply: oneshot::Sender<Reply>,
    },
    DrainNode {
        undo: bool,
        reply: oneshot::Sender<Reply>,
    },
    Plan {
        path: String,
        config: String,
        reply: oneshot::Sender<Reply>,
    },
}

/// Everything the control thread owns.
pub struct Control {
    pub opts: RunOptions,
    /// Flipped at each reload (`node.bpf_log`, or `--bpf-log`).
    pub drop_log: crate::apply::dataplane::drop_log::DropLogSwitch,
    pub maps: Maps,
    pub reconciler: Reconciler,
    pub facts: NodeFacts,
    pub sizes: TableSizes,
    pub config: Arc<Config>,
    /// Reads the file for reloads, off this thread.
    pub reader: ConfigReader,
    pub states: BackendStates,
    pub checker: Checker,
    pub health_rx: watch::Receiver<HealthMap>,
    pub resolver: Resolver,
    pub neighbors_rx: watch::Receiver<MacMap>,
    pub shared: Arc<Shared>,
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    pub node_drained: bool,
    pub attached: bool,
    /// Interfaces XDP was lost from (or detached from by the operator): the VIPs served
    /// through them are withdrawn.
    pub detached: BTreeSet<String>,
    /// The sources changed since desired state was last computed.
    pub dirty: bool,
    pub failure: Option<(String, Duration)>,
    /// Where drains and runtime weights are kept across restarts, and what `xlb status` says
    /// of it.
    pub state_file: StateFile,
    pub state: StateStatus,
    /// How often to count a heartbeat while idle (when a watchdog is pinged).
    pub heartbeat_tick: Option<Duration>,
    /// Each VIP's last logged state (up, panic, down).
    pub transitions: Transitions,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").field("config_generation", &self.config_generation).finish_non_exhaustive()
    }
}

enum Event {
    Command(Option<Command>),
    ConfigRead(Box<ConfigRead>),
    Health,
    Neighbors,
    Retry,
    /// Idle: only the heartbeat.
    Tick,
}

impl Control {
    /// The view readers see of the current state.
    pub fn view(&self, pending_vips: usize) -> AgentView {
        AgentView {
            config: Arc::clone(&self.config),
            config_generation: self.config_generation,
            last_reload: self.last_reload.clone(),
            node_drained: self.node_drained,
            applied: self.reconciler.applied().clone(),
            node: self.reconciler.node(),
            pending_vips,
            reconcile_error: self.failure.as_ref().map(|(e, _)| e.clone()),
            state: self.state.clone(),
        }
    }

    /// Shows the watchdog this thread is alive.
    fn beat(&self) {
        self.shared.heartbeat.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Writes the overrides in force to the state file; a failure is kept for `xlb status`.
    fn persist(&mut self) -> Result<(), String> {
        let overrides = Overrides::of(&self.states, self.node_drained);
        let saved = self.state_file.save(&overrides).map_err(|e| e.to_string());
        if let Err(e) = &saved {
            tracing::error!(error = %e, "drains and weights not persisted");
        }
        self.state.write_error = saved.as_ref().err().cloned();
        saved
    }

    /// The one-line summary systemd shows (`systemctl status`).
    pub fn status_line(&self) -> String {
        let vips = self.reconciler.applied().len();
        let mut line = format!("{vips} VIPs on {}, config generation {}", self.opts.iface, self.config_generation);
        if self.last_reload.as_ref().is_some_and(|r| !r.ok) {
            line.push_str(", last reload REJECTED");
        }
        if self.node_drained {
            line.push_str(", node drained");
        }
        line
    }

    fn publish(&self, pending_vips: usize) {
        self.shared.view.store(Arc::new(self.view(pending_vips)));
    }

    /// Lowers this thread's CPU priority (the Maglev builders it spawns inherit it): under
    /// load, the runtime's BGP keepalives, health checks and admin replies run first.
    fn yield_to_the_runtime() {
        // SAFETY: plain syscalls on this thread's own id; no memory is passed.
        let result = unsafe {
            let tid = libc::syscall(libc::SYS_gettid) as libc::id_t;
            libc::setpriority(libc::PRIO_PROCESS, tid, 5)
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "could not lower the control thread's priority");
        }
    }

    /// Takes in health and neighbour news that arrived since the last look, without waiting.
    fn absorb_sources(&mut self) {
        if self.health_rx.has_changed().unwrap_or(false) {
            self.take_health();
        }
        if self.neighbors_rx.has_changed().unwrap_or(false) {
            self.take_neighbors();
        }
    }

    /// What lets a step of a pass stop waiting for its Maglev builds when health or neighbour
    /// news arrives, so that news is taken in (and its VIPs written) before the rest of a
    /// reload. `None` off the agent's runtime (nothing to wait on).
    fn news_wait(&self) -> Option<NewsWait> {
        let runtime = tokio::runtime::Handle::try_current().ok()?;
        // Clones see each change once more than this thread does: at worst a step comes back
        // empty and the next one waits again.
        let (mut health, mut neighbors) = (self.health_rx.clone(), self.neighbors_rx.clone());
        Some(Box::new(move |mut built: BuildDone| {
            runtime.block_on(async {
                tokio::select! {
                    biased;
                    Ok(()) = health.changed() => true,
                    Ok(()) = neighbors.changed() => true,
                    () = built.finished() => false,
                }
            })
        }))
    }

    /// The backends health checks now say are down; desired state is stale if they differ.
    fn take_health(&mut self) {
        let down = down(&self.health_rx.borrow_and_update());
        if down != self.states.down {
            self.states.down = down;
            self.dirty = true;
        }
    }

    /// The MACs the resolver learned. Last known wins: an entry that stops resolving keeps its MAC.
    fn take_neighbors(&mut self) {
        let learned = self.neighbors_rx.borrow_and_update().clone();
        for (addr, mac) in learned {
            if self.states.neighbors.insert(addr, mac) != Some(mac) {
                self.dirty = true;
            }
        }
    }

    /// Brings the maps to desired state, step by step, taking in source changes between steps;
    /// then the announcements follow what the maps now serve.
    pub fn converge(&mut self) -> Result<Changes, ReconcileError> {
        let mut changes = Changes::default();
        let mut published = Instant::now();
        let mut desired = None;
        let mut pass = self.news_wait().map_or_else(Pass::new, Pass::interruptible);
        let result = loop {
            self.beat();
            self.absorb_sources();
            if self.dirty || desired.is_none() {
                desired = Some(DesiredState::with_states(&self.config, &self.facts, &self.states));
                pass.restart();
                self.dirty = false;
            }
            let Some(desired) = desired.as_ref() else { unreachable!("set above") };
            match self.reconciler.apply_step(desired, &mut pass, &mut self.maps, STEP_VIPS) {
                Ok(step) => {
                    changes.absorb(step.changes);
                    if step.remaining == 0 {
                        changes.count_unchanged(desired);
                        break Ok(changes);
                    }
                    if published.elapsed() >= PUBLISH_EVERY {
                        self.announce_up_vips();
                        self.publish(step.remaining);
                        published = Instant::now();
                    }
                }
                Err(e) => break Err(e),
            }
        };
        match &result {
            Ok(_) => self.failure = None,
            Err(e) => {
                let wait = self.failure.as_ref().map_or(RETRY_FIRST, |(_, w)| (*w * 2).min(RETRY_MAX));
                tracing::error!(error = %e, retry_in = ?wait, "applying desired state failed; retrying");
                self.failure = Some((e.to_string(), wait));
            }
        }
        self.transitions.observe(self.reconciler.applied().iter().map(|(key, applied)| (key, &applied.vip)));
        lock(&self.shared.l7).set_not_serving(self.states.down.union(&self.states.drained).cloned().collect());
        self.announce_up_vips();
        self.publish(0);
        result
    }

    /// Announces every VIP address with at least one VIP up (its port's backends serving, at
    /// least `min_healthy`): withdrawing an address would take down its healthy ports too.
    fn announce_up_vips(&self) {
        let up: Announce = if self.node_drained || !self.attached {
            Announce::new()
        } else {
            let l7 = lock(&self.shared.l7).up_addresses();
            self.reconciler
                .applied()
                .iter()
                .filter(|(_, applied)| applied.vip.is_up() && !self.through_detached(&applied.vip))
                .map(|(key, _)| config::ip_from_words(key.addr, key.family))
                .chain(l7)
                .collect()
        };
        self.shared.announce.send_if_modified(|current| {
            if *current == up {
                return false;
            }
            tracing::info!(count = up.len(), "BGP announcements change");
            tracing::debug!(announced = ?up, "BGP announcements");
            *current = up;
            true
        });
    }

    /// Whether `vip` is served through an interface XDP is detached from: the first one (which
    /// every VIP's packets come in on), or the one a backend's packets leave by (whose replies
    /// come back through it).
    fn through_detached(&self, vip: &desired::DesiredVip) -> bool {
        through_detached(vip, &self.detached, &self.opts.iface, &self.facts)
    }

    /// XDP on `iface` lost or back: the announcements follow. Back on an interface that was
    /// recreated, its index and MAC are read again.
    fn attachment(&mut self, iface: String, attached: bool, reply: Option<oneshot::Sender<Reply>>) {
        let before = self.shared.announce.borrow().len();
        if attached {
            self.detached.remove(&iface);
            match node_facts(&self.opts) {
                Ok(facts) if facts != self.facts => {
                    tracing::info!(%iface, "interface facts changed (recreated?); rewriting the node settings");
                    self.facts = facts;
                    self.dirty = true;
                    let _ = self.converge();
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "cannot re-read the interfaces; keeping their last MAC and MTU"),
            }
        } else {
            self.detached.insert(iface.clone());
        }
        self.announce_up_vips();
        self.publish(0);
        if let Some(reply) = reply {
            let after = self.shared.announce.borrow().len();
            let _ = reply.send(Reply::Done(format!(
                "{iface}: the agent withdrew {} of {before} announced addresses and will not re-attach (restart it to attach again)",
                before.saturating_sub(after)
            )));
        }
    }

    /// Runs until every sender of `commands` is gone.
    pub fn run(mut self, mut commands: mpsc::UnboundedReceiver<Command>, runtime: tokio::runtime::Handle) {
        // Health checks, the resolver and the speaker spawn tasks on the agent's runtime.
        let _runtime = runtime.enter();
        Self::yield_to_the_runtime();
        let (mut health_alive, mut neighbors_alive) = (true, true);
        loop {
            self.beat();
            let retry = self.failure.as_ref().map(|(_, wait)| *wait);
            let tick = self.heartbeat_tick;
            let event = runtime.block_on(async {
                tokio::select! {
                    biased;
                    changed = self.health_rx.changed(), if health_alive => {
                        if changed.is_err() {
                            tracing::error!("the health checker stopped; backend health stays as last seen");
                            health_alive = false;
                        }
                        Event::Health
                    }
                    changed = self.neighbors_rx.changed(), if neighbors_alive => {
                        if changed.is_err() {
                            tracing::error!("the neighbour resolver stopped; MACs stay as last learned");
                            neighbors_alive = false;
                        }
                        Event::Neighbors
                    }
                    command = commands.recv() => Event::Command(command),
                    read = self.reader.finished() => Event::ConfigRead(Box::new(read)),
                    () = tokio::time::sleep(retry.unwrap_or(RETRY_MAX)), if retry.is_some() => Event::Retry,
                    () = tokio::time::sleep(tick.unwrap_or(RETRY_MAX)), if tick.is_some() => Event::Tick,
                }
            });
            match event {
                Event::Command(None) => break,
                Event::Command(Some(command)) => self.handle(command),
                Event::ConfigRead(mut read) => {
                    self.reader.returned(&mut read);
                    self.reload(*read);
                }
                // `changed()` marked the news seen: take it in here, not through `absorb_sources`.
                Event::Health => {
                    self.take_health();
                    let _ = self.converge();
                }
                Event::Neighbors => {
                    self.take_neighbors();
                    let _ = self.converge();
                }
                Event::Retry => {
                    let _ = self.converge();
                }
                Event::Tick => {}
            }
        }
        if let Some(speaker) = lock(&self.shared.speaker).take() {
            speaker.abort();
        }
    }

    fn handle(&mut self, command: Command) {
        match command {
            Command::Attached => {
                self.attached = true;
                self.announce_up_vips();
                if let Some(bgp) = self.config.bgp.clone() {
                    let _bgp = self.shared.bgp_runtime.enter();
                    *lock(&self.shared.speaker) = Some(Speaker::start(bgp, self.shared.announce.subscribe()));
                }
            }
            Command::Attachment { iface, attached, reply } => self.attachment(iface, attached, reply),
            Command::Reload => self.reader.request(Instant::now()),
            Command::Backend { vip, backend, change, reply } => {
                let _ = reply.send(self.set_override(vip, backend, change));
            }
            Command::DrainNode { undo, reply } => {
                self.node_drained = !undo;
                let persisted = self.persist();
                self.announce_up_vips();
                self.publish(0);
                self.shared.notifier.status(&self.status_line());
                let peers = self.shared.peers().len();
                tracing::info!(undo, peers, "node drain");
                let done = if undo {
                    format!("node undrained: VIPs that are up are announced again to {peers} peers")
                } else {
                    format!(
                        "node drained: every route withdrawn from {peers} peers; flows the routers still send here are forwarded"
                    )
                };
                let _ = reply.send(match persisted {
                    Ok(()) => Reply::Done(done),
                    Err(e) => Reply::Error(format!("{done}; but {e}")),
                });
            }
            Command::Plan { path, config, reply } => {
                let _ = reply.send(self.plan(&path, &config));
            }
        }
    }

    fn plan(&self, path: &str, text: &str) -> Reply {
        let config = match config::parse(std::path::Path::new(path), text) {
            Ok(config) => config,
            Err(e) => return Reply::Error(e.to_string()),
        };
        let mut states = self.states.clone();
        let _ = prune_overrides(&mut states, &config);
        let desired = DesiredState::with_states(&config, &self.facts, &states);
        plan::plan(&self.reconciler, &self.maps, &desired).map_or_else(|e| Reply::Error(e.to_string()), Reply::Plan)
    }

    /// Applies a config the reader read; an invalid file leaves the running state as it is.
    fn reload(&mut self, read: ConfigRead) {
        let started = read.asked;
        let now = crate::serve::human::now_epoch;
        let reject = |this: &mut Self, message: String| {
            tracing::error!(error = %message, "reload rejected; the previous configuration keeps serving");
            this.last_reload = Some(ReloadOutcome { ok: false, message, at: now() });
            this.publish(0);
            this.shared.notifier.status(&this.status_line());
        };
        let (how, parse_ms) = (read.how, read.took.as_millis() as u64);
        let config = match read.result {
            Ok(config) => config,
            Err(e) => return reject(self, e.to_string()),
        };
        // The interfaces' MTU or MAC may have changed since the last pass.
        match node_facts(&self.opts) {
            Ok(now) => self.facts = now,
            Err(e) => tracing::warn!(error = %e, "cannot re-read the interfaces; keeping their last MAC and MTU"),
        }
        if let Err(e) = desired::check_interfaces(&config, &self.facts) {
            return reject(self, format!("{}: {e}", self.opts.config.display()));
        }
        if config.agent != self.config.agent {
            tracing::warn!(
                "agent.admin_socket / agent.metrics_listen / agent.state_dir changes take effect at the next start"
            );
        }
        if TableSizes::of(&config.node) != self.sizes {
            tracing::warn!(
                running = ?self.sizes,
                configured = ?TableSizes::of(&config.node),
                "node.flow_table_size / nat_table_size changes need a restart with the pinned maps removed (`xlb detach --forget-flows`); keeping the running sizes"
            );
        }
        self.checker.replace(health_targets(&config));
        self.replace_speaker(&config);
        self.resolver.replace(desired::neighbor_targets(&config, &self.opts.iface));
        let pruned = prune_overrides(&mut self.states, &config);
        pruned.log("at reload");
        if !pruned.is_empty() {
            let _ = self.persist();
        }
        if let Err(e) = self.drop_log.set(self.opts.bpf_log || config.node.bpf_log) {
            tracing::error!(error = %e, "cannot switch the drop log (node.bpf_log); keeping it as it was");
        }
        self.config = Arc::new(config);
        self.config_generation += 1;
        self.dirty = true;
        let l7_errors: Vec<String> =
            lock(&self.shared.l7).apply(&self.config).iter().map(ToString::to_string).collect();
        for e in &l7_errors {
            tracing::error!(error = %e, "l7 part of the reload failed; that VIP keeps its previous routes");
        }
        let mut outcome = match self.converge() {
            Ok(changes) => {
                // Counts, and a few names of each: a reload of 10 000 VIPs stays one short line.
                let names = |list: &[String]| crate::serve::human::brief_list(list, crate::serve::human::NAMES_LISTED);
                tracing::info!(
                    added = changes.added.len(),
                    removed = changes.removed.len(),
                    updated = changes.updated.len(),
                    unchanged = changes.unchanged,
                    tables_rebuilt = changes.tables_rebuilt,
                    vips_parsed = match how {
                        config::LastRead::Whole => self.config.vips.len(),
                        config::LastRead::Items { reparsed, .. } => reparsed,
                    },
                    parse_ms,
                    ms = started.elapsed().as_millis() as u64,
                    added_vips = %names(&changes.added),
                    removed_vips = %names(&changes.removed),
                    updated_vips = %names(&changes.updated),
                    "reloaded"
                );
                ReloadOutcome {
                    ok: true,
                    message: format!(
                        "{} added, {} removed, {} updated, {} unchanged",
                        changes.added.len(),
                        changes.removed.len(),
                        changes.updated.len(),
                        changes.unchanged
                    ),
                    at: now(),
                }
            }
            Err(e) => ReloadOutcome { ok: false, message: format!("partly applied, retrying: {e}"), at: now() },
        };
        if !l7_errors.is_empty() {
            outcome = ReloadOutcome {
                ok: false,
                message: format!("{}; l7: {}", outcome.message, l7_errors.join("; ")),
                ..outcome
            };
        }
        self.last_reload = Some(outcome);
        self.publish(0);
        self.shared.notifier.status(&self.status_line());
    }

    fn replace_speaker(&mut self, config: &Config) {
        // The speaker's tasks run on the BGP runtime.
        let _bgp = self.shared.bgp_runtime.enter();
        let mut speaker = lock(&self.shared.speaker);
        match (speaker.as_mut(), config.bgp.clone()) {
            (Some(running), Some(bgp)) => running.replace(bgp),
            (None, Some(bgp)) if self.attached => {
                *speaker = Some(Speaker::start(bgp, self.shared.announce.subscribe()));
            }
            (Some(_), None) => {
                if let Some(running) = speaker.take() {
                    tracing::info!("the bgp section is gone: withdrawing and closing every session");
                    tokio::spawn(running.shutdown());
                }
            }
            _ => {}
        }
    }
}

/// Whether `vip` needs an interface in `detached`: `first` (every VIP's packets come in on it),
/// or the interface one of its backends' packets leave by (their replies come back through it).
fn through_detached(vip: &desired::DesiredVip, detached: &BTreeSet<String>, first: &str, facts: &NodeFacts) -> bool {
    if detached.is_empty() {
        return false;
    }
    detached.contains(first)
        || vip.backends.iter().any(|b| {
            b.egress > 0 && facts.interfaces.get(usize::from(b.egress) - 1).is_some_and(|(n, _)| detached.contains(n))
        })
}

/// The backends `config` asks to health-check.
pub fn health_targets(config: &Config) -> Vec<Target> {
    let l7 = l7::health_targets(config);
    config
        .vips
        .iter()
        .flat_map(|vip| {
            vip.backends.iter().zip(vip.backend_identities()).filter_map(move |(backend, identity)| {
                Some(Target {
                    vip: vip.name.clone(),
                    backend: identity,
                    addr: backend.address,
                    check: vip.check_for(backend)?.clone(),
                })
            })
        })
        .chain(l7)
        .collect()
}

/// The backends `health` says are down.
pub fn down(health: &HealthMap) -> BTreeSet<BackendRef> {
    health.iter().filter(|(_, h)| !h.up).map(|(key, _)| key.clone()).collect()
}

#[cfg(test)]
mod tests {
    use lb_common::Iface;

    use super::*;

    #[test]
    fn a_detached_interface_withdraws_the_vips_served_through_it() {
        let text = "vips:\n  - { name: near, address: 192.0.2.1, port: 80, protocol: tcp, mode: nat, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n  - { name: far, address: 192.0.2.2, port: 80, protocol: tcp, mode: nat, backends: [{ address: 10.1.0.1, mac: \"02:00:00:00:00:02\", interface: eth1 }] }\n";
        let config = config::parse(std::path::Path::new("t.yaml"), text).unwrap();
        let iface = |ifindex| Iface { ifindex, mac: [2, 0, 0, 0, 0, 9], pad: 0 };
        let facts = NodeFacts {
            iface_mac: [2, 0, 0, 0, 0, 9],
            mtu: 1500,
            ifindex: 4,
            interfaces: vec![("eth0".into(), iface(4)), ("eth1".into(), iface(7))],
        };
        let desired = DesiredState::new(&config, &facts);
        let vip = |name: &str| desired.vips.values().find(|v| v.name == name).unwrap();
        let withdrawn = |detached: &[&str]| -> Vec<&str> {
            let detached: BTreeSet<String> = detached.iter().map(|d| d.to_string()).collect();
            ["near", "far"].into_iter().filter(|n| through_detached(vip(n), &detached, "eth0", &facts)).collect()
        };
        assert_eq!(withdrawn(&[]), Vec::<&str>::new());
        assert_eq!(withdrawn(&["eth1"]), ["far"], "only the VIP whose backend leaves by eth1");
        assert_eq!(withdrawn(&["eth0"]), ["near", "far"], "every VIP comes in on the first");
    }
}
