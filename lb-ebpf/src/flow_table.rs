//! The connection table: flow → backend slot, in a set-associative array (`FlowSet`) that the
//! program reads and writes in place. A lookup and an insert cost one array read (which the
//! verifier inlines) and a scan of one set; no helper call, no lock.
//!
//! A new flow's entry is embryonic until the flow's next packet that is not a SYN confirms it;
//! a new flow replaces only free, embryonic or long-idle confirmed entries, so a flood of new
//! flows (SYNs, one-datagram UDP) cannot evict established ones. When a set holds only live
//! confirmed flows, a new flow is sent by the Maglev table unrecorded (`flow_set_full`).

use aya_ebpf::{Global, btf_maps::Array, helpers::generated::bpf_jiffies64, macros::btf_map};
use lb_common::{
    BPF_F_MMAPABLE, FLOW_CLOSED, FLOW_CONFIRMED, FLOW_STATE_BITS, FLOW_TABLE_SIZE, FLOW_USED, FLOW_WAYS, Flow, FlowKey,
    FlowSet, flow_check, flow_idle, flow_set, flow_sets,
};

/// Mmapable only so that its values start page-aligned, as `FlowSet`'s cache-line layout wants.
/// Sized by the agent at load time (`node.flow_table_size / FLOW_WAYS` sets), together with
/// `XLB_FLOW_SETS`.
#[btf_map]
static XLB_FLOWS: Array<FlowSet, { flow_sets(FLOW_TABLE_SIZE) as usize }, { BPF_F_MMAPABLE as usize }> = Array::new();

/// Sets in `XLB_FLOWS`: a read-only global the agent sets at load time, so the verifier sees
/// a constant.
#[unsafe(no_mangle)]
static XLB_FLOW_SETS: Global<u32> = Global::new(flow_sets(FLOW_TABLE_SIZE));

/// A flow's place in the table, found by [`find`]. (Not an `Option`: every field is defined on
/// every path, so the compiler never spills an undefined register the verifier would refuse.)
#[derive(Clone, Copy)]
pub(crate) struct Entry {
    /// Null if the table is missing the set (not sized as the program was told).
    set: *mut FlowSet,
    /// The entry that holds the flow; `FLOW_WAYS` if none does.
    way: u32,
    /// What the entry holds for this flow, if it holds this flow.
    pub(crate) flow: Option<Flow>,
}

/// The time in `FlowSet::used` form: jiffies to 8, with the in-use bit. (The verifier turns the
/// helper into a plain load.)
#[inline(always)]
fn now() -> u32 {
    // SAFETY: no arguments, no preconditions.
    (unsafe { bpf_jiffies64() } as u32 & !FLOW_STATE_BITS) | FLOW_USED
}

/// The entry of `key` (hash `hash`) if the table holds it — its last-use time refreshed, its
/// state bits or-ed with `confirm`: `FLOW_CONFIRMED` for any packet but a TCP SYN, 0 for a SYN,
/// `FLOW_USED` for neither — else where a record of it would go (`Entry::record` picks the
/// entry): for a SYN on an entry its client closed, that entry.
#[inline(always)]
pub(crate) fn find(key: &FlowKey, hash: u32, confirm: u32) -> Entry {
    let sets = XLB_FLOW_SETS.load();
    let Some(set) = XLB_FLOWS.get_ptr_mut(flow_set(hash, sets)) else {
        return Entry { set: core::ptr::null_mut(), way: FLOW_WAYS as u32, flow: None };
    };
    // SAFETY: `set` points into the map's value area, valid while the program runs. Other CPUs
    // may write the same set at the same time (plain loads and stores, as eBPF programs share
    // maps); `FlowSet::holds` reads each value once and checks it, so a torn entry reads as
    // absent.
    let set_ref = unsafe { &mut *set };
    for way in 0..FLOW_WAYS {
        let Some(&used) = set_ref.used.get(way) else { break };
        if used == 0 {
            continue;
        }
        if let Some(flow) = set_ref.holds(way, key, hash) {
            // A SYN on a closed entry opens a new connection on the 4-tuple: a new flow (judged
            // by the VIP's limits, picked afresh), recorded in this same entry.
            if confirm == 0 && used & FLOW_CLOSED != 0 {
                return Entry { set, way: way as u32, flow: None };
            }
            // Once confirmed (or closed), an entry stays so until it is replaced.
            let stamp = now() | (used & (FLOW_CONFIRMED | FLOW_CLOSED)) | confirm;
            if used != stamp
                && let Some(u) = set_ref.used.get_mut(way)
            {
                *u = stamp;
            }
            return Entry { set, way: way as u32, flow: Some(flow) };
        }
    }
    Entry { set, way: FLOW_WAYS as u32, flow: None }
}

