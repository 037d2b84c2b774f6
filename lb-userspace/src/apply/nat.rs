//! NAT flow housekeeping: the data plane claims sources and takes over expired ones on its own;
//! the agent sweeps expired flows out of both tables (so idle entries do not fill them) and
//! counts how many flows each pool address carries.

use std::collections::BTreeMap;

use lb_common::{FlowKey, NAT_FLAG_COOKIE, NatFlow, NodeConfig, nat_expired};
use serde::{Deserialize, Serialize};

use crate::{apply::dataplane::NatTables, config::Config, config::ip_from_words};

/// Flows per pool address, as `xlb status` and `/metrics` show them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NatUsage {
    /// NAT flows in the tables (full NAT and DNAT only).
    pub flows: u64,
    /// Flows removed by the sweeper since the agent started.
    pub swept: u64,
    pub pools: Vec<PoolUsage>,
    /// Live flows by backend slot and the generation they recorded (`ConnCounts::add_nat`).
    #[serde(skip)]
    pub per_backend: BTreeMap<(u32, u32), u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolUsage {
    pub pool: String,
    pub address: String,
    /// Flows leaving from this address (over all backends).
    pub flows: u64,
    /// Ports of the pool: the flows one address can carry to one backend address and port.
    pub ports: u64,
}

/// CLOCK_MONOTONIC_COARSE in nanoseconds: the clock of `bpf_ktime_get_coarse_ns`, which stamps
/// NAT flows.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec to a valid pointer; the clock always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Whether a forward entry still owns the source its reverse entry records.
pub fn owns(entry: &NatFlow, reverse: &FlowKey) -> bool {
    entry.source == reverse.daddr && entry.source_port == reverse.dport
}

/// Removes every expired NAT flow (judged by both directions, like the data plane) and counts
/// the live ones per pool address. `swept_before` carries the running total.
pub fn sweep(tables: &mut NatTables, config: &Config, node: &NodeConfig, now: u64, swept_before: u64) -> NatUsage {
    let mut per_addr: BTreeMap<std::net::IpAddr, u64> = BTreeMap::new();
    let mut expired = Vec::new();
    let mut live = 0u64;
    let mut per_backend: BTreeMap<(u32, u32), u64> = BTreeMap::new();
    for (key, rev) in tables.reverse_entries() {
        let forward_key = rev.forward_key(key.proto, key.family);
        let forward = tables.flow(&forward_key).filter(|f| owns(f, &key));
        let (last, flags) =
            forward.map_or((rev.last_seen, rev.flags), |f| (rev.last_seen.max(f.last_seen), rev.flags | f.flags));
        if nat_expired(now, last, flags, key.proto, node) {
            expired.push((forward.map(|_| forward_key), key, flags & NAT_FLAG_COOKIE != 0));
        } else {
            live += 1;
            if let Some(f) = forward {
                *per_backend.entry((f.backend, f.generation)).or_default() += 1;
            }
            *per_addr.entry(ip_from_words(key.daddr, key.family)).or_default() += 1;
        }
    }
    let swept = expired.len() as u64;
    for (forward, reverse, cookie) in expired {
        tables.remove(forward.as_ref(), &reverse, cookie);
    }
    let pools = config
        .nat_pools
        .iter()
        .flat_map(|pool| {
            let ports = u64::from(pool.port_last) - u64::from(pool.port_first) + 1;
            pool.addresses.iter().map(move |addr| (pool, *addr, ports))
        })
        .map(|(pool, addr, ports)| PoolUsage {
            pool: pool.name.clone(),
            address: addr.to_string(),
            flows: per_addr.get(&addr).copied().unwrap_or(0),
            ports,
        })
        .collect();
    NatUsage { flows: live, swept: swept_before + swept, pools, per_backend }
}

impl NatUsage {
    /// The pool table of `xlb status`.
    pub fn render(&self) -> String {
        if self.pools.is_empty() && self.flows == 0 {
            return String::new();
        }
        let mut out = format!("\nNAT flows: {} (expired and swept: {})\n", self.flows, self.swept);
        if !self.pools.is_empty() {
            out.push_str(&format!("{:<16} {:<40} {:>10} {:>14}\n", "pool", "address", "flows", "ports/backend"));
            for p in &self.pools {
                out.push_str(&format!("{:<16} {:<40} {:>10} {:>14}\n", p.pool, p.address, p.flows, p.ports));
            }
        }
        out
    }
}
