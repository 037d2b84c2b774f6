//! The BPF map memory a configuration implies, for `xlb check`: at edge scale the Maglev tables
//! and the connection table dominate, and the kernel charges all of it up front (array maps and
//! preallocated hash maps), so it is worth seeing before a reload.

use std::{fmt, mem::size_of};

use lb_common::{
    Backend, BackendCounters, FlowKey, FlowSet, MAGLEV_GROUP, MAX_BACKENDS, MAX_VIPS, MaglevGroup, NatFlow, NatReverse,
    VIP_INDEX_SIZE, VipKey, VipMeta, VipSlot, flow_sets,
};

use crate::config::{Config, DEFAULT_TABLE_SIZE, Mode};

/// Array maps are allocated in pages; each Maglev table is a map of its own (mmapable).
const PAGE: u64 = 4096;
/// A preallocated hash map keeps an element header and a bucket beside each key and value:
/// roughly this many bytes an entry.
const HASH_ENTRY_OVERHEAD: u64 = 64;
/// Above this `xlb check` warns: more than many nodes can spare for one program's maps.
pub const WARN_BYTES: u64 = 2 << 30;
const MIB: u64 = 1 << 20;

/// BPF map memory, in bytes, by what takes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// VIPs with a Maglev table (all but `mode: l7`, which the agent proxies).
    pub maglev_tables: u64,
    pub maglev_bytes: u64,
    /// The largest table, for the advice: (index in `vips`, slots).
    pub largest_table: Option<(usize, u32)>,
    pub flow_table_bytes: u64,
    /// Both NAT tables (forward and reverse).
    pub nat_bytes: u64,
    /// Maps sized by the limits, not by the file: backend slots, their per-CPU counters, the VIP
    /// map and index.
    pub other_bytes: u64,
}

fn pages(bytes: u64) -> u64 {
    bytes.next_multiple_of(PAGE)
}

fn bytes_of<T>() -> u64 {
    size_of::<T>() as u64
}

/// One VIP's Maglev table: slots packed `MAGLEV_GROUP` to an element (4 bytes a slot, an odd
/// count rounded up to even), in whole pages.
fn table_bytes(table_size: u32) -> u64 {
    pages(u64::from(table_size.div_ceil(MAGLEV_GROUP)) * bytes_of::<MaglevGroup>())
}

/// The BPF memory `config` implies on a machine of `cpus` possible CPUs (per-CPU maps hold a
/// value for each).
pub fn memory_estimate(config: &Config, cpus: u32) -> MemoryEstimate {
    let mut maglev_tables = 0;
    let mut maglev_bytes = 0;
    let mut largest_table: Option<(usize, u32)> = None;
    for (i, vip) in config.vips.iter().enumerate().filter(|(_, v)| v.mode != Mode::L7) {
        maglev_tables += 1;
        maglev_bytes += table_bytes(vip.table_size);
        if largest_table.is_none_or(|(_, size)| vip.table_size > size) {
            largest_table = Some((i, vip.table_size));
        }
    }
    let flow_table_bytes = pages(u64::from(flow_sets(config.node.flow_table_size)) * bytes_of::<FlowSet>());
    let nat_entry = (bytes_of::<FlowKey>() + bytes_of::<NatFlow>() + HASH_ENTRY_OVERHEAD)
        + (bytes_of::<FlowKey>() + bytes_of::<NatReverse>() + HASH_ENTRY_OVERHEAD);
    let nat_bytes = u64::from(config.node.nat_table_size) * nat_entry;
    let other_bytes = u64::from(MAX_BACKENDS) * bytes_of::<Backend>()
        + u64::from(MAX_BACKENDS) * bytes_of::<BackendCounters>() * u64::from(cpus)
        + u64::from(MAX_BACKENDS) * bytes_of::<lb_common::NatSources>()
        + u64::from(VIP_INDEX_SIZE) * bytes_of::<VipSlot>()
        + u64::from(MAX_VIPS) * (bytes_of::<VipKey>() + bytes_of::<VipMeta>() + HASH_ENTRY_OVERHEAD);
    MemoryEstimate { maglev_tables, maglev_bytes, largest_table, flow_table_bytes, nat_bytes, other_bytes }
}

/// `12.3 MiB` below 10 MiB, `123 MiB` above.
fn mib(bytes: u64) -> String {
    if bytes < 10 * MIB {
        format!("{:.1} MiB", bytes as f64 / MIB as f64)
    } else {
        format!("{} MiB", (bytes + MIB / 2) / MIB)
    }
}

impl MemoryEstimate {
    pub fn total(&self) -> u64 {
        self.maglev_bytes + self.flow_table_bytes + self.nat_bytes + self.other_bytes
    }

