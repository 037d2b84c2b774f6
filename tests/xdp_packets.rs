//! The real XDP object under BPF_PROG_TEST_RUN: crafted frames in, verdict and bytes out.

use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_TCP, PROTO_UDP, Stat, VipKey};
use xlb::testrun::XdpAction;
use xlb_tests::{
    Balancer,
    packets::{Frame, L4, l3_offset},
    require_root,
};

const CONFIG: &str = r#"
vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
  - name: dns4
    address: 192.0.2.10
    port: 53
    protocol: udp
  - name: ping4
    address: 192.0.2.10
    protocol: icmp
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
  - name: dns6
    address: 2001:db8::10
    port: 53
    protocol: udp
"#;
const VIP_NAMES: [&str; 5] = ["web4", "dns4", "ping4", "web6", "dns6"];

fn tcp(dport: u16) -> L4 {
    L4::TcpSyn {
        sport: 40000,
        dport,
    }
}
fn udp(dport: u16) -> L4 {
    L4::Udp {
        sport: 40000,
        dport,
    }
}

/// Runs `frame` and asserts: XDP_PASS, bytes untouched, exactly `stat` went up by one, and the
/// VIP counters moved only for `vip` (by one packet of the frame's length).
fn expect_pass(lb: &Balancer, frame: &[u8], stat: Stat, vip: Option<&str>, case: &str) {
    let before = lb.stats();
    let vips_before: Vec<_> = VIP_NAMES.iter().map(|n| lb.vip(n)).collect();
    let out = lb.run(frame);
    assert_eq!(out.action, XdpAction::Pass, "{case}: verdict");
    assert_eq!(
        out.packet, frame,
        "{case}: the program must not touch the frame"
    );
    for ((s, b), (_, a)) in before.iter().zip(lb.stats()) {
        let expected = if *s == stat { b + 1 } else { *b };
        assert_eq!(a, expected, "{case}: counter {}", s.name());
    }
    for (name, b) in VIP_NAMES.iter().zip(vips_before) {
        let a = lb.vip(name);
        if Some(*name) == vip {
            assert_eq!(a.packets, b.packets + 1, "{case}: {name} packets");
            assert_eq!(
                a.bytes,
                b.bytes + frame.len() as u64,
                "{case}: {name} bytes"
            );
        } else {
            assert_eq!(a, b, "{case}: VIP {name} must not count this frame");
        }
    }
}

#[test]
fn non_vip_traffic_passes_untouched() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let cases = [
        (
            "other address",
            Frame::v4("198.51.100.1", "192.0.2.11", tcp(80)),
        ),
        (
            "other port",
            Frame::v4("198.51.100.1", "192.0.2.10", tcp(81)),
        ),
        (
            "udp to the tcp port",
            Frame::v4("198.51.100.1", "192.0.2.10", udp(80)),
        ),
        (
            "tcp to the udp port",
            Frame::v4("198.51.100.1", "192.0.2.10", tcp(53)),
        ),
        (
            "v6 other port",
            Frame::v6("2001:db8::1", "2001:db8::10", udp(54)),
        ),
        (
            "v6 icmp, no icmp VIP",
            Frame::v6("2001:db8::1", "2001:db8::10", L4::IcmpEcho),
        ),
        (
            "source is the VIP",
            Frame::v4(
                "192.0.2.10",
                "198.51.100.1",
                L4::Udp {
                    sport: 53,
                    dport: 53,
                },
            ),
        ),
    ];
    for (case, frame) in cases {
        expect_pass(&lb, &frame.build(), Stat::PassNotVip, None, case);
    }
    // ARP request: not IP at all.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&xlb_tests::packets::CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(60, 0);
    expect_pass(&lb, &arp, Stat::PassNotIp, None, "arp");
}

