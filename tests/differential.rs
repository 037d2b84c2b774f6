//! Differential test: the XDP program against the reference model on random and mutated
//! packets. Both see the same sequence (so flows opened earlier are known to both); every
//! verdict and every output byte must agree, and so must the counters at the end.
//!
//! The seed is printed; set XLB_DIFF_SEED to replay a run, XLB_DIFF_PACKETS to change the count.
//! The model keeps the connection table in sets as the program does: at 10^6 packets sets fill,
//! embryonic entries are replaced and full sets leave new flows unrecorded (an unbounded model
//! counted 6-46 fewer misses than the program there, every output agreeing).

use etherparse::{PacketBuilder, PacketBuilderStep, TcpHeader};
use lb_common::Stat;
use xlb::apply::testrun::XdpAction;
use xlb_tests::{
    Balancer, FACTS, FORWARDING_CONFIG,
    model::{Model, Verdict},
    packets::{CLIENT_MAC, LB_MAC, icmp_too_big},
    require_root,
    rng::Rng,
};

const DEFAULT_PACKETS: u64 = 1_000_000;

/// Destinations: every VIP of the config, plus addresses and ports that are not VIPs.
const V4_DSTS: &[&str] = &["192.0.2.1", "192.0.2.2", "192.0.2.3", "192.0.2.4", "192.0.2.5", "192.0.2.9"];
const V6_DSTS: &[&str] = &["2001:db8::1", "2001:db8::2", "2001:db8::9"];
const PORTS: &[u16] = &[80, 53, 443, 81];
/// VIP endpoints of FORWARDING_CONFIG: (address, port, tcp).
const VIPS: &[(&str, u16, bool)] = &[
    ("192.0.2.1", 80, true),
    ("2001:db8::1", 80, true),
    ("192.0.2.1", 53, false),
    ("192.0.2.2", 80, true),
    ("2001:db8::2", 80, true),
    ("192.0.2.3", 80, true),
    ("192.0.2.2", 53, false),
    ("2001:db8::2", 53, false),
    ("192.0.2.4", 80, true),
    ("192.0.2.5", 80, true),
    ("192.0.2.1", 443, true),
    ("192.0.2.1", 450, true),
    ("192.0.2.6", 80, true),
    ("192.0.2.6", 53, false),
    ("2001:db8::6", 80, true),
    ("192.0.2.7", 80, true),
];

fn client_v4(rng: &mut Rng) -> [u8; 4] {
    [198, 51, 100, rng.below(24) as u8 + 1]
}
fn client_v6(rng: &mut Rng) -> [u8; 16] {
    let mut a: [u8; 16] = "2001:db8:ff::".parse::<std::net::Ipv6Addr>().unwrap().octets();
    a[15] = rng.below(24) as u8 + 1;
    a
}

/// An address as it sits in a key (network order in memory).
fn ip_of(words: &[u32; 4], family: u8) -> std::net::IpAddr {
    xlb::config::ip_from_words(*words, family)
}

