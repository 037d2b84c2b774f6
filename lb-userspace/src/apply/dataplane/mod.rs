//! The XDP data plane as the agent sees it: the embedded objects, typed map wrappers, attach.

use std::path::{Path, PathBuf};

use aya::{
    Ebpf, EbpfError, EbpfLoader,
    maps::{
        Array, ArrayOfMaps, DevMap, HashMap, Map, MapData, MapError, PerCpuArray, PerCpuValues, ProgramArray,
        xdp::XdpMapError,
    },
    programs::{
        ProgramError, Xdp, XdpMode,
        links::{FdLink, PinnedLink},
        xdp::{XdpLink, XdpLinkId},
    },
    util::nr_cpus,
};
use lb_common::{
    Backend, BackendCounters, Flow, FlowKey, FlowSet, Iface, MaglevGroup, NatFlow, NatPool, NatReverse, NatSeq,
    NodeConfig, Stat, StatCounters, VipAddrKey, VipAddrPolicy, VipKey, VipMeta, flow_set, flow_sets, maps, programs,
};

/// The balancer object (lb-ebpf's `xlb-balancer` binary), built by build.rs.
pub static BALANCER_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-balancer"));
/// The backend-side decapsulation object (`xlb decap`).
pub static DECAP_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-decap"));
/// An XDP program that only returns XDP_PASS: the harness floor benchmarks subtract.
pub static FLOOR_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-floor"));
/// The traffic tool of benches and flood tests (a live-frames generator and a counting sink).
pub static TRAFFIC_OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/xlb-traffic"));

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error("loading the XDP object failed (are you root, with bpffs and BTF available?): {0}")]
    Load(#[from] EbpfError),
    #[error("the XDP object has no {kind} named `{name}`; the agent and lb-ebpf were built from different sources")]
    Missing { kind: &'static str, name: &'static str },
    #[error("XDP program `{name}`: {source}")]
    Program { name: &'static str, source: Box<ProgramError> },
    #[error("map `{name}`: {source}")]
    Map { name: &'static str, source: Box<MapError> },
    #[error("this xlb was built with AYA_BUILD_SKIP and holds no XDP object; rebuild without it")]
    NotBuilt,
    #[error("the drop log (bpf_log) cannot read the XDP object's log ring buffer: {0}")]
    DropLog(aya_log::Error),
    #[error("cannot count the possible CPUs: {0}")]
    Cpus(std::io::Error),
    #[error(
        "the maps pinned under {dir} do not fit this agent ({source}); they were made by another xlb version or with another node.flow_table_size. To start over — this forgets every established flow — stop xlb and remove {dir}"
    )]
    PinnedIncompatible { dir: std::path::PathBuf, source: Box<EbpfError> },
    #[error("pinning under {path}: {source} (is bpffs mounted at /sys/fs/bpf?)")]
    Pin { path: std::path::PathBuf, source: std::io::Error },
    #[error("`{0}` is not a usable interface name")]
    InterfaceName(String),
    #[error(
        "attaching XDP to `{iface}` failed natively ({native}) and in generic mode ({generic}); check that the interface exists and has no other XDP program"
    )]
    Attach { iface: String, native: Box<ProgramError>, generic: Box<ProgramError> },
}

mod batch;
mod bpffs;
mod decap;
pub mod drop_log;
mod flow_view;
pub use flow_view::{FlowTableCounter, FlowTableUsage};
mod conn_limits;
pub mod link_state;
mod readers;
mod shadow;
mod sizes;
mod sources;
pub use conn_limits::ConnLimitMaps;
pub use sources::{RuleKey, SourceBuckets, SourceMaps};
mod syn_cookies;
pub use syn_cookies::{SynCookieMaps, SynCookieMeters};
mod tables;
mod test_access;
pub use bpffs::prepare_pin_dir;
pub use readers::{Counters, NatTables};
pub use shadow::{Seed, Shadow, ShadowRun};
pub use test_access::nat_sources;
mod verify;
mod vip_index;

pub use decap::DecapMaps;
use sizes::FlowTable;
pub use sizes::TableSizes;

fn map_err(name: &'static str) -> impl Fn(MapError) -> DataplaneError {
    move |source| DataplaneError::Map { name, source: Box::new(source) }
}