#[test]
fn vip_hits_are_counted_per_vip_for_both_families() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let cases = [
        ("web4", Frame::v4("198.51.100.1", "192.0.2.10", tcp(80))),
        (
            "web4",
            Frame::v4(
                "198.51.100.2",
                "192.0.2.10",
                L4::TcpAck {
                    sport: 1234,
                    dport: 80,
                },
            ),
        ),
        ("dns4", Frame::v4("198.51.100.1", "192.0.2.10", udp(53))),
        (
            "ping4",
            Frame::v4("198.51.100.1", "192.0.2.10", L4::IcmpEcho),
        ),
        ("web6", Frame::v6("2001:db8::1", "2001:db8::10", tcp(80))),
        ("dns6", Frame::v6("2001:db8::1", "2001:db8::10", udp(53))),
    ];
    for (vip, frame) in cases {
        expect_pass(&lb, &frame.build(), Stat::VipHit, Some(vip), vip);
    }
    assert_eq!(lb.vip("web4").packets, 2);
    assert_eq!(lb.stat(Stat::VipHit), 6);
}

#[test]
fn vlan_tagged_frames_are_parsed_past_the_tag() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let tagged = Frame::v4("198.51.100.1", "192.0.2.10", udp(53))
        .vlan(100)
        .build();
    assert_eq!(l3_offset(&tagged), 18);
    expect_pass(&lb, &tagged, Stat::VipHit, Some("dns4"), "vlan v4 VIP");
    let tagged6 = Frame::v6("2001:db8::1", "2001:db8::10", tcp(80))
        .vlan(4094)
        .build();
    expect_pass(&lb, &tagged6, Stat::VipHit, Some("web6"), "vlan v6 VIP");
    let other = Frame::v4("198.51.100.1", "192.0.2.99", udp(53))
        .vlan(100)
        .build();
    expect_pass(&lb, &other, Stat::PassNotVip, None, "vlan non-VIP");
}

#[test]
fn ethernet_padding_after_the_datagram_is_allowed() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let mut frame = Frame::v4("198.51.100.1", "192.0.2.10", udp(53));
    frame.payload.clear();
    let mut bytes = frame.build();
    assert!(bytes.len() < 60);
    bytes.resize(60, 0); // minimum Ethernet frame: the NIC pads, IP total length stays 28
    expect_pass(&lb, &bytes, Stat::VipHit, Some("dns4"), "padded frame");
}

/// Sets the IPv4 total length and leaves the header checksum alone (the program does not check
/// it; the kernel does for what it receives).
fn set_ipv4_total_len(frame: &mut [u8], len: u16) {
    let l3 = l3_offset(frame);
    frame[l3 + 2..l3 + 4].copy_from_slice(&len.to_be_bytes());
}

fn set_ipv6_payload_len(frame: &mut [u8], len: u16) {
    let l3 = l3_offset(frame);
    frame[l3 + 4..l3 + 6].copy_from_slice(&len.to_be_bytes());
}

