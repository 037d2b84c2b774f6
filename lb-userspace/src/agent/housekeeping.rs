//! The housekeeping thread: NAT sweeps and connection-table counts, off the runtime and the
//! control thread, through map handles of its own.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;

use super::view::{AgentView, Shared, lock};
use crate::{
    apply::conns::{self, SlotOwners},
    apply::dataplane::{FlowTableCounter, FlowTableUsage, NatTables, SourceBuckets, SynCookieMeters},
    apply::nat,
    sources::jiffies::KernelClock,
};

/// How often expired NAT flows are swept, pool usage recounted and connection-table entries
/// counted.
const HOUSEKEEPING_INTERVAL: Duration = Duration::from_secs(2);

/// The housekeeping thread: every `HOUSEKEEPING_INTERVAL`, expired NAT flows are swept, pool
/// usage recounted and connection-table entries counted, live ones per backend (in paced
/// chunks) — through its own map handles, off the runtime and the control thread. It stops when
/// the returned sender is dropped.
pub(super) fn start(
    shared: Arc<Shared>,
    mut nat_tables: NatTables,
    flow_counter: Option<FlowTableCounter>,
    source_buckets: Option<SourceBuckets>,
    cookie_meters: Option<SynCookieMeters>,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    if let Some(counter) = &flow_counter {
        lock(&shared.usage).flow_table.size = counter.size();
        let _ = shared.flow_table.set(counter.clone());
    }
    let thread = std::thread::Builder::new()
        .name("xlb-housekeeping".into())
        .spawn(move || {
            let clock = KernelClock::calibrate()
                .inspect(|clock| tracing::debug!(hz = clock.hz, "measured the kernel's HZ"))
                .inspect_err(|e| tracing::warn!(error = %e, "connections per backend will not be counted"))
                .ok();
            lock(&shared.usage).clock = clock;
            // Slot owners change with a pass only: rebuilt when the published view does.
            let mut owners: (Option<Arc<AgentView>>, SlotOwners) = (None, SlotOwners::default());
            let mut swept = 0;
            let mut source_report = crate::apply::source_report::SourceReport::default();
            // At once, then every interval until stopped.
            let mut wait = Duration::ZERO;
            while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(wait) {
                wait = HOUSEKEEPING_INTERVAL;
                let view = shared.view.load_full();
                let nat =
                    view.node.map(|node| nat::sweep(&mut nat_tables, &view.config, &node, nat::monotonic_ns(), swept));
                if owners.0.as_ref().is_none_or(|seen| !Arc::ptr_eq(seen, &view)) {
                    owners = (Some(Arc::clone(&view)), SlotOwners::of(&view.applied));
                }
                let counts = flow_counter.as_ref().zip(clock).and_then(|(table, clock)| match clock.now() {
                    Ok(now) => Some(conns::count_table(table, now, &owners.1, true)),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the kernel's jiffies");
                        None
                    }
                });
                let flow_table = flow_counter.as_ref().map(|table| match &counts {
                    Some(counts) => FlowTableUsage { entries: counts.occupied, size: table.size() },
                    None => table.count(),
                });
                if let Some(counts) = &counts {
                    tracing::trace!(took = ?counts.took, busy = ?counts.busy, "counted connections");
                }
                let mut counts = counts.unwrap_or_default();
                if let Some(nat) = &nat {
                    counts.add_nat(&nat.per_backend);
                    // NAT flows alone are a count too (no connection table, or no clock).
                    counts.finished.get_or_insert_with(std::time::Instant::now);
                }
                let limited = source_buckets.as_ref().and_then(|buckets| match buckets.read() {
                    Ok(read) => Some(source_report.update(read, std::time::Instant::now(), |id, family| {
                        crate::apply::source_report::describe_scope(&view.config, &view.applied, id, family)
                    })),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the source buckets");
                        None
                    }
                });
                let cookies_on = cookie_meters.as_ref().and_then(|meters| match meters.active(nat::monotonic_ns()) {
                    Ok(ids) => Some(
                        view.applied
                            .values()
                            .filter(|a| ids.contains(&a.meta.id))
                            .map(|a| a.vip.name.clone())
                            .collect(),
                    ),
                    Err(e) => {
                        tracing::debug!(error = %e, "reading the SYN cookie meters");
                        None
                    }
                });
                let mut usage = lock(&shared.usage);
                if let Some(on) = cookies_on {
                    usage.syn_cookies_on = on;
                }
                if let Some(limited) = limited {
                    usage.limited_sources = limited;
                }
                if let Some(nat) = nat {
                    swept = nat.swept;
                    usage.nat = nat;
                }
                if let Some(flow_table) = flow_table {
                    usage.flow_table = flow_table;
                }
                usage.conns = Arc::new(counts);
            }
        })
        .context("starting the housekeeping thread")?;
    Ok((stop, thread))
}
