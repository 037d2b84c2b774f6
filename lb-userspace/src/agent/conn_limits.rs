//! The limits thread: keeps the data plane's per-VIP connection limits at their rates — a
//! global limit's at this node's share as it moves (`apply::conn_limits`) — and the ceilings
//! of concurrent limits at the connections still free, recounting the limited VIPs' open
//! connections often, through map handles of its own, off the runtime and the control thread.

use std::{
    collections::{BTreeMap, HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use lb_common::VIP_FLAG_NAT;

use super::view::{AgentView, Shared, lock};
use crate::apply::{
    conn_limits::{ConnLimitWriter, LimitedVip, OpenCount, limited_vips},
    conns::{self, SlotOwners},
    dataplane::ConnLimitMaps,
    nat, nat_flows,
};
use crate::sources::jiffies::KernelClock;

/// How often the rates follow the shares (half the default renewal).
const TICK: Duration = Duration::from_millis(50);
/// Every how many ticks the statuses are read and published (once a second).
const REPORT_EVERY: u32 = 20;
/// Open connections are recounted at most this often (a connection that closed frees its
/// place at the next count)...
const RECOUNT_MIN: Duration = Duration::from_millis(100);
/// ...and no sooner than this many times what the last count took (a count holds a CPU:
/// a quarter at most, for huge tables).
const RECOUNT_FACTOR: u32 = 4;

/// The open connections of every VIP with a concurrent limit, by VIP id: each VIP's bucket read
/// first, then its connections counted (the connection table for direct server return, the NAT
/// tables for NAT). `Err` says what could not be read.
fn count_open(
    shared: &Shared,
    view: &AgentView,
    owners: &SlotOwners,
    limited: &[LimitedVip],
    writer: &ConnLimitWriter,
) -> Result<BTreeMap<u32, OpenCount>, String> {
    let ids: HashSet<u32> = limited.iter().filter(|v| v.limit.concurrent.is_some()).map(|v| v.id).collect();
    // Index in `owners.vips` → (VIP id, NAT?), for the VIPs counted.
    let mut counted: HashMap<u32, (u32, bool)> = HashMap::new();
    for (key, applied) in &view.applied {
        if ids.contains(&applied.meta.id)
            && let Some(index) = owners.vip_index(key)
        {
            counted.insert(index, (applied.meta.id, applied.meta.flags & VIP_FLAG_NAT != 0));
        }
    }
    let mut before = BTreeMap::new();
    for &(id, _) in counted.values() {
        before.insert(id, writer.bucket(id).map_err(|e| e.to_string())?.admitted);
    }
    let mut open: HashMap<u32, u64> = HashMap::new();
    if counted.values().any(|(_, is_nat)| !is_nat) {
        let table = shared.flow_table.get().ok_or("the connection table is not mapped for reading")?;
        let clock = match lock(&shared.usage).clock {
            Some(clock) => clock,
            // The housekeeping thread has not measured it yet (at start): measure it here.
            None => KernelClock::calibrate().map_err(|e| format!("measuring the kernel's HZ: {e}"))?,
        };
        let now = clock.now().map_err(|e| e.to_string())?;
        let direct = |vip: u32| counted.get(&vip).is_some_and(|(_, is_nat)| !is_nat);
        // Embryonic entries count for a second: handshakes under way.
        open.extend(conns::open_per_vip(table, now, owners, clock.hz, &direct));
    }
    if counted.values().any(|(_, is_nat)| *is_nat) {
        let node = view.node.ok_or("the data plane has no node settings yet")?;
        let tables = shared.nat_reader.get().ok_or("the NAT tables are not open for reading")?;
        let by_nat = |vip: u32| counted.get(&vip).is_some_and(|(_, is_nat)| *is_nat);
        open.extend(nat_flows::open_per_vip(&lock(tables), &node, owners, nat::monotonic_ns(), &by_nat));
    }
    Ok(counted
        .iter()
        .map(|(index, (id, _))| {
            let count = OpenCount { admitted_before: before[id], open: open.get(index).copied().unwrap_or(0) };
            (*id, count)
        })
        .collect())
}

/// Starts the thread; it stops when the returned sender is dropped.
pub(super) fn start(
    shared: Arc<Shared>,
    maps: ConnLimitMaps,
) -> anyhow::Result<(std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>)> {
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let (first_written, first) = std::sync::mpsc::channel::<()>();
    let thread = std::thread::Builder::new().name("xlb-conn-limits".into()).spawn(move || {
        let mut writer = ConnLimitWriter::new(maps);
        // The limited VIPs and slot owners change with a pass only: gathered again when the view
        // does.
        let mut seen: Option<Arc<AgentView>> = None;
        let mut limited: Vec<LimitedVip> = Vec::new();
        let mut owners = SlotOwners::default();
        let mut counts: BTreeMap<u32, OpenCount> = BTreeMap::new();
        let mut next_count = Instant::now();
        let mut count_failing: Option<String> = None;
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
                owners = SlotOwners::of(&view.applied);
                // Counts of another view may name ids that moved.
                counts.clear();
                next_count = Instant::now();
                seen = Some(Arc::clone(&view));
            }
            if Instant::now() >= next_count && limited.iter().any(|v| v.limit.concurrent.is_some()) {
                let started = Instant::now();
                match count_open(&shared, &view, &owners, &limited, &writer) {
                    Ok(counted) => {
                        counts = counted;
                        if count_failing.take().is_some() {
                            tracing::info!("open connections counted again for concurrent limits");
                        }
                    }
                    Err(e) => {
                        if count_failing.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, "counting open connections for concurrent limits failed; their ceilings stay as last written");
                        }
                        count_failing = Some(e);
                    }
                }
                next_count = started + (started.elapsed() * RECOUNT_FACTOR).max(RECOUNT_MIN);
            }
            let written = writer.refresh(&limited, &shared.global_limits, &counts, report);
            // Started (or gave up trying): the agent may say it is ready.
            let _ = first_written.send(());
            match written {
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
    // The limits in force before the agent says it is ready: a concurrent limit's first
    // ceiling needs a count (and the kernel's HZ measured, 100 ms). Bounded: a thread that
    // cannot write logs why and keeps trying.
    let _ = first.recv_timeout(Duration::from_secs(2));
    Ok((stop, thread))
}
