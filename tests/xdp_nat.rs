//! NAT fixtures: both directions, IPv4 and IPv6, TCP and UDP, port translation, DNAT only, pool
//! exhaustion, FIN/RST, expiry and reclaim — through the real XDP object under
//! BPF_PROG_TEST_RUN. Expected frames are rebuilt from scratch with etherparse (lengths and
//! checksums right by construction) and compared byte for byte.

use etherparse::{NetSlice, SlicedPacket, TransportSlice};
use lb_common::{FlowKey, NAT_FLAG_CLOSING, PROTO_TCP, Stat};
use xlb::{apply::testrun::XdpAction, state::desired::NodeFacts};
use xlb_tests::{
    Balancer,
    netns::Netns,
    packets::{CLIENT_MAC, Frame, L4, LB_MAC, hex, icmp_too_big, icmp_too_big_with_ttl, ip_and_8},
    require_root,
};

const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];

const CONFIG: &str = r#"
node:
  nat_closing_timeout: 1s
nat_pools:
  - name: p4
    addresses: [198.51.100.1, 198.51.100.2]
    ports: 40000-40001
  - name: p6
    addresses: ["2001:db8:ff::1"]
    ports: 40000-40009
vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    backends:
      - { address: 10.1.0.1, port: 8080, mac: "02:00:00:00:01:01" }
  - name: dns4
    address: 192.0.2.10
    port: 53
    protocol: udp
    mode: nat
    snat_pool: p4
    backends:
      - { address: 10.1.0.2, mac: "02:00:00:00:01:01" }
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p6
    backends:
      - { address: "fd00::1", port: 8080, mac: "02:00:00:00:01:01" }
  - name: dnat4
    address: 192.0.2.20
    port: 80
    protocol: tcp
    mode: nat
    backends:
      - { address: 10.1.0.3, mac: "02:00:00:00:01:01" }
"#;

/// A frame with its Ethernet addresses replaced (they are in no checksum).
fn with_macs(mut frame: Vec<u8>, dst: [u8; 6], src: [u8; 6]) -> Vec<u8> {
    frame[0..6].copy_from_slice(&dst);
    frame[6..12].copy_from_slice(&src);
    frame
}

/// Source address and port of a frame.
fn source(frame: &[u8]) -> (String, u16) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("parses");
    let addr = match sliced.net {
        Some(NetSlice::Ipv4(ip)) => ip.header().source_addr().to_string(),
        Some(NetSlice::Ipv6(ip)) => ip.header().source_addr().to_string(),
        _ => panic!("not IP"),
    };
    let port = match sliced.transport {
        Some(TransportSlice::Tcp(t)) => t.source_port(),
        Some(TransportSlice::Udp(u)) => u.source_port(),
        _ => panic!("no ports"),
    };
    (addr, port)
}

/// Runs `frame`; it must be sent (XDP_TX) with exactly one outcome counted, `stat`.
fn sent(lb: &Balancer, frame: &[u8], stat: Stat, case: &str) -> Vec<u8> {
    let before = lb.stat(stat);
    let out = lb.run(frame);
    assert_eq!(out.action, XdpAction::Tx, "{case}");
    assert_eq!(lb.stat(stat), before + 1, "{case}: counted as {}", stat.name());
    out.packet
}

fn dropped(lb: &Balancer, frame: &[u8], stat: Stat, case: &str) {
    let before = lb.stat(stat);
    let out = lb.run(frame);
    assert_eq!(out.action, XdpAction::Drop, "{case}");
    assert_eq!(lb.stat(stat), before + 1, "{case}: counted as {}", stat.name());
}

/// Backend → pool address: the output is exactly `expected` (built fresh: VIP → client, TTL one
/// less), sent to the MAC the client's packets came from.
fn reply_checked(lb: &Balancer, reply: &Frame, expected: &Frame, case: &str) {
    let out = sent(lb, &reply.build(), Stat::NatReplied, case);
    assert_eq!(hex(&out), hex(&with_macs(expected.build(), CLIENT_MAC, LB_MAC)), "{case}: output bytes");
}

