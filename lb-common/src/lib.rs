//! Plain-data types shared by the XDP program (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Every type is `#[repr(C)]`, has no padding holes the verifier or the kernel could see
//! uninitialised, and keeps multi-byte protocol fields (addresses, ports) in network byte
//! order so the data plane compares them without swapping.
#![no_std]

/// Most VIPs one data plane serves (the per-node limit). Also the length of the per-VIP counter
/// array and of the Maglev table array.
pub const MAX_VIPS: u32 = 10_000;
/// Most backend slots (one per VIP and backend pair): the per-node limit of backends.
pub const MAX_BACKENDS: u32 = 100_000;
/// Buckets of the VIP-address pre-filter (a power of two).
pub const VIP_FILTER_SIZE: u32 = 4096;

/// The pre-filter bucket of a destination address: set by the agent for every VIP address, so
/// the data plane sends most traffic that is not for a VIP on its way after one array read.
#[inline(always)]
pub fn addr_bucket(addr: &[u32; 4]) -> u32 {
    fmix(addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) & (VIP_FILTER_SIZE - 1)
}

/// Distinct VIP addresses (for the fragment/extension-header policy, which has no port to go by).
pub const MAX_VIP_ADDRS: u32 = MAX_VIPS;
/// Connection-table entries by default (`node.flow_table_size`).
pub const FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Entries of one connection-table set: a flow lives in one of the `FLOW_WAYS` entries of the set
/// its hash names, and a new flow replaces the set's least recently used entry.
pub const FLOW_WAYS: usize = 8;
/// Largest Maglev table a VIP may have.
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_048_573;
const _: () = assert!(is_prime(MAX_MAGLEV_TABLE_SIZE), "a Maglev table's size must be prime");

/// Whether `n` is prime: a Maglev table's size must be, so that every backend's permutation
/// visits every slot.
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = n as u64;
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
/// Table slots per array element. A table holds backend slot numbers as `u32` (`MAX_BACKENDS`
/// does not fit a `u16`), two to an 8-byte element (array maps store every value at an 8-byte
/// stride, so one `u32` per element would waste half): a 16381-slot table takes 64 KiB.
pub const MAGLEV_GROUP: u32 = 2;
/// Two table slots: the value type of a Maglev table's array map.
pub type MaglevGroup = [u32; MAGLEV_GROUP as usize];
/// Elements of the largest table (the inner map template's size).
pub const MAX_MAGLEV_GROUPS: u32 = MAX_MAGLEV_TABLE_SIZE.div_ceil(MAGLEV_GROUP);
/// A table slot that names no backend: the lanes after the last slot, and an emptied table.
pub const MAGLEV_NO_BACKEND: u32 = u32::MAX;
const _: () = assert!(MAX_BACKENDS < MAGLEV_NO_BACKEND, "a backend slot must differ from MAGLEV_NO_BACKEND");

/// The array element and lane of Maglev table slot `index`.
#[inline(always)]
pub const fn maglev_position(index: u32) -> (u32, usize) {
    (index / MAGLEV_GROUP, (index % MAGLEV_GROUP) as usize)
}
/// `BPF_F_INNER_MAP`: lets array maps of different sizes sit in one array of maps.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_MMAPABLE`: the agent writes a whole Maglev table through one mmap instead of one
/// syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every Maglev table (inner maps must match the template's flags exactly).
pub const MAGLEV_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;

/// Address family tag used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the data plane understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Key of the VIP map: destination address, destination port and protocol.
///
/// IPv4 addresses sit in `addr[0]` with the other words zero. `addr` and `port` are in network
/// byte order (as on the wire). ICMP/ICMPv6 VIPs use port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl VipKey {
    pub const fn v4(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self { addr: [addr_be, 0, 0, 0], port: port_be, proto, family: FAMILY_V4 }
    }

    pub const fn v6(addr_be: [u32; 4], port_be: u16, proto: u8) -> Self {
        Self { addr: addr_be, port: port_be, proto, family: FAMILY_V6 }
    }

    /// The key's hash in the VIP index; its home slot is the low bits.
    #[inline(always)]
    pub const fn index_hash(&self) -> u32 {
        let rest = ((self.port as u32) << 16) | ((self.proto as u32) << 8) | self.family as u32;
        fmix(
            self.addr[0]
                ^ self.addr[1].rotate_left(8)
                ^ self.addr[2].rotate_left(16)
                ^ self.addr[3].rotate_left(24)
                ^ rest,
        )
    }
}

/// Slots of the VIP index: a power of two, at least eight per VIP, so that keys rarely share a home.
pub const VIP_INDEX_SIZE: u32 = (8 * MAX_VIPS).next_power_of_two();
/// Slots a lookup tries from a key's home slot before it asks the VIP map.
pub const VIP_INDEX_PROBES: u32 = 4;
const _: () = assert!(VIP_INDEX_SIZE.is_power_of_two());

/// The VIP index slot `probe` places after `hash`'s home.
#[inline(always)]
pub const fn vip_index_slot(hash: u32, probe: u32) -> u32 {
    hash.wrapping_add(probe) & (VIP_INDEX_SIZE - 1)
}

