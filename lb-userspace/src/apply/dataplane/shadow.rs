//! A private load of the balancer for `xlb explain`: the live program's code over the live
//! configuration maps (VIPs, backends, Maglev tables, node, pools, interfaces — shared through
//! their pins, and only read by the program), with state maps of its own (connection table,
//! NAT tables, counters). A packet run through it under BPF_PROG_TEST_RUN takes the path a real
//! one would, and records nothing in the live tables or counters.

use std::path::Path;

use aya::maps::{Array, HashMap, Map, MapData, PerCpuArray};
use lb_common::{
    Backend, BackendCounters, FLOW_WAYS, FlowKey, FlowSet, NatFlow, NatReverse, NatSeq, Stat, StatCounters, flow_set,
    maps, programs,
};

use super::{BALANCER_OBJECT, DataplaneError, Loaded, map_err, new_generation, sizes::TableSizes, stat_sums, take};
use crate::apply::testrun::{self, XdpAction};

/// The maps a shadow shares with the live balancer. The program only reads them.
const SHARED: [&str; 11] = [
    maps::VIPS,
    maps::VIP_INDEX,
    maps::VIP_ADDRS,
    maps::VIP_FILTER,
    maps::BACKENDS,
    maps::MAGLEV,
    maps::NODE,
    maps::NAT_POOLS,
    maps::IFACES,
    maps::DEVS,
    // The live key, so that a cookie explained is the one the client got.
    maps::SYN_COOKIE_SECRET,
];

/// Entries of the shadow's NAT tables: a run adds at most one flow; the rest hold live entries
/// copied in to show what they decide.
const SHADOW_NAT_ENTRIES: u32 = 256;

/// The live state a run starts from: what the live tables hold for this flow.
#[derive(Debug, Clone, Default)]
pub struct Seed {
    /// The live connection-table set the flow falls in (the shadow's table is this one set).
    pub flow_set: Option<FlowSet>,
    /// Live NAT entries: forward (client key) and reverse (backend key) ones.
    pub nat_flows: Vec<(FlowKey, NatFlow)>,
    pub nat_reverse: Vec<(FlowKey, NatReverse)>,
    /// A cookie flow's sequence state (by its reverse key).
    pub nat_seq: Vec<(FlowKey, NatSeq)>,
}

/// What one run did.
#[derive(Debug, Clone)]
pub struct ShadowRun {
    pub action: XdpAction,
    pub packet: Vec<u8>,
    /// Counters the run moved (outcome and events), with how much.
    pub stats: Vec<(Stat, u64)>,
    /// Of the backend slots asked about, the one whose counters moved.
    pub backend_slot: Option<u32>,
    /// The connection-table entry for the flow after the run, and whether it is confirmed.
    pub recorded: Option<(lb_common::Flow, bool)>,
    /// The NAT forward entry for the flow after the run.
    pub nat_flow: Option<NatFlow>,
}

pub struct Shadow {
    loaded: Loaded,
    flows: Array<MapData, FlowSet>,
    stats: PerCpuArray<MapData, StatCounters>,
    backend_counters: PerCpuArray<MapData, BackendCounters>,
    nat_flows: HashMap<MapData, FlowKey, NatFlow>,
    nat_reverse: HashMap<MapData, FlowKey, NatReverse>,
    nat_seq: HashMap<MapData, FlowKey, NatSeq>,
    backends: Array<MapData, Backend>,
    live: LiveTables,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").finish_non_exhaustive()
    }
}

/// Read handles on the live state maps, opened from their pins.
struct LiveTables {
    flows: Array<MapData, FlowSet>,
    nat_flows: HashMap<MapData, FlowKey, NatFlow>,
    nat_reverse: HashMap<MapData, FlowKey, NatReverse>,
    nat_seq: HashMap<MapData, FlowKey, NatSeq>,
}

fn open_pinned<T: TryFrom<Map, Error = aya::maps::MapError>>(
    dir: &Path,
    name: &'static str,
    wrap: fn(MapData) -> Map,
) -> Result<T, DataplaneError> {
    let path = dir.join(name);
    let data = MapData::from_pin(&path).map_err(map_err(name))?;
    T::try_from(wrap(data)).map_err(map_err(name))
}