/// Client → VIP: the output is the same packet from a pool address and port to the backend's
/// address and port, TTL one less, to the backend's MAC — checked byte for byte against a
/// frame built fresh with those fields. Returns the source (address, port) the flow got.
fn forward_checked(lb: &Balancer, input: &Frame, backend: (&str, u16), stat: Stat, case: &str) -> (String, u16) {
    let out = sent(lb, &input.build(), stat, case);
    let (src, sport) = source(&out);
    let l4 = match input.l4 {
        L4::TcpSyn { .. } => L4::TcpSyn { sport, dport: backend.1 },
        L4::TcpAck { .. } => L4::TcpAck { sport, dport: backend.1 },
        L4::TcpFin { .. } => L4::TcpFin { sport, dport: backend.1 },
        L4::Udp { .. } => L4::Udp { sport, dport: backend.1 },
        L4::IcmpEcho => unreachable!(),
    };
    let expected = match input.ip {
        xlb_tests::packets::Ip::V4 { .. } => Frame::v4(&src, backend.0, l4),
        xlb_tests::packets::Ip::V6 { .. } => Frame::v6(&src, backend.0, l4),
    };
    let expected = Frame { payload: input.payload.clone(), ..expected }.ttl(input.ttl - 1);
    assert_eq!(hex(&out), hex(&with_macs(expected.build(), BACKEND_MAC, LB_MAC)), "{case}: output bytes");
    (src, sport)
}

#[test]
fn tcp_v4_both_directions_with_port_translation() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let syn = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpSyn { sport: 51000, dport: 80 });
    let (src, sport) = forward_checked(&lb, &syn, ("10.1.0.1", 8080), Stat::NatForwarded, "SYN");
    assert!(src == "198.51.100.1" || src == "198.51.100.2", "source {src} from the pool");
    assert!((40000..=40001).contains(&sport), "source port {sport} from the pool");
    assert_eq!(lb.backend("web4", "10.1.0.1").new_flows, 1);

    // The established flow keeps its source.
    let ack = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpAck { sport: 51000, dport: 80 });
    assert_eq!(forward_checked(&lb, &ack, ("10.1.0.1", 8080), Stat::NatForwarded, "ACK"), (src.clone(), sport));
    assert_eq!(lb.backend("web4", "10.1.0.1").new_flows, 1, "an established packet is no new flow");

    // The backend's reply goes back from the VIP to the client, to the MAC the client's
    // packets came from.
    let reply = Frame::v4("10.1.0.1", &src, L4::TcpAck { sport: 8080, dport: sport }).payload_len(300);
    let expected =
        Frame::v4("192.0.2.10", "203.0.113.7", L4::TcpAck { sport: 80, dport: 51000 }).payload_len(300).ttl(63);
    reply_checked(&lb, &reply, &expected, "reply");

    // A reply to a source nobody holds is not ours.
    let stray = Frame::v4("10.1.0.1", &src, L4::TcpAck { sport: 8080, dport: 1 }).build();
    let out = lb.run(&stray);
    assert_eq!((out.action, out.packet), (XdpAction::Pass, stray));
}

#[test]
fn tcp_v6_both_directions() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let syn = Frame::v6("2001:db8:c::7", "2001:db8::10", L4::TcpSyn { sport: 51000, dport: 80 }).vlan(7);
    let out = sent(&lb, &syn.build(), Stat::NatForwarded, "v6 SYN");
    assert_eq!(&out[12..16], &[0x81, 0, 0, 7], "the VLAN tag stays");
    let (src, sport) = source(&out);
    assert_eq!(src, "2001:db8:ff::1");
    let expected = Frame::v6(&src, "fd00::1", L4::TcpSyn { sport, dport: 8080 }).vlan(7).ttl(63);
    assert_eq!(hex(&out), hex(&with_macs(expected.build(), BACKEND_MAC, LB_MAC)));

    let reply = Frame::v6("fd00::1", &src, L4::TcpAck { sport: 8080, dport: sport });
    let expected = Frame::v6("2001:db8::10", "2001:db8:c::7", L4::TcpAck { sport: 80, dport: 51000 }).ttl(63);
    reply_checked(&lb, &reply, &expected, "v6 reply");
}