/// The entry of `set` a new flow may take at `now`: a free one, else a confirmed one idle past
/// `FLOW_CONFIRMED_IDLE_JIFFIES`, else an embryonic one (the first of each kind); `FLOW_WAYS`
/// when every entry is a live confirmed flow. First fit in three passes rather than the oldest:
/// each pass is a loop with early exits, which the verifier walks in a handful of paths (keeping
/// the best of eight was one path per combination).
#[inline(always)]
fn victim(set: *const FlowSet, now: u32) -> usize {
    // Each word read where it is tested (volatile): other CPUs write them, and LLVM would
    // otherwise load all eight up front and spill them.
    let used = |way: usize| -> u32 {
        // SAFETY: `set` is a value of the map (`record` checked it is not null) and
        // `way < FLOW_WAYS`; a plain aligned load of a word.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*set).used).cast::<u32>().add(way)) }
    };
    for way in 0..FLOW_WAYS {
        if used(way) == 0 {
            return way;
        }
    }
    for way in 0..FLOW_WAYS {
        let u = used(way);
        if u & FLOW_CONFIRMED != 0 && flow_idle(u, now) {
            return way;
        }
    }
    for way in 0..FLOW_WAYS {
        if used(way) & FLOW_CONFIRMED == 0 {
            return way;
        }
    }
    FLOW_WAYS
}

impl Entry {
    /// Marks the flow's entry closed (`FLOW_CLOSED`: its client sent a FIN or a RST).
    #[inline(always)]
    pub(crate) fn close(self) {
        if !self.set.is_null() {
            close_at(self.set, self.way);
        }
    }

    /// Records `key` → `flow` — in the entry that holds it, else in the entry `victim` picks —
    /// as embryonic (the flow's next packet that is not a SYN confirms it). `false`: the set had
    /// no entry a new flow may take; nothing was written.
    #[inline(always)]
    pub(crate) fn record(self, key: &FlowKey, hash: u32, flow: Flow) -> bool {
        let flow = u64::from(flow.generation) << 32 | u64::from(flow.backend);
        !self.set.is_null() && record_at(self.set, u64::from(hash) << 32 | u64::from(self.way), key, flow)
    }
}

/// `Entry::close` as a separate BPF function: inlined in the established path, it cost the
/// balancer's frame 40 bytes it did not have. (Clients close once per connection: rare.)
#[inline(never)]
fn close_at(set: *mut FlowSet, way: u32) {
    // SAFETY: a value of the map (the caller checked it is not null); a concurrent writer of
    // this entry at worst loses the mark or stamps the entry for another flow, which the
    // agent's count then sees as closed for as long as that flow stays quiet.
    let set = unsafe { &mut *set };
    if let Some(u) = set.used.get_mut(way as usize)
        && *u != 0
    {
        *u |= FLOW_CLOSED;
    }
}

/// `Entry::record` as a separate BPF function of four plain arguments (`way_hash`: the way, or
/// `FLOW_WAYS` for none, and the flow's hash in the high half; `flow`: backend slot, and
/// generation in the high half): inlined, it pushed the balancer's frame past 512 bytes; structs
/// as arguments were split into more registers than a BPF call has, and with five arguments
/// one was spilled around the clock's helper call (the callee's frame adds to the caller's).
#[inline(never)]
fn record_at(set: *mut FlowSet, way_hash: u64, key: &FlowKey, flow: u64) -> bool {
    let now = now();
    let (way, hash) = ((way_hash as u32) as usize, (way_hash >> 32) as u32);
    let flow = Flow { backend: flow as u32, generation: (flow >> 32) as u32 };
    let way = if way < FLOW_WAYS { way } else { victim(set, now) };
    // SAFETY: a value of the map (the caller checked it is not null, as in `find`); a concurrent
    // writer of this entry can only make it read as absent.
    let set = unsafe { &mut *set };
    if let (Some(h), Some(u), Some(e)) = (set.hashes.get_mut(way), set.used.get_mut(way), set.entries.get_mut(way)) {
        *h = hash;
        // SAFETY: both point to a whole `FlowKey` (a reference, a map value's field); a copy LLVM
        // expands in registers.
        unsafe { core::ptr::copy_nonoverlapping(key, &mut e.key, 1) };
        e.flow = flow;
        e.check = flow_check(hash, &flow);
        *u = now;
        return true;
    }
    false
}
