//! The limits thread: keeps the data plane's per-VIP connection limits at their rates — a
//! global limit's at this node's share as it moves (`apply::conn_limits`) — through map
//! handles of its own, off the runtime and the control thread.

use std::{sync::Arc, time::Duration};

use super::view::{AgentView, Shared};
use crate::apply::{
    conn_limits::{ConnLimitWriter, LimitedVip, limited_vips},
    dataplane::ConnLimitMaps,
};

/// How often the rates follow the shares (half the default renewal).
const TICK: Duration = Duration::from_millis(50);
/// Every how many ticks the statuses are read and published (once a second).
const REPORT_EVERY: u32 = 20;

/// Starts the thread; it stops when the returned sender is dropped.
pub(super) fn start(
    shared: Arc<Shared>,
    maps: ConnLimitMaps,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name("xlb-conn-limits".into()).spawn(move || {
        let mut writer = ConnLimitWriter::new(maps);
        // The limited VIPs change with a pass only: gathered again when the view does.
        let mut seen: Option<Arc<AgentView>> = None;
        let mut limited: Vec<LimitedVip> = Vec::new();
        let mut failing = false;
        let mut tick = 0u32;
        // At once, then every tick until stopped.
        let mut wait = Duration::ZERO;
        while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
            wait = TICK;
            let report = tick.is_multiple_of(REPORT_EVERY);
            tick = tick.wrapping_add(1);
            let view = shared.view.load_full();
            if seen.as_ref().is_none_or(|s| !Arc::ptr_eq(s, &view)) {
                limited = limited_vips(&view.config, &view.applied);
                seen = Some(view);
            }
            match writer.refresh(&limited, &shared.global_limits, report) {
                Ok(statuses) => {
                    if report {
                        shared.conn_limits.store(Arc::new(statuses));
                    }
                    if failing {
                        tracing::info!("connection limits written again");
                        failing = false;
                    }
                }
                Err(e) if !failing => {
                    tracing::warn!(error = %e, "writing the connection limits failed; retrying every {TICK:?}");
                    failing = true;
                }
                Err(_) => {}
            }
        }
    })?;
    Ok((stop, thread))
}