    /// What to change when the total is over `WARN_BYTES`, starting with the biggest part.
    pub fn warning(&self, config: &Config) -> Option<String> {
        if self.total() <= WARN_BYTES {
            return None;
        }
        let maglev = match self.largest_table.and_then(|(i, size)| Some((i, size, config.vips.get(i)?))) {
            Some((i, size, vip)) => format!(
                "lower vips[*].maglev_table_size (the Maglev tables take {} for {} VIPs, at 4 bytes a slot; the largest is vips[{i}] `{}`, {size} slots; the default {DEFAULT_TABLE_SIZE} takes 64 KiB)",
                mib(self.maglev_bytes),
                self.maglev_tables,
                vip.name
            ),
            None => format!("lower vips[*].maglev_table_size (the Maglev tables take {})", mib(self.maglev_bytes)),
        };
        let flows = format!(
            "lower node.flow_table_size (the connection table takes {}, {} bytes an entry)",
            mib(self.flow_table_bytes),
            bytes_of::<FlowSet>() / lb_common::FLOW_WAYS as u64
        );
        let nat = format!("lower node.nat_table_size (the NAT tables take {})", mib(self.nat_bytes));
        let mut advice = [(self.maglev_bytes, maglev), (self.flow_table_bytes, flows), (self.nat_bytes, nat)];
        advice.sort_by_key(|(bytes, _)| std::cmp::Reverse(*bytes));
        let advice: Vec<String> = advice.into_iter().map(|(_, text)| text).collect();
        Some(format!(
            "the BPF maps would take ~{}, more than {} GiB; {}",
            mib(self.total()),
            WARN_BYTES >> 30,
            advice.join(", or ")
        ))
    }
}

impl fmt::Display for MemoryEstimate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "BPF memory: ~{} (Maglev tables {} for {} VIPs, connection table {}, NAT {}, other {})",
            mib(self.total()),
            mib(self.maglev_bytes),
            self.maglev_tables,
            mib(self.flow_table_bytes),
            mib(self.nat_bytes),
            mib(self.other_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    const KNOWN: &str = "node:\n  flow_table_size: 65536\n  nat_table_size: 1024\nvips:\n  - { name: a, address: 192.0.2.1, port: 80, protocol: tcp, mode: dsr-l2, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n  - { name: b, address: 192.0.2.2, port: 80, protocol: tcp, mode: dsr-l2, maglev_table_size: 65537, backends: [{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }] }\n  - { name: c, address: 192.0.2.3, port: 80, protocol: tcp, mode: nat, maglev_table_size: 7, backends: [{ address: 10.0.0.2 }] }\n  - name: d\n    address: 192.0.2.4\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 8080 }]\n";

    fn estimate(text: &str, cpus: u32) -> (Config, MemoryEstimate) {
        let config = crate::config::parse(Path::new("test.yaml"), text).unwrap_or_else(|e| panic!("{e}"));
        let estimate = memory_estimate(&config, cpus);
        (config, estimate)
    }

    #[test]
    fn a_known_config_takes_what_the_formula_says() {
        let (config, e) = estimate(KNOWN, 4);
        // Maglev, 4 bytes a slot rounded up to even, each table in whole pages; l7 has none:
        // 16381 → 16382 × 4 = 65528 → 65536; 65537 → 65538 × 4 = 262152 → 266240; 7 → 32 → 4096.
        assert_eq!((e.maglev_tables, e.maglev_bytes), (3, 65_536 + 266_240 + 4_096));
        assert_eq!(e.largest_table, Some((1, 65537)));
        // 65536 entries: 8192 sets of 8, 64 + 8 × 64 = 576 bytes each.
        assert_eq!(e.flow_table_bytes, 8_192 * 576);
        // Forward: 40-byte key, 40-byte value; reverse: 40-byte key, 64-byte value; +64 each.
        assert_eq!(e.nat_bytes, 1_024 * ((40 + 40 + 64) + (40 + 64 + 64)));
        // 100 000 backend slots of 36 bytes, their counters (24 bytes) on 4 CPUs, their NAT
        // source states (56 bytes), the VIP index (131072 slots of 48 bytes) and the VIP map
        // (10 000 × (20 + 20 + 64)).
        let other = 100_000 * 36 + 100_000 * 24 * 4 + 100_000 * 56 + 131_072 * 48 + 10_000 * (20 + 20 + 64);
        assert_eq!(e.other_bytes, other);
        assert_eq!(e.total(), 65_536 + 266_240 + 4_096 + 8_192 * 576 + 1_024 * 312 + other);
        assert_eq!(
            e.to_string(),
            "BPF memory: ~30 MiB (Maglev tables 0.3 MiB for 3 VIPs, connection table 4.5 MiB, NAT 0.3 MiB, other 25 MiB)"
        );
        assert_eq!(e.warning(&config), None);
    }

    #[test]
    fn over_two_gib_names_the_biggest_part_first() {
        // 10 000 VIPs at 65537 slots: 10 000 × 266240 bytes, ~2539 MiB of Maglev tables.
        let mut text = String::from("vips:\n");
        for i in 0..MAX_VIPS {
            text.push_str(&format!(
                "  - {{ name: v{i}, address: 198.18.{}.{}, port: 80, protocol: tcp, mode: dsr-l2, maglev_table_size: {}, backends: [{{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }}] }}\n",
                i >> 8,
                i & 255,
                if i == 77 { 131_071 } else { 65_537 }
            ));
        }
        let (config, e) = estimate(&text, 2);
        assert_eq!(e.maglev_bytes, 9_999 * 266_240 + pages(131_072 * 4));
        let warning = e.warning(&config).expect("over 2 GiB");
        assert!(
            warning.starts_with("the BPF maps would take ~2")
                && warning.contains(
                    "more than 2 GiB; lower vips[*].maglev_table_size (the Maglev tables take 2539 MiB for 10000 VIPs"
                ),
            "{warning}"
        );
        assert!(warning.contains("the largest is vips[77] `v77`, 131071 slots"), "{warning}");
        // Then the others, biggest first: NAT (78 MiB by default), the connection table (72 MiB).
        assert!(
            warning.ends_with("), or lower node.nat_table_size (the NAT tables take 78 MiB), or lower node.flow_table_size (the connection table takes 72 MiB, 72 bytes an entry)"),
            "{warning}"
        );
    }
}