/// A slot of the VIP index (`XLB_VIP_INDEX`): a copy of one entry of the VIP map (`XLB_VIPS`)
/// that the XDP program reads in place — an array read the verifier inlines — instead of a
/// hash-map lookup, a call into the kernel that cost a new flow ~25–40 ns here. The map stays the
/// truth: a key the index does not hold (no free slot within `VIP_INDEX_PROBES` of its home, or
/// a slot caught half-written, which `check` reveals) is looked up there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipSlot {
    pub key: VipKey,
    /// `vip_check(key.index_hash(), meta)`; 0 in a free slot (a check is never 0).
    pub check: u32,
    pub meta: VipMeta,
    pub pad: u32,
}

impl VipSlot {
    pub fn new(key: VipKey, meta: VipMeta) -> Self {
        Self { key, check: vip_check(key.index_hash(), &meta), meta, pad: 0 }
    }

    /// The meta this slot holds for `key` (whose `index_hash` is `hash`), if it holds `key` whole.
    #[inline(always)]
    pub fn holds(&self, key: &VipKey, hash: u32) -> Option<VipMeta> {
        // Read once, volatile: in the data plane the agent may rewrite this slot meanwhile, and
        // the meta checked must be the very bytes returned, not a second load of them.
        // SAFETY: a valid, aligned reference to plain data.
        let meta = unsafe { core::ptr::read_volatile(&self.meta) };
        (self.key == *key && self.check == vip_check(hash, &meta)).then_some(meta)
    }
}

/// Binds a VIP index slot's key (by its hash) to every field of its meta: a reader that got
/// fields of two writes finds this does not match.
#[inline(always)]
pub const fn vip_check(hash: u32, meta: &VipMeta) -> u32 {
    (hash
        ^ meta.id.wrapping_mul(0x9e37_79b9)
        ^ meta.flags.wrapping_mul(0x85eb_ca6b)
        ^ meta.table_size.wrapping_mul(0xc2b2_ae35)
        ^ (((meta.port_first as u32) << 16) | meta.port_last as u32).wrapping_mul(0x27d4_eb2f)
        ^ meta.pool.wrapping_mul(0x1656_67b1))
        | 1
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into the per-VIP counter array and the Maglev table array; `< MAX_VIPS`, stable
    /// for the life of the VIP.
    pub id: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
    /// Entries in this VIP's Maglev table (a prime); 0 while the VIP has no backends.
    pub table_size: u32,
    /// The destination ports it serves, host order. A port-range VIP sits under port 0 of its
    /// key (looked up when the exact port has no VIP) and serves `port_first..=port_last`.
    pub port_first: u16,
    pub port_last: u16,
    /// `mode: nat`: the id of its source-address pool, or `NAT_NO_POOL` (DNAT only).
    pub pool: u32,
}

/// Hash only the client address (sticky clients) instead of the 5-tuple.
pub const VIP_FLAG_HASH_SOURCE_ONLY: u32 = 1;
/// `mode: nat`: translate both directions instead of direct server return.
pub const VIP_FLAG_NAT: u32 = 2;

/// A backend slot: where one backend of one VIP is.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Backend {
    /// Address in network byte order, IPv4 in word 0.
    pub addr: [u32; 4],
    /// Backend MAC (dsr-l2).
    pub mac: [u8; 6],
    pub family: u8,
    pub flags: u8,
    /// Bumped whenever the slot is given to another backend or retired; connection-table entries
    /// carry the generation they were made with, so stale ones are re-hashed.
    pub generation: u32,
    /// The id of the VIP the slot serves. The data plane does not read it; a restarted agent
    /// does, to adopt the pinned maps as they are.
    pub vip_id: u32,
    /// NAT: the backend's port (network order); 0 keeps the client's destination port.
    pub port: u16,
    /// NAT: the interface toward the backend, an index into `maps::IFACES`; 0: the one the
    /// client's packet came in on.
    pub egress: u16,
}

/// The slot holds a live backend.
pub const BACKEND_FLAG_ACTIVE: u8 = 1;
/// Its VIP is dsr-ipip: encapsulate toward it (else dsr-l2: rewrite the MAC). Kept on the
/// backend so that an established flow is sent from its connection-table entry alone.
pub const BACKEND_FLAG_IPIP: u8 = 2;

/// Buckets of the pre-filter (`VIP_FILTER`) hold these bits: what kind of address falls there.
/// A VIP address (destination).
pub const FILTER_VIP: u32 = 1;
/// The address of a `mode: nat` VIP (destination): its flows are looked up in the NAT table.
pub const FILTER_NAT_VIP: u32 = 2;
/// A NAT pool address (destination): replies from backends are looked up in the reverse table.
pub const FILTER_NAT_POOL: u32 = 4;
/// A backend of a DNAT-only VIP (source): its replies go to the client's own address.
pub const FILTER_NAT_BACKEND: u32 = 8;

/// Index of the NAT program in the balancer's program array (`maps::PROGS`).
pub const PROG_INDEX_NAT: u32 = 0;

/// Most NAT source-address pools, and addresses in one pool.
pub const MAX_NAT_POOLS: u32 = 64;
pub const MAX_POOL_ADDRS: usize = 8;
/// `VipMeta::pool` of a NAT VIP without a pool: only the destination is translated.
pub const NAT_NO_POOL: u32 = u32::MAX;
/// Entries of each NAT table (forward and reverse), unless the node says otherwise.
pub const NAT_TABLE_SIZE: u32 = 1 << 18;

