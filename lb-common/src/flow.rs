//! The connection table (key, value, sets and their entries) and the flow hashes.

use crate::FLOW_WAYS;

/// Key of the connection table: the client-side 5-tuple, addresses and ports in network order.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct FlowKey {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub family: u8,
    pub pad: u16,
}

impl FlowKey {
    /// The flow's hash: picks its connection-table set, its Maglev table entry and its
    /// encapsulation's outer source.
    #[inline(always)]
    pub fn hash(&self) -> u32 {
        flow_hash(
            &self.saddr,
            &self.daddr,
            (u32::from(self.sport) << 16) | u32::from(self.dport),
            u32::from(self.proto),
        )
    }
}

/// What the connection table records for a flow: its backend slot, and that slot's generation
/// when the flow was recorded (a slot reused for another backend has a new one).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Flow {
    pub backend: u32,
    pub generation: u32,
}

/// One set of the connection table (an array map of `node.flow_table_size / FLOW_WAYS` sets,
/// shared by all CPUs). A set-associative table instead of a kernel LRU hash map: the XDP program
/// reads and writes it in place, with no helper call — on this kind of machine the LRU map's
/// insert alone cost more than the rest of a new flow's path.
///
/// Laid out in cache lines (the map is mmapable, so its values start page-aligned): the first
/// holds every entry's hash and last use, which is all that telling a new flow from a known one
/// reads; each entry then has a line of its own, so recording a flow writes two lines.
/// Two CPUs may write one entry at once; `FlowEntry::check` makes an entry torn that way read as
/// absent (the flow is then looked up in the Maglev table again), never as another flow's backend.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowSet {
    /// Each entry's `FlowKey::hash`.
    pub hashes: [u32; FLOW_WAYS],
    /// When each entry last saw a packet and its state: the low 32 bits of jiffies with the low
    /// two bits replaced by `FLOW_USED` (always set) and `FLOW_CONFIRMED`; 0 for a free entry.
    pub used: [u32; FLOW_WAYS],
    pub entries: [FlowEntry; FLOW_WAYS],
}

/// An entry of a `FlowSet`: one cache line.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FlowEntry {
    pub key: FlowKey,
    pub flow: Flow,
    /// `flow_check` of the entry's hash and flow.
    pub check: u32,
    pub pad: [u32; 3],
}

impl FlowSet {
    /// The entry `way` if it holds `key` (whose hash is `hash`) whole.
    #[inline(always)]
    pub fn holds(&self, way: usize, key: &FlowKey, hash: u32) -> Option<Flow> {
        let entry = self.entries.get(way)?;
        // Read once, volatile: in the data plane other CPUs may write this entry meanwhile, and
        // the flow checked must be the very bytes returned, not a second load of them.
        // SAFETY: a valid, aligned reference to plain data.
        let flow = unsafe { core::ptr::read_volatile(&entry.flow) };
        (*self.used.get(way)? != 0
            && *self.hashes.get(way)? == hash
            && entry.check == flow_check(hash, &flow)
            && entry.key == *key)
            .then_some(flow)
    }

    /// Whether entry `way` is in use by a confirmed flow (one that sent a packet after its first).
    pub fn confirmed(&self, way: usize) -> bool {
        self.used.get(way).is_some_and(|&used| used & FLOW_CONFIRMED != 0)
    }

    /// The way of the entry holding `key`, if any.
    pub fn way_of(&self, key: &FlowKey) -> Option<usize> {
        let hash = key.hash();
        (0..FLOW_WAYS).find(|&way| self.holds(way, key, hash).is_some())
    }

    /// The entry holding `key`, if any.
    pub fn find(&self, key: &FlowKey) -> Option<Flow> {
        let hash = key.hash();
        (0..FLOW_WAYS).find_map(|way| self.holds(way, key, hash))
    }
}

