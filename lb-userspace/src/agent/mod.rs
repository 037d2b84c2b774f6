//! The running agent: config + interface facts → desired state → reconciler → maps; attach;
//! serve the admin socket; reload on SIGHUP.

use std::{path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::{mpsc, oneshot},
};

use crate::{
    apply::dataplane::{self, AttachMode, Attached, Loaded, TableSizes},
    apply::explain::{LivePlane, Probe},
    apply::reconcile::Reconciler,
    config::{self, Config},
    l7,
    serve::admin::{self, Reply, Request},
    serve::metrics,
    sources::health::Checker,
    sources::link,
    sources::neighbor::Resolver,
    state::desired::{self, BackendStates, NodeFacts},
};

mod config_reader;
mod conn_limits;
mod conns;
mod control;
mod drop_log;
mod housekeeping;
pub mod instance_lock;
pub mod sd_notify;
pub mod state_file;
mod view;
mod watch;

use config_reader::ConfigReader;
use control::{Command, Control, Override};
use instance_lock::{InstanceLock, Owner};
use state_file::{StateFile, StateStatus};
use view::lock;
pub use view::{AgentView, Shared};

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
    /// Directory of the state file (drains); overrides `agent.state_dir` from the config.
    pub state_dir: Option<PathBuf>,
    /// Log the XDP program's drops whatever `node.bpf_log` says.
    pub bpf_log: bool,
}

impl RunOptions {
    /// Where this interface's data plane is pinned.
    pub fn iface_pin_dir(&self) -> PathBuf {
        self.pin_dir.join(&self.iface)
    }

    /// The state directory: the flag, else `agent.state_dir`, else /var/lib/xlb/<iface>.
    pub fn state_dir(&self, config: &Config) -> PathBuf {
        self.state_dir
            .clone()
            .or_else(|| config.agent.state_dir.clone())
            .unwrap_or_else(|| std::path::Path::new(state_file::DEFAULT_DIR).join(&self.iface))
    }
}

/// Takes the lock of every interface the agent runs on (their pin directories, made if need
/// be), before anything is loaded, pinned or listened on: a second agent on an interface stops
/// here, having changed nothing.
fn lock_interfaces(opts: &RunOptions) -> anyhow::Result<InstanceLock> {
    let ifaces: Vec<&String> = std::iter::once(&opts.iface).chain(&opts.other_ifaces).collect();
    let dirs: Vec<(&str, PathBuf)> = ifaces.iter().map(|iface| (iface.as_str(), opts.pin_dir.join(iface))).collect();
    for (_, dir) in &dirs {
        dataplane::prepare_pin_dir(dir)?;
    }
    let owner = Owner::this_process("xlb run", Some(&opts.config));
    Ok(InstanceLock::acquire(dirs.iter().map(|(iface, dir)| (*iface, dir.as_path())), &owner)?)
}

/// Puts the drains and runtime weights kept across restarts (`restored`, as read from `file`) in
/// force, pruned to what `config` still has (the file is rewritten if that dropped any); returns
/// the node drain and what `xlb status` says of the file.
fn restore_drains(
    file: &StateFile,
    restored: Option<state_file::Overrides>,
    config: &Config,
    states: &mut BackendStates,
) -> (bool, StateStatus) {
    let mut status = StateStatus { path: file.path().display().to_string(), ..Default::default() };
    let Some(restored) = restored else {
        tracing::info!(file = %file.path().display(), "no state file: no drains or runtime weights to restore");
        return (false, status);
    };
    states.drained = restored.drained;
    states.weights = restored.weights;
    let pruned = control::prune_overrides(states, config);
    pruned.log("at start");
    status.found = true;
    status.restored_drains = states.drained.len();
    status.restored_weights = states.weights.len();
    status.restored_node_drain = restored.node_drained;
    status.pruned_drains = pruned.drains.len();
    status.pruned_weights = pruned.weights.len();
    tracing::info!(
        file = %file.path().display(),
        drains = states.drained.len(),
        weights = states.weights.len(),
        node_drained = restored.node_drained,
        "restored drains and runtime weights from the state file"
    );
    if !pruned.is_empty() {
        let overrides = state_file::Overrides::of(states, restored.node_drained);
        if let Err(e) = file.save(&overrides) {
            tracing::error!(error = %e, "drains and weights not persisted");
            status.write_error = Some(e.to_string());
        }
    }
    (restored.node_drained, status)
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
    let read = |name: &String| link::facts(name).with_context(|| format!("reading interface {name}"));
    let mut facts = read(&opts.iface)?;
    for name in &opts.other_ifaces {
        facts.interfaces.extend(read(name)?.interfaces);
    }
    Ok(facts)
}