fn take<T: TryFrom<Map, Error = MapError>>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DataplaneError> {
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
    T::try_from(map).map_err(map_err(name))
}

/// Every element of the plain array `name` (keys `0..count`), in one batched read.
fn read_array<V: aya::Pod>(
    fd: &std::os::fd::OwnedFd,
    count: u32,
    name: &'static str,
) -> Result<Vec<V>, DataplaneError> {
    use std::os::fd::AsFd as _;
    // A plain array's batch values are packed at the value size (per-CPU ones are not).
    let stride = size_of::<V>();
    let mut raw = vec![0u8; count as usize * stride];
    batch::lookup_array(fd.as_fd(), count, &mut raw, stride)
        .map_err(|e| map_err(name)(MapError::IoError(std::io::Error::other(e.to_string()))))?;
    Ok(raw
        .chunks_exact(stride)
        // SAFETY: each chunk holds a `V` (`aya::Pod`: plain data, any bit pattern valid) as the
        // kernel copied it out of the map; read unaligned.
        .map(|chunk| unsafe { std::ptr::read_unaligned(chunk.as_ptr().cast::<V>()) })
        .collect())
}

/// Takes a map like [`take`], keeping a second fd on it for a reader handle (aya's typed maps do
/// not lend theirs).
fn take_shared<T: TryFrom<Map, Error = MapError>>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<(T, std::os::fd::OwnedFd), DataplaneError> {
    use std::os::fd::AsFd as _;
    let map = ebpf.take_map(name).ok_or(DataplaneError::Missing { kind: "map", name })?;
    let data = match &map {
        Map::Array(d) | Map::PerCpuArray(d) | Map::HashMap(d) | Map::LruHashMap(d) | Map::ArrayOfMaps(d) => d,
        _ => return Err(map_err(name)(MapError::IoError(std::io::Error::other("unexpected map type")))),
    };
    let fd = data.fd().as_fd().try_clone_to_owned().map_err(|e| map_err(name)(MapError::IoError(e)))?;
    Ok((T::try_from(map).map_err(map_err(name))?, fd))
}

fn cpu_count_mismatch(name: &'static str, e: std::io::Error) -> DataplaneError {
    DataplaneError::Map { name, source: Box::new(MapError::IoError(e)) }
}

fn cpus() -> Result<usize, DataplaneError> {
    Ok(nr_cpus().map_err(|(_, e)| DataplaneError::Cpus(e))?.get() as usize)
}

/// Sums a per-CPU array slot.
fn sum_slot<V: aya::Pod + Default>(
    map: &PerCpuArray<MapData, V>,
    index: u32,
    name: &'static str,
    add: impl Fn(V, &V) -> V,
) -> Result<V, DataplaneError> {
    let values = map.get(&index, 0).map_err(map_err(name))?;
    Ok(values.iter().fold(V::default(), add))
}

/// The global counters of a `STATS` map, summed over CPUs, in `Stat` order.
fn stat_sums(stats: &PerCpuArray<MapData, StatCounters>) -> Result<Vec<(Stat, u64)>, DataplaneError> {
    let per_cpu = stats.get(&0, 0).map_err(map_err(maps::STATS))?;
    Ok(Stat::ALL.iter().map(|&stat| (stat, per_cpu.iter().map(|c| c.values[stat as usize]).sum())).collect())
}