/// Something from a backend about a NAT flow the model knows: a reply (or a reply to a source
/// nobody holds), or an ICMP error from either side quoting the flow.
fn nat_traffic(rng: &mut Rng, model: &Model) -> Option<Vec<u8>> {
    let keys = &model.nat.reply_keys;
    if keys.is_empty() {
        return None;
    }
    let key = keys[rng.below(keys.len() as u64) as usize];
    let (backend, source) = (ip_of(&key.saddr, key.family), ip_of(&key.daddr, key.family));
    let (bport, mut sport) = (u16::from_be(key.sport), u16::from_be(key.dport));
    if rng.chance(10) {
        sport = sport.wrapping_add(1);
    }
    let tcp = key.proto == lb_common::PROTO_TCP;
    let step = |src: std::net::IpAddr, dst: std::net::IpAddr, ttl: u8, vlan: bool| match (src, dst) {
        (std::net::IpAddr::V4(s), std::net::IpAddr::V4(d)) => ip4(s.octets(), d.octets(), ttl, vlan),
        (std::net::IpAddr::V6(s), std::net::IpAddr::V6(d)) => ip6(s.octets(), d.octets(), ttl, vlan),
        _ => unreachable!("one family"),
    };
    let v6 = key.family == lb_common::FAMILY_V6;
    let quote_len = if v6 { 48 } else { 28 };
    Some(match rng.below(10) {
        // The backend cannot deliver to the pool side (ICMP from the backend).
        0 => {
            let sent = build(step(source, backend, 64, false), tcp, sport, bport, 0x10, &[]);
            icmp_too_big(&backend.to_string(), &source.to_string(), 1400, &sent[14..14 + quote_len])
        }
        // A router on the client side cannot carry a reply (ICMP to the VIP).
        1 => {
            let flow = model.nat.flow_keys.get(rng.below(model.nat.flow_keys.len() as u64) as usize)?;
            let (vip, client) = (ip_of(&flow.daddr, flow.family), ip_of(&flow.saddr, flow.family));
            let reply = build(
                step(vip, client, 50, false),
                flow.proto == lb_common::PROTO_TCP,
                u16::from_be(flow.dport),
                u16::from_be(flow.sport),
                0x10,
                &[],
            );
            let len = if flow.family == lb_common::FAMILY_V6 { 48 } else { 28 };
            let router = if flow.family == lb_common::FAMILY_V6 { "2001:db8:aa::1" } else { "203.0.113.1" };
            icmp_too_big(router, &vip.to_string(), 1280, &reply[14..14 + len])
        }
        _ => {
            let flags = *rng.pick(&[0x10u8, 0x12, 0x11, 0x04, 0x18]);
            let ttl = if rng.chance(5) { 1 } else { 64 };
            let payload: Vec<u8> = (0..rng.below(64)).map(|i| i as u8).collect();
            build(step(backend, source, ttl, rng.chance(15)), tcp, bport, sport, flags, &payload)
        }
    })
}

/// One well-formed frame of a random kind.
fn generate(rng: &mut Rng, model: &Model) -> Vec<u8> {
    if rng.chance(15)
        && let Some(frame) = nat_traffic(rng, model)
    {
        return frame;
    }
    // Mostly VIP traffic; the rest to other addresses and ports.
    let (dst, dport, tcp) = if rng.chance(75) {
        *rng.pick(VIPS)
    } else if rng.chance(40) {
        (*rng.pick(V6_DSTS), *rng.pick(PORTS), rng.chance(60))
    } else {
        (*rng.pick(V4_DSTS), *rng.pick(PORTS), rng.chance(60))
    };
    let v6 = dst.contains(':');
    let vlan = rng.chance(15);
    let ttl = if rng.chance(5) { 1 } else { 64 };
    let sport = 40000 + rng.below(48) as u16;
    let payload: Vec<u8> = if rng.chance(15) {
        vec![0xab; 1380 + rng.below(120) as usize]
    } else {
        (0..rng.below(64)).map(|i| i as u8).collect()
    };
    if rng.chance(8) {
        // An ICMP too-big about a reply from a VIP to a client (or about something else).
        let client = if v6 { std::net::IpAddr::from(client_v6(rng)) } else { std::net::IpAddr::from(client_v4(rng)) };
        let step = match (dst.parse::<std::net::IpAddr>().unwrap(), client) {
            (std::net::IpAddr::V6(d), std::net::IpAddr::V6(c)) => ip6(d.octets(), c.octets(), 64, false),
            (std::net::IpAddr::V4(d), std::net::IpAddr::V4(c)) => ip4(d.octets(), c.octets(), 64, false),
            _ => unreachable!("same family"),
        };
        let reply = build(step, tcp, dport, sport, 0x10, &[]);
        let quote_len = if v6 { 48 } else { 28 };
        return icmp_too_big(if v6 { "2001:db8:aa::1" } else { "203.0.113.1" }, dst, 1400, &reply[14..14 + quote_len]);
    }
    let step = if v6 {
        ip6(client_v6(rng), dst.parse::<std::net::Ipv6Addr>().unwrap().octets(), ttl, vlan)
    } else {
        ip4(client_v4(rng), dst.parse::<std::net::Ipv4Addr>().unwrap().octets(), ttl, vlan)
    };
    let flags = *rng.pick(&[0x02u8, 0x10, 0x12, 0x11, 0x04, 0x18, 0x02, 0x10]);
    let mut frame = match rng.below(10) {
        0..=8 => build(step, tcp, sport, dport, flags, &payload),
        _ => {
            let mut out = Vec::new();
            if v6 {
                step.icmpv6_echo_request(1, 2).write(&mut out, &payload)
            } else {
                step.icmpv4_echo_request(1, 2).write(&mut out, &payload)
            }
            .expect("write");
            out
        }
    };
    if !v6 && rng.chance(20) {
        let l3 = if vlan { 18 } else { 14 };
        frame[l3 + 6] &= !0x40; // no DF
    }
    frame
}