/// A source-address pool for full NAT: connections to a backend leave from one of `addrs` and a
/// port in `port_first..port_first + port_count`. Every (address, port) is a candidate; a
/// flow's candidates are scanned from a hashed start, so load spreads over all addresses.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatPool {
    pub addrs: [[u32; 4]; MAX_POOL_ADDRS],
    pub addr_count: u32,
    /// Host order.
    pub port_first: u32,
    pub port_count: u32,
    pub family: u32,
}

impl NatPool {
    /// (address, port) candidates of one backend endpoint.
    pub const fn size(&self) -> u32 {
        self.addr_count * self.port_count
    }

    /// Candidate `index` (`< size()`): consecutive indexes alternate over the addresses.
    #[inline(always)]
    pub fn candidate(&self, index: u32) -> Option<([u32; 4], u16)> {
        if self.addr_count == 0 {
            return None;
        }
        let addr = *self.addrs.get((index % self.addr_count) as usize)?;
        let port = self.port_first + index / self.addr_count;
        Some((addr, (port as u16).to_be()))
    }
}

impl NatPool {
    /// The candidate index of source `addr`, `port` (network order), if it is one of the pool's.
    #[inline(always)]
    pub fn index_of(&self, addr: &[u32; 4], port: u16) -> Option<u32> {
        let offset = u32::from(u16::from_be(port)).checked_sub(self.port_first)?;
        if offset >= self.port_count {
            return None;
        }
        let mut i = 0;
        while i < MAX_POOL_ADDRS && (i as u32) < self.addr_count {
            if self.addrs[i] == *addr {
                return Some(offset * self.addr_count + i as u32);
            }
            i += 1;
        }
        None
    }
}

/// Candidates a new NAT flow's claim tries, from its hashed start, before the slot is marked
/// exhausted (pools of up to this many candidates per backend run out exactly when full).
pub const NAT_CLAIM_PROBES: u32 = 256;
/// How long a slot marked exhausted skips the scan: its new flows try one candidate each (at
/// the slot's cursor) and the sources earlier flows released, and are dropped otherwise.
pub const NAT_EXHAUSTED_NS: u64 = 1_000_000_000;
/// Released sources one backend slot remembers (`NatSources::hints`).
pub const NAT_SOURCE_HINTS: usize = 8;

/// A backend slot's sources state (`maps::NAT_SOURCES`, by backend slot), so that a new NAT flow
/// never scans the pool: whether its last claim found the pool exhausted, the next candidate to
/// try then, and sources that flows of this backend released. The data plane's own state,
/// written without locks by every CPU: it only ever suggests candidates, and each is claimed by
/// an insert-if-absent on the reverse table, so a lost or repeated hint costs a drop or a
/// retry, never a source shared by two flows.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatSources {
    /// The backend port (network order) and pool the state is about (a port-keeping backend of
    /// a port-range VIP has one port space per port: the state follows the last one exhausted).
    pub backend_port: u16,
    pub pad: u16,
    pub pool: u32,
    /// The coarse clock (ns) when a claim last found no free source within `NAT_CLAIM_PROBES`;
    /// 0 never.
    pub exhausted_at: u64,
    /// The candidate an exhausted slot's next new flow tries.
    pub cursor: u32,
    /// Valid entries of `hints`.
    pub count: u32,
    /// Candidate indexes (`NatPool::candidate`) released by flows of this slot.
    pub hints: [u32; NAT_SOURCE_HINTS],
}

/// A NAT flow as the client sees it (key: the client's 5-tuple, a `FlowKey`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatFlow {
    /// Backend slot and the generation it had.
    pub backend: u32,
    pub generation: u32,
    /// Source address and port toward the backend (the client's own for DNAT only).
    pub source: [u32; 4],
    pub source_port: u16,
    /// Destination port at the backend (network order).
    pub backend_port: u16,
    /// `NAT_FLAG_*`.
    pub flags: u32,
    /// `bpf_ktime_get_coarse_ns` (CLOCK_MONOTONIC_COARSE) of the last packet this way, refreshed at most
    /// every `NAT_TOUCH_NS` so a busy flow does not write its entry on every packet.
    pub last_seen: u64,
}

/// A NAT flow as the backend sees it (key: the backend's reply 5-tuple, a `FlowKey` whose
/// destination is the pool address and port).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NatReverse {
    pub client: [u32; 4],
    pub vip: [u32; 4],
    pub client_port: u16,
    pub vip_port: u16,
    pub backend: u32,
    /// Where replies go at L2: the hop the client's packets came from.
    pub client_mac: [u8; 6],
    pub pad: u16,
    pub flags: u32,
    /// The interface the client's packets come in on (replies leave by it), an index into
    /// `maps::IFACES`; 0 when the agent runs on one interface (replies leave where they came).
    pub client_iface: u32,
    pub last_seen: u64,
}

impl NatReverse {
    /// The client-side key of the same flow.
    pub const fn forward_key(&self, proto: u8, family: u8) -> FlowKey {
        FlowKey {
            saddr: self.client,
            daddr: self.vip,
            sport: self.client_port,
            dport: self.vip_port,
            proto,
            family,
            pad: 0,
        }
    }
}

/// A FIN or RST was seen: the flow expires after `NodeConfig::nat_closing_timeout`.
pub const NAT_FLAG_CLOSING: u32 = 1;
/// The backend answered: a TCP flow expires after the established timeout, not the SYN one.
pub const NAT_FLAG_REPLIED: u32 = 2;
/// `last_seen` is refreshed when older than this.
pub const NAT_TOUCH_NS: u64 = 1_000_000_000;