/// Typed handles on the balancer's maps. Only the reconciler writes them.
pub struct Maps {
    vips: HashMap<MapData, VipKey, VipMeta>,
    /// `None` only in older builds of the object, which the bench loads to compare.
    vip_index: Option<vip_index::VipIndex>,
    vip_addrs: HashMap<MapData, VipAddrKey, VipAddrPolicy>,
    vip_filter: Array<MapData, u32>,
    backends: Array<MapData, Backend>,
    /// The same map, for reading every slot in one batch.
    backends_fd: std::os::fd::OwnedFd,
    backend_counters: PerCpuArray<MapData, BackendCounters>,
    maglev: ArrayOfMaps<MapData, Array<MapData, MaglevGroup>>,
    /// The same outer map, for batch swaps (aya's wrapper does not lend its fd).
    maglev_fd: std::os::fd::OwnedFd,
    /// Typed on use (`flow_table`): so that the bench can load older builds whose connection
    /// table had another layout beside this one.
    flows: Map,
    /// The connection table mapped read-only, for counting entries without a syscall per set
    /// (`None` for older builds' tables).
    flow_view: Option<std::sync::Arc<flow_view::FlowView>>,
    node: Array<MapData, NodeConfig>,
    stats: PerCpuArray<MapData, StatCounters>,
    nat_pools: Array<MapData, NatPool>,
    ifaces: Array<MapData, Iface>,
    devs: DevMap<MapData>,
    cpus: usize,
    /// `None` for builds from before source policies.
    pub sources: Option<SourceMaps>,
    /// `None` for builds from before SYN cookies.
    pub syn_cookies: Option<SynCookieMaps>,
    /// `None` for builds from before connection limits; taken by the limits thread.
    pub conn_limits: Option<ConnLimitMaps>,
    /// Second fds on the maps that readers on other threads use (counters, NAT housekeeping).
    readers: readers::Fds,
}

impl std::fmt::Debug for Maps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Maps").field("cpus", &self.cpus).finish_non_exhaustive()
    }
}

