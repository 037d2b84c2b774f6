//! The running agent: config → desired state → reconciler → maps; attach; serve; reload.

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
    desired::DesiredState,
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
}

pub async fn run(opts: RunOptions) -> anyhow::Result<()> {
    let config = config::load(&opts.config)?;
    let (mut program, maps) = Loaded::balancer().context("loading the XDP data plane")?;
    let mut state = State {
        maps,
        reconciler: Reconciler::new(),
    };
    let changes = state
        .reconciler
        .apply(&DesiredState::from_config(&config), &mut state.maps)?;
    tracing::info!(vips = changes.added.len(), "VIP map filled");

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
                let state = admin_state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
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
    let mut state = state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let State { maps, reconciler } = &mut *state;
    match reconciler.apply(&DesiredState::from_config(&config), maps) {
        Ok(changes) => {
            tracing::info!(added = ?changes.added, removed = ?changes.removed, unchanged = changes.unchanged, "reloaded")
        }
        Err(e) => tracing::error!(error = %e, "reload partly applied; the next reload retries"),
    }
}
