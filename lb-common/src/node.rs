//! Node-wide forwarding settings and the interfaces the agent runs on.

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

/// TTL / hop limit of outer headers and generated ICMP errors.
pub const OUTER_TTL: u8 = 64;