#[test]
fn udp_keeps_the_port_and_a_zero_ipv4_checksum() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let query = Frame::v4("203.0.113.8", "192.0.2.10", L4::Udp { sport: 5353, dport: 53 });
    let (src, sport) = forward_checked(&lb, &query, ("10.1.0.2", 53), Stat::NatForwarded, "UDP");

    // Without a checksum (0 in IPv4) the translated datagram has none either.
    let mut bare = Frame::v4("203.0.113.8", "192.0.2.10", L4::Udp { sport: 5353, dport: 53 }).build();
    bare[14 + 20 + 6..14 + 20 + 8].copy_from_slice(&[0, 0]);
    let out = sent(&lb, &bare, Stat::NatForwarded, "UDP without checksum");
    assert_eq!(source(&out), (src.clone(), sport), "same flow, same source");
    assert_eq!(&out[14 + 20 + 6..14 + 20 + 8], &[0, 0], "no checksum stays no checksum");

    let reply = Frame::v4("10.1.0.2", &src, L4::Udp { sport: 53, dport: sport });
    let expected = Frame::v4("192.0.2.10", "203.0.113.8", L4::Udp { sport: 53, dport: 5353 }).ttl(63);
    reply_checked(&lb, &reply, &expected, "UDP reply");
}

#[test]
fn dnat_only_keeps_the_client_address() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let syn = Frame::v4("203.0.113.9", "192.0.2.20", L4::TcpSyn { sport: 52000, dport: 80 });
    let (src, sport) = forward_checked(&lb, &syn, ("10.1.0.3", 80), Stat::NatForwarded, "DNAT SYN");
    assert_eq!((src.as_str(), sport), ("203.0.113.9", 52000), "the client's own address and port");

    let reply = Frame::v4("10.1.0.3", "203.0.113.9", L4::TcpAck { sport: 80, dport: 52000 });
    let expected = Frame::v4("192.0.2.20", "203.0.113.9", L4::TcpAck { sport: 80, dport: 52000 }).ttl(63);
    reply_checked(&lb, &reply, &expected, "DNAT reply");
}

#[test]
fn the_pool_runs_out_exactly_when_full_and_expired_ports_come_back() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    // p4 has 2 addresses × 2 ports: four flows to one backend endpoint, no more.
    let syn = |sport| Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpSyn { sport, dport: 80 }).build();
    let mut held = Vec::new();
    for sport in 1..=4 {
        let out = sent(&lb, &syn(sport), Stat::NatForwarded, "filling the pool");
        held.push((sport, source(&out)));
    }
    let mut sources: Vec<(String, u16)> = held.iter().map(|(_, s)| s.clone()).collect();
    sources.sort();
    let expected: Vec<(String, u16)> = ["198.51.100.1", "198.51.100.2"]
        .iter()
        .flat_map(|a| [(a.to_string(), 40000), (a.to_string(), 40001)])
        .collect();
    assert_eq!(sources, expected, "every (address, port) used once, both addresses");
    assert_eq!(lb.stat(Stat::DropPoolExhausted), 0, "no exhaustion before the pool is full");
    dropped(&lb, &syn(5), Stat::DropPoolExhausted, "fifth flow");
    dropped(&lb, &syn(6), Stat::DropPoolExhausted, "sixth flow");

    // A retransmitted SYN of a flow that has its source is still sent.
    sent(&lb, &syn(1), Stat::NatForwarded, "retransmitted SYN");

    // The backend answers flows 1, 3 and 4 (established: 15 minutes); an RST closes flow 2, so
    // after the closing timeout (1 s) its source, and only its, is taken over.
    for (sport, (addr, port)) in &held {
        if *sport != 2 {
            let reply = Frame::v4("10.1.0.1", addr, L4::TcpAck { sport: 8080, dport: *port });
            sent(&lb, &reply.build(), Stat::NatReplied, "reply");
        }
    }
    let mut rst = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpAck { sport: 2, dport: 80 }).build();
    rst[14 + 20 + 13] |= 0x04;
    xlb_tests::packets::fix_tcp_checksum(&mut rst);
    sent(&lb, &rst, Stat::NatForwarded, "RST");
    let key = FlowKey {
        saddr: xlb::config::ip_words("203.0.113.7".parse().unwrap()).0,
        daddr: xlb::config::ip_words("192.0.2.10".parse().unwrap()).0,
        sport: 2u16.to_be(),
        dport: 80u16.to_be(),
        proto: PROTO_TCP,
        family: lb_common::FAMILY_V4,
        pad: 0,
    };
    let entry = lb.maps.nat_tables().expect("NAT tables").flow(&key).expect("flow 2 is in the table");
    assert_ne!(entry.flags & NAT_FLAG_CLOSING, 0, "the RST marked it closing");
    dropped(&lb, &syn(7), Stat::DropPoolExhausted, "not expired yet");
    std::thread::sleep(std::time::Duration::from_millis(2100));
    let reclaimed = lb.stat(Stat::NatPortReclaimed);
    let out = sent(&lb, &syn(7), Stat::NatForwarded, "after expiry");
    assert_eq!(source(&out), held[1].1, "flow 7 took flow 2's source");
    assert_eq!(lb.stat(Stat::NatPortReclaimed), reclaimed + 1);
    assert!(
        lb.maps.nat_tables().expect("NAT tables").flow(&key).is_none(),
        "the expired flow's entry went with its port"
    );
}

