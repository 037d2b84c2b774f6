//! How a configured VIP is named in the maps and in messages: its map key, and the
//! `address:port/protocol` text that logs, errors and status use.

use std::net::IpAddr;

use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VipKey};

use super::{Protocol, Vip};

/// An address as the data plane keeps it: four network-order words, IPv4 in the first.
pub fn ip_words(addr: IpAddr) -> ([u32; 4], u8) {
    match addr {
        IpAddr::V4(a) => ([u32::from_ne_bytes(a.octets()), 0, 0, 0], FAMILY_V4),
        IpAddr::V6(a) => {
            let o = a.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            ([word(0), word(4), word(8), word(12)], FAMILY_V6)
        }
    }
}

/// A backend's identity within its VIP: its address, or `address:port` for an entry with a port
/// of its own when the VIP lists that address more than once (NAT to several ports of one host).
/// Maglev hashes it; slots, health, drains and weights key on it. A VIP that lists each address
/// once keeps the identities it always had, so its tables do not move.
pub fn backend_identity(address: IpAddr, port: Option<u16>, address_repeats: bool) -> String {
    match port {
        Some(port) if address_repeats => std::net::SocketAddr::new(address, port).to_string(),
        _ => address.to_string(),
    }
}

/// The identities of `entries` (address, port of its own), in order, by [`backend_identity`].
pub fn backend_identities(entries: impl Iterator<Item = (IpAddr, Option<u16>)> + Clone) -> Vec<String> {
    let mut count: std::collections::HashMap<IpAddr, usize> = std::collections::HashMap::new();
    for (address, _) in entries.clone() {
        *count.entry(address).or_default() += 1;
    }
    entries.map(|(address, port)| backend_identity(address, port, count[&address] > 1)).collect()
}

/// The address `ip_words` made (for reading the maps back).
pub fn ip_from_words(addr: [u32; 4], family: u8) -> IpAddr {
    if family == FAMILY_V4 {
        IpAddr::from(addr[0].to_ne_bytes())
    } else {
        let mut octets = [0u8; 16];
        for (chunk, word) in octets.as_chunks_mut::<4>().0.iter_mut().zip(addr) {
            chunk.copy_from_slice(&word.to_ne_bytes());
        }
        IpAddr::from(octets)
    }
}

/// `address:port/protocol` (brackets around IPv6), `address:first-last/protocol` for a port
/// range, `address/icmp` for ICMP VIPs.
pub fn endpoint(key: &VipKey, port_first: u16, port_last: u16) -> String {
    let protocol = match key.proto {
        PROTO_TCP => "tcp",
        PROTO_UDP => "udp",
        _ => "icmp",
    };
    let ports =
        if port_last > port_first { format!("{port_first}-{port_last}") } else { u16::from_be(key.port).to_string() };
    match ip_from_words(key.addr, key.family) {
        a if protocol == "icmp" => format!("{a}/icmp"),
        IpAddr::V4(a) => format!("{a}:{ports}/{protocol}"),
        IpAddr::V6(a) => format!("[{a}]:{ports}/{protocol}"),
    }
}

/// The VIP map key for a configured VIP (address and port in network byte order).
pub fn vip_key(vip: &Vip) -> VipKey {
    let (addr, family) = ip_words(vip.address);
    let proto = match (vip.protocol, family) {
        (Protocol::Tcp, _) => PROTO_TCP,
        (Protocol::Udp, _) => PROTO_UDP,
        (Protocol::Icmp, FAMILY_V4) => PROTO_ICMP,
        (Protocol::Icmp, _) => PROTO_ICMPV6,
    };
    // A port range sits under port 0: the data plane looks there when the exact port has no VIP.
    let port = if vip.is_port_range() { 0 } else { vip.port.to_be() };
    VipKey { addr, port, proto, family }
}
