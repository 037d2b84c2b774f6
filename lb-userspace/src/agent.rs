//! The running agent: config + interface facts → desired state → reconciler → maps; attach;
//! serve the admin socket; reload on SIGHUP.

use std::{
    collections::BTreeSet,
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::watch,
};

use crate::{
    admin::{self, ReloadOutcome, Reply, Request, Status},
    bgp::{Announce, PeerStatus, Speaker},
    config::{self, Config},
    dataplane::{self, AttachMode, Attached, DataplaneError, Loaded, Maps, TableSizes},
    desired::{self, BackendRef, BackendStates, DesiredState, NodeFacts},
    health::{Checker, HealthMap, Target},
    iface, l7, metrics,
    nat::{self, NatUsage},
    neighbor::Resolver,
    plan,
    reconcile::{Changes, ReconcileError, Reconciler},
    stats::Snapshot,
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    /// The first interface XDP runs on: it names the pin directory, and its MAC is the source of
    /// frames sent back out (single-armed).
    pub iface: String,
    /// More interfaces the same program and maps run on (NAT backends name theirs; packets
    /// leave by another interface through a redirect).
    pub other_ifaces: Vec<String>,
    /// Overrides `agent.admin_socket` from the config.
    pub admin_socket: Option<PathBuf>,
    /// bpffs directory under which each interface's maps and link are pinned.
    pub pin_dir: PathBuf,
    /// Detach XDP on SIGTERM/SIGINT. Off by default: an edge node wants forwarding to outlive
    /// the agent (a restarted agent adopts the pinned data plane).
    pub detach_on_exit: bool,
    /// Reload when the config file changes (besides SIGHUP).
    pub watch_config: bool,
    /// Where to serve Prometheus `/metrics`; overrides `agent.metrics_listen` from the config.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

impl RunOptions {
    /// Where this interface's data plane is pinned.
    pub fn iface_pin_dir(&self) -> PathBuf {
        self.pin_dir.join(&self.iface)
    }
}

/// The pinned link's file in an interface's pin directory.
pub fn link_pin(iface_dir: &std::path::Path) -> PathBuf {
    iface_dir.join("link")
}

/// The pinned link of another interface the same data plane runs on (`--iface` after the first).
pub fn other_link_pin(iface_dir: &std::path::Path, iface: &str) -> PathBuf {
    iface_dir.join(format!("link-{iface}"))
}

/// Every pinned link in an interface's pin directory: its own and those of other interfaces.
pub fn link_pins(iface_dir: &std::path::Path) -> Vec<PathBuf> {
    let others = std::fs::read_dir(iface_dir).into_iter().flatten().flatten().map(|e| e.path());
    std::iter::once(link_pin(iface_dir))
        .chain(others.filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with("link-"))))
        .collect()
}

/// The facts of every interface the agent runs on, the first one's as the node's.
fn node_facts(opts: &RunOptions) -> anyhow::Result<NodeFacts> {
    let read = |name: &String| iface::facts(name).with_context(|| format!("reading interface {name}"));
    let mut facts = read(&opts.iface)?;
    for name in &opts.other_ifaces {
        facts.interfaces.extend(read(name)?.interfaces);
    }
    Ok(facts)
}

/// How often expired NAT flows are swept and pool usage recounted.
const NAT_SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// Everything the reconciler owns, behind one lock: only it writes the maps. The sources of
/// desired state — the file (`config`), health checks and drains (`states`) — live here too, so
/// every change goes through `reconcile`.
struct State {
    maps: Maps,
    reconciler: Reconciler,
    facts: NodeFacts,
    sizes: TableSizes,
    config: Config,
    states: BackendStates,
    health: HealthMap,
    config_generation: u64,
    last_reload: Option<ReloadOutcome>,
    /// The BGP speaker, when the config has a `bgp:` section.
    speaker: Option<Speaker>,
    /// What the speaker announces: the addresses of VIPs that are up, while the data plane is
    /// attached and the node is not drained.
    announce: watch::Sender<Announce>,
    /// `xlb drain node`: everything withdrawn, forwarding goes on for flows that still come.
    node_drained: bool,
    /// NAT flows and pool usage as of the last sweep.
    nat: NatUsage,
    /// How full the connection table was at its last count (every `NAT_SWEEP_INTERVAL`, done
    /// without holding this state).
    flow_table: crate::dataplane::FlowTableUsage,
    /// The HTTP proxy of `mode: l7` VIPs (not in the maps: XDP passes their packets to it).
    l7: l7::Tier,
}