/// The MACs an adopted data plane holds for backends the configuration leaves to resolution
/// (by the address resolution would ask for).
fn adopted_macs(reconciler: &Reconciler, config: &Config) -> std::collections::BTreeMap<std::net::IpAddr, [u8; 6]> {
    let mut macs = std::collections::BTreeMap::new();
    for vip in &config.vips {
        let Some(applied) = reconciler.applied().get(&config::vip_key(vip)) else { continue };
        for (backend, identity) in vip.backends.iter().zip(vip.backend_identities()) {
            let Some(source) = desired::mac_source(vip, backend, config) else { continue };
            if let Some(b) = applied.vip.backends.iter().find(|b| b.identity == identity && b.mac != [0; 6]) {
                macs.insert(source, b.mac);
            }
        }
    }
    macs
}

/// How long the control thread may go without a heartbeat before `/healthz` says it is stuck.
/// It beats at every step of a pass and every second while idle; a step is a few hundred
/// milliseconds at most.
const STUCK_AFTER: Duration = Duration::from_secs(15);

/// `/healthz`: the runtime answers (this runs on it) and the control thread's heartbeat moved
/// within `STUCK_AFTER`.
fn liveness(heartbeat: Arc<std::sync::atomic::AtomicU64>) -> impl Fn() -> Result<String, String> + Send + Sync {
    let seen = std::sync::Mutex::new((u64::MAX, std::time::Instant::now()));
    move || {
        let beat = heartbeat.load(std::sync::atomic::Ordering::Relaxed);
        let mut seen = lock(&seen);
        if seen.0 != beat {
            *seen = (beat, std::time::Instant::now());
        }
        let quiet = seen.1.elapsed();
        if quiet > STUCK_AFTER {
            Err(format!("unhealthy: the control thread has not moved for {}s", quiet.as_secs()))
        } else {
            Ok("ok".to_owned())
        }
    }
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let mut config_cache = config::VipItemCache::default();
    let config = config::load_cached(&opts.config, &mut config_cache)?;
    let instance = lock_interfaces(&opts)?;
    // Read before anything is loaded: a file that cannot be read stops the agent here, with the
    // running data plane untouched (starting without its drains would send new flows to
    // backends an operator took out).
    let state_file = StateFile::in_dir(&opts.state_dir(&config));
    let restored = state_file.load()?;
    let notifier = sd_notify::Notifier::from_env();
    notifier.status(&format!("loading the data plane on {}", opts.iface));
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
    let (mut program, mut maps, adopted) =
        Loaded::balancer_pinned(sizes, &pin_dir).context("loading the XDP data plane")?;
    let mut drop_log = program.drop_log_switch().context("opening the drop log switch")?;
    drop_log::drain(program.drop_logger().context("opening the drop log")?)?;
    drop_log.set(opts.bpf_log || config.node.bpf_log).context("switching the drop log")?;
    let reconciler = if adopted {
        let reconciler = Reconciler::adopt(&maps).context("reading the pinned data plane")?;
        tracing::info!(dir = %pin_dir.display(), vips = reconciler.applied().len(), "adopted the pinned data plane; established flows keep their backends");
        reconciler
    } else {
        Reconciler::new()
    };
    // Backends start up (a restart must not drop traffic while the first checks run).
    let (checker, mut health_rx) = Checker::start(control::health_targets(&config));
    let (resolver, mut neighbors_rx) = Resolver::start(desired::neighbor_targets(&config, &opts.iface));
    // A restart keeps the MACs the previous agent wrote until the kernel confirms or replaces
    // them, so its flows keep going while the first resolution runs.
    let mut states = BackendStates { neighbors: adopted_macs(&reconciler, &config), ..Default::default() };
    states.neighbors.extend(neighbors_rx.borrow_and_update().iter().map(|(a, m)| (*a, *m)));
    states.down = control::down(&health_rx.borrow_and_update());
    // Before the first pass: a drained backend takes no new flows at any point of a restart.
    let (node_drained, state) = restore_drains(&state_file, restored, &config, &mut states);
    let mut l7 = l7::Tier::new()?;
    if let Some(e) = l7.apply(&config).into_iter().next() {
        return Err(e.into());
    }
    let counters = maps.counters().context("opening the counters for readers")?;
    let nat_tables = maps.nat_tables().context("opening the NAT tables for housekeeping")?;
    let nat_reader = maps.nat_tables().context("opening the NAT tables for xlb conns")?;
    let source_buckets =
        maps.sources.as_ref().map(|s| s.buckets()).transpose().context("opening the source buckets")?;
    let conn_limit_maps = maps.conn_limits.take();
    let cookie_meters =
        maps.syn_cookies.as_ref().map(|c| c.meter_reader()).transpose().context("opening the SYN cookie meters")?;
    let flow_counter = maps
        .flow_table_counter()
        .inspect_err(|e| tracing::warn!(error = %e, "connection-table occupancy will not be counted"))
        .ok();
    let config = Arc::new(config);
    let bgp_runtime = bgp_runtime()?;
    let shared = Arc::new(Shared::new(
        AgentView { state: state.clone(), node_drained, ..AgentView::empty(Arc::clone(&config)) },
        l7,
        (health_rx.clone(), checker.errors()),
        counters,
        opts.config.display().to_string(),
        bgp_runtime,
        notifier.clone(),
    ));
    let watchdog_every = sd_notify::watchdog_interval().filter(|_| notifier.enabled());
    // From before the first fill, which counts a heartbeat at every step: a fill of thousands of
    // VIPs may outlast WatchdogSec, and systemd's watchdog may run before READY.
    let watchdog = watchdog_every.map(|every| {
        tracing::info!(?every, "pinging the systemd watchdog while the control thread shows progress");
        tokio::spawn(sd_notify::watchdog(notifier.clone(), Arc::clone(&shared.heartbeat), every))
    });
    let mut control = Control {
        opts: opts.clone(),
        maps,
        reconciler,
        facts,
        sizes,
        config,
        reader: ConfigReader::new(opts.config.clone(), config_cache),
        states,
        checker,
        health_rx,
        resolver,
        neighbors_rx,
        shared: Arc::clone(&shared),
        config_generation: 1,
        last_reload: None,
        drop_log,
        node_drained,
        attached: false,
        detached: Default::default(),
        dirty: true,
        failure: None,
        state_file,
        state,
        // Without a watchdog, a beat a second anyway: /healthz reads the heartbeat.
        heartbeat_tick: Some(watchdog_every.map_or(Duration::from_secs(1), sd_notify::heartbeat_tick)),
        transitions: Default::default(),
    };

    // Adopted maps hold what the previous agent served: switch to this load's programs now, so
    // new flows (NAT ones too) never wait for the first pass. A fresh data plane is attached
    // once filled.
    if adopted {
        attach_everywhere(&mut program, &opts, &pin_dir).await?;
    }

    // The first fill, on a blocking thread: health checks and the resolver go on meanwhile.
    let started = std::time::Instant::now();
    let (control, changes) = tokio::task::spawn_blocking(move || {
        let changes = control.converge();
        (control, changes)
    })
    .await
    .context("the first reconcile pass panicked")?;
    let changes = changes?;
    tracing::info!(
        added = changes.added.len(),
        updated = changes.updated.len(),
        removed = changes.removed.len(),
        mtu = control.facts.mtu,
        ms = started.elapsed().as_millis() as u64,
        "data plane filled"
    );

    if !adopted {
        attach_everywhere(&mut program, &opts, &pin_dir).await?;
    }
    let links = iface_links(&opts, &pin_dir);

    let status_line = control.status_line();
    let (commands, commands_rx) = mpsc::unbounded_channel();
    let runtime = tokio::runtime::Handle::current();
    let control_thread = std::thread::Builder::new()
        .name("xlb-control".into())
        .spawn(move || control.run(commands_rx, runtime))
        .context("starting the control thread")?;
    // Attached: from here the VIPs that are up may be announced.
    let _ = commands.send(Command::Attached);
    *lock(&shared.attachments) = watch::initial(&links);
    let watched = links.iter().map(|(iface, _)| iface.clone()).collect();
    let (watch_signal, watcher) = watch::start(program, links, Arc::clone(&shared), commands.clone())?;
    let link_events = {
        let signal = watch_signal.clone();
        crate::sources::link_events::start(watched, move |news| {
            let _ = signal.send(watch::Signal::Link(news));
        })
    };
    let _ = shared.nat_reader.set(std::sync::Mutex::new(nat_reader));
    let (housekeeping_stop, housekeeping) =
        housekeeping::start(Arc::clone(&shared), nat_tables, flow_counter, source_buckets, cookie_meters)?;
    let conn_limits = conn_limit_maps.map(|maps| conn_limits::start(Arc::clone(&shared), maps)).transpose()?;

    let explain_at = (pin_dir.clone(), opts.iface.clone());
    let server =
        admin::serve(&admin_socket, Arc::new(answerer(Arc::clone(&shared), commands.clone(), explain_at))).await?;
    tracing::info!(socket = %admin_socket.display(), "admin socket listening");
    let metrics = match metrics_listen {
        Some(addr) => {
            let (for_metrics, for_page, for_ready) = (Arc::clone(&shared), Arc::clone(&shared), Arc::clone(&shared));
            let renders = metrics::Renders {
                metrics: Arc::new(move || for_metrics.metrics()),
                status: Some(Arc::new(move || for_page.status_page())),
                health: Some(metrics::Probes {
                    live: Arc::new(liveness(Arc::clone(&shared.heartbeat))),
                    ready: Arc::new(move || for_ready.readiness()),
                }),
            };
            let server = metrics::serve_renders(addr, renders, metrics::Limits::default()).await?;
            tracing::info!(%addr, "serving Prometheus metrics at /metrics, the status page at /");
            Some(server)
        }
        None => None,
    };
    // Filled, attached, answering: `systemctl start` returns now.
    notifier.notify(&format!("READY=1\nSTATUS={status_line}"));

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut watch = FileWatch::new(&opts.config);
    let mut poll = tokio::time::interval(Duration::from_millis(500));
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => { let _ = commands.send(Command::Reload); }
            _ = poll.tick(), if opts.watch_config => {
                if watch.changed() {
                    tracing::info!(config = %opts.config.display(), "configuration file changed");
                    let _ = commands.send(Command::Reload);
                }
            }
        }
    }

    notifier.notify("STOPPING=1\nSTATUS=stopping: withdrawing routes, then exiting");
    if let Some(watchdog) = watchdog {
        watchdog.abort();
    }
    // No re-attaching from here on (a detach on exit must not be undone).
    link_events.abort();
    let _ = watch_signal.send(watch::Signal::Stop);
    let program = tokio::task::spawn_blocking(move || watcher.join()).await;
    // Withdraw everything and give the routers `withdraw_grace` to move traffic elsewhere
    // before anything else goes.
    let speaker = lock(&shared.speaker).take();
    if let Some(speaker) = speaker {
        tracing::info!("withdrawing every route before exiting");
        speaker.shutdown().await;
    }
    lock(&shared.l7).shutdown();
    server.abort();
    if let Some(metrics) = metrics {
        metrics.abort();
    }
    // The control thread ends when its last sender goes (after any pass in progress).
    drop(commands);
    drop(housekeeping_stop);
    let conn_limits = conn_limits.map(|(stop, thread)| {
        drop(stop);
        thread
    });
    let _ = tokio::task::spawn_blocking(move || {
        let _ = control_thread.join();
        let _ = housekeeping.join();
        if let Some(thread) = conn_limits {
            let _ = thread.join();
        }
    })
    .await;
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
    drop(instance);
    Ok(())
}

