//! The backend-side decapsulation program under BPF_PROG_TEST_RUN: tunnels addressed to the
//! host lose their outer header; everything else passes untouched.

use etherparse::{IpNumber, Ipv4Header, Ipv6FlowLabel, Ipv6Header};
use xlb::{apply::dataplane::Loaded, apply::testrun::XdpAction};
use xlb_tests::{
    packets::{Frame, L4},
    require_root,
};

const HOST_V4: [u8; 4] = [10, 1, 0, 1];
const HOST_V6: &str = "fd00:1::1";

fn decap() -> (Loaded, xlb::apply::dataplane::DecapMaps) {
    let (program, mut maps) = Loaded::decap().expect("the decap object loads and verifies");
    maps.add_address(std::net::IpAddr::from(HOST_V4)).unwrap();
    maps.add_address(HOST_V6.parse().unwrap()).unwrap();
    (program, maps)
}

/// `inner` (an Ethernet frame) wrapped in an outer IPv4 or IPv6 header to `to`, with the same
/// Ethernet header in front.
fn wrap(inner: &[u8], to: std::net::IpAddr) -> Vec<u8> {
    let payload = &inner[14..];
    let inner_v6 = inner[12..14] == [0x86, 0xdd];
    let mut out = inner[..12].to_vec();
    match to {
        std::net::IpAddr::V4(to) => {
            out.extend_from_slice(&[0x08, 0x00]);
            let proto = if inner_v6 { IpNumber::IPV6 } else { IpNumber::IPV4 };
            Ipv4Header::new(payload.len() as u16, 64, proto, [172, 16, 0, 9], to.octets())
                .unwrap()
                .write(&mut out)
                .unwrap();
        }
        std::net::IpAddr::V6(to) => {
            out.extend_from_slice(&[0x86, 0xdd]);
            Ipv6Header {
                traffic_class: 0,
                flow_label: Ipv6FlowLabel::ZERO,
                payload_length: payload.len() as u16,
                next_header: if inner_v6 { IpNumber::IPV6 } else { IpNumber::IPV4 },
                hop_limit: 64,
                source: "fd00:ffff::9".parse::<std::net::Ipv6Addr>().unwrap().octets(),
                destination: to.octets(),
            }
            .write(&mut out)
            .unwrap();
        }
    }
    out.extend_from_slice(payload);
    out
}

#[test]
fn tunnels_to_this_host_are_stripped_to_the_inner_frame() {
    require_root!();
    let (program, maps) = decap();
    let prog = program.xdp().unwrap();
    let inner4 = Frame::v4("198.51.100.7", "192.0.2.10", L4::TcpSyn { sport: 40000, dport: 80 }).build();
    let inner6 = Frame::v6("2001:db8:ff::7", "2001:db8::10", L4::TcpSyn { sport: 40000, dport: 80 }).build();
    for (case, inner, to) in [
        ("IPIP", &inner4, std::net::IpAddr::from(HOST_V4)),
        ("IP6IP6", &inner6, HOST_V6.parse().unwrap()),
        ("IPv4-in-IPv6", &inner4, HOST_V6.parse().unwrap()),
    ] {
        let out = xlb::apply::testrun::run(prog, &wrap(inner, to)).unwrap();
        assert_eq!(out.action, XdpAction::Pass, "{case}");
        assert_eq!(out.packet, *inner, "{case}: exactly the inner frame, with the inner ethertype");
    }
    let counts = maps.stats().unwrap();
    assert_eq!(counts[1], (lb_common::DecapStat::Decapsulated, 3));
}

#[test]
fn other_traffic_passes_untouched_and_broken_tunnels_drop() {
    require_root!();
    let (program, maps) = decap();
    let prog = program.xdp().unwrap();
    let inner = Frame::v4("198.51.100.7", "192.0.2.10", L4::Udp { sport: 40000, dport: 53 }).build();
    let elsewhere = wrap(&inner, std::net::IpAddr::from([10, 1, 0, 2]));
    for (case, frame) in [("plain packet", inner.clone()), ("tunnel to another host", elsewhere)] {
        let out = xlb::apply::testrun::run(prog, &frame).unwrap();
        assert_eq!((out.action, out.packet), (XdpAction::Pass, frame), "{case}");
    }
    // A tunnel to us whose inner header is cut short is garbage: dropped, counted.
    let mut short = wrap(&inner, std::net::IpAddr::from(HOST_V4));
    short.truncate(14 + 20 + 10);
    assert_eq!(xlb::apply::testrun::run(prog, &short).unwrap().action, XdpAction::Drop);
    let counts = maps.stats().unwrap();
    assert_eq!(counts[0], (lb_common::DecapStat::Pass, 2));
    assert_eq!(counts[2], (lb_common::DecapStat::DropMalformed, 1));
}
