//! The frames `xlb explain` runs: one built from the operator's tuple, and the program's output
//! read back as a line per header.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use etherparse::{
    Ethernet2HeaderSlice, IpNumber, Ipv4HeaderSlice, Ipv6HeaderSlice, PacketBuilder, TcpHeaderSlice, UdpHeaderSlice,
};
use serde::{Deserialize, Serialize};

use super::ExplainError;

/// The client's MAC in the frames explain builds (locally administered; the program answers
/// NAT replies to whatever MAC a client's packet came from).
pub const CLIENT_MAC: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x01];

/// Which packet of a flow to run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Segment {
    /// TCP SYN: a new connection.
    Syn,
    /// TCP ACK: a packet of an open connection.
    Ack,
    /// TCP FIN+ACK: a connection closing.
    Fin,
    /// TCP RST.
    Rst,
    /// A UDP datagram.
    Udp,
}

impl Segment {
    pub fn is_tcp(self) -> bool {
        self != Segment::Udp
    }

    /// How `--packet` spells it.
    pub fn flag(self) -> &'static str {
        match self {
            Segment::Syn => "syn",
            Segment::Ack => "ack",
            Segment::Fin => "fin",
            Segment::Rst => "rst",
            Segment::Udp => "udp",
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Segment::Syn => "tcp SYN",
            Segment::Ack => "tcp ACK",
            Segment::Fin => "tcp FIN+ACK",
            Segment::Rst => "tcp RST",
            Segment::Udp => "udp",
        }
    }
}

/// The frame a client at `client` would send to `vip`, to the interface MAC `to_mac`.
pub fn build(client: SocketAddr, vip: SocketAddr, segment: Segment, to_mac: [u8; 6]) -> Result<Vec<u8>, ExplainError> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, to_mac);
    let ip = match (client.ip(), vip.ip()) {
        (IpAddr::V4(c), IpAddr::V4(v)) => eth.ipv4(c.octets(), v.octets(), 64),
        (IpAddr::V6(c), IpAddr::V6(v)) => eth.ipv6(c.octets(), v.octets(), 64),
        _ => return Err(ExplainError::Families { client, vip }),
    };
    let (sport, dport) = (client.port(), vip.port());
    let payload: &[u8] = match segment {
        Segment::Syn | Segment::Rst => b"",
        _ => b"xlb explain",
    };
    let mut out = Vec::with_capacity(128);
    let written = match segment {
        Segment::Udp => ip.udp(sport, dport).write(&mut out, payload),
        tcp => {
            let tcp_builder = ip.tcp(sport, dport, 1, 64240);
            let tcp_builder = match tcp {
                Segment::Syn => tcp_builder.syn(),
                Segment::Ack => tcp_builder.ack(1).psh(),
                Segment::Fin => tcp_builder.fin().ack(1),
                _ => tcp_builder.rst(),
            };
            tcp_builder.write(&mut out, payload)
        }
    };
    written.map_err(|e| ExplainError::Build(e.to_string()))?;
    Ok(out)
}