/// Each interface the agent runs on, with the pin of its link.
fn iface_links(opts: &RunOptions, pin_dir: &std::path::Path) -> Vec<(String, PathBuf)> {
    std::iter::once((opts.iface.clone(), link_pin(pin_dir)))
        .chain(opts.other_ifaces.iter().map(|other| (other.clone(), other_link_pin(pin_dir, other))))
        .collect()
}

/// Attaches this load's program to every interface, in place of a previous agent's where its
/// link is pinned (one atomic switch per interface), then retires the previous loads' program
/// arrays once the programs they fed have finished their packets.
async fn attach_everywhere(program: &mut Loaded, opts: &RunOptions, pin_dir: &std::path::Path) -> anyhow::Result<()> {
    for (iface, link) in iface_links(opts, pin_dir) {
        match program.attach_pinned(&iface, &link)? {
            Attached::New(AttachMode::Native) => tracing::info!(%iface, "XDP attached in native mode"),
            Attached::New(AttachMode::Generic) => {
                tracing::warn!(%iface, "the driver refused native XDP; attached in generic (skb) mode, which is much slower, and redirects into it may fail")
            }
            Attached::Replaced => tracing::info!(%iface, "replaced the running XDP program in place"),
        }
    }
    // A replaced program may still be inside a packet on another CPU (XDP runs under RCU);
    // its array must outlive that.
    tokio::time::sleep(Duration::from_millis(50)).await;
    let retired = program.retire_program_arrays().context("removing the previous program arrays")?;
    if retired > 0 {
        tracing::debug!(retired, "removed the previous loads' program arrays");
    }
    Ok(())
}