#[test]
fn bad_cases_are_counted_drops() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let ack = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpAck { sport: 9, dport: 80 });
    dropped(&lb, &ack.build(), Stat::DropNatNoFlow, "a non-SYN of no known flow");
    let syn = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpSyn { sport: 9, dport: 80 }).ttl(1);
    dropped(&lb, &syn.build(), Stat::DropTtlExceeded, "TTL 1");
    let syn = Frame::v6("2001:db8:c::7", "2001:db8::10", L4::TcpSyn { sport: 9, dport: 80 }).ttl(1);
    dropped(&lb, &syn.build(), Stat::DropTtlExceeded, "hop limit 1");
}

#[test]
fn icmp_errors_about_nat_flows_are_translated_both_ways() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let client_syn = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpSyn { sport: 51000, dport: 80 });
    let forwarded = sent(&lb, &client_syn.build(), Stat::NatForwarded, "SYN");
    let (pool, pool_port) = source(&forwarded);

    // The backend cannot take the SYN (say, too big on its side): its ICMP error quotes the
    // packet it got and goes to the pool address. The client gets it from the VIP, quoting its
    // own SYN as it left xlb (TTL 63).
    let from_backend = icmp_too_big("10.1.0.1", &pool, 1400, &ip_and_8(&forwarded));
    let out = sent(&lb, &from_backend, Stat::NatIcmpTranslated, "backend-side error");
    let quoted = ip_and_8(&client_syn.clone().ttl(63).build());
    let expected = icmp_too_big_with_ttl("192.0.2.10", "203.0.113.7", 63, 1400, &quoted);
    assert_eq!(hex(&out), hex(&with_macs(expected, CLIENT_MAC, LB_MAC)), "to the client, quote translated");

    // A router on the client's side cannot carry a reply (VIP → client): its error goes to the
    // VIP; the backend gets it from the pool address, quoting the reply as the backend sent it.
    let reply_as_sent = Frame::v4("192.0.2.10", "203.0.113.7", L4::TcpAck { sport: 80, dport: 51000 }).ttl(50);
    let from_router = icmp_too_big("198.51.100.99", "192.0.2.10", 1280, &ip_and_8(&reply_as_sent.build()));
    let out = sent(&lb, &from_router, Stat::NatIcmpTranslated, "client-side error");
    let backend_view = Frame::v4("10.1.0.1", &pool, L4::TcpAck { sport: 8080, dport: pool_port }).ttl(50);
    let expected = icmp_too_big_with_ttl(&pool, "10.1.0.1", 63, 1280, &ip_and_8(&backend_view.build()));
    assert_eq!(hex(&out), hex(&with_macs(expected, BACKEND_MAC, LB_MAC)), "to the backend, quote translated");

    // IPv6: the ICMPv6 checksum also covers the new outer addresses.
    let syn6 = Frame::v6("2001:db8:c::7", "2001:db8::10", L4::TcpSyn { sport: 51000, dport: 80 });
    let forwarded6 = sent(&lb, &syn6.build(), Stat::NatForwarded, "v6 SYN");
    let (pool6, _) = source(&forwarded6);
    let from_backend = icmp_too_big("fd00::1", &pool6, 1400, &ip_and_8(&forwarded6));
    let out = sent(&lb, &from_backend, Stat::NatIcmpTranslated, "v6 backend-side error");
    let quoted = ip_and_8(&syn6.clone().ttl(63).build());
    let expected = icmp_too_big_with_ttl("2001:db8::10", "2001:db8:c::7", 63, 1400, &quoted);
    assert_eq!(hex(&out), hex(&with_macs(expected, CLIENT_MAC, LB_MAC)));

    // An error about no flow of ours passes untouched.
    let stray = Frame::v4("192.0.2.10", "203.0.113.8", L4::TcpAck { sport: 80, dport: 1 });
    let frame = icmp_too_big("198.51.100.99", "192.0.2.10", 1280, &ip_and_8(&stray.build()));
    assert_eq!(lb.run(&frame).action, XdpAction::Pass);
}