impl State {
    /// Desired state from every source, into the maps; then the announcements follow what
    /// the maps now serve.
    fn reconcile(&mut self) -> Result<Changes, ReconcileError> {
        let desired = DesiredState::with_states(&self.config, &self.facts, &self.states);
        let result = self.reconciler.apply(&desired, &mut self.maps);
        self.l7.set_not_serving(self.states.down.union(&self.states.drained).cloned().collect());
        self.announce_up_vips();
        result
    }

    /// Announces every VIP address with at least one VIP up (its port's backends serving, at
    /// least `min_healthy`): withdrawing an address would take down its healthy ports too.
    fn announce_up_vips(&self) {
        let up: Announce = if self.node_drained {
            Announce::new()
        } else {
            self.reconciler
                .applied()
                .iter()
                .filter(|(_, applied)| applied.vip.is_up())
                .map(|(key, _)| desired::ip_from_words(key.addr, key.family))
                .chain(self.l7.up_addresses())
                .collect()
        };
        self.announce.send_if_modified(|current| {
            if *current == up {
                return false;
            }
            tracing::info!(announced = ?up, "BGP announcements change");
            *current = up;
            true
        });
    }

    fn peers(&self) -> Vec<PeerStatus> {
        self.speaker.as_ref().map(Speaker::status).unwrap_or_default()
    }

    fn snapshot(&self) -> Result<Snapshot, DataplaneError> {
        let mut snapshot = Snapshot::read(&self.maps, &self.reconciler, &self.health)?;
        snapshot.nat = self.nat.clone();
        snapshot.flow_table = self.flow_table;
        snapshot.l7 = self.l7.status();
        Ok(snapshot)
    }

    /// Removes expired NAT flows and recounts pool usage.
    fn sweep_nat(&mut self) {
        let Some(node) = self.reconciler.node() else { return };
        self.nat = nat::sweep(&mut self.maps, &self.config, &node, nat::monotonic_ns(), self.nat.swept);
    }
}

/// The backends `config` asks to health-check.
fn health_targets(config: &Config) -> Vec<Target> {
    let l7 = l7::health_targets(config);
    config
        .vips
        .iter()
        .flat_map(|vip| {
            vip.backends.iter().filter_map(move |backend| {
                Some(Target {
                    vip: vip.name.clone(),
                    backend: backend.address.to_string(),
                    addr: backend.address,
                    check: vip.check_for(backend)?.clone(),
                })
            })
        })
        .chain(l7)
        .collect()
}

/// A VIP's backends as health checks and drains name them: addresses, or `address:port` for
/// an l7 VIP's.
fn backend_identities(vip: &config::Vip) -> Vec<String> {
    match &vip.l7 {
        Some(l7) => l7.backends().map(l7::config::L7Backend::identity).collect(),
        None => vip.backends.iter().map(|b| b.address.to_string()).collect(),
    }
}

/// The MACs an adopted data plane holds for backends the configuration leaves to resolution
/// (by the address resolution would ask for).
fn adopted_macs(reconciler: &Reconciler, config: &Config) -> std::collections::BTreeMap<std::net::IpAddr, [u8; 6]> {
    let mut macs = std::collections::BTreeMap::new();
    for vip in &config.vips {
        let Some(applied) = reconciler.applied().get(&desired::vip_key(vip)) else { continue };
        for backend in &vip.backends {
            let Some(source) = desired::mac_source(vip, backend, config) else { continue };
            let identity = backend.address.to_string();
            if let Some(b) = applied.vip.backends.iter().find(|b| b.identity == identity && b.mac != [0; 6]) {
                macs.insert(source, b.mac);
            }
        }
    }
    macs
}