/// A runtime on a thread of its own for the BGP speaker: a keepalive is due every few seconds
/// whatever the agent's main runtime is busy with (thousands of health checks, big scrapes).
/// The thread lives as long as the process.
fn bgp_runtime() -> anyhow::Result<tokio::runtime::Handle> {
    let runtime =
        tokio::runtime::Builder::new_current_thread().enable_all().build().context("building the BGP runtime")?;
    let handle = runtime.handle().clone();
    std::thread::Builder::new()
        .name("xlb-bgp".into())
        .spawn(move || runtime.block_on(std::future::pending::<()>()))
        .context("starting the BGP thread")?;
    Ok(handle)
}

/// The admin socket's handler: reads are answered from the published view on a blocking
/// thread (never waiting on a pass); changes go to the control thread.
fn answerer(
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
    (pin_dir, iface): (PathBuf, String),
) -> impl Fn(Request) -> admin::ReplyFuture + Send + Sync + 'static {
    move |request| {
        let shared = Arc::clone(&shared);
        let commands = commands.clone();
        let (pin_dir, iface) = (pin_dir.clone(), iface.clone());
        Box::pin(async move {
            let ask = |command: Command, reply: oneshot::Receiver<Reply>| async move {
                if commands.send(command).is_err() {
                    return Reply::Error("the agent is shutting down".into());
                }
                reply.await.unwrap_or_else(|_| Reply::Error("the agent is shutting down".into()))
            };
            match request {
                Request::Stats => {
                    read(shared, |s| s.snapshot().map_or_else(|e| Reply::Error(e.to_string()), Reply::Stats)).await
                }
                Request::Status => {
                    read(shared, |s| s.status().map_or_else(|e| Reply::Error(e.to_string()), Reply::Status)).await
                }
                Request::Summary => read(shared, |s| Reply::Summary(s.summary())).await,
                Request::Conns { vip, limit } => tokio::task::spawn_blocking(move || shared.conns(&vip, limit))
                    .await
                    .unwrap_or_else(|e| Reply::Error(format!("listing connections failed: {e}"))),
                Request::Plan { path, config } => {
                    let (reply, rx) = oneshot::channel();
                    ask(Command::Plan { path, config, reply }, rx).await
                }
                Request::Detach { iface } => detach(shared, iface, ask).await,
                Request::Explain(probe) => explain(shared, pin_dir, iface, probe).await,
                Request::DrainNode { undo } => {
                    let (reply, rx) = oneshot::channel();
                    ask(Command::DrainNode { undo, reply }, rx).await
                }
                Request::Drain { vip, backend, undo } => {
                    let (reply, rx) = oneshot::channel();
                    ask(Command::Backend { vip, backend, change: Override::Drain { undo }, reply }, rx).await
                }
                Request::Weight { vip, backend, weight } => {
                    let (reply, rx) = oneshot::channel();
                    ask(Command::Backend { vip, backend, change: Override::Weight(weight), reply }, rx).await
                }
            }
        })
    }
}