/// The ifindex of `dev` in namespace `ns` (from `ip -o link`: "N: name@peer: ...").
fn ifindex_in(ns: &Netns, dev: &str) -> u32 {
    let out = ns.ip(&["-o", "link", "show", dev]);
    let text = String::from_utf8_lossy(&out.stdout);
    text.split(':').next().and_then(|n| n.trim().parse().ok()).unwrap_or_else(|| panic!("ifindex of {dev}: {text}"))
}

/// Two interfaces, one data plane: a client packet that comes in on `xa` toward a backend behind
/// `xb` is redirected (XDP_REDIRECT into `XLB_DEVS`) with `xb`'s MAC as source, the backend's
/// reply coming in on `xb` is redirected back toward the client with `xa`'s; a reply that comes
/// in on the client's own interface is sent straight back out (XDP_TX). Byte for byte.
#[test]
fn two_armed_nat_redirects_toward_the_backend_and_back_to_the_client() {
    require_root!();
    const XB_MAC: [u8; 6] = [2, 0, 0, 0, 0xb, 0xb];
    // The redirect map takes only interfaces that exist where the agent runs: make two.
    let ns = Netns::new("xr");
    ns.ip(&["link", "add", "xa", "type", "veth", "peer", "name", "xb"]);
    let (xa, xb) = (ifindex_in(&ns, "xa"), ifindex_in(&ns, "xb"));
    let run = ns.run(move || {
        let iface = |ifindex, mac| lb_common::Iface { ifindex, mac, pad: 0 };
        let facts = NodeFacts {
            iface_mac: LB_MAC,
            mtu: 1500,
            ifindex: xa,
            interfaces: vec![("xa".into(), iface(xa, LB_MAC)), ("xb".into(), iface(xb, XB_MAC))],
        };
        let config = CONFIG.replace(
            "      - { address: 10.1.0.1, port: 8080, mac: \"02:00:00:00:01:01\" }",
            "      - { address: 10.1.0.1, port: 8080, mac: \"02:00:00:00:01:01\", interface: xb }",
        );
        let lb = Balancer::with_facts(&config, &facts);

        let syn = Frame::v4("203.0.113.7", "192.0.2.10", L4::TcpSyn { sport: 51000, dport: 80 });
        let out = lb.run_on(&syn.build(), xa);
        assert_eq!(out.action, XdpAction::Redirect, "toward the backend's interface");
        let (src, sport) = source(&out.packet);
        let expected = Frame::v4(&src, "10.1.0.1", L4::TcpSyn { sport, dport: 8080 }).ttl(63);
        assert_eq!(hex(&out.packet), hex(&with_macs(expected.build(), BACKEND_MAC, XB_MAC)), "forward bytes");

        let reply = Frame::v4("10.1.0.1", &src, L4::TcpAck { sport: 8080, dport: sport });
        let back = Frame::v4("192.0.2.10", "203.0.113.7", L4::TcpAck { sport: 80, dport: 51000 }).ttl(63);
        let out = lb.run_on(&reply.build(), xb);
        assert_eq!(out.action, XdpAction::Redirect, "back toward the client's interface");
        assert_eq!(hex(&out.packet), hex(&with_macs(back.build(), CLIENT_MAC, LB_MAC)), "reply bytes");

        // Coming in on the client's interface already, the reply goes straight back out.
        let out = lb.run_on(&reply.build(), xa);
        assert_eq!(out.action, XdpAction::Tx);
        assert_eq!(hex(&out.packet), hex(&with_macs(back.build(), CLIENT_MAC, LB_MAC)));

        assert_eq!(lb.stat(Stat::NatRedirected), 2);
        assert_eq!((lb.stat(Stat::NatForwarded), lb.stat(Stat::NatReplied)), (1, 2));
        assert_eq!(lb.stat(Stat::DropNoEgress), 0);
    });
    run.join().expect("the two-armed fixture");
}