/// Seconds a NAT flow may stay idle: `last` is the later `last_seen` of both directions,
/// `flags` both directions' flags. The data plane reclaims a port whose flow is expired; the
/// agent sweeps expired entries.
#[inline(always)]
pub fn nat_expired(now: u64, last: u64, flags: u32, proto: u8, node: &NodeConfig) -> bool {
    let timeout = if proto == PROTO_UDP {
        node.nat_udp_timeout
    } else if flags & NAT_FLAG_CLOSING != 0 || flags & NAT_FLAG_REPLIED == 0 {
        node.nat_closing_timeout
    } else {
        node.nat_tcp_timeout
    };
    now.saturating_sub(last) > u64::from(timeout) * 1_000_000_000
}

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
/// The state bits of `FlowSet::used`; the rest is the time (jiffies, to 4 jiffies).
pub const FLOW_STATE_BITS: u32 = FLOW_USED | FLOW_CONFIRMED;
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

/// Key of the VIP-address map: fragments and extension headers are judged by address alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VipAddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub pad: [u8; 3],
}

/// Value of the VIP-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipAddrPolicy {
    /// `ADDR_FLAG_*` bits.
    pub flags: u32,
}

/// Drop (rather than pass) IPv4 fragments and IPv6 packets with extension headers sent to the
/// address.
pub const ADDR_FLAG_DROP_UNHASHABLE: u32 = 1;

/// Node-wide forwarding settings (index 0 of a one-entry array).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct NodeConfig {
    /// MAC of the interface the program is attached to: the source of forwarded frames.
    pub iface_mac: [u8; 6],
    /// MAC of the next hop toward dsr-ipip backends.
    pub next_hop_mac: [u8; 6],
    /// Largest IP packet the egress link carries (its MTU).
    pub mtu: u32,
    /// Outer IPv4 source: `tunnel_v4 | (flow hash & !tunnel_v4_mask)`; a full mask fixes it.
    pub tunnel_v4: u32,
    pub tunnel_v4_mask: u32,
    /// Outer IPv6 source, likewise (the variable bits are in the last word).
    pub tunnel_v6: [u32; 4],
    pub tunnel_v6_mask: u32,
    /// `NODE_FLAG_*`.
    pub flags: u32,
    /// NAT idle timeouts, seconds: established TCP, TCP after FIN/RST or before any reply, UDP.
    pub nat_tcp_timeout: u32,
    pub nat_closing_timeout: u32,
    pub nat_udp_timeout: u32,
    /// The ifindex of the interface whose MAC is `iface_mac` (the agent's first `--iface`).
    pub ifindex: u32,
}

/// One interface the agent runs on, at its index in `maps::IFACES` (from 1; 0 means "the
/// interface the packet came in on"). `maps::DEVS` holds the same interfaces at the same
/// indexes, for the redirect.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Iface {
    pub ifindex: u32,
    /// Source MAC of frames that leave by it.
    pub mac: [u8; 6],
    pub pad: u16,
}

/// Interfaces one agent can run on (index 0 is never used).
pub const MAX_IFACES: u32 = 8;

/// An IPv4 tunnel source is configured.
pub const NODE_FLAG_TUNNEL_V4: u32 = 1;
/// An IPv6 tunnel source is configured.
pub const NODE_FLAG_TUNNEL_V6: u32 = 2;
/// Some VIP is DNAT only: replies from its backends are recognised by their source.
pub const NODE_FLAG_DNAT_ONLY: u32 = 4;
/// The agent runs on more than one interface (`maps::IFACES` is filled): NAT packets may leave
/// by another interface than they came in on.
pub const NODE_FLAG_MULTI_IFACE: u32 = 8;

/// Per-backend-slot traffic counters (per-CPU; the agent sums them). A VIP's totals are the sum
/// over its backends (the agent keeps what retired backends had counted), so the data plane
/// updates one counter array per packet.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct BackendCounters {
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl BackendCounters {
    pub const fn plus(&self, other: &Self) -> Self {
        Self {
            packets: self.packets + other.packets,
            bytes: self.bytes + other.bytes,
            new_flows: self.new_flows + other.new_flows,
        }
    }
}

/// TTL / hop limit of outer headers and generated ICMP errors.
pub const OUTER_TTL: u8 = 64;