/// One line per header of `frame`, outermost first: Ethernet, IP (again for each encapsulated
/// one), then TCP/UDP ports and flags.
pub fn describe(frame: &[u8]) -> Vec<String> {
    let mut lines = Vec::new();
    let Ok(eth) = Ethernet2HeaderSlice::from_slice(frame) else {
        lines.push(format!("{} bytes, too short for Ethernet", frame.len()));
        return lines;
    };
    lines.push(format!("ethernet {} → {}", mac(eth.source()), mac(eth.destination())));
    let mut rest = &frame[eth.slice().len()..];
    let mut ether_type = eth.ether_type().0;
    if ether_type == 0x8100 && rest.len() >= 4 {
        lines.push(format!("vlan {}", u16::from_be_bytes([rest[0], rest[1]]) & 0x0fff));
        ether_type = u16::from_be_bytes([rest[2], rest[3]]);
        rest = &rest[4..];
    }
    let mut next = match ether_type {
        0x0800 => Some(IpNumber::IPV4),
        0x86dd => Some(IpNumber::IPV6),
        other => {
            lines.push(format!("ethertype {other:#06x}"));
            None
        }
    };
    // Encapsulated IP goes round again; a bound keeps a crafted frame from looping long.
    for _ in 0..4 {
        let Some(proto) = next.take() else { break };
        match proto {
            IpNumber::IPV4 => match Ipv4HeaderSlice::from_slice(rest) {
                Ok(ip) => {
                    lines.push(format!(
                        "ipv4 {} → {} ttl {} len {}",
                        Ipv4Addr::from(ip.source()),
                        Ipv4Addr::from(ip.destination()),
                        ip.ttl(),
                        ip.total_len()
                    ));
                    next = Some(ip.protocol());
                    rest = &rest[ip.slice().len()..];
                }
                Err(_) => lines.push("ipv4, cut short".into()),
            },
            IpNumber::IPV6 => match Ipv6HeaderSlice::from_slice(rest) {
                Ok(ip) => {
                    lines.push(format!(
                        "ipv6 {} → {} hop limit {} payload {}",
                        Ipv6Addr::from(ip.source()),
                        Ipv6Addr::from(ip.destination()),
                        ip.hop_limit(),
                        ip.payload_length()
                    ));
                    next = Some(ip.next_header());
                    rest = &rest[ip.slice().len()..];
                }
                Err(_) => lines.push("ipv6, cut short".into()),
            },
            IpNumber::TCP => match TcpHeaderSlice::from_slice(rest) {
                Ok(tcp) => {
                    let flags: Vec<&str> = [
                        (tcp.syn(), "SYN"),
                        (tcp.ack(), "ACK"),
                        (tcp.fin(), "FIN"),
                        (tcp.rst(), "RST"),
                        (tcp.psh(), "PSH"),
                    ]
                    .into_iter()
                    .filter_map(|(set, name)| set.then_some(name))
                    .collect();
                    lines.push(format!("tcp {} → {} [{}]", tcp.source_port(), tcp.destination_port(), flags.join(" ")));
                }
                Err(_) => lines.push("tcp, cut short".into()),
            },
            IpNumber::UDP => match UdpHeaderSlice::from_slice(rest) {
                Ok(udp) => lines.push(format!("udp {} → {}", udp.source_port(), udp.destination_port())),
                Err(_) => lines.push("udp, cut short".into()),
            },
            other => lines.push(format!("ip protocol {}", other.0)),
        }
    }
    lines
}

fn mac(bytes: [u8; 6]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_read_back_as_written() {
        let client: SocketAddr = "198.51.100.7:40000".parse().unwrap();
        let vip: SocketAddr = "192.0.2.10:80".parse().unwrap();
        let frame = build(client, vip, Segment::Syn, [2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(
            describe(&frame),
            [
                "ethernet 02:00:00:00:00:01 → 02:00:00:00:00:09",
                "ipv4 198.51.100.7 → 192.0.2.10 ttl 64 len 40",
                "tcp 40000 → 80 [SYN]",
            ]
        );
        let client: SocketAddr = "[2001:db8::7]:5353".parse().unwrap();
        let vip: SocketAddr = "[2001:db8:1::10]:53".parse().unwrap();
        let frame = build(client, vip, Segment::Udp, [2, 0, 0, 0, 0, 9]).unwrap();
        assert_eq!(describe(&frame)[1], "ipv6 2001:db8::7 → 2001:db8:1::10 hop limit 64 payload 19");
        assert_eq!(describe(&frame)[2], "udp 5353 → 53");
        let mixed = build("[2001:db8::7]:1".parse().unwrap(), "192.0.2.10:80".parse().unwrap(), Segment::Ack, [0; 6]);
        assert!(matches!(mixed, Err(ExplainError::Families { .. })));
    }

    #[test]
    fn encapsulated_and_broken_frames_are_described_without_panicking() {
        let inner =
            build("198.51.100.7:40000".parse().unwrap(), "192.0.2.10:80".parse().unwrap(), Segment::Ack, [0; 6])
                .unwrap();
        // An IPIP frame: Ethernet, outer IPv4 (protocol 4), then the inner IP packet.
        let mut frame = inner[..14].to_vec();
        let outer =
            etherparse::Ipv4Header::new((inner.len() - 14) as u16, 63, IpNumber::IPV4, [10, 0, 0, 1], [10, 0, 0, 2])
                .unwrap();
        outer.write(&mut frame).unwrap();
        frame.extend_from_slice(&inner[14..]);
        let lines = describe(&frame);
        assert_eq!(lines[1], format!("ipv4 10.0.0.1 → 10.0.0.2 ttl 63 len {}", frame.len() - 14));
        assert_eq!(lines[2], "ipv4 198.51.100.7 → 192.0.2.10 ttl 64 len 51");
        assert_eq!(lines[3], "tcp 40000 → 80 [ACK PSH]");
        for cut in 0..frame.len() {
            let _ = describe(&frame[..cut]);
        }
    }
}