/// One backend host on two ports: a NAT VIP may list its address twice.
const ONE_HOST: &str = r#"
nat_pools:
  - name: big
    addresses: [198.51.100.1]
    ports: 40000-40999
vips:
  - name: two
    address: 192.0.2.30
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: big
    backends:
      - { address: 10.1.0.1, port: 8080, mac: "02:00:00:00:01:01" }
"#;

#[test]
fn one_address_on_two_ports_takes_flows_on_both_and_listing_the_second_keeps_the_first_s_flows() {
    require_root!();
    let mut lb = Balancer::with_config(ONE_HOST);
    let syn = |sport| Frame::v4("203.0.113.9", "192.0.2.30", L4::TcpSyn { sport, dport: 80 });
    let ack = |sport| Frame::v4("203.0.113.9", "192.0.2.30", L4::TcpAck { sport, dport: 80 });
    let opened = forward_checked(&lb, &syn(52000), ("10.1.0.1", 8080), Stat::NatForwarded, "SYN");

    // The second port of the same host: the first entry is now named `10.1.0.1:8080`, and its
    // established flow goes on where it was, from the same source.
    lb.reload(&ONE_HOST.replace(
        "      - { address: 10.1.0.1, port: 8080, mac: \"02:00:00:00:01:01\" }\n",
        "      - { address: 10.1.0.1, port: 8080, mac: \"02:00:00:00:01:01\" }\n      - { address: 10.1.0.1, port: 9090, mac: \"02:00:00:00:01:01\" }\n",
    ));
    let identities: Vec<&str> = lb.applied("two").vip.backends.iter().map(|b| b.identity.as_str()).collect();
    assert_eq!(identities, ["10.1.0.1:8080", "10.1.0.1:9090"]);
    assert_eq!(forward_checked(&lb, &ack(52000), ("10.1.0.1", 8080), Stat::NatForwarded, "ACK"), opened);

    // New flows spread over both ports of the host; a reply from either goes back to its client.
    let mut on_9090 = None;
    for sport in 52001..52041 {
        let out = sent(&lb, &syn(sport).build(), Stat::NatForwarded, "SYN");
        let sliced = SlicedPacket::from_ethernet(&out).expect("parses");
        let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("TCP") };
        assert!([8080, 9090].contains(&tcp.destination_port()), "port {}", tcp.destination_port());
        if tcp.destination_port() == 9090 {
            on_9090 = Some((sport, source(&out)));
        }
    }
    let (on_8080, on_9090_count) = (lb.backend("two", "10.1.0.1:8080"), lb.backend("two", "10.1.0.1:9090"));
    assert_eq!(on_8080.new_flows + on_9090_count.new_flows, 41, "every SYN counted on one of the two");
    assert!(on_8080.new_flows > 1 && on_9090_count.new_flows > 0, "{on_8080:?} {on_9090_count:?}");
    let (client_port, (src, sport)) = on_9090.expect("a flow on 9090");
    let reply = Frame::v4("10.1.0.1", &src, L4::TcpAck { sport: 9090, dport: sport });
    let expected = Frame::v4("192.0.2.30", "203.0.113.9", L4::TcpAck { sport: 80, dport: client_port }).ttl(63);
    reply_checked(&lb, &reply, &expected, "reply from 9090");
}