impl Maps {
    fn take(ebpf: &mut Ebpf) -> Result<Self, DataplaneError> {
        let vips: HashMap<MapData, VipKey, VipMeta> = take(ebpf, maps::VIPS)?;
        let vip_index = if ebpf.map(maps::VIP_INDEX).is_some() {
            let entries = vips.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::VIPS))?;
            let (map, fd) = take_shared(ebpf, maps::VIP_INDEX)?;
            // What a previous agent left, read in one batch (131 072 lookups took ~0.1 s).
            let held = read_array(&fd, lb_common::VIP_INDEX_SIZE, maps::VIP_INDEX)?;
            Some(vip_index::VipIndex::adopt(map, &held, &entries)?)
        } else {
            None
        };
        let flows = ebpf.take_map(maps::FLOWS).ok_or(DataplaneError::Missing { kind: "map", name: maps::FLOWS })?;
        let flow_view = match (&flows, Array::<&MapData, FlowSet>::try_from(&flows)) {
            (Map::Array(data), Ok(table)) => {
                Some(std::sync::Arc::new(flow_view::FlowView::map(data, table.len()).map_err(map_err(maps::FLOWS))?))
            }
            _ => None,
        };
        let (maglev, maglev_fd) = take_shared(ebpf, maps::MAGLEV)?;
        let (stats, stats_fd) = take_shared(ebpf, maps::STATS)?;
        let (backends, backends_fd) = take_shared(ebpf, maps::BACKENDS)?;
        let (backend_counters, backend_counters_fd) = take_shared(ebpf, maps::BACKEND_COUNTERS)?;
        let (_, nat_flows_fd) = take_shared::<HashMap<MapData, FlowKey, NatFlow>>(ebpf, maps::NAT_FLOWS)?;
        let (_, nat_reverse_fd) = take_shared::<HashMap<MapData, FlowKey, NatReverse>>(ebpf, maps::NAT_REVERSE)?;
        // (Builds from before SYN cookies have none.)
        let nat_seq_fd = match ebpf.map(maps::NAT_SEQ) {
            Some(_) => Some(take_shared::<HashMap<MapData, FlowKey, NatSeq>>(ebpf, maps::NAT_SEQ)?.1),
            None => None,
        };
        let cpus = cpus()?;
        let readers = readers::Fds {
            stats: stats_fd,
            backend_counters: backend_counters_fd,
            nat_flows: nat_flows_fd,
            nat_reverse: nat_reverse_fd,
            nat_seq: nat_seq_fd,
            cpus,
        };
        Ok(Self {
            vips,
            vip_index,
            vip_addrs: take(ebpf, maps::VIP_ADDRS)?,
            vip_filter: take(ebpf, maps::VIP_FILTER)?,
            backends,
            backends_fd,
            backend_counters,
            maglev,
            maglev_fd,
            flows,
            flow_view,
            node: take(ebpf, maps::NODE)?,
            stats,
            nat_pools: take(ebpf, maps::NAT_POOLS)?,
            ifaces: take(ebpf, maps::IFACES)?,
            devs: take(ebpf, maps::DEVS)?,
            cpus,
            sources: SourceMaps::take(ebpf)?,
            syn_cookies: SynCookieMaps::take(ebpf)?,
            conn_limits: ConnLimitMaps::take(ebpf)?,
            readers,
        })
    }

    /// Global counters, summed over CPUs, in `Stat` order.
    pub fn stats(&self) -> Result<Vec<(Stat, u64)>, DataplaneError> {
        stat_sums(&self.stats)
    }

    /// One backend slot's counters, summed over CPUs.
    pub fn backend_counters(&self, slot: u32) -> Result<BackendCounters, DataplaneError> {
        sum_slot(&self.backend_counters, slot, maps::BACKEND_COUNTERS, |a, c| a.plus(c))
    }

    /// A VIP's totals: its backends' counters plus what its removed backends had counted.
    /// `retired` is what the VIP's removed backends had counted.
    pub fn vip_traffic(&self, slots: &[u32], retired: BackendCounters) -> Result<BackendCounters, DataplaneError> {
        slots.iter().try_fold(retired, |sum, &slot| Ok(sum.plus(&self.backend_counters(slot)?)))
    }

    /// The VIP map's contents, sorted by key.
    pub fn vips(&self) -> Result<Vec<(VipKey, VipMeta)>, DataplaneError> {
        let mut all = self.vips.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::VIPS))?;
        all.sort_by_key(|(k, _)| *k);
        Ok(all)
    }

    /// The VIP index's slots in use: (slot, key, meta), in slot order.
    pub fn vip_index(&self) -> Result<Vec<(u32, VipKey, VipMeta)>, DataplaneError> {
        let Some(index) = &self.vip_index else { return Ok(Vec::new()) };
        Ok(index.entries()?.into_iter().map(|(slot, held)| (slot, held.key, held.meta)).collect())
    }

    /// The VIP-address policy map's contents, sorted by key.
    pub fn vip_addrs(&self) -> Result<Vec<(VipAddrKey, VipAddrPolicy)>, DataplaneError> {
        let mut all = self.vip_addrs.iter().collect::<Result<Vec<_>, _>>().map_err(map_err(maps::VIP_ADDRS))?;
        all.sort_by_key(|(k, _)| *k);
        Ok(all)
    }

    /// Every backend slot, in slot order: one batch read instead of a syscall per slot (an
    /// adopting agent reads all `MAX_BACKENDS`).
    pub fn backends(&self) -> Result<Vec<Backend>, DataplaneError> {
        read_array(&self.backends_fd, lb_common::MAX_BACKENDS, maps::BACKENDS)
    }

    pub fn backend(&self, slot: u32) -> Result<Backend, DataplaneError> {
        self.backends.get(&slot, 0).map_err(map_err(maps::BACKENDS))
    }

    pub fn node(&self) -> Result<NodeConfig, DataplaneError> {
        self.node.get(&0, 0).map_err(map_err(maps::NODE))
    }

    fn flow_table(&self) -> Result<Array<&MapData, FlowSet>, DataplaneError> {
        Array::try_from(&self.flows).map_err(map_err(maps::FLOWS))
    }

    /// The connection table's entry for a flow, if any.
    pub fn flow(&self, key: &FlowKey) -> Result<Option<Flow>, DataplaneError> {
        let table = self.flow_table()?;
        let set = flow_set(key.hash(), table.len());
        Ok(table.get(&set, 0).map_err(map_err(maps::FLOWS))?.find(key))
    }

    /// Entries in use in the connection table, and its size in entries.
    pub fn flow_table_usage(&self) -> Result<FlowTableUsage, DataplaneError> {
        Ok(self.flow_table_counter()?.count())
    }

    /// What counts the connection table's entries, apart from the maps: the scan reads every
    /// set (8 MB at the default size), so the agent runs it without holding its state.
    pub fn flow_table_counter(&self) -> Result<FlowTableCounter, DataplaneError> {
        let view = self.flow_view.as_ref().ok_or_else(|| {
            map_err(maps::FLOWS)(MapError::IoError(std::io::Error::other("not a connection table of sets")))
        })?;
        Ok(FlowTableCounter(std::sync::Arc::clone(view)))
    }

    pub(crate) fn set_node(&mut self, node: &NodeConfig) -> Result<(), DataplaneError> {
        self.node.set(0, node, 0).map_err(map_err(maps::NODE))
    }

    /// Interface `index` (from 1) of `maps::IFACES` and its redirect entry; `Iface::default()`
    /// clears it (the data plane then drops what would leave by it; the stale redirect entry
    /// is never used).
    pub(crate) fn set_iface(&mut self, index: u32, iface: &Iface) -> Result<(), DataplaneError> {
        if iface.ifindex != 0 {
            self.devs.set(index, iface.ifindex, None, 0).map_err(|e| match e {
                XdpMapError::MapError(e) => map_err(maps::DEVS)(e),
                other => DataplaneError::Map {
                    name: maps::DEVS,
                    source: Box::new(MapError::IoError(std::io::Error::other(other))),
                },
            })?;
        }
        self.ifaces.set(index, iface, 0).map_err(map_err(maps::IFACES))
    }

    /// Sets a VIP: in the map, then in the index.
    pub(crate) fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        self.vips.insert(key, meta, 0).map_err(map_err(maps::VIPS))?;
        let Some(index) = self.vip_index.as_mut() else { return Ok(()) };
        index.put(key, meta).inspect_err(|_| {
            // The index must not keep an older meta than the map: the data plane prefers it.
            let _ = index.remove(key);
        })
    }

    /// Removes a VIP — from the index, then from the map; one already gone (an earlier pass
    /// failed after removing it) is fine.
    pub(crate) fn remove_vip(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        if let Some(index) = self.vip_index.as_mut() {
            index.remove(key)?;
        }
        match self.vips.remove(key) {
            Err(MapError::KeyNotFound) => Ok(()),
            other => other.map_err(map_err(maps::VIPS)),
        }
    }

    pub(crate) fn set_addr(&mut self, key: &VipAddrKey, policy: &VipAddrPolicy) -> Result<(), DataplaneError> {
        self.vip_addrs.insert(key, policy, 0).map_err(map_err(maps::VIP_ADDRS))
    }

    pub(crate) fn remove_addr(&mut self, key: &VipAddrKey) -> Result<(), DataplaneError> {
        self.vip_addrs.remove(key).map_err(map_err(maps::VIP_ADDRS))
    }

    pub(crate) fn set_filter(&mut self, bucket: u32, bits: u32) -> Result<(), DataplaneError> {
        self.vip_filter.set(bucket, &bits, 0).map_err(map_err(maps::VIP_FILTER))
    }

    /// The pre-filter buckets that are set, with their bits.
    pub fn filter_buckets(&self) -> Result<Vec<(u32, u32)>, DataplaneError> {
        let mut set = Vec::new();
        for bucket in 0..lb_common::VIP_FILTER_SIZE {
            let bits = self.vip_filter.get(&bucket, 0).map_err(map_err(maps::VIP_FILTER))?;
            if bits != 0 {
                set.push((bucket, bits));
            }
        }
        Ok(set)
    }

    pub(crate) fn set_nat_pool(&mut self, id: u32, pool: &NatPool) -> Result<(), DataplaneError> {
        self.nat_pools.set(id, pool, 0).map_err(map_err(maps::NAT_POOLS))
    }

    /// The NAT pools that have addresses, by id.
    pub fn nat_pools(&self) -> Result<Vec<(u32, NatPool)>, DataplaneError> {
        let mut pools = Vec::new();
        for id in 0..lb_common::MAX_NAT_POOLS {
            let pool = self.nat_pools.get(&id, 0).map_err(map_err(maps::NAT_POOLS))?;
            if pool.addr_count != 0 {
                pools.push((id, pool));
            }
        }
        Ok(pools)
    }

    /// A handle for reading the counters from another thread: it never waits on the writer.
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        self.readers.counters()
    }

    /// A handle on the NAT tables for the housekeeping thread (it removes expired flows, which
    /// the data plane would otherwise take over one by one).
    pub fn nat_tables(&self) -> Result<NatTables, DataplaneError> {
        self.readers.nat_tables()
    }

    pub(crate) fn set_backend(&mut self, slot: u32, backend: &Backend) -> Result<(), DataplaneError> {
        self.backends.set(slot, backend, 0).map_err(map_err(maps::BACKENDS))
    }

    /// Zeroes a backend slot's counters before a new backend takes it.
    pub(crate) fn reset_backend_counters(&mut self, slot: u32) -> Result<(), DataplaneError> {
        let zeros = PerCpuValues::try_from(vec![BackendCounters::default(); self.cpus])
            .map_err(|e| cpu_count_mismatch(maps::BACKEND_COUNTERS, e))?;
        self.backend_counters.set(slot, zeros, 0).map_err(map_err(maps::BACKEND_COUNTERS))
    }
}

