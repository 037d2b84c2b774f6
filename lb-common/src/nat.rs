//! Full NAT: source-address pools, per-backend source state, the forward and reverse flow tables
//! and their expiry.

use crate::{FlowKey, NodeConfig, PROTO_UDP};

/// Index of the NAT program in the balancer's program array (`maps::PROGS`).
pub const PROG_INDEX_NAT: u32 = 0;
/// Index of the drop-log program (`programs::LOG`): set while `bpf_log` is on, empty otherwise,
/// so that a drop with logging off costs a failed tail call and nothing else.
pub const PROG_INDEX_LOG: u32 = 1;
/// Index of the program that answers a SYN refused by a connection limit with a RST
/// (`programs::RESET`).
pub const PROG_INDEX_RESET: u32 = 2;

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
    /// The coarse clock (ns) when a claim last scanned the pool and found no free source;
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
/// A flow opened by a SYN cookie (`syn_cookies`): its sequence numbers are shifted (`NatSeq`), so
/// its packets take the NAT program's cookie paths, not the inlined ones.
pub const NAT_FLAG_COOKIE: u32 = 4;
/// `last_seen` is refreshed when older than this.
pub const NAT_TOUCH_NS: u64 = 1_000_000_000;

/// Whether a flow one of whose directions was seen at `last` is live at `now` whatever the other
/// direction holds: idle for no longer than the shortest timeout of its protocol (the other
/// direction can only make `last` later; its flags can only pick a timeout at least that long).
/// Saves the data plane the other table's lookup on a busy flow's periodic refresh.
#[inline(always)]
pub fn nat_surely_live(now: u64, last: u64, proto: u8, node: &NodeConfig) -> bool {
    let shortest =
        if proto == PROTO_UDP { node.nat_udp_timeout } else { node.nat_closing_timeout.min(node.nat_tcp_timeout) };
    now.saturating_sub(last) <= u64::from(shortest) * 1_000_000_000
}

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