/// The backends `health` says are down.
fn down(health: &HealthMap) -> BTreeSet<BackendRef> {
    health.iter().filter(|(_, h)| !h.up).map(|(key, _)| key.clone()).collect()
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = config::load(&opts.config)?;
    // Flags win over the file; listeners are fixed for the agent's life.
    let admin_socket = opts
        .admin_socket
        .clone()
        .or_else(|| config.agent.admin_socket.clone())
        .unwrap_or_else(|| PathBuf::from(admin::DEFAULT_SOCKET));
    let metrics_listen = opts.metrics_listen.or(config.agent.metrics_listen);
    let facts = node_facts(&opts)?;
    desired::check_interfaces(&config, &facts).map_err(|e| anyhow::anyhow!("{}: {e}", opts.config.display()))?;
    let sizes = TableSizes::of(&config.node);
    let pin_dir = opts.iface_pin_dir();
    let (mut program, maps, adopted) =
        Loaded::balancer_pinned(sizes, &pin_dir).context("loading the XDP data plane")?;
    let reconciler = if adopted {
        let reconciler = Reconciler::adopt(&maps).context("reading the pinned data plane")?;
        tracing::info!(dir = %pin_dir.display(), vips = reconciler.applied().len(), "adopted the pinned data plane; established flows keep their backends");
        reconciler
    } else {
        Reconciler::new()
    };
    // Backends start up (a restart must not drop traffic while the first checks run).
    let (mut checker, mut health_rx) = Checker::start(health_targets(&config));
    let (mut resolver, mut neighbors_rx) = Resolver::start(desired::neighbor_targets(&config, &opts.iface));
    // A restart keeps the MACs the previous agent wrote until the kernel confirms or replaces
    // them, so its flows keep going while the first resolution runs.
    let mut states = BackendStates { neighbors: adopted_macs(&reconciler, &config), ..Default::default() };
    states.neighbors.extend(neighbors_rx.borrow_and_update().iter().map(|(a, m)| (*a, *m)));
    let mut state = State {
        maps,
        reconciler,
        facts,
        sizes,
        config,
        states,
        health: health_rx.borrow_and_update().clone(),
        config_generation: 1,
        last_reload: None,
        speaker: None,
        // Nothing until XDP is attached.
        announce: watch::Sender::new(Announce::new()),
        node_drained: false,
        nat: NatUsage::default(),
        flow_table: Default::default(),
        l7: l7::Tier::new()?,
    };
    if let Some(e) = state.l7.apply(&state.config).into_iter().next() {
        return Err(e.into());
    }
    let changes = state.reconcile()?;
    tracing::info!(
        added = changes.added.len(),
        updated = changes.updated.len(),
        removed = changes.removed.len(),
        mtu = state.facts.mtu,
        "data plane filled"
    );

    let links = std::iter::once((&opts.iface, link_pin(&pin_dir)))
        .chain(opts.other_ifaces.iter().map(|other| (other, other_link_pin(&pin_dir, other))));
    for (iface, link) in links {
        match program.attach_pinned(iface, &link)? {
            Attached::New(AttachMode::Native) => tracing::info!(%iface, "XDP attached in native mode"),
            Attached::New(AttachMode::Generic) => {
                tracing::warn!(%iface, "the driver refused native XDP; attached in generic (skb) mode, which is much slower, and redirects into it may fail")
            }
            Attached::Replaced => tracing::info!(%iface, "replaced the running XDP program in place"),
        }
    }
    // Attached: from here the VIPs that are up may be announced.
    state.announce_up_vips();
    if let Some(bgp) = state.config.bgp.clone() {
        state.speaker = Some(Speaker::start(bgp, state.announce.subscribe()));
    }

    let state = Arc::new(Mutex::new(state));
    let admin_state = Arc::clone(&state);
    let config_path = opts.config.display().to_string();
    let server = admin::serve(
        &admin_socket,
        Arc::new(move |request| {
            let reply = answer(&mut lock(&admin_state), &config_path, request);
            Box::pin(async move { reply }) as admin::ReplyFuture
        }),
    )
    .await?;
    tracing::info!(socket = %admin_socket.display(), "admin socket listening");
    let metrics = match metrics_listen {
        Some(addr) => {
            let metrics_state = Arc::clone(&state);
            let server = metrics::serve(
                addr,
                Arc::new(move || {
                    let state = lock(&metrics_state);
                    let snapshot = state.snapshot().map_err(|e| e.to_string())?;
                    Ok(metrics::render(
                        &snapshot,
                        &metrics::AgentInfo {
                            config_generation: state.config_generation,
                            last_reload: state.last_reload.clone(),
                            peers: state.peers(),
                            l7: state.l7.metrics().gather(),
                        },
                    ))
                }),
            )
            .await?;
            tracing::info!(%addr, "serving Prometheus metrics at /metrics");
            Some(server)
        }
        None => None,
    };

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut watch = FileWatch::new(&opts.config);
    let mut poll = tokio::time::interval(Duration::from_secs(1));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut health_alive, mut neighbors_alive) = (true, true);
    let mut sweep = tokio::time::interval(NAT_SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let flow_counter = lock(&state)
        .maps
        .flow_table_counter()
        .inspect_err(|e| tracing::warn!(error = %e, "connection-table occupancy will not be counted"))
        .ok();
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = sweep.tick() => {
                lock(&state).sweep_nat();
                if let Some(counter) = flow_counter.clone() {
                    let state = Arc::clone(&state);
                    tokio::task::spawn_blocking(move || {
                        let usage = counter.count();
                        lock(&state).flow_table = usage;
                    });
                }
            }
            _ = int.recv() => break,
            _ = hup.recv() => reload(&opts, &mut lock(&state), &mut checker, &mut resolver),
            _ = poll.tick(), if opts.watch_config => {
                if watch.changed() {
                    tracing::info!(config = %opts.config.display(), "configuration file changed");
                    reload(&opts, &mut lock(&state), &mut checker, &mut resolver);
                }
            }
            changed = neighbors_rx.changed(), if neighbors_alive => {
                if changed.is_err() {
                    // The resolver is gone: stop polling it (an error would be ready forever).
                    tracing::error!("the neighbour resolver stopped; MACs stay as last learned");
                    neighbors_alive = false;
                    continue;
                }
                let learned = neighbors_rx.borrow_and_update().clone();
                let mut state = lock(&state);
                // Last known wins: an entry that stops resolving keeps its MAC.
                state.states.neighbors.extend(learned);
                if let Err(e) = state.reconcile() {
                    tracing::error!(error = %e, "applying neighbour changes failed; retried on the next change");
                }
            }
            changed = health_rx.changed(), if health_alive => {
                if changed.is_err() {
                    tracing::error!("the health checker stopped; backend health stays as last seen");
                    health_alive = false;
                    continue;
                }
                let health = health_rx.borrow_and_update().clone();
                let mut state = lock(&state);
                state.states.down = down(&health);
                state.health = health;
                if let Err(e) = state.reconcile() {
                    tracing::error!(error = %e, "applying health changes failed; retried on the next change");
                }
            }
        }
    }

    // Withdraw everything and give the routers `withdraw_grace` to move traffic elsewhere
    // before anything else goes.
    let speaker = lock(&state).speaker.take();
    if let Some(speaker) = speaker {
        tracing::info!("withdrawing every route before exiting");
        speaker.shutdown().await;
    }
    lock(&state).l7.shutdown();
    server.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    drop(checker);
    drop(resolver);
    let _ = std::fs::remove_file(&admin_socket);
    if opts.detach_on_exit {
        for link in link_pins(&pin_dir) {
            dataplane::detach_pinned(&link)?;
        }
        tracing::info!(iface = %opts.iface, others = ?opts.other_ifaces, "XDP detached; exiting");
    } else {
        tracing::info!(iface = %opts.iface, pinned = %pin_dir.display(), "exiting; XDP stays attached and keeps forwarding");
    }
    drop(program);
    Ok(())
}

