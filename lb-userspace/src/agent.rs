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
    dataplane::{AttachMode, Loaded, Maps},
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
    let (mut program, maps) = Loaded::balancer(flow_table_size).context("loading the XDP data plane")?;
    let mut state = State { maps, reconciler: Reconciler::new(), facts, flow_table_size };
    let changes = state.reconciler.apply(&DesiredState::new(&config, &facts), &mut state.maps)?;
    tracing::info!(vips = changes.added.len(), mtu = facts.mtu, "data plane filled");

    let (link, mode) = program.attach(&opts.iface)?;
    match mode {
        AttachMode::Native => tracing::info!(iface = %opts.iface, "XDP attached in native mode"),
        AttachMode::Generic => {
            tracing::warn!(iface = %opts.iface, "the driver refused native XDP; attached in generic (skb) mode, which is much slower")
        }
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
    program.detach(link)?;
    tracing::info!(iface = %opts.iface, "XDP detached; exiting");
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
