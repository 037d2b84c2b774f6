//! Handles on the maps for threads other than the reconciler's: counters for status and
//! metrics, the NAT tables for housekeeping. Each holds its own fds, so a reader never waits on
//! the one writer (a map is safe to read and update from several threads at once).

use std::os::fd::{AsFd as _, OwnedFd};

use aya::maps::{HashMap, Map, MapData, MapError};
use lb_common::{BackendCounters, FlowKey, MAX_BACKENDS, NatFlow, NatReverse, NatSeq, Stat, StatCounters, maps};

use super::{DataplaneError, batch, map_err};

/// Second fds on the maps readers use, taken when the maps are loaded.
#[derive(Debug)]
pub(super) struct Fds {
    pub stats: OwnedFd,
    pub backend_counters: OwnedFd,
    pub nat_flows: OwnedFd,
    pub nat_reverse: OwnedFd,
    /// Cookie flows' sequence state (`None` in builds from before SYN cookies).
    pub nat_seq: Option<OwnedFd>,
    pub cpus: usize,
}

fn clone(fd: &OwnedFd, name: &'static str) -> Result<OwnedFd, DataplaneError> {
    fd.try_clone().map_err(|e| map_err(name)(MapError::IoError(e)))
}

impl Fds {
    pub fn counters(&self) -> Result<Counters, DataplaneError> {
        Ok(Counters {
            stats: clone(&self.stats, maps::STATS)?,
            backend_counters: clone(&self.backend_counters, maps::BACKEND_COUNTERS)?,
            cpus: self.cpus,
        })
    }

    pub fn nat_tables(&self) -> Result<NatTables, DataplaneError> {
        fn open<V: aya::Pod>(
            fd: &OwnedFd,
            name: &'static str,
            kind: fn(MapData) -> Map,
        ) -> Result<HashMap<MapData, FlowKey, V>, DataplaneError> {
            let data = MapData::from_fd(clone(fd, name)?).map_err(map_err(name))?;
            HashMap::try_from(kind(data)).map_err(map_err(name))
        }
        Ok(NatTables {
            flows: open(&self.nat_flows, maps::NAT_FLOWS, Map::HashMap)?,
            reverse: open(&self.nat_reverse, maps::NAT_REVERSE, Map::HashMap)?,
            seq: self.nat_seq.as_ref().map(|fd| open(fd, maps::NAT_SEQ, Map::LruHashMap)).transpose()?,
        })
    }
}

/// The data plane's counters, read in batches: all backend slots in one syscall.
#[derive(Debug)]
pub struct Counters {
    stats: OwnedFd,
    backend_counters: OwnedFd,
    cpus: usize,
}

/// Reads `count` elements of a per-CPU array and sums each over the CPUs.
fn per_cpu_sums<V: Copy + Default>(
    fd: &OwnedFd,
    count: u32,
    cpus: usize,
    name: &'static str,
    add: impl Fn(V, &V) -> V,
) -> Result<Vec<V>, DataplaneError> {
    // The kernel lays each CPU's value out at an 8-byte stride.
    let stride = size_of::<V>().next_multiple_of(8);
    let mut raw = vec![0u8; count as usize * stride * cpus];
    batch::lookup_array(fd.as_fd(), count, &mut raw, stride * cpus)
        .map_err(|e| map_err(name)(MapError::IoError(std::io::Error::other(e.to_string()))))?;
    Ok(raw
        .chunks_exact(stride * cpus)
        .map(|slot| {
            slot.chunks_exact(stride).fold(V::default(), |sum, cpu| {
                // SAFETY: `cpu` holds at least size_of::<V>() bytes the kernel copied out of a
                // map whose values are `V` (plain data, any bit pattern valid); read unaligned.
                let value = unsafe { std::ptr::read_unaligned(cpu.as_ptr().cast::<V>()) };
                add(sum, &value)
            })
        })
        .collect())
}

impl Counters {
    /// Global counters, summed over CPUs, in `Stat` order.
    pub fn stats(&self) -> Result<Vec<(Stat, u64)>, DataplaneError> {
        let sum = per_cpu_sums(&self.stats, 1, self.cpus, maps::STATS, |mut sum: StatCounters, c| {
            for (s, v) in sum.values.iter_mut().zip(c.values) {
                *s += v;
            }
            sum
        })?;
        let all = sum.first().copied().unwrap_or_default();
        Ok(Stat::ALL.iter().map(|&stat| (stat, all.values[stat as usize])).collect())
    }

    /// The counters of backend slots `0..count`, summed over CPUs, indexed by slot: a reader asks only for the slots in use, so a
    /// node with few backends does not copy all `MAX_BACKENDS` per-CPU slots on every read.
    pub fn backends(&self, count: u32) -> Result<Vec<BackendCounters>, DataplaneError> {
        let count = count.min(MAX_BACKENDS);
        if count == 0 {
            return Ok(Vec::new());
        }
        per_cpu_sums(&self.backend_counters, count, self.cpus, maps::BACKEND_COUNTERS, |a: BackendCounters, c| {
            a.plus(c)
        })
    }
}

/// The NAT tables, for the sweep of expired flows.
pub struct NatTables {
    flows: HashMap<MapData, FlowKey, NatFlow>,
    reverse: HashMap<MapData, FlowKey, NatReverse>,
    seq: Option<HashMap<MapData, FlowKey, NatSeq>>,
}

impl std::fmt::Debug for NatTables {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatTables").finish_non_exhaustive()
    }
}

impl NatTables {
    /// The NAT reverse table: one entry per NAT flow, keyed by the backend's side.
    pub fn reverse_entries(&self) -> Vec<(FlowKey, NatReverse)> {
        self.reverse.iter().filter_map(Result::ok).collect()
    }

    /// A NAT flow by its client-side key.
    pub fn flow(&self, key: &FlowKey) -> Option<NatFlow> {
        self.flows.get(key, 0).ok()
    }

    /// Removes both entries of an expired NAT flow (either may be gone already), and a cookie
    /// flow's sequence state.
    pub fn remove(&mut self, forward: Option<&FlowKey>, reverse: &FlowKey, cookie: bool) {
        if let Some(forward) = forward {
            let _ = self.flows.remove(forward);
        }
        let _ = self.reverse.remove(reverse);
        if cookie && let Some(seq) = &mut self.seq {
            let _ = seq.remove(reverse);
        }
    }
}