fn lock(state: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn answer(state: &mut State, config_path: &str, request: Request) -> Reply {
    if matches!(request, Request::Stats | Request::Status) {
        // NAT usage as of now, not of the last periodic sweep.
        state.sweep_nat();
    }
    match request {
        Request::Stats => state.snapshot().map_or_else(|e| Reply::Error(e.to_string()), Reply::Stats),
        Request::Status => match state.snapshot() {
            Ok(snapshot) => Reply::Status(Status {
                config_path: config_path.to_owned(),
                config_generation: state.config_generation,
                last_reload: state.last_reload.clone(),
                node_drained: state.node_drained,
                announced: state.announce.borrow().iter().map(ToString::to_string).collect(),
                peers: state.peers(),
                snapshot,
            }),
            Err(e) => Reply::Error(e.to_string()),
        },
        Request::Plan { path, config } => {
            let config = match config::parse(std::path::Path::new(&path), &config) {
                Ok(config) => config,
                Err(e) => return Reply::Error(e.to_string()),
            };
            let mut states = state.states.clone();
            prune_drains(&mut states, &config);
            let desired = DesiredState::with_states(&config, &state.facts, &states);
            plan::plan(&state.reconciler, &state.maps, &desired)
                .map_or_else(|e| Reply::Error(e.to_string()), Reply::Plan)
        }
        Request::DrainNode { undo } => {
            state.node_drained = !undo;
            state.announce_up_vips();
            let peers = state.peers().len();
            tracing::info!(undo, peers, "node drain");
            Reply::Done(if undo {
                format!("node undrained: VIPs that are up are announced again to {peers} peers")
            } else {
                format!(
                    "node drained: every route withdrawn from {peers} peers; flows the routers still send here are forwarded"
                )
            })
        }
        Request::Drain { vip, backend, undo } => {
            let Some(configured) = state.config.vips.iter().find(|v| v.name == vip) else {
                let names: Vec<&str> = state.config.vips.iter().map(|v| v.name.as_str()).collect();
                return Reply::Error(format!("no VIP named `{vip}`; configured: {}", names.join(", ")));
            };
            let identities = backend_identities(configured);
            if !identities.contains(&backend) {
                return Reply::Error(format!(
                    "VIP `{vip}` has no backend `{backend}`; its backends: {}",
                    identities.join(", ")
                ));
            }
            let at = (vip.clone(), backend.clone());
            let changed = if undo { state.states.drained.remove(&at) } else { state.states.drained.insert(at) };
            if let Err(e) = state.reconcile() {
                return Reply::Error(format!("applying the drain failed: {e}"));
            }
            let what = if undo { "takes new flows again" } else { "drained: no new flows, established ones finish" };
            tracing::info!(%vip, %backend, undo, "drain");
            Reply::Done(format!("{vip} {backend}: {what}{}", if changed { "" } else { " (already so)" }))
        }
    }
}

/// Re-reads the config; an invalid file leaves the running state as it is.
fn reload(opts: &RunOptions, state: &mut State, checker: &mut Checker, resolver: &mut Resolver) {
    let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let config = match config::load(&opts.config) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving");
            state.last_reload = Some(ReloadOutcome { ok: false, message: e.to_string(), at: now() });
            return;
        }
    };
    // The interfaces' MTU or MAC may have changed since the last pass.
    match node_facts(opts) {
        Ok(now) => state.facts = now,
        Err(e) => tracing::warn!(error = %e, "cannot re-read the interfaces; keeping their last MAC and MTU"),
    }
    if let Err(e) = desired::check_interfaces(&config, &state.facts) {
        let message = format!("{}: {e}", opts.config.display());
        tracing::error!(error = %message, "reload rejected; the previous configuration keeps serving");
        state.last_reload = Some(ReloadOutcome { ok: false, message, at: now() });
        return;
    }
    if config.agent != state.config.agent {
        tracing::warn!("agent.admin_socket / agent.metrics_listen changes take effect at the next start");
    }
    if TableSizes::of(&config.node) != state.sizes {
        tracing::warn!(
            running = ?state.sizes,
            configured = ?TableSizes::of(&config.node),
            "node.flow_table_size / nat_table_size changes need a restart with the pinned maps removed (`xlb detach --forget-flows`); keeping the running sizes"
        );
    }
    checker.replace(health_targets(&config));
    match (state.speaker.as_mut(), config.bgp.clone()) {
        (Some(speaker), Some(bgp)) => speaker.replace(bgp),
        (None, Some(bgp)) => state.speaker = Some(Speaker::start(bgp, state.announce.subscribe())),
        (Some(_), None) => {
            if let Some(speaker) = state.speaker.take() {
                tracing::info!("the bgp section is gone: withdrawing and closing every session");
                tokio::spawn(speaker.shutdown());
            }
        }
        (None, None) => {}
    }
    resolver.replace(desired::neighbor_targets(&config, &opts.iface));
    prune_drains(&mut state.states, &config);
    state.config = config;
    state.config_generation += 1;
    let l7_errors: Vec<String> = state.l7.apply(&state.config).iter().map(ToString::to_string).collect();
    for e in &l7_errors {
        tracing::error!(error = %e, "l7 part of the reload failed; that VIP keeps its previous routes");
    }
    let outcome = match state.reconcile() {
        Ok(changes) => {
            tracing::info!(
                added = ?changes.added,
                removed = ?changes.removed,
                updated = ?changes.updated,
                unchanged = changes.unchanged,
                tables_rebuilt = changes.tables_rebuilt,
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
        Err(e) => {
            tracing::error!(error = %e, "reload partly applied; the next change retries");
            ReloadOutcome { ok: false, message: format!("partly applied: {e}"), at: now() }
        }
    };
    let outcome = if l7_errors.is_empty() {
        outcome
    } else {
        ReloadOutcome { ok: false, message: format!("{}; l7: {}", outcome.message, l7_errors.join("; ")), at: now() }
    };
    state.last_reload = Some(outcome);
}

/// Drains of backends that are no longer configured go with them.
fn prune_drains(states: &mut BackendStates, config: &Config) {
    states
        .drained
        .retain(|(vip, backend)| config.vips.iter().any(|v| v.name == *vip && backend_identities(v).contains(backend)));
}

/// Notices when the config file is replaced or rewritten (editors do either).
struct FileWatch {
    path: PathBuf,
    seen: Option<(std::time::SystemTime, u64, u64)>,
}

impl FileWatch {
    fn new(path: &std::path::Path) -> Self {
        let mut watch = Self { path: path.to_owned(), seen: None };
        watch.seen = watch.stamp();
        watch
    }

    fn stamp(&self) -> Option<(std::time::SystemTime, u64, u64)> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    }

    /// Whether the file changed since the last call. A vanished file is no change: the running
    /// configuration stays until a readable one appears.
    fn changed(&mut self) -> bool {
        let now = self.stamp();
        if now.is_none() || now == self.seen {
            return false;
        }
        self.seen = now;
        true
    }
}

/// `xlb decap`: strips tunnels addressed to this host on `iface` until SIGTERM/SIGINT.
pub async fn decap(iface: &str, addresses: Vec<std::net::IpAddr>) -> anyhow::Result<()> {
    let addresses = if addresses.is_empty() {
        let all = iface::host_addresses().context("listing this host's addresses")?;
        all.into_iter().filter(|(_, a)| !a.is_loopback()).map(|(_, a)| a).collect()
    } else {
        addresses
    };
    anyhow::ensure!(!addresses.is_empty(), "no addresses to accept tunnels for; pass --address");
    let (mut program, mut maps) = Loaded::decap().context("loading the decapsulation program")?;
    for addr in &addresses {
        maps.add_address(*addr)?;
    }
    let (link, mode) = program.attach(iface)?;
    tracing::info!(%iface, ?mode, addresses = ?addresses, "decapsulating IPIP, IP6IP6 and IPv4-in-IPv6 addressed to this host");
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    let counts: Vec<String> = maps.stats()?.into_iter().map(|(s, v)| format!("{s:?}={v}")).collect();
    program.detach(link)?;
    tracing::info!(%iface, counters = %counts.join(" "), "decap detached; exiting");
    Ok(())
}