/// Global per-CPU counters, indexed by `Stat as u32` in the `STATS` array.
///
/// Every packet the program sees lands in exactly one *outcome* counter, so their sum is the
/// number of packets received. The few *event* counters (`is_outcome() == false`) count things
/// that happen on the way, like connection-table misses.
///
/// Adding a counter: append it before `Count`, add it to `ALL` and give it a name in
/// [`Stat::name`]; the agent and the metrics pick it up from there.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Well-formed packet that is not for a VIP: passed untouched.
    PassNotVip = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp,
    /// VIP packet sent on to its backend (XDP_TX).
    Forwarded,
    /// VIP packet too big once encapsulated: answered with ICMP fragmentation-needed or ICMPv6
    /// packet-too-big (XDP_TX back to the client).
    IcmpTooBigSent,
    /// IPv4 fragment or IPv6 packet with extension headers to a VIP address: its ports are not
    /// reliable, so it is never hashed. Passed or dropped by the address's policy.
    PassUnhashable,
    DropUnhashable,
    /// VIP without a usable backend (no backends, or its Maglev slot is empty).
    DropNoBackend,
    /// Too big once encapsulated, without DF: it cannot be forwarded and must not be fragmented.
    DropTooBig,
    /// dsr-ipip VIP, but no tunnel source of the backend's family is configured.
    DropNoTunnelSource,
    /// The kernel refused to grow or shrink the frame (bpf_xdp_adjust_head/tail).
    DropAdjustFailed,
    /// Malformed: shorter than an Ethernet header.
    TruncatedEth,
    /// Malformed: 802.1Q tag cut short.
    TruncatedVlan,
    /// Malformed: shorter than an IPv4 header, or than its IHL says.
    TruncatedIpv4,
    /// Malformed: IPv4 IHL below 5 or version not 4.
    BadIpv4Header,
    /// Malformed: IPv4 total length shorter than the header or longer than the frame.
    BadIpv4Length,
    /// Malformed: shorter than an IPv6 header.
    TruncatedIpv6,
    /// Malformed: IPv6 version field not 6.
    BadIpv6Header,
    /// Malformed: IPv6 payload length longer than the frame.
    BadIpv6Length,
    /// Malformed: TCP header cut short, or data offset below 5.
    TruncatedTcp,
    /// Malformed: UDP header cut short.
    TruncatedUdp,
    /// Malformed: ICMP/ICMPv6 header cut short.
    TruncatedIcmp,
    /// Event: the connection table had no entry for a VIP packet.
    FlowMiss,
    /// Event: the connection table pointed at a retired backend; the flow was re-hashed.
    FlowStale,
    /// Event: an ICMP error about a VIP flow was sent to the backend that owns the flow.
    IcmpErrorToBackend,
    /// NAT: a client packet translated and sent to its backend.
    NatForwarded,
    /// NAT: a backend's reply translated and sent to the client.
    NatReplied,
    /// NAT: an ICMP error about a NAT flow translated and sent on (either direction).
    NatIcmpTranslated,
    /// NAT: every (address, port) of the pool is taken toward this backend.
    DropPoolExhausted,
    /// NAT: the NAT table is full (`node.nat_table_size`).
    DropNatTableFull,
    /// NAT: a TCP packet that is not a SYN, of no known flow (its state is gone or expired).
    DropNatNoFlow,
    /// NAT: the TTL / hop limit would reach 0.
    DropTtlExceeded,
    /// A packet for a NAT address, but the NAT program is not loaded (the agent sets it), or
    /// the NAT program it reached belongs to another load of the balancer (never, unless program
    /// arrays got mixed across an upgrade).
    DropNatUnavailable,
    /// Event: a NAT port of an expired flow was taken over by a new flow.
    NatPortReclaimed,
    /// Event: a NAT packet left by another interface than it came in on (devmap redirect).
    NatRedirected,
    /// NAT: the packet must leave by an interface the redirect map does not hold.
    DropNoEgress,
    /// Event: a new flow (TCP SYN, UDP) found every entry of its connection-table set held by a
    /// confirmed, live flow: it was sent by the Maglev table without being recorded, so that a
    /// flood of new flows cannot evict established ones.
    FlowSetFull,
    /// Event: a new NAT flow took a source an earlier flow of its backend released (the slot's
    /// free-source hints), without a scan of the pool.
    NatSourceReused,
    Count,
}

pub const STAT_COUNT: u32 = Stat::Count as u32;

/// All global counters of one CPU: the single value of the per-CPU `STATS` array, so the program
/// looks it up once per packet and bumps fields with plain increments.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StatCounters {
    pub values: [u64; STAT_COUNT as usize],
}