#[test]
fn malformed_frames_are_counted_by_reason_and_never_reach_a_vip() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    // Every case is aimed at a VIP, so a mis-parse would show up as a VIP count.
    let tcp4 = Frame::v4("198.51.100.1", "192.0.2.10", tcp(80)).build();
    let udp4 = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build();
    let icmp4 = Frame::v4("198.51.100.1", "192.0.2.10", L4::IcmpEcho).build();
    let tcp6 = Frame::v6("2001:db8::1", "2001:db8::10", tcp(80)).build();
    let udp6 = Frame::v6("2001:db8::1", "2001:db8::10", udp(53)).build();
    let vlan4 = Frame::v4("198.51.100.1", "192.0.2.10", udp(53))
        .vlan(7)
        .build();

    let mut cases: Vec<(&str, Vec<u8>, Stat)> = Vec::new();
    let mut case = |name, frame: Vec<u8>, stat| cases.push((name, frame, stat));

    case(
        "vlan tag cut short",
        vlan4[..16].to_vec(),
        Stat::TruncatedVlan,
    );
    case(
        "ipv4 header cut short",
        tcp4[..14 + 19].to_vec(),
        Stat::TruncatedIpv4,
    );
    let mut f = tcp4.clone();
    f[14] = 0x44; // IHL 4
    case("ipv4 IHL below 5", f, Stat::BadIpv4Header);
    let mut f = tcp4.clone();
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    case("ipv4 version not 4", f, Stat::BadIpv4Header);
    let mut f = udp4.clone();
    f[14] = 0x4f; // IHL 15: 60 bytes of header, longer than the frame
    f.truncate(14 + 40);
    case("ipv4 IHL past the frame", f, Stat::TruncatedIpv4);
    let mut f = udp4.clone();
    let len = (f.len() - 14 + 1) as u16;
    set_ipv4_total_len(&mut f, len);
    case("ipv4 total length past the frame", f, Stat::BadIpv4Length);
    let mut f = udp4.clone();
    set_ipv4_total_len(&mut f, 19);
    case("ipv4 total length below the header", f, Stat::BadIpv4Length);
    let mut f = tcp4[..14 + 20 + 19].to_vec();
    set_ipv4_total_len(&mut f, 20 + 19);
    case("tcp header cut short", f, Stat::TruncatedTcp);
    let mut f = tcp4.clone();
    f[14 + 20 + 12] = 0x40; // data offset 4
    case("tcp data offset below 5", f, Stat::TruncatedTcp);
    let mut f = tcp4.clone();
    f[14 + 20 + 12] = 0xf0; // data offset 15: 60 bytes, past the datagram
    case("tcp data offset past the datagram", f, Stat::TruncatedTcp);
    let mut f = tcp4.clone();
    set_ipv4_total_len(&mut f, 20 + 19); // frame is long enough, the datagram is not
    case(
        "tcp header past the ipv4 total length",
        f,
        Stat::TruncatedTcp,
    );
    let mut f = udp4[..14 + 20 + 7].to_vec();
    set_ipv4_total_len(&mut f, 27);
    case("udp header cut short", f, Stat::TruncatedUdp);
    let mut f = udp4.clone();
    set_ipv4_total_len(&mut f, 20 + 4);
    case(
        "udp header past the ipv4 total length",
        f,
        Stat::TruncatedUdp,
    );
    let mut f = icmp4[..14 + 20 + 7].to_vec();
    set_ipv4_total_len(&mut f, 27);
    case("icmp header cut short", f, Stat::TruncatedIcmp);
    case(
        "ipv6 header cut short",
        tcp6[..14 + 39].to_vec(),
        Stat::TruncatedIpv6,
    );
    let mut f = tcp6.clone();
    f[14] = 0x45;
    case("ipv6 version not 6", f, Stat::BadIpv6Header);
    let mut f = udp6.clone();
    let len = (f.len() - 14 - 40 + 1) as u16;
    set_ipv6_payload_len(&mut f, len);
    case("ipv6 payload length past the frame", f, Stat::BadIpv6Length);
    let mut f = tcp6.clone();
    set_ipv6_payload_len(&mut f, 19);
    case(
        "tcp header past the ipv6 payload length",
        f,
        Stat::TruncatedTcp,
    );
    let mut f = udp6[..14 + 40 + 7].to_vec();
    set_ipv6_payload_len(&mut f, 7);
    case("udp header cut short (v6)", f, Stat::TruncatedUdp);

    for (name, frame, stat) in &cases {
        expect_pass(&lb, frame, *stat, None, name);
    }
    // Each malformed reason the program knows is exercised here, except a frame shorter than an
    // Ethernet header: BPF_PROG_TEST_RUN refuses those (EINVAL), and so do the drivers, so the
    // program's check exists for the verifier.
    let short = lb.program.xdp().unwrap();
    assert!(
        xlb::testrun::run(short, &tcp4[..13]).is_err(),
        "the kernel runs XDP on frames shorter than 14 bytes"
    );
    for stat in Stat::ALL
        .iter()
        .filter(|s| s.is_malformed() && **s != Stat::TruncatedEth)
    {
        assert!(
            cases.iter().any(|(_, _, s)| s == stat),
            "no case for {}",
            stat.name()
        );
    }
}

