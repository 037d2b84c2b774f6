//! Packets for tests, built with etherparse (checksums and lengths right by construction).

use std::net::{Ipv4Addr, Ipv6Addr};

use etherparse::{PacketBuilder, PacketBuilderStep, VlanId};

pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// Transport of a test packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum L4 {
    TcpSyn { sport: u16, dport: u16 },
    TcpAck { sport: u16, dport: u16 },
    Udp { sport: u16, dport: u16 },
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
            (L4::Udp { sport, dport }, _) => ip.udp(sport, dport).write(&mut out, &self.payload),
            (L4::IcmpEcho, Ip::V4 { .. }) => ip.icmpv4_echo_request(7, 1).write(&mut out, &self.payload),
            (L4::IcmpEcho, Ip::V6 { .. }) => ip.icmpv6_echo_request(7, 1).write(&mut out, &self.payload),
        };
        result.expect("etherparse writes the frame");
        out
    }
}

/// Offset of the IP header in a frame built by [`Frame`].
pub fn l3_offset(frame: &[u8]) -> usize {
    if frame[12..14] == [0x81, 0x00] { 18 } else { 14 }
}
