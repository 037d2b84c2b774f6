//! The running agent: config + interface facts → desired state → reconciler → maps; attach;
//! serve the admin socket; reload on SIGHUP.

use std::{
    path::PathBuf,
    sync::{Arc, Mutex},
};

use anyhow::Context as _;
use tokio::signal::unix::{SignalKind, signal};

use crate::{
    admin::{self, Reply, Request},
    config,
    dataplane::{self, AttachMode, Attached, Loaded, Maps},
    desired::{DesiredState, NodeFacts},
    iface,
    reconcile::Reconciler,
    stats::Snapshot,
};

#[derive(Debug, Clone)]
pub struct RunOptions {
    pub config: PathBuf,
    pub iface: String,
    pub admin_socket: PathBuf,
    /// bpffs directory under which each interface's maps and link are pinned.
    pub pin_dir: PathBuf,
    /// Detach XDP on SIGTERM/SIGINT. Off by default: an edge node wants forwarding to outlive
    /// the agent (a restarted agent adopts the pinned data plane).
    pub detach_on_exit: bool,
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

/// Everything the reconciler owns, behind one lock: only it writes the maps.
struct State {
    maps: Maps,
    reconciler: Reconciler,
    facts: NodeFacts,
    flow_table_size: u32,
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = config::load(&opts.config)?;
    let facts = iface::facts(&opts.iface).with_context(|| format!("reading interface {}", opts.iface))?;
    let flow_table_size = config.node.flow_table_size;
    let pin_dir = opts.iface_pin_dir();
    let (mut program, maps, adopted) =
        Loaded::balancer_pinned(flow_table_size, &pin_dir).context("loading the XDP data plane")?;
    let reconciler = if adopted {
        let reconciler = Reconciler::adopt(&maps).context("reading the pinned data plane")?;
        tracing::info!(dir = %pin_dir.display(), vips = reconciler.applied().len(), "adopted the pinned data plane; established flows keep their backends");
        reconciler
    } else {
        Reconciler::new()
    };
    let mut state = State { maps, reconciler, facts, flow_table_size };
    let changes = state.reconciler.apply(&DesiredState::new(&config, &facts), &mut state.maps)?;
    tracing::info!(
        added = changes.added.len(),
        updated = changes.updated.len(),
        removed = changes.removed.len(),
        mtu = facts.mtu,
        "data plane filled"
    );

    let link = link_pin(&pin_dir);
    match program.attach_pinned(&opts.iface, &link)? {
        Attached::New(AttachMode::Native) => tracing::info!(iface = %opts.iface, "XDP attached in native mode"),
        Attached::New(AttachMode::Generic) => {
            tracing::warn!(iface = %opts.iface, "the driver refused native XDP; attached in generic (skb) mode, which is much slower")
        }
        Attached::Replaced => tracing::info!(iface = %opts.iface, "replaced the running XDP program in place"),
    }

    let state = Arc::new(Mutex::new(state));
    let admin_state = Arc::clone(&state);
    let server = admin::serve(
        &opts.admin_socket,
        Arc::new(move |request| match request {
            Request::Stats => {
                let state = admin_state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                match Snapshot::read(&state.maps, &state.reconciler) {
                    Ok(snapshot) => Reply::Stats(snapshot),
                    Err(e) => Reply::Error(e.to_string()),
                }
            }
        }),
    )
    .await?;
    tracing::info!(socket = %opts.admin_socket.display(), "admin socket listening");

    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = hup.recv() => reload(&opts, &state),
        }
    }

    server.abort();
    let _ = std::fs::remove_file(&opts.admin_socket);
    if opts.detach_on_exit {
        dataplane::detach_pinned(&link)?;
        tracing::info!(iface = %opts.iface, "XDP detached; exiting");
    } else {
        tracing::info!(iface = %opts.iface, pinned = %pin_dir.display(), "exiting; XDP stays attached and keeps forwarding");
    }
    drop(program);
    Ok(())
}

/// Re-reads the config; an invalid file leaves the running state as it is.
fn reload(opts: &RunOptions, state: &Mutex<State>) {
    let config = match config::load(&opts.config) {
        Ok(config) => config,
        Err(e) => {
            tracing::error!(error = %e, "reload rejected; the previous configuration keeps serving");
            return;
        }
    };
    let mut state = state.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let State { maps, reconciler, facts, flow_table_size } = &mut *state;
    // The interface's MTU or MAC may have changed since the last pass.
    match iface::facts(&opts.iface) {
        Ok(now) => *facts = now,
        Err(e) => {
            tracing::warn!(error = %e, iface = %opts.iface, "cannot re-read the interface; keeping its last MAC and MTU")
        }
    }
    if config.node.flow_table_size != *flow_table_size {
        tracing::warn!(
            running = *flow_table_size,
            configured = config.node.flow_table_size,
            "node.flow_table_size changes need a restart; keeping the running size"
        );
    }
    match reconciler.apply(&DesiredState::new(&config, facts), maps) {
        Ok(changes) => tracing::info!(
            added = ?changes.added,
            removed = ?changes.removed,
            updated = ?changes.updated,
            unchanged = changes.unchanged,
            tables_rebuilt = changes.tables_rebuilt,
            "reloaded"
        ),
        Err(e) => tracing::error!(error = %e, "reload partly applied; the next reload retries"),
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