#[test]
fn fragments_and_extension_headers_are_never_hashed() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let mut first = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build();
    first[14 + 6] = 0x20; // MF, offset 0: the first fragment still has ports
    expect_pass(&lb, &first, Stat::Ipv4Fragment, None, "first fragment");
    let mut later = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build();
    later[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes()); // offset 1480, no MF
    expect_pass(&lb, &later, Stat::Ipv4Fragment, None, "last fragment");
    for next_header in [0u8, 43, 44, 60] {
        let mut f = Frame::v6("2001:db8::1", "2001:db8::10", udp(53)).build();
        f[14 + 6] = next_header;
        expect_pass(
            &lb,
            &f,
            Stat::Ipv6ExtHeader,
            None,
            &format!("ipv6 next header {next_header}"),
        );
    }
}

/// Golden test of the reconciler: a config in, the exact VIP map contents out; a reload keeps
/// ids of unchanged VIPs and gives a new VIP a zeroed counter slot.
#[test]
fn reconciler_writes_exactly_the_configured_vips() {
    require_root!();
    let mut lb = Balancer::with_config(CONFIG);
    let v4 =
        |port: u16, proto| VipKey::v4(u32::from_ne_bytes([192, 0, 2, 10]), port.to_be(), proto);
    let v6 = |port: u16, proto| {
        let o: [u8; 16] = "2001:db8::10"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
        let w = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
        VipKey::v6([w(0), w(4), w(8), w(12)], port.to_be(), proto)
    };
    let map: Vec<(VipKey, u32)> = lb
        .maps
        .vips()
        .unwrap()
        .into_iter()
        .map(|(k, m)| (k, m.id))
        .collect();
    // New VIPs take the lowest free id, in key order.
    let mut expected = vec![
        (v4(0, lb_common::PROTO_ICMP), 0),
        (v4(53, PROTO_UDP), 1),
        (v4(80, PROTO_TCP), 2),
        (v6(53, PROTO_UDP), 3),
        (v6(80, PROTO_TCP), 4),
    ];
    expected.sort();
    assert_eq!(map, expected);
    assert!(
        map.iter()
            .all(|(k, _)| k.family == FAMILY_V4 || k.family == FAMILY_V6)
    );

    // Traffic to dns4 (id 1), then a reload that drops dns4 and adds ntp4.
    expect_pass(
        &lb,
        &Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build(),
        Stat::VipHit,
        Some("dns4"),
        "before reload",
    );
    let reloaded = CONFIG.replace(
        "name: dns4\n    address: 192.0.2.10\n    port: 53",
        "name: ntp4\n    address: 192.0.2.10\n    port: 123",
    );
    let config = xlb::config::parse(std::path::Path::new("reload.yaml"), &reloaded).unwrap();
    let Balancer {
        maps, reconciler, ..
    } = &mut lb;
    let changes = reconciler
        .apply(&xlb::desired::DesiredState::from_config(&config), maps)
        .unwrap();
    assert_eq!(
        (changes.added, changes.removed, changes.unchanged),
        (vec!["ntp4".to_owned()], vec!["dns4".to_owned()], 4)
    );
    let map: Vec<(VipKey, u32)> = lb
        .maps
        .vips()
        .unwrap()
        .into_iter()
        .map(|(k, m)| (k, m.id))
        .collect();
    let mut expected = vec![
        (v4(0, lb_common::PROTO_ICMP), 0),
        (v4(123, PROTO_UDP), 1),
        (v4(80, PROTO_TCP), 2),
        (v6(53, PROTO_UDP), 3),
        (v6(80, PROTO_TCP), 4),
    ];
    expected.sort();
    assert_eq!(map, expected);
    assert_eq!(
        lb.vip("ntp4"),
        Default::default(),
        "the reused slot starts from zero"
    );
    let out = lb.run(&Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build());
    assert_eq!(out.action, XdpAction::Pass);
    assert_eq!(
        lb.stat(Stat::PassNotVip),
        1,
        "the removed VIP is no longer matched"
    );
}