/// How the program ended up attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttachMode {
    Native,
    Generic,
}

/// How `attach_pinned` attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attached {
    /// A new link, pinned.
    New(AttachMode),
    /// The program behind a pinned link was swapped for this one.
    Replaced,
}

/// Removes the link pinned at `link_path`, which detaches the program. Returns whether there
/// was one.
pub fn detach_pinned(link_path: &Path) -> Result<bool, DataplaneError> {
    if !link_path.exists() {
        return Ok(false);
    }
    let pinned = PinnedLink::from_pin(link_path)
        .map_err(|e| DataplaneError::Program { name: programs::BALANCER, source: Box::new(e.into()) })?;
    // Unpinned and closed: the kernel drops the link and with it the attachment.
    drop(pinned.unpin().map_err(|source| DataplaneError::Pin { path: link_path.to_owned(), source })?);
    Ok(true)
}

/// A loaded XDP object: one program plus (for the balancer and decap) its maps.
#[derive(Debug)]
pub struct Loaded {
    ebpf: Ebpf,
    program: &'static str,
    /// Where this load's program array is pinned (`balancer_pinned` only).
    progs_pin: Option<PathBuf>,
}

/// A number for one load of the balancer (`maps::GENERATION`): never 0, which an unfilled
/// scratch holds, and different from the previous agent's.
fn new_generation() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos();
    (nanos ^ std::process::id().rotate_left(16)) | 1
}