/// `FlowSet::used` bit of every entry in use (so that a used entry is never 0).
pub const FLOW_USED: u32 = 1;
/// `FlowSet::used` bit of a confirmed entry: its flow sent a packet after the one that recorded
/// it (TCP: a packet that is not a SYN; UDP: a second datagram). A new flow never replaces a
/// confirmed entry that is live; an embryonic one (recorded, not confirmed) it may. So a flood of
/// SYNs or of one-datagram UDP flows only ever replaces the entries such floods make.
pub const FLOW_CONFIRMED: u32 = 2;
/// `FlowSet::used` bit of a TCP flow whose client sent a FIN or a RST: it counts no more toward
/// a VIP's concurrent connections (`connection_limit.concurrent`; with direct server return the
/// program sees only the client's side). A SYN on such an entry is a new flow on the 4-tuple,
/// judged and recorded afresh in it.
pub const FLOW_CLOSED: u32 = 4;
/// The state bits of `FlowSet::used`; the rest is the time (jiffies, to 8 jiffies).
pub const FLOW_STATE_BITS: u32 = FLOW_USED | FLOW_CONFIRMED | FLOW_CLOSED;
/// Jiffies after which an idle confirmed entry may be replaced: 2^19 jiffies, 8.7 minutes at
/// HZ 1000, 35 minutes at HZ 250 (the program cannot know HZ; jiffies are its cheap clock).
pub const FLOW_CONFIRMED_IDLE_JIFFIES: u32 = 1 << 19;

/// Whether an entry stamped `used` (a `FlowSet::used` word) has been idle, at `now`, for longer
/// than `FLOW_CONFIRMED_IDLE_JIFFIES`. (An entry another CPU stamped a tick after `now` has a
/// negative age: not idle.)
#[inline(always)]
pub const fn flow_idle(used: u32, now: u32) -> bool {
    let age = (now & !FLOW_STATE_BITS).wrapping_sub(used & !FLOW_STATE_BITS);
    age as i32 > FLOW_CONFIRMED_IDLE_JIFFIES as i32
}

/// Sets of a connection table of `entries` entries.
pub const fn flow_sets(entries: u32) -> u32 {
    entries.div_ceil(FLOW_WAYS as u32)
}

/// The set a flow's hash falls in, of `sets` (multiply-shift: uniform for any count, no division).
#[inline(always)]
pub const fn flow_set(hash: u32, sets: u32) -> u32 {
    ((hash as u64 * sets as u64) >> 32) as u32
}

/// Binds an entry's hash to its flow: a reader whose key, hash and flow came from different
/// writers finds this does not match.
#[inline(always)]
pub const fn flow_check(hash: u32, flow: &Flow) -> u32 {
    hash ^ flow.backend.wrapping_mul(0x9e37_79b9) ^ flow.generation.rotate_left(16)
}

/// The flow hash: murmur3's 32-bit mixing over the words of the tuple, shared by the XDP
/// program and the agent's reference model so that both pick the same Maglev slot, on every
/// node. Addresses and ports go in as they sit in the packet (network order).
#[inline(always)]
pub fn flow_hash(saddr: &[u32; 4], daddr: &[u32; 4], ports: u32, proto: u32) -> u32 {
    let mut h = HASH_SEED;
    let mut i = 0;
    while i < 4 {
        h = mix(h, saddr[i]);
        h = mix(h, daddr[i]);
        i += 1;
    }
    h = mix(h, ports);
    h = mix(h, proto);
    fmix(h ^ 40)
}

/// The hash of the client address alone (VIPs with `hash: source-ip`).
#[inline(always)]
pub fn source_hash(saddr: &[u32; 4], proto: u32) -> u32 {
    let mut h = HASH_SEED;
    let mut i = 0;
    while i < 4 {
        h = mix(h, saddr[i]);
        i += 1;
    }
    fmix(mix(h, proto) ^ 20)
}

const HASH_SEED: u32 = 0x5851_f42d;

#[inline(always)]
const fn mix(h: u32, word: u32) -> u32 {
    let k = word.wrapping_mul(0xcc9e_2d51).rotate_left(15).wrapping_mul(0x1b87_3593);
    (h ^ k).rotate_left(13).wrapping_mul(5).wrapping_add(0xe654_6b64)
}

#[inline(always)]
pub(crate) const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}