impl Shadow {
    /// Loads a shadow of the balancer whose maps are pinned under `dir` (one interface's pin
    /// directory of a running agent).
    pub fn load(dir: &Path) -> Result<Self, DataplaneError> {
        // A missing pin would make the loader create (and pin) a new, empty map there.
        if let Some(missing) = SHARED.iter().chain([&maps::FLOWS]).find(|name| !dir.join(name).exists()) {
            return Err(DataplaneError::Pin {
                path: dir.join(missing),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no data plane is pinned there; is the agent running on this interface?",
                ),
            });
        }
        let live = LiveTables {
            flows: open_pinned(dir, maps::FLOWS, Map::Array)?,
            nat_flows: open_pinned(dir, maps::NAT_FLOWS, Map::HashMap)?,
            nat_reverse: open_pinned(dir, maps::NAT_REVERSE, Map::HashMap)?,
            nat_seq: open_pinned(dir, maps::NAT_SEQ, Map::LruHashMap)?,
        };
        let one_set = 1u32;
        let sizes = TableSizes { flows: FLOW_WAYS as u32, nat: SHADOW_NAT_ENTRIES };
        let generation = new_generation();
        let paths: Vec<(&'static str, std::path::PathBuf)> = SHARED.iter().map(|n| (*n, dir.join(n))).collect();
        let tails = [programs::NAT, programs::RESET];
        let mut loaded = Loaded::load_with(BALANCER_OBJECT, programs::BALANCER, &tails, |loader| {
            sizes.apply(loader, &one_set, super::FlowTable::Sets);
            loader.override_global(maps::GENERATION, &generation, true);
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
        })?;
        loaded.place_tails()?;
        let ebpf = &mut loaded.ebpf;
        Ok(Self {
            flows: take(ebpf, maps::FLOWS)?,
            stats: take(ebpf, maps::STATS)?,
            backend_counters: take(ebpf, maps::BACKEND_COUNTERS)?,
            nat_flows: take(ebpf, maps::NAT_FLOWS)?,
            nat_reverse: take(ebpf, maps::NAT_REVERSE)?,
            nat_seq: take(ebpf, maps::NAT_SEQ)?,
            backends: take(ebpf, maps::BACKENDS)?,
            live,
            loaded,
        })
    }

    /// What the live tables hold for `key`: its connection-table set, and its NAT entries
    /// (forward, and the reverse one it owns).
    pub fn live_seed(&self, key: &FlowKey) -> Result<Seed, DataplaneError> {
        let set = flow_set(key.hash(), self.live.flows.len());
        let flow_set = self.live.flows.get(&set, 0).map_err(map_err(maps::FLOWS))?;
        let mut seed = Seed { flow_set: Some(flow_set), ..Seed::default() };
        if let Some(entry) = self.live_nat_flow(key)? {
            let reverse = self.reverse_key(key, &entry)?;
            if let Some(rev) = self.live_nat_reverse(&reverse)? {
                seed.nat_reverse.push((reverse, rev));
            }
            if let Some(seq) = optional(self.live.nat_seq.get(&reverse, 0), maps::NAT_SEQ)? {
                seed.nat_seq.push((reverse, seq));
            }
            seed.nat_flows.push((*key, entry));
        }
        Ok(seed)
    }

    pub fn live_nat_flow(&self, key: &FlowKey) -> Result<Option<NatFlow>, DataplaneError> {
        optional(self.live.nat_flows.get(key, 0), maps::NAT_FLOWS)
    }

    pub fn live_nat_reverse(&self, key: &FlowKey) -> Result<Option<NatReverse>, DataplaneError> {
        optional(self.live.nat_reverse.get(key, 0), maps::NAT_REVERSE)
    }

    /// The reverse-table key of NAT flow `key` whose forward entry is `entry` (as the data
    /// plane builds it: backend → source).
    pub fn reverse_key(&self, key: &FlowKey, entry: &NatFlow) -> Result<FlowKey, DataplaneError> {
        let backend = self.backend(entry.backend)?;
        Ok(FlowKey {
            saddr: backend.addr,
            daddr: entry.source,
            sport: entry.backend_port,
            dport: entry.source_port,
            proto: key.proto,
            family: key.family,
            pad: 0,
        })
    }

    /// Live backend slot `slot`.
    pub fn backend(&self, slot: u32) -> Result<Backend, DataplaneError> {
        self.backends.get(&slot, 0).map_err(map_err(maps::BACKENDS))
    }

