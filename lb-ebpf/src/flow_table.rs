//! The connection table: flow → backend slot, in a set-associative array (`FlowSet`) that the
//! program reads and writes in place. A lookup and an insert cost one array read (which the
//! verifier inlines) and a scan of one set; no helper call, no lock.

use aya_ebpf::{Global, btf_maps::Array, helpers::generated::bpf_jiffies64, macros::btf_map};
use lb_common::{BPF_F_MMAPABLE, FLOW_TABLE_SIZE, FLOW_WAYS, Flow, FlowKey, FlowSet, flow_check, flow_set, flow_sets};

/// Mmapable only so that its values start page-aligned, as `FlowSet`'s cache-line layout wants.
/// Sized by the agent at load time (`node.flow_table_size / FLOW_WAYS` sets), together with
/// `XLB_FLOW_SETS`.
#[btf_map]
static XLB_FLOWS: Array<FlowSet, { flow_sets(FLOW_TABLE_SIZE) as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Sets in `XLB_FLOWS`: a read-only global the agent sets at load time, so the verifier sees
/// a constant.
#[unsafe(no_mangle)]
static XLB_FLOW_SETS: Global<u32> = Global::new(flow_sets(FLOW_TABLE_SIZE));

/// A flow's place in the table, found by [`find`].
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    set: *mut FlowSet,
    way: usize,
    /// What the entry holds for this flow, if it holds this flow.
    pub(crate) flow: Option<Flow>,
    now: u32,
}

/// The entry of `key` (hash `hash`) if the table holds it — its last-use time refreshed — else
/// the entry a new record of it would take: a free one of its set, or the set's least recently
/// used. `None` only if the table is missing its set (not sized as the program was told).
#[inline(always)]
pub(crate) fn find(key: &FlowKey, hash: u32) -> Option<Entry> {
    let sets = XLB_FLOW_SETS.load();
    let set = XLB_FLOWS.get_ptr_mut(flow_set(hash, sets))?;
    // Odd, so that 0 always means free. (The verifier turns this helper into a plain load.)
    // SAFETY: no arguments, no preconditions.
    let now = unsafe { bpf_jiffies64() } as u32 | 1;
    // SAFETY: `set` points into the map's value area, valid while the program runs. Other CPUs
    // may write the same set at the same time (plain loads and stores, as eBPF programs share
    // maps); `FlowSet::holds` reads each value once and checks it, so a torn entry reads as
    // absent.
    let set_ref = unsafe { &mut *set };
    let mut victim = 0;
    let mut victim_age = 0;
    for way in 0..FLOW_WAYS {
        let Some(&used) = set_ref.used.get(way) else { break };
        if used == 0 {
            if victim_age != u32::MAX {
                (victim, victim_age) = (way, u32::MAX);
            }
            continue;
        }
        if let Some(flow) = set_ref.holds(way, key, hash) {
            if used != now
                && let Some(u) = set_ref.used.get_mut(way)
            {
                *u = now;
            }
            return Some(Entry { set, way, flow: Some(flow), now });
        }
        // Another CPU may have stamped the entry a tick later than this CPU's `now`: that is
        // the newest, not (wrapping) the oldest.
        let age = now.wrapping_sub(used);
        let age = if (age as i32) < 0 { 0 } else { age };
        if age >= victim_age && victim_age != u32::MAX {
            (victim, victim_age) = (way, age);
        }
    }
    Some(Entry { set, way: victim, flow: None, now })
}

impl Entry {
    /// Records `flow` for `key` in this entry, replacing what it held.
    #[inline(always)]
    pub(crate) fn record(self, key: &FlowKey, hash: u32, flow: Flow) {
        // SAFETY: as in `find`; a concurrent writer of this entry can only make it read as absent.
        let set = unsafe { &mut *self.set };
        let way = self.way;
        if let (Some(h), Some(u), Some(e)) = (set.hashes.get_mut(way), set.used.get_mut(way), set.entries.get_mut(way))
        {
            *h = hash;
            e.key = *key;
            e.flow = flow;
            e.check = flow_check(hash, &flow);
            *u = self.now;
        }
    }
}