/// `xlb detach` asks first: the watch leaves `iface` alone from now on, the VIPs served through
/// it are withdrawn, and the reply waits `withdraw_grace` for the routers to move their traffic
/// before the CLI detaches.
async fn detach<F, Fut>(shared: Arc<Shared>, iface: String, ask: F) -> Reply
where
    F: FnOnce(Command, oneshot::Receiver<Reply>) -> Fut,
    Fut: std::future::Future<Output = Reply>,
{
    let marked = {
        let (shared, iface) = (Arc::clone(&shared), iface.clone());
        // The watch holds this lock while it checks an interface: not on a runtime worker.
        tokio::task::spawn_blocking(move || shared.operator_detach(&iface)).await.unwrap_or(false)
    };
    if !marked {
        let mine: Vec<String> = lock(&shared.attachments).iter().map(|a| a.iface.clone()).collect();
        return Reply::Done(format!("{iface}: not an interface this agent runs on ({})", mine.join(", ")));
    }
    tracing::warn!(%iface, "the operator is detaching XDP (xlb detach): withdrawing its VIPs; no re-attaching");
    let before = shared.announce.borrow().len();
    let (reply, rx) = oneshot::channel();
    let answer = ask(Command::Attachment { iface, attached: false, reply: Some(reply) }, rx).await;
    let withdrew = shared.announce.borrow().len() < before;
    let grace = shared.view.load().config.bgp.as_ref().map(|b| b.withdraw_grace);
    if let (true, Some(grace)) = (withdrew, grace) {
        tokio::time::sleep(grace).await;
    }
    answer
}

