//! The housekeeping thread: NAT sweeps and connection-table counts, off the runtime and the
//! control thread, through map handles of its own.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;

use super::view::{Shared, lock};
use crate::{
    apply::dataplane::{FlowTableCounter, NatTables},
    apply::nat,
};

/// How often expired NAT flows are swept, pool usage recounted and connection-table entries
/// counted.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(2);

/// The housekeeping thread: every `HOUSEKEEPING_INTERVAL`, expired NAT flows are swept, pool
/// usage recounted and connection-table entries counted — through its own map handles, off
/// the runtime and the control thread. It stops when the returned sender is dropped.
pub(super) fn start(
    shared: Arc<Shared>,
    mut nat_tables: NatTables,
    flow_counter: Option<FlowTableCounter>,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    if let Some(counter) = &flow_counter {
        lock(&shared.usage).flow_table.size = counter.size();
    }
    let thread = std::thread::Builder::new()
        .name("xlb-housekeeping".into())
        .spawn(move || {
            let mut swept = 0;
            // At once, then every interval until stopped.
            let mut wait = Duration::ZERO;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                wait = HOUSEKEEPING_INTERVAL;
                let view = shared.view.load();
                let nat =
                    view.node.map(|node| nat::sweep(&mut nat_tables, &view.config, &node, nat::monotonic_ns(), swept));
                let flow_table = flow_counter.as_ref().map(FlowTableCounter::count);
                let mut usage = lock(&shared.usage);
                if let Some(nat) = nat {
                    swept = nat.swept;
                    usage.nat = nat;
                }
                if let Some(flow_table) = flow_table {
                    usage.flow_table = flow_table;
                }
            }
        })
        .context("starting the housekeeping thread")?;
    Ok((stop, thread))
}