/// The balancer object's other programs, verified beside the balancer: its tail calls (NAT,
/// RESET) and the drop log. Builds from before RESET or the drop log (`bench --compare`) lack
/// them.
const BESIDE_BALANCER: &[&str] = &[programs::NAT, programs::RESET, programs::LOG];

impl Loaded {
    /// Loads the balancer object with tables of the given sizes and verifies its program;
    /// returns it with its maps.
    pub fn balancer(sizes: TableSizes) -> Result<(Self, Maps), DataplaneError> {
        Self::balancer_from(BALANCER_OBJECT, sizes)
    }

    /// [`Loaded::balancer`] from another build of the balancer object (the bench compares two).
    pub fn balancer_from(object: &[u8], sizes: TableSizes) -> Result<(Self, Maps), DataplaneError> {
        let sets = flow_sets(sizes.flows);
        let table = FlowTable::of(object);
        let generation = new_generation();
        let mut loaded = Self::load_with(object, programs::BALANCER, BESIDE_BALANCER, |loader| {
            sizes.apply(loader, &sets, table);
            loader.override_global(maps::GENERATION, &generation, false);
        })?;
        loaded.place_tails()?;
        let maps = Maps::take(&mut loaded.ebpf)?;
        Ok((loaded, maps))
    }

    /// Loads the balancer with its maps pinned under `dir` (one directory per interface): maps a
    /// previous agent pinned there are reused as they are — connection table, counters, tables
    /// — and the rest are created and pinned. Returns whether maps were adopted.
    ///
    /// The program array is this load's own, pinned as `XLB_PROGS_<generation>`: the balancer
    /// still attached keeps tail-calling its own NAT program (with its own scratch) until
    /// [`Loaded::attach_pinned`] switches both at once; [`Loaded::retire_program_arrays`] then
    /// removes the previous loads' arrays.
    pub fn balancer_pinned(sizes: TableSizes, dir: &Path) -> Result<(Self, Maps, bool), DataplaneError> {
        prepare_pin_dir(dir)?;
        let adopted = dir.join(maps::FLOWS).exists();
        let paths: Vec<(&'static str, PathBuf)> = maps::BALANCER.iter().map(|name| (*name, dir.join(name))).collect();
        let sets = flow_sets(sizes.flows);
        let generation = new_generation();
        let mut loaded = Self::load_with(BALANCER_OBJECT, programs::BALANCER, BESIDE_BALANCER, |loader| {
            sizes.apply(loader, &sets, FlowTable::Sets);
            loader.override_global(maps::GENERATION, &generation, true);
            for (name, path) in &paths {
                loader.map_pin_path(name, path.as_path());
            }
        })
        .map_err(|e| match e {
            DataplaneError::Load(source @ EbpfError::MapError(_)) if adopted => {
                DataplaneError::PinnedIncompatible { dir: dir.to_owned(), source: Box::new(source) }
            }
            other => other,
        })?;
        loaded.place_tails()?;
        if loaded.ebpf.program(programs::LOG).is_none() {
            return Err(DataplaneError::Missing { kind: "program", name: programs::LOG });
        }
        // (bpffs refuses names with a dot.)
        let progs_pin = dir.join(format!("{}_{generation:08x}", maps::PROGS));
        let progs = loaded.ebpf.map(maps::PROGS).ok_or(DataplaneError::Missing { kind: "map", name: maps::PROGS })?;
        progs
            .pin(&progs_pin)
            .map_err(|e| DataplaneError::Pin { path: progs_pin.clone(), source: std::io::Error::other(e) })?;
        loaded.progs_pin = Some(progs_pin);
        let maps = Maps::take(&mut loaded.ebpf)?;
        Ok((loaded, maps, adopted))
    }

    /// Removes the program arrays of earlier loads pinned beside this one's (and the single
    /// `XLB_PROGS` of builds before per-load arrays). Call once this load is attached everywhere
    /// and the programs it replaced have finished their packets: an array whose last pin goes
    /// forgets its programs. Returns how many were removed.
    pub fn retire_program_arrays(&self) -> Result<usize, DataplaneError> {
        let Some(ours) = &self.progs_pin else { return Ok(0) };
        let Some(dir) = ours.parent() else { return Ok(0) };
        let entries = std::fs::read_dir(dir).map_err(|source| DataplaneError::Pin { path: dir.to_owned(), source })?;
        let mut removed = 0;
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let earlier =
                name == maps::PROGS || name.strip_prefix(maps::PROGS).is_some_and(|rest| rest.starts_with('_'));
            if earlier && &path != ours {
                std::fs::remove_file(&path).map_err(|source| DataplaneError::Pin { path: path.clone(), source })?;
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Puts the balancer's NAT program and the one that answers SYNs over a connection limit
    /// with a RST (builds from before it have none) where the balancer tail-calls them
    /// (replacing a previous agent's in a pinned program array).
    fn place_tails(&mut self) -> Result<(), DataplaneError> {
        self.place_tail(programs::NAT, lb_common::PROG_INDEX_NAT)?;
        if self.ebpf.program(programs::RESET).is_some() {
            self.place_tail(programs::RESET, lb_common::PROG_INDEX_RESET)?;
        }
        Ok(())
    }

    /// Puts loaded program `name` at `index` of the balancer's program array.
    fn place_tail(&mut self, name: &'static str, index: u32) -> Result<(), DataplaneError> {
        let program = |source| DataplaneError::Program { name, source: Box::new(source) };
        let prog: &mut Xdp = self
            .ebpf
            .program_mut(name)
            .ok_or(DataplaneError::Missing { kind: "program", name })?
            .try_into()
            .map_err(program)?;
        let fd = prog.fd().map_err(program)?.try_clone().map_err(|e| program(ProgramError::IOError(e)))?;
        let map = self.ebpf.map_mut(maps::PROGS).ok_or(DataplaneError::Missing { kind: "map", name: maps::PROGS })?;
        let mut progs = ProgramArray::try_from(map).map_err(map_err(maps::PROGS))?;
        progs.set(index, &fd, 0).map_err(map_err(maps::PROGS))
    }

    /// Loads the decapsulation program.
    pub fn decap() -> Result<(Self, DecapMaps), DataplaneError> {
        let mut loaded = Self::load(DECAP_OBJECT, programs::DECAP)?;
        let maps = DecapMaps {
            addrs: take(&mut loaded.ebpf, maps::DECAP_ADDRS)?,
            stats: take(&mut loaded.ebpf, maps::DECAP_STATS)?,
        };
        Ok((loaded, maps))
    }

    /// Loads the empty floor program.
    pub fn floor() -> Result<Self, DataplaneError> {
        Self::load(FLOOR_OBJECT, programs::FLOOR)
    }

    fn load(object: &[u8], program: &'static str) -> Result<Self, DataplaneError> {
        Self::load_with(object, program, &[], |_| {})
    }

    /// Loads `object` and verifies its `program` with those of `also` it has, side by side.
    fn load_with<'a>(
        object: &[u8],
        program: &'static str,
        also: &[&'static str],
        configure: impl FnOnce(&mut EbpfLoader<'a>),
    ) -> Result<Self, DataplaneError> {
        if object.is_empty() {
            return Err(DataplaneError::NotBuilt);
        }
        let mut loader = EbpfLoader::new();
        configure(&mut loader);
        let mut loaded = Self { ebpf: loader.load(object)?, program, progs_pin: None };
        loaded.xdp()?;
        let names: Vec<&'static str> = std::iter::once(program).chain(also.iter().copied()).collect();
        verify::load_xdp_programs(&mut loaded.ebpf, &names)?;
        Ok(loaded)
    }

    pub fn xdp(&self) -> Result<&Xdp, DataplaneError> {
        let name = self.program;
        let prog = self.ebpf.program(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
        prog.try_into().map_err(|source| DataplaneError::Program { name, source: Box::new(source) })
    }

    fn xdp_mut(&mut self) -> Result<&mut Xdp, DataplaneError> {
        let name = self.program;
        let prog = self.ebpf.program_mut(name).ok_or(DataplaneError::Missing { kind: "program", name })?;
        prog.try_into().map_err(|source| DataplaneError::Program { name, source: Box::new(source) })
    }

    /// Attaches natively, falling back to generic (skb) mode. The link lives as long as `self`
    /// unless detached.
    pub fn attach(&mut self, iface: &str) -> Result<(XdpLinkId, AttachMode), DataplaneError> {
        let c_iface = std::ffi::CString::new(iface).map_err(|_| DataplaneError::InterfaceName(iface.to_owned()))?;
        let xdp = self.xdp_mut()?;
        match xdp.attach(c_iface.as_c_str(), XdpMode::Driver) {
            Ok(link) => Ok((link, AttachMode::Native)),
            Err(native) => match xdp.attach(c_iface.as_c_str(), XdpMode::Skb) {
                Ok(link) => Ok((link, AttachMode::Generic)),
                Err(generic) => Err(DataplaneError::Attach {
                    iface: iface.to_owned(),
                    native: Box::new(native),
                    generic: Box::new(generic),
                }),
            },
        }
    }

    /// Attaches through a bpf link pinned at `link_path`, so the program keeps forwarding after
    /// the agent exits or is killed. If a previous agent left such a link, the program behind
    /// it is replaced atomically (no packet sees neither program); otherwise a new link is made
    /// and pinned.
    pub fn attach_pinned(&mut self, iface: &str, link_path: &Path) -> Result<Attached, DataplaneError> {
        let name = self.program;
        let program = |source| DataplaneError::Program { name, source: Box::new(source) };
        let pin = |source| DataplaneError::Pin { path: link_path.to_owned(), source };
        if link_path.exists() {
            let pinned = PinnedLink::from_pin(link_path).map_err(|e| program(e.into()))?;
            let link = XdpLink::try_from(FdLink::from(pinned)).map_err(|e| program(e.into()))?;
            let xdp = self.xdp_mut()?;
            let id = xdp.attach_to_link(link).map_err(program)?;
            // The pin holds the link now; our handle may go.
            drop(xdp.take_link(id).map_err(program)?);
            return Ok(Attached::Replaced);
        }
        let (id, mode) = self.attach(iface)?;
        let xdp = self.xdp_mut()?;
        let link = FdLink::try_from(xdp.take_link(id).map_err(program)?).map_err(|e| program(e.into()))?;
        link.pin(link_path).map_err(|e| pin(std::io::Error::other(e)))?;
        Ok(Attached::New(mode))
    }

    pub fn detach(&mut self, link: XdpLinkId) -> Result<(), DataplaneError> {
        let name = self.program;
        self.xdp_mut()?.detach(link).map_err(|source| DataplaneError::Program { name, source: Box::new(source) })
    }
}