/// `xlb explain`: a shadow of the balancer is loaded and run on a blocking thread (a load is
/// the verifier's work, tens of milliseconds), naming VIPs and backends from the published view.
async fn explain(shared: Arc<Shared>, pin_dir: PathBuf, iface: String, probe: Probe) -> Reply {
    let work = move || {
        let view = shared.view.load();
        let Some(node) = view.node else { return Reply::Error("the agent has not written its maps yet".into()) };
        let live = LivePlane { pin_dir, iface, ifindex: node.ifindex, iface_mac: node.iface_mac };
        match crate::apply::explain::explain(&live, &view.applied, &probe) {
            Ok(explanation) => Reply::Explain(explanation),
            Err(e) => Reply::Error(e.to_string()),
        }
    };
    tokio::task::spawn_blocking(work).await.unwrap_or_else(|e| Reply::Error(format!("explain failed: {e}")))
}

/// Answers a read from the published state on a blocking thread (reading the counters is a
/// few syscalls and, at 10 000 VIPs, some milliseconds of work: not for a runtime worker).
async fn read(shared: Arc<Shared>, f: fn(&Shared) -> Reply) -> Reply {
    tokio::task::spawn_blocking(move || f(&shared))
        .await
        .unwrap_or_else(|e| Reply::Error(format!("reading the agent's state failed: {e}")))
}

/// Notices when the config file is replaced or rewritten (editors do either), once it has
/// settled: a change is reported when two polls in a row see the same new stamp, so a file
/// caught half-written is not loaded.
struct FileWatch {
    path: PathBuf,
    seen: Option<Stamp>,
    /// A new stamp seen at the last poll, not yet reported.
    settling: Option<Stamp>,
}

type Stamp = (std::time::SystemTime, u64, u64);

impl FileWatch {
    fn new(path: &std::path::Path) -> Self {
        let mut watch = Self { path: path.to_owned(), seen: None, settling: None };
        watch.seen = watch.stamp();
        watch
    }

    fn stamp(&self) -> Option<Stamp> {
        use std::os::unix::fs::MetadataExt as _;
        let meta = std::fs::metadata(&self.path).ok()?;
        Some((meta.modified().ok()?, meta.len(), meta.ino()))
    }

    /// Whether the file changed and has settled since the last report. A vanished file is no
    /// change: the running configuration stays until a readable one appears.
    fn changed(&mut self) -> bool {
        let now = self.stamp();
        if now.is_none() || now == self.seen {
            self.settling = None;
            return false;
        }
        if now != self.settling {
            self.settling = now;
            return false;
        }
        self.seen = now;
        self.settling = None;
        true
    }
}

/// `xlb decap`: strips tunnels addressed to this host on `iface` until SIGTERM/SIGINT.
pub async fn decap(iface: &str, addresses: Vec<std::net::IpAddr>) -> anyhow::Result<()> {
    let addresses = if addresses.is_empty() {
        let all = link::host_addresses().context("listing this host's addresses")?;
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