fn ip4(src: [u8; 4], dst: [u8; 4], ttl: u8, vlan: bool) -> PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    if vlan {
        eth.single_vlan(etherparse::VlanId::try_new(7).unwrap()).ipv4(src, dst, ttl)
    } else {
        eth.ipv4(src, dst, ttl)
    }
}

fn ip6(src: [u8; 16], dst: [u8; 16], hop: u8, vlan: bool) -> PacketBuilderStep<etherparse::IpHeaders> {
    let eth = PacketBuilder::ethernet2(CLIENT_MAC, LB_MAC);
    if vlan {
        eth.single_vlan(etherparse::VlanId::try_new(7).unwrap()).ipv6(src, dst, hop)
    } else {
        eth.ipv6(src, dst, hop)
    }
}

fn build(
    step: PacketBuilderStep<etherparse::IpHeaders>,
    tcp: bool,
    sport: u16,
    dport: u16,
    flags: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut out = Vec::new();
    if tcp {
        let mut h = TcpHeader::new(sport, dport, 1000, 64240);
        h.syn = flags & 0x02 != 0;
        h.ack = flags & 0x10 != 0;
        h.fin = flags & 0x01 != 0;
        h.rst = flags & 0x04 != 0;
        h.psh = flags & 0x08 != 0;
        step.tcp_header(h).write(&mut out, payload)
    } else {
        step.udp(sport, dport).write(&mut out, payload)
    }
    .expect("write");
    out
}

/// Breaks a frame in one of the ways the parser must survive.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    let l3 = if frame[12..14] == [0x81, 0x00] { 18 } else { 14 };
    let v4 = frame.get(l3).is_some_and(|b| b >> 4 == 4);
    match rng.below(6) {
        0 => {
            let len = 14 + rng.below((frame.len() - 14) as u64) as usize;
            frame.truncate(len);
        }
        1 => {
            for _ in 0..1 + rng.below(3) {
                let at = rng.below(frame.len().min(96) as u64) as usize;
                frame[at] ^= 1 << rng.below(8);
            }
        }
        2 if v4 => frame[l3] = 0x40 | rng.below(16) as u8,
        2 => frame[l3 + 6] = *rng.pick(&[0u8, 43, 44, 60, 59, 6, 17, 58]),
        3 if v4 => frame[l3 + 6] |= *rng.pick(&[0x20u8, 0x01, 0x3f]),
        3 => frame[l3 + 4] = rng.below(256) as u8,
        4 if v4 => frame[l3 + 2..l3 + 4].copy_from_slice(&(rng.below(1600) as u16).to_be_bytes()),
        4 => frame[l3 + 4..l3 + 6].copy_from_slice(&(rng.below(1600) as u16).to_be_bytes()),
        _ => {
            // Data offset / header length of the transport header.
            let l4 = l3 + if v4 { 20 } else { 40 };
            if l4 + 13 < frame.len() {
                frame[l4 + 12] = (rng.below(16) as u8) << 4;
            }
        }
    }
}