    /// Runs `frame` (arriving on `ifindex`, 0: loopback) through the shadow, its state maps set
    /// to `seed` first; reports what moved among `slots`.
    pub fn run(
        &mut self,
        frame: &[u8],
        ifindex: u32,
        key: &FlowKey,
        seed: &Seed,
        slots: &[u32],
    ) -> Result<ShadowRun, DataplaneError> {
        self.reset(seed)?;
        let stats_before = stat_sums(&self.stats)?;
        let backends_before = self.backend_packets(slots)?;
        let outcome = testrun::run_on(self.loaded.xdp()?, frame, ifindex).map_err(|e| DataplaneError::Program {
            name: programs::BALANCER,
            source: Box::new(match e {
                testrun::TestRunError::Run(e) => e,
                other => aya::programs::ProgramError::IOError(std::io::Error::other(other.to_string())),
            }),
        })?;
        let stats = stat_sums(&self.stats)?
            .into_iter()
            .zip(stats_before)
            .filter(|((_, after), (_, before))| after != before)
            .map(|((stat, after), (_, before))| (stat, after - before))
            .collect();
        let backend_slot = self
            .backend_packets(slots)?
            .into_iter()
            .zip(backends_before)
            .find(|((_, after), (_, before))| after != before)
            .map(|((slot, _), _)| slot);
        let set = self.flows.get(&0, 0).map_err(map_err(maps::FLOWS))?;
        let recorded = set.way_of(key).and_then(|way| set.find(key).map(|flow| (flow, set.confirmed(way))));
        let nat_flow = optional(self.nat_flows.get(key, 0), maps::NAT_FLOWS)?;
        Ok(ShadowRun { action: outcome.action, packet: outcome.packet, stats, backend_slot, recorded, nat_flow })
    }

    /// Puts the shadow's state maps in `seed`'s state.
    fn reset(&mut self, seed: &Seed) -> Result<(), DataplaneError> {
        let empty = empty_set();
        self.flows.set(0, seed.flow_set.as_ref().unwrap_or(&empty), 0).map_err(map_err(maps::FLOWS))?;
        let keys: Vec<FlowKey> = self.nat_flows.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.nat_flows.remove(&key);
        }
        let keys: Vec<FlowKey> = self.nat_reverse.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.nat_reverse.remove(&key);
        }
        for (key, value) in &seed.nat_flows {
            self.nat_flows.insert(key, value, 0).map_err(map_err(maps::NAT_FLOWS))?;
        }
        for (key, value) in &seed.nat_reverse {
            self.nat_reverse.insert(key, value, 0).map_err(map_err(maps::NAT_REVERSE))?;
        }
        let keys: Vec<FlowKey> = self.nat_seq.keys().filter_map(Result::ok).collect();
        for key in keys {
            let _ = self.nat_seq.remove(&key);
        }
        for (key, value) in &seed.nat_seq {
            self.nat_seq.insert(key, value, 0).map_err(map_err(maps::NAT_SEQ))?;
        }
        Ok(())
    }

    fn backend_packets(&self, slots: &[u32]) -> Result<Vec<(u32, u64)>, DataplaneError> {
        slots
            .iter()
            .map(|&slot| {
                let per_cpu = self.backend_counters.get(&slot, 0).map_err(map_err(maps::BACKEND_COUNTERS))?;
                Ok((slot, per_cpu.iter().map(|c| c.packets).sum()))
            })
            .collect()
    }
}

/// A connection-table set with no entries.
fn empty_set() -> FlowSet {
    let entry =
        lb_common::FlowEntry { key: FlowKey::default(), flow: lb_common::Flow::default(), check: 0, pad: [0; 3] };
    FlowSet { hashes: [0; FLOW_WAYS], used: [0; FLOW_WAYS], entries: [entry; FLOW_WAYS] }
}

/// A lookup's value, `None` for an absent key.
fn optional<V>(found: Result<V, aya::maps::MapError>, name: &'static str) -> Result<Option<V>, DataplaneError> {
    match found {
        Ok(v) => Ok(Some(v)),
        Err(aya::maps::MapError::KeyNotFound) => Ok(None),
        Err(e) => Err(map_err(name)(e)),
    }
}
