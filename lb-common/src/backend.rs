//! Backend slots and their traffic counters.

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