#[test]
fn xdp_program_matches_the_reference_model() {
    require_root!();
    let seed = std::env::var("XLB_DIFF_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(0x00c0_ffee_u64);
    let count = std::env::var("XLB_DIFF_PACKETS").ok().and_then(|s| s.parse().ok()).unwrap_or(DEFAULT_PACKETS);
    eprintln!("differential test: seed {seed} (XLB_DIFF_SEED), {count} packets");
    let lb = Balancer::with_config(FORWARDING_CONFIG);
    let mut model = Model::new(&lb.config, &FACTS);
    let mut rng = Rng::new(seed);
    let mut outcomes = std::collections::BTreeMap::<&str, u64>::new();
    for i in 0..count {
        let mut frame = generate(&mut rng, &model);
        if rng.chance(35) {
            mutate(&mut rng, &mut frame);
        }
        let out = lb.run(&frame);
        let expected = model.process(&frame);
        let agree = match &expected {
            Verdict::Pass(_) => out.action == XdpAction::Pass && out.packet == frame,
            Verdict::Drop(_) => out.action == XdpAction::Drop,
            Verdict::Tx { packet, .. } => out.action == XdpAction::Tx && out.packet == *packet,
        };
        assert!(
            agree,
            "packet {i} (seed {seed}) disagrees\ninput: {frame:02x?}\nmodel: {expected:02x?}\nxdp: {:?} {:02x?}",
            out.action, out.packet
        );
        *outcomes.entry(expected.stat().name()).or_default() += 1;
    }
    // The counters agree too: every outcome, and the connection-table misses.
    for (stat, value) in lb.stats() {
        if stat.is_outcome() {
            assert_eq!(value, outcomes.get(stat.name()).copied().unwrap_or(0), "counter {}", stat.name());
        }
    }
    assert_eq!(lb.stat(Stat::FlowMiss), model.events.get("flow_miss").copied().unwrap_or(0), "flow_miss");
    assert_eq!(lb.stat(Stat::FlowSetFull), model.events.get("flow_set_full").copied().unwrap_or(0), "flow_set_full");
    assert_eq!(lb.stat(Stat::IcmpErrorToBackend), model.events.get("icmp_error_to_backend").copied().unwrap_or(0));
    // The run exercised what it is meant to.
    for must in [
        "forwarded",
        "icmp_too_big_sent",
        "pass_not_vip",
        "drop_no_backend",
        "drop_too_big",
        "pass_unhashable",
        "nat_forwarded",
        "nat_replied",
        "nat_icmp_translated",
        "drop_pool_exhausted",
        "drop_nat_no_flow",
        "drop_ttl_exceeded",
    ] {
        assert!(outcomes.get(must).copied().unwrap_or(0) > 0, "no packet ended as {must}: {outcomes:?}");
    }
    assert!(
        outcomes.keys().filter(|k| k.starts_with("truncated") || k.starts_with("bad")).count() >= 6,
        "{outcomes:?}"
    );
    eprintln!("outcomes: {outcomes:?}, events: {:?}", model.events);
    assert!(model.events.get("icmp_error_to_backend").copied().unwrap_or(0) > 0);
    // Enough flows that sets fill (full sets leave new flows unrecorded, as the model predicts;
    // the model also counts the rarer embryonic entries replaced, which the program does not).
    if count >= DEFAULT_PACKETS {
        assert!(model.events.get("flow_set_full").copied().unwrap_or(0) > 0, "no full set: {:?}", model.events);
        // Clients' FINs and RSTs closed entries whose 4-tuples later SYNs opened again.
        assert!(model.events.get("closed_reopened").copied().unwrap_or(0) > 0, "none reopened: {:?}", model.events);
    }
}