impl Default for StatCounters {
    fn default() -> Self {
        Self { values: [0; STAT_COUNT as usize] }
    }
}

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::PassNotVip,
        Stat::PassNotIp,
        Stat::Forwarded,
        Stat::IcmpTooBigSent,
        Stat::PassUnhashable,
        Stat::DropUnhashable,
        Stat::DropNoBackend,
        Stat::DropTooBig,
        Stat::DropNoTunnelSource,
        Stat::DropAdjustFailed,
        Stat::TruncatedEth,
        Stat::TruncatedVlan,
        Stat::TruncatedIpv4,
        Stat::BadIpv4Header,
        Stat::BadIpv4Length,
        Stat::TruncatedIpv6,
        Stat::BadIpv6Header,
        Stat::BadIpv6Length,
        Stat::TruncatedTcp,
        Stat::TruncatedUdp,
        Stat::TruncatedIcmp,
        Stat::FlowMiss,
        Stat::FlowStale,
        Stat::IcmpErrorToBackend,
        Stat::NatForwarded,
        Stat::NatReplied,
        Stat::NatIcmpTranslated,
        Stat::DropPoolExhausted,
        Stat::DropNatTableFull,
        Stat::DropNatNoFlow,
        Stat::DropTtlExceeded,
        Stat::DropNatUnavailable,
        Stat::NatPortReclaimed,
        Stat::NatRedirected,
        Stat::DropNoEgress,
        Stat::FlowSetFull,
        Stat::NatSourceReused,
    ];

    /// Stable snake_case name, used in `xlb stats` and as the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::PassNotVip => "pass_not_vip",
            Stat::PassNotIp => "pass_not_ip",
            Stat::Forwarded => "forwarded",
            Stat::IcmpTooBigSent => "icmp_too_big_sent",
            Stat::PassUnhashable => "pass_unhashable",
            Stat::DropUnhashable => "drop_unhashable",
            Stat::DropNoBackend => "drop_no_backend",
            Stat::DropTooBig => "drop_too_big",
            Stat::DropNoTunnelSource => "drop_no_tunnel_source",
            Stat::DropAdjustFailed => "drop_adjust_failed",
            Stat::TruncatedEth => "truncated_eth",
            Stat::TruncatedVlan => "truncated_vlan",
            Stat::TruncatedIpv4 => "truncated_ipv4",
            Stat::BadIpv4Header => "bad_ipv4_header",
            Stat::BadIpv4Length => "bad_ipv4_length",
            Stat::TruncatedIpv6 => "truncated_ipv6",
            Stat::BadIpv6Header => "bad_ipv6_header",
            Stat::BadIpv6Length => "bad_ipv6_length",
            Stat::TruncatedTcp => "truncated_tcp",
            Stat::TruncatedUdp => "truncated_udp",
            Stat::TruncatedIcmp => "truncated_icmp",
            Stat::FlowMiss => "flow_miss",
            Stat::FlowStale => "flow_stale",
            Stat::IcmpErrorToBackend => "icmp_error_to_backend",
            Stat::NatForwarded => "nat_forwarded",
            Stat::NatReplied => "nat_replied",
            Stat::NatIcmpTranslated => "nat_icmp_translated",
            Stat::DropPoolExhausted => "drop_pool_exhausted",
            Stat::DropNatTableFull => "drop_nat_table_full",
            Stat::DropNatNoFlow => "drop_nat_no_flow",
            Stat::DropTtlExceeded => "drop_ttl_exceeded",
            Stat::DropNatUnavailable => "drop_nat_unavailable",
            Stat::NatPortReclaimed => "nat_port_reclaimed",
            Stat::NatRedirected => "nat_redirected",
            Stat::DropNoEgress => "drop_no_egress",
            Stat::FlowSetFull => "flow_set_full",
            Stat::NatSourceReused => "nat_source_reused",
            Stat::Count => "count",
        }
    }

    /// Whether this counter records a malformed packet (passed untouched to the kernel, which
    /// is the authority on what is not provably ours).
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Stat::TruncatedEth
                | Stat::TruncatedVlan
                | Stat::TruncatedIpv4
                | Stat::BadIpv4Header
                | Stat::BadIpv4Length
                | Stat::TruncatedIpv6
                | Stat::BadIpv6Header
                | Stat::BadIpv6Length
                | Stat::TruncatedTcp
                | Stat::TruncatedUdp
                | Stat::TruncatedIcmp
        )
    }

    /// Whether this counter is an outcome (each packet lands in exactly one).
    pub const fn is_outcome(self) -> bool {
        !matches!(
            self,
            Stat::FlowMiss
                | Stat::FlowStale
                | Stat::IcmpErrorToBackend
                | Stat::NatPortReclaimed
                | Stat::NatRedirected
                | Stat::FlowSetFull
                | Stat::NatSourceReused
                | Stat::Count
        )
    }

    /// Whether this outcome is a drop (XDP_DROP).
    pub const fn is_drop(self) -> bool {
        matches!(
            self,
            Stat::DropUnhashable
                | Stat::DropNoBackend
                | Stat::DropTooBig
                | Stat::DropNoTunnelSource
                | Stat::DropAdjustFailed
                | Stat::DropPoolExhausted
                | Stat::DropNatTableFull
                | Stat::DropNatNoFlow
                | Stat::DropTtlExceeded
                | Stat::DropNatUnavailable
                | Stat::DropNoEgress
        )
    }
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
const fn fmix(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// Names of the maps in the XDP object, so both sides agree.
pub mod maps {
    pub const VIPS: &str = "XLB_VIPS";
    pub const VIP_INDEX: &str = "XLB_VIP_INDEX";
    pub const VIP_ADDRS: &str = "XLB_VIP_ADDRS";
    pub const VIP_FILTER: &str = "XLB_VIP_FILTER";
    pub const BACKENDS: &str = "XLB_BACKENDS";
    pub const BACKEND_COUNTERS: &str = "XLB_BACKEND_COUNTERS";
    pub const MAGLEV: &str = "XLB_MAGLEV";
    pub const FLOWS: &str = "XLB_FLOWS";
    /// The global that tells the program how many sets `FLOWS` has.
    pub const FLOW_SETS: &str = "XLB_FLOW_SETS";
    pub const NODE: &str = "XLB_NODE";
    pub const STATS: &str = "XLB_STATS";
    pub const NAT_POOLS: &str = "XLB_NAT_POOLS";
    pub const NAT_FLOWS: &str = "XLB_NAT_FLOWS";
    pub const NAT_REVERSE: &str = "XLB_NAT_REVERSE";
    /// Per backend slot: whether its pool ran out lately, and released sources (`NatSources`).
    /// One per load of the program, like the scratch maps: only hints, rebuilt by traffic.
    pub const NAT_SOURCES: &str = "XLB_NAT_SOURCES";
    /// The balancer's program array. Not in [`BALANCER`]: it is pinned once per load of the
    /// program, as `XLB_PROGS_<generation>` (see the agent's `Loaded::balancer_pinned`).
    pub const PROGS: &str = "XLB_PROGS";
    /// The read-only global that tells one load of the balancer from another.
    pub const GENERATION: &str = "XLB_GENERATION";
    /// The interfaces the agent runs on (`Iface` by index) and the redirect map over them.
    pub const IFACES: &str = "XLB_IFACES";
    pub const DEVS: &str = "XLB_DEVS";
    /// The balancer object's maps that every load shares through their pins (the program array
    /// and per-packet scratch maps belong to one load).
    pub const BALANCER: [&str; 15] = [
        VIPS,
        VIP_INDEX,
        VIP_ADDRS,
        VIP_FILTER,
        BACKENDS,
        BACKEND_COUNTERS,
        MAGLEV,
        FLOWS,
        NODE,
        STATS,
        NAT_POOLS,
        NAT_FLOWS,
        NAT_REVERSE,
        IFACES,
        DEVS,
    ];
    pub const DECAP_ADDRS: &str = "XLB_DECAP_ADDRS";
    pub const DECAP_STATS: &str = "XLB_DECAP_STATS";
}

/// Names of the programs in the XDP objects.
pub mod programs {
    pub const BALANCER: &str = "xlb_balancer";
    /// Tail-called by the balancer for NAT (at `PROG_INDEX_NAT` of `maps::PROGS`).
    pub const NAT: &str = "xlb_nat";
    pub const DECAP: &str = "xlb_decap";
    pub const FLOOR: &str = "xlb_floor";
}

/// Counters of the backend-side decapsulation program (`DECAP_STATS`).
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecapStat {
    /// Not a tunnel packet for this host: passed untouched.
    Pass = 0,
    /// Outer header stripped; the inner packet goes up the stack.
    Decapsulated,
    /// A tunnel packet for this host whose inner header is cut short: dropped.
    DropMalformed,
    Count,
}

pub const DECAP_STAT_COUNT: u32 = DecapStat::Count as u32;

#[cfg(feature = "user")]
mod pod {
    // SAFETY (all below): #[repr(C)] plain data of integer fields and byte arrays, valid for any
    // bit pattern, without padding (sizes checked in the tests below).
    macro_rules! pod {
        ($($t:ty),*) => { $(
            // SAFETY: see above.
            unsafe impl aya::Pod for $t {}
        )* };
    }
    pod!(
        super::VipKey,
        super::VipMeta,
        super::VipSlot,
        super::Backend,
        super::BackendCounters,
        super::FlowKey,
        super::Flow,
        super::FlowSet,
        super::FlowEntry,
        super::VipAddrKey,
        super::VipAddrPolicy,
        super::NodeConfig,
        super::StatCounters,
        super::NatPool,
        super::NatFlow,
        super::NatReverse,
        super::NatSources,
        super::Iface
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_table_is_complete_and_ordered() {
        assert_eq!(Stat::ALL.len(), STAT_COUNT as usize);
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{} out of order", s.name());
        }
    }

    #[test]
    fn types_have_no_padding() {
        use core::mem::size_of;
        assert_eq!(size_of::<VipKey>(), 16 + 2 + 1 + 1);
        assert_eq!(size_of::<VipMeta>(), 3 * 4 + 2 * 2 + 4);
        assert_eq!(size_of::<VipSlot>(), 20 + 4 + 20 + 4);
        assert_eq!(size_of::<Backend>(), 16 + 6 + 1 + 1 + 4 + 4 + 2 + 2);
        assert_eq!(size_of::<MaglevGroup>(), 8);
        assert_eq!(size_of::<BackendCounters>(), 3 * 8);
        assert_eq!(size_of::<FlowKey>(), 16 + 16 + 2 + 2 + 1 + 1 + 2);
        assert_eq!(size_of::<Flow>(), 8);
        assert_eq!(size_of::<FlowEntry>(), 64);
        assert_eq!(size_of::<FlowSet>(), 64 + FLOW_WAYS * 64);
        assert_eq!(size_of::<VipAddrKey>(), 16 + 4);
        assert_eq!(size_of::<NodeConfig>(), 6 + 6 + 4 + 4 + 4 + 16 + 4 + 4 + 4 * 4);
        assert_eq!(size_of::<NatPool>(), 16 * MAX_POOL_ADDRS + 4 * 4);
        assert_eq!(size_of::<NatFlow>(), 8 + 16 + 2 + 2 + 4 + 8);
        assert_eq!(size_of::<NatReverse>(), 16 + 16 + 2 + 2 + 4 + 6 + 2 + 4 + 4 + 8);
        assert_eq!(size_of::<Iface>(), 4 + 6 + 2);
        assert_eq!(size_of::<NatSources>(), 2 + 2 + 4 + 8 + 4 + 4 + 4 * NAT_SOURCE_HINTS);
    }

    #[test]
    fn outcomes_and_events_partition_the_counters() {
        for s in Stat::ALL {
            assert!(!(s.is_drop() && !s.is_outcome()), "{} is a drop but not an outcome", s.name());
            assert!(!(s.is_malformed() && !s.is_outcome()), "{}", s.name());
        }
    }

    fn flow_key(sport: u16) -> FlowKey {
        FlowKey {
            saddr: [1, 0, 0, 0],
            daddr: [2, 0, 0, 0],
            sport,
            dport: 80,
            proto: PROTO_TCP,
            family: FAMILY_V4,
            pad: 0,
        }
    }

    /// Writes `key` → `flow` into entry `way` as the data plane does.
    fn record(set: &mut FlowSet, way: usize, key: &FlowKey, flow: Flow) {
        let hash = key.hash();
        set.hashes[way] = hash;
        set.used[way] = 1;
        set.entries[way].key = *key;
        set.entries[way].flow = flow;
        set.entries[way].check = flow_check(hash, &flow);
    }

    #[test]
    fn a_flow_set_finds_whole_entries_and_not_torn_ones() {
        let entry = FlowEntry { key: FlowKey::default(), flow: Flow::default(), check: 0, pad: [0; 3] };
        let mut set = FlowSet { hashes: [0; FLOW_WAYS], used: [0; FLOW_WAYS], entries: [entry; FLOW_WAYS] };
        let (a, b) = (flow_key(1000), flow_key(1001));
        assert_eq!(set.find(&a), None);
        record(&mut set, 3, &a, Flow { backend: 7, generation: 2 });
        record(&mut set, 5, &b, Flow { backend: 9, generation: 1 });
        assert_eq!(set.find(&a), Some(Flow { backend: 7, generation: 2 }));
        assert_eq!(set.find(&b), Some(Flow { backend: 9, generation: 1 }));
        // Two writers interleaved: a's key and hash with b's flow (or a's flow, another generation).
        let mut torn = set;
        torn.entries[3].flow = Flow { backend: 9, generation: 1 };
        assert_eq!(torn.find(&a), None, "a torn entry reads as absent");
        let mut torn = set;
        torn.entries[3].flow.generation = 3;
        assert_eq!(torn.find(&a), None);
        let mut torn = set;
        torn.hashes[3] = b.hash();
        torn.entries[3].check = flow_check(b.hash(), &Flow { backend: 7, generation: 2 });
        assert_eq!(torn.find(&a), None, "another flow's hash and check");
        // A free entry holds nothing even if its bytes are a's.
        let mut freed = set;
        freed.used[3] = 0;
        assert_eq!(freed.find(&a), None);
    }

    #[test]
    fn confirmed_entries_are_idle_only_past_the_limit() {
        let now = 0x1234_5670 | FLOW_USED;
        let stamp = |age: u32| (now & !FLOW_STATE_BITS).wrapping_sub(age) | FLOW_USED | FLOW_CONFIRMED;
        assert!(!flow_idle(stamp(0), now));
        assert!(!flow_idle(stamp(FLOW_CONFIRMED_IDLE_JIFFIES), now));
        assert!(flow_idle(stamp(FLOW_CONFIRMED_IDLE_JIFFIES + 4), now));
        // Stamped by another CPU a tick after `now`: the newest, not the oldest.
        assert!(!flow_idle((now & !FLOW_STATE_BITS).wrapping_add(4) | FLOW_USED | FLOW_CONFIRMED, now));
        // Across the 32-bit wrap of jiffies.
        assert!(!flow_idle(0xffff_fff0 | FLOW_USED, 0x10 | FLOW_USED));
    }

    #[test]
    fn a_vip_slot_holds_only_its_own_whole_write() {
        let key = VipKey::v4(0x0102_0304, 80u16.to_be(), PROTO_TCP);
        let other = VipKey::v4(0x0102_0305, 80u16.to_be(), PROTO_TCP);
        let meta = VipMeta { id: 3, flags: 0, table_size: 65537, port_first: 0, port_last: 0, pool: 0 };
        let slot = VipSlot::new(key, meta);
        assert_eq!(slot.holds(&key, key.index_hash()), Some(meta));
        assert_eq!(slot.holds(&other, other.index_hash()), None);
        assert_eq!(VipSlot::default().holds(&VipKey::default(), VipKey::default().index_hash()), None, "a free slot");
        // Each meta field from another write makes the slot read as not holding the key.
        let torn: [fn(&mut VipMeta); 6] = [
            |m| m.id = 4,
            |m| m.flags = VIP_FLAG_NAT,
            |m| m.table_size = 251,
            |m| m.port_first = 1,
            |m| m.port_last = 9,
            |m| m.pool = 1,
        ];
        for change in torn {
            let mut half = slot;
            change(&mut half.meta);
            assert_eq!(half.holds(&key, key.index_hash()), None, "{:?}", half.meta);
        }
    }

    #[test]
    fn flow_sets_cover_the_table_evenly() {
        assert_eq!(flow_sets(1024), 128);
        assert_eq!(flow_sets(1025), 129);
        assert_eq!(flow_set(0, 129), 0);
        assert_eq!(flow_set(u32::MAX, 129), 128);
        let mut counts = [0u32; 129];
        for port in 0..12900u16 {
            counts[flow_set(flow_key(port).hash(), 129) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| (50..=160).contains(&c)), "{counts:?}");
    }

    #[test]
    fn flow_hash_spreads_and_depends_on_every_field() {
        let base = flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 6);
        assert_ne!(base, flow_hash(&[3, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 6));
        assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 1], 0x0050_1f90, 6));
        assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0051_1f90, 6));
        assert_ne!(base, flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], 0x0050_1f90, 17));
        assert_ne!(source_hash(&[1, 0, 0, 0], 6), source_hash(&[2, 0, 0, 0], 6));
        // Sequential source ports fill 7 buckets evenly (within 10%).
        let mut buckets = [0u32; 7];
        for port in 0..7000u32 {
            buckets[(flow_hash(&[1, 0, 0, 0], &[2, 0, 0, 0], port << 16 | 80, 6) % 7) as usize] += 1;
        }
        assert!(buckets.iter().all(|&b| (900..=1100).contains(&b)), "{buckets:?}");
    }
}
