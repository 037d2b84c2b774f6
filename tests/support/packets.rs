//! Packets for tests, built with etherparse (checksums and lengths right by construction).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, PacketBuilderStep, VlanId};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Transport of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    TcpSyn {
        sport: u16,
        dport: u16,
    },
    TcpAck {
        sport: u16,
        dport: u16,
    },
    /// The client's FIN (with ACK).
    TcpFin {
        sport: u16,
        dport: u16,
    },
    Udp {
        sport: u16,
        dport: u16,
    },
    IcmpEcho,
}

/// Addresses of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ip {
    V4 { src: Ipv4Addr, dst: Ipv4Addr },
    V6 { src: Ipv6Addr, dst: Ipv6Addr },
}

/// A builder for one frame: addresses, transport, optional VLAN tag, payload.
#[derive(Debug, Clone)]
pub struct Frame {
    pub ip: Ip,
    pub l4: L4,
    pub vlan: Option<u16>,
    pub payload: Vec<u8>,
    pub ttl: u8,
}

impl Frame {
    /// Sets the payload to `len` bytes of a repeating pattern.
    pub fn payload_len(mut self, len: usize) -> Self {
        self.payload = (0..len).map(|i| (i % 251) as u8).collect();
        self
    }

    pub fn ttl(mut self, ttl: u8) -> Self {
        self.ttl = ttl;
        self
    }

    pub fn new(ip: Ip, l4: L4) -> Self {
        Self { ip, l4, vlan: None, payload: b"xlb test payload".to_vec(), ttl: 64 }
    }

    pub fn v4(src: &str, dst: &str, l4: L4) -> Self {
        Self::new(Ip::V4 { src: src.parse().expect("v4"), dst: dst.parse().expect("v4") }, l4)
    }

    pub fn v6(src: &str, dst: &str, l4: L4) -> Self {
        Self::new(Ip::V6 { src: src.parse().expect("v6"), dst: dst.parse().expect("v6") }, l4)
    }

    pub fn vlan(mut self, id: u16) -> Self {
        self.vlan = Some(id);
        self
    }

    pub fn build(&self) -> Vec<u8> {
        let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
        match self.vlan {
            Some(id) => {
                let tagged = eth.single_vlan(VlanId::try_new(id).expect("VLAN id < 4096"));
                match self.ip {
                    Ip::V4 { src, dst } => self.transport(tagged.ipv4(src.octets(), dst.octets(), self.ttl)),
                    Ip::V6 { src, dst } => self.transport(tagged.ipv6(src.octets(), dst.octets(), self.ttl)),
                }
            }
            None => match self.ip {
                Ip::V4 { src, dst } => self.transport(eth.ipv4(src.octets(), dst.octets(), self.ttl)),
                Ip::V6 { src, dst } => self.transport(eth.ipv6(src.octets(), dst.octets(), self.ttl)),
            },
        }
    }

    fn transport(&self, ip: PacketBuilderStep<etherparse::IpHeaders>) -> Vec<u8> {
        let mut out = Vec::new();
        let result = match (self.l4, self.ip) {
            (L4::TcpSyn { sport, dport }, _) => ip.tcp(sport, dport, 1000, 64240).syn().write(&mut out, &self.payload),
            (L4::TcpAck { sport, dport }, _) => {
                ip.tcp(sport, dport, 1001, 64240).ack(5000).write(&mut out, &self.payload)
            }
            (L4::TcpFin { sport, dport }, _) => {
                ip.tcp(sport, dport, 1001, 64240).ack(5000).fin().write(&mut out, &self.payload)
            }
            (L4::Udp { sport, dport }, _) => ip.udp(sport, dport).write(&mut out, &self.payload),
            (L4::IcmpEcho, Ip::V4 { .. }) => ip.icmpv4_echo_request(7, 1).write(&mut out, &self.payload),
            (L4::IcmpEcho, Ip::V6 { .. }) => ip.icmpv6_echo_request(7, 1).write(&mut out, &self.payload),
        };
        result.expect("etherparse writes the frame");
        out
    }
}

/// Bytes as hex, 16 to a line: frame comparisons whose failures can be read.
pub fn hex(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .chunks(16)
        .map(|c| c.join(" "))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Offset of the IP header in a frame built by [`Frame`].
pub fn l3_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] { 18 } else { 14 }
}

/// Clears IPv4 DF and fixes the header checksum.
pub fn clear_df(frame: &mut [u8]) {
    let l3 = l3_offset(frame);
    frame[l3 + 6] &= !0x40;
    fix_ipv4_checksum(frame);
}

/// Recomputes the IPv4 header checksum of a frame.
pub fn fix_ipv4_checksum(frame: &mut [u8]) {
    let l3 = l3_offset(frame);
    let header = etherparse::Ipv4HeaderSlice::from_slice(&frame[l3..]).expect("IPv4 header").to_header();
    frame[l3 + 10..l3 + 12].copy_from_slice(&header.calc_header_checksum().to_be_bytes());
}

/// Recomputes the TCP checksum of an IPv4 frame (after editing its TCP header).
pub fn fix_tcp_checksum(frame: &mut [u8]) {
    let l3 = l3_offset(frame);
    let ip = etherparse::Ipv4HeaderSlice::from_slice(&frame[l3..]).expect("IPv4 header");
    let tcp_start = l3 + ip.slice().len();
    let header = ip.to_header();
    let tcp = etherparse::TcpHeaderSlice::from_slice(&frame[tcp_start..]).expect("TCP header").to_header();
    let payload = &frame[tcp_start + tcp.header_len()..l3 + usize::from(header.total_len)];
    let sum = tcp.calc_checksum_ipv4(&header, payload).expect("checksum");
    frame[tcp_start + 16..tcp_start + 18].copy_from_slice(&sum.to_be_bytes());
}

/// The IPv4 header bytes of a frame (for quoting in ICMP errors).
pub fn ip_and_8(frame: &[u8]) -> Vec<u8> {
    let l3 = l3_offset(frame);
    let len = if frame[l3] >> 4 == 4 { usize::from(frame[l3] & 0xf) * 4 } else { 40 };
    frame[l3..l3 + len + 8].to_vec()
}

/// An ICMP fragmentation-needed (IPv4) or packet-too-big (IPv6) from `router` to `to`, quoting
/// `quoted` (an IP header and at least 8 bytes of what followed).
pub fn icmp_too_big(router: &str, to: &str, mtu: u32, quoted: &[u8]) -> Vec<u8> {
    icmp_too_big_with_ttl(router, to, 64, mtu, quoted)
}

/// [`icmp_too_big`] with the outer TTL / hop limit `ttl`.
pub fn icmp_too_big_with_ttl(router: &str, to: &str, ttl: u8, mtu: u32, quoted: &[u8]) -> Vec<u8> {
    use etherparse::{Icmpv4Type, Icmpv6Type, icmpv4::DestUnreachableHeader};
    let mut out = Vec::new();
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    match (router.parse::<std::net::IpAddr>().expect("addr"), to.parse::<std::net::IpAddr>().expect("addr")) {
        (std::net::IpAddr::V4(r), std::net::IpAddr::V4(t)) => eth
            .ipv4(r.octets(), t.octets(), ttl)
            .icmpv4(Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                next_hop_mtu: mtu as u16,
            }))
            .write(&mut out, quoted),
        (std::net::IpAddr::V6(r), std::net::IpAddr::V6(t)) => {
            eth.ipv6(r.octets(), t.octets(), ttl).icmpv6(Icmpv6Type::PacketTooBig { mtu }).write(&mut out, quoted)
        }
        _ => panic!("mixed families"),
    }
    .expect("write");
    out
}
