//! The real XDP object under BPF_PROG_TEST_RUN: crafted frames in, verdict and bytes out.

use lb_common::{
    ADDR_FLAG_DROP_UNHASHABLE, BACKEND_FLAG_ACTIVE, BACKEND_FLAG_IPIP, Backend, FAMILY_V4, NAT_NO_POOL,
    NODE_FLAG_TUNNEL_V4, NODE_FLAG_TUNNEL_V6, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Stat, VipKey, VipMeta,
};
use xlb::apply::testrun::XdpAction;
use xlb_tests::{
    Balancer,
    packets::{Frame, L4, l3_offset},
    require_root,
};

/// One VIP per protocol and family; the modes are exercised in xdp_forwarding.rs.
const CONFIG: &str = r#"
node:
  next_hop_mac: 02:00:00:00:00:fe
  tunnel_source_v4: 172.16.0.0/24
  tunnel_source_v6: fd00:ffff::/112
vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: dns4
    address: 192.0.2.10
    port: 53
    protocol: udp
    mode: dsr-ipip
    backends:
      - { address: 10.0.0.2 }
  - name: ping4
    address: 192.0.2.10
    protocol: icmp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
    mode: dsr-l2
    unhashable: drop
    backends:
      - { address: "fd00::1", mac: "02:00:00:00:01:01" }
  - name: dns6
    address: 2001:db8::10
    port: 53
    protocol: udp
    mode: dsr-ipip
    unhashable: drop
    backends:
      - { address: "fd00::2" }
"#;
const VIP_NAMES: [&str; 5] = ["web4", "dns4", "ping4", "web6", "dns6"];

fn tcp(dport: u16) -> L4 {
    L4::TcpSyn { sport: 40000, dport }
}
fn udp(dport: u16) -> L4 {
    L4::Udp { sport: 40000, dport }
}

/// Runs `frame` and asserts: the verdict `stat` implies (XDP_PASS, or XDP_DROP for drops), bytes
/// untouched, exactly `stat` went up by one, and no VIP counted the frame.
fn expect_untouched(lb: &Balancer, frame: &[u8], stat: Stat, case: &str) {
    let before = lb.stats();
    let vips_before: Vec<_> = VIP_NAMES.iter().map(|n| lb.vip(n)).collect();
    let out = lb.run(frame);
    let verdict = if stat.is_drop() { XdpAction::Drop } else { XdpAction::Pass };
    assert_eq!(out.action, verdict, "{case}: verdict");
    assert_eq!(out.packet, frame, "{case}: the program must not touch the frame");
    for ((s, b), (_, a)) in before.iter().zip(lb.stats()) {
        let expected = if *s == stat { b + 1 } else { *b };
        assert_eq!(a, expected, "{case}: counter {}", s.name());
    }
    for (name, b) in VIP_NAMES.iter().zip(vips_before) {
        assert_eq!(lb.vip(name), b, "{case}: VIP {name} must not count this frame");
    }
}

#[test]
fn non_vip_traffic_passes_untouched() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let cases = [
        ("other address", Frame::v4("198.51.100.1", "192.0.2.11", tcp(80))),
        ("other port", Frame::v4("198.51.100.1", "192.0.2.10", tcp(81))),
        ("udp to the tcp port", Frame::v4("198.51.100.1", "192.0.2.10", udp(80))),
        ("tcp to the udp port", Frame::v4("198.51.100.1", "192.0.2.10", tcp(53))),
        ("v6 other port", Frame::v6("2001:db8::1", "2001:db8::10", udp(54))),
        ("v6 icmp, no icmp VIP", Frame::v6("2001:db8::1", "2001:db8::10", L4::IcmpEcho)),
        ("source is the VIP", Frame::v4("192.0.2.10", "198.51.100.1", L4::Udp { sport: 53, dport: 53 })),
    ];
    for (case, frame) in cases {
        expect_untouched(&lb, &frame.build(), Stat::PassNotVip, case);
    }
    // ARP request: not IP at all.
    let mut arp = vec![0xff; 6];
    arp.extend_from_slice(&xlb_tests::packets::CLIENT_MAC);
    arp.extend_from_slice(&[0x08, 0x06, 0, 1, 8, 0, 6, 4, 0, 1]);
    arp.resize(60, 0);
    expect_untouched(&lb, &arp, Stat::PassNotIp, "arp");
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
    let vlan4 = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).vlan(7).build();

    let mut cases: Vec<(&str, Vec<u8>, Stat)> = Vec::new();
    let mut case = |name, frame: Vec<u8>, stat| cases.push((name, frame, stat));

    case("vlan tag cut short", vlan4[..16].to_vec(), Stat::TruncatedVlan);
    case("ipv4 header cut short", tcp4[..14 + 19].to_vec(), Stat::TruncatedIpv4);
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
    case("tcp header past the ipv4 total length", f, Stat::TruncatedTcp);
    let mut f = udp4[..14 + 20 + 7].to_vec();
    set_ipv4_total_len(&mut f, 27);
    case("udp header cut short", f, Stat::TruncatedUdp);
    let mut f = udp4.clone();
    set_ipv4_total_len(&mut f, 20 + 4);
    case("udp header past the ipv4 total length", f, Stat::TruncatedUdp);
    let mut f = icmp4[..14 + 20 + 7].to_vec();
    set_ipv4_total_len(&mut f, 27);
    case("icmp header cut short", f, Stat::TruncatedIcmp);
    case("ipv6 header cut short", tcp6[..14 + 39].to_vec(), Stat::TruncatedIpv6);
    let mut f = tcp6.clone();
    f[14] = 0x45;
    case("ipv6 version not 6", f, Stat::BadIpv6Header);
    let mut f = udp6.clone();
    let len = (f.len() - 14 - 40 + 1) as u16;
    set_ipv6_payload_len(&mut f, len);
    case("ipv6 payload length past the frame", f, Stat::BadIpv6Length);
    let mut f = tcp6.clone();
    set_ipv6_payload_len(&mut f, 19);
    case("tcp header past the ipv6 payload length", f, Stat::TruncatedTcp);
    let mut f = udp6[..14 + 40 + 7].to_vec();
    set_ipv6_payload_len(&mut f, 7);
    case("udp header cut short (v6)", f, Stat::TruncatedUdp);

    for (name, frame, stat) in &cases {
        expect_untouched(&lb, frame, *stat, name);
    }
    // Each malformed reason the program knows is exercised here, except a frame shorter than an
    // Ethernet header: BPF_PROG_TEST_RUN refuses those (EINVAL), and so do the drivers, so the
    // program's check exists for the verifier.
    let short = lb.program.xdp().unwrap();
    assert!(
        xlb::apply::testrun::run(short, &tcp4[..13]).is_err(),
        "the kernel runs XDP on frames shorter than 14 bytes"
    );
    for stat in Stat::ALL.iter().filter(|s| s.is_malformed() && **s != Stat::TruncatedEth) {
        assert!(cases.iter().any(|(_, _, s)| s == stat), "no case for {}", stat.name());
    }
}

#[test]
fn fragments_and_extension_headers_follow_the_address_policy_and_are_never_hashed() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    // 192.0.2.10's VIPs say `unhashable: pass` (the default).
    let mut first = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build();
    first[14 + 6] = 0x20; // MF, offset 0: the first fragment still has ports
    expect_untouched(&lb, &first, Stat::PassUnhashable, "first fragment");
    let mut later = Frame::v4("198.51.100.1", "192.0.2.10", udp(53)).build();
    later[14 + 6..14 + 8].copy_from_slice(&185u16.to_be_bytes()); // offset 1480, no MF
    expect_untouched(&lb, &later, Stat::PassUnhashable, "last fragment");
    let mut elsewhere = later.clone();
    elsewhere[14 + 19] = 99; // 192.0.2.99: no VIP there
    expect_untouched(&lb, &elsewhere, Stat::PassNotVip, "fragment to another address");
    // 2001:db8::10's VIPs say `unhashable: drop`.
    for next_header in [0u8, 43, 44, 60] {
        let mut f = Frame::v6("2001:db8::1", "2001:db8::10", udp(53)).build();
        f[14 + 6] = next_header;
        expect_untouched(&lb, &f, Stat::DropUnhashable, &format!("ipv6 next header {next_header}"));
    }
}

/// Golden test of the reconciler: a config in, the exact contents of every map out; a reload
/// keeps ids and backend slots of what stays, and retires what goes.
#[test]
fn reconciler_writes_exactly_the_configured_state() {
    require_root!();
    let mut lb = Balancer::with_config(CONFIG);
    let v4 = |port: u16, proto| VipKey::v4(u32::from_ne_bytes([192, 0, 2, 10]), port.to_be(), proto);
    let v6 = |port: u16, proto| {
        let (addr, _) = xlb::config::ip_words("2001:db8::10".parse().unwrap());
        VipKey::v6(addr, port.to_be(), proto)
    };
    let meta = |id, port: u16| VipMeta {
        id,
        flags: 0,
        table_size: xlb::config::DEFAULT_TABLE_SIZE,
        port_first: port,
        port_last: port,
        pool: NAT_NO_POOL,
    };
    // New VIPs take the lowest free id in key order; backends the lowest free slot in that order.
    let mut expected = vec![
        (v4(0, PROTO_ICMP), meta(0, 0)),
        (v4(53, PROTO_UDP), meta(1, 53)),
        (v4(80, PROTO_TCP), meta(2, 80)),
        (v6(53, PROTO_UDP), meta(3, 53)),
        (v6(80, PROTO_TCP), meta(4, 80)),
    ];
    expected.sort_by_key(|(k, _)| *k);
    assert_eq!(lb.maps.vips().unwrap(), expected);

    let backend = |addr: &str, mac: [u8; 6], generation, vip_id| {
        let (addr, family) = xlb::config::ip_words(addr.parse().unwrap());
        // Backends of dsr-ipip VIPs (here: the ones sent via the next hop) carry the IPIP flag.
        let mode = if mac == [2, 0, 0, 0, 0, 0xfe] { BACKEND_FLAG_IPIP } else { 0 };
        Backend { addr, mac, family, flags: BACKEND_FLAG_ACTIVE | mode, generation, vip_id, port: 0, egress: 0 }
    };
    let l2_mac = [2, 0, 0, 0, 1, 1];
    let next_hop = [2, 0, 0, 0, 0, 0xfe];
    assert_eq!(lb.maps.backend(0).unwrap(), backend("10.0.0.1", l2_mac, 1, 0)); // ping4
    assert_eq!(lb.maps.backend(1).unwrap(), backend("10.0.0.2", next_hop, 1, 1)); // dns4
    assert_eq!(lb.maps.backend(2).unwrap(), backend("10.0.0.1", l2_mac, 1, 2)); // web4
    assert_eq!(lb.maps.backend(3).unwrap(), backend("fd00::2", next_hop, 1, 3)); // dns6
    assert_eq!(lb.maps.backend(4).unwrap(), backend("fd00::1", l2_mac, 1, 4)); // web6
    assert_eq!(lb.maps.backend(5).unwrap(), Backend::default(), "unused slots stay empty");

    // One backend per VIP: every table slot names it.
    for (name, slot) in [("ping4", 0), ("dns4", 1), ("web4", 2), ("dns6", 3), ("web6", 4)] {
        let table = lb.maps.table(lb.applied(name).meta.id).unwrap();
        assert_eq!(table.len(), xlb::config::DEFAULT_TABLE_SIZE as usize);
        assert!(table.iter().all(|&s| s == slot), "{name}");
    }

    let node = lb.maps.node().unwrap();
    assert_eq!(node.iface_mac, xlb_tests::packets::LB_MAC);
    assert_eq!(node.mtu, 1500);
    assert_eq!(node.tunnel_v4.to_ne_bytes(), [172, 16, 0, 0]);
    assert_eq!(node.flags, NODE_FLAG_TUNNEL_V4 | NODE_FLAG_TUNNEL_V6);

    let addrs = lb.maps.vip_addrs().unwrap();
    assert_eq!(addrs.len(), 2);
    let mut buckets: Vec<(u32, u32)> =
        addrs.iter().map(|(k, _)| (lb_common::addr_bucket(&k.addr), lb_common::FILTER_VIP)).collect();
    buckets.sort_unstable();
    buckets.dedup();
    assert_eq!(lb.maps.filter_buckets().unwrap(), buckets, "the pre-filter holds exactly the VIP addresses");
    let (v6_addr, _) = xlb::config::ip_words("2001:db8::10".parse().unwrap());
    assert!(addrs.iter().any(|(k, p)| k.addr == v6_addr && p.flags == ADDR_FLAG_DROP_UNHASHABLE));
    assert!(addrs.iter().any(|(k, p)| k.family == FAMILY_V4 && p.flags == 0));

    // Reload: dns4 goes, ntp4 (with two weighted backends) comes, web4 gains a backend.
    let reloaded = CONFIG
        .replace(
            "      - { address: 10.0.0.1, mac: \"02:00:00:00:01:01\" }\n  - name: dns4",
            "      - { address: 10.0.0.1, mac: \"02:00:00:00:01:01\" }\n      - { address: 10.0.0.9, mac: \"02:00:00:00:01:09\" }\n  - name: dns4",
        )
        .replace("name: dns4\n    address: 192.0.2.10\n    port: 53", "name: ntp4\n    address: 192.0.2.10\n    port: 123")
        .replace("      - { address: 10.0.0.2 }\n", "      - { address: 10.0.0.2 }\n      - { address: 10.0.0.3, weight: 3 }\n");
    assert_eq!(reloaded.matches("address:").count(), CONFIG.matches("address:").count() + 2, "every edit applied");
    let changes = lb.reload(&reloaded);
    assert_eq!(changes.added, vec!["ntp4".to_owned()]);
    assert_eq!(changes.removed, vec!["dns4".to_owned()]);
    assert_eq!(changes.updated, vec!["web4".to_owned()]);
    assert_eq!((changes.unchanged, changes.tables_rebuilt), (3, 2));
    let ntp4 = lb.applied("ntp4");
    assert_eq!(ntp4.meta.id, 1, "the freed VIP id is reused");
    // Keys sort by network-order port, so web4 (80) is reconciled before ntp4 (123). dns4's
    // slot 1 retires only once the step's tables are swapped (generation 1 → 2, free again), so
    // web4's new backend takes fresh slot 5 and ntp4's take 6 and 7.
    assert_eq!(lb.applied("web4").slots, vec![2, 5], "web4's existing backend keeps its slot");
    assert_eq!(lb.maps.backend(5).unwrap(), backend("10.0.0.9", [2, 0, 0, 0, 1, 9], 1, 2));
    assert_eq!(lb.maps.backend(1).unwrap().generation, 2, "dns4's slot is retired");
    assert_eq!(lb.maps.backend(1).unwrap().flags & lb_common::BACKEND_FLAG_ACTIVE, 0);
    assert_eq!(ntp4.slots, vec![6, 7]);
    assert_eq!(lb.maps.backend(6).unwrap(), backend("10.0.0.2", next_hop, 1, 1));
    assert_eq!(lb.maps.backend(7).unwrap(), backend("10.0.0.3", next_hop, 1, 1));
    let table = lb.maps.table(1).unwrap();
    let share3 = table.iter().filter(|&&s| s == 7).count() as f64 / table.len() as f64;
    assert!((share3 - 0.75).abs() < 0.001, "weight 3 of 4: {share3}");
    assert!(lb.maps.vips().unwrap().iter().all(|(k, _)| *k != v4(53, PROTO_UDP)), "dns4 is gone");
    assert_eq!(lb.vip("ntp4"), Default::default(), "the reused VIP slot starts from zero");
}

const PLAN_CONFIG: &str = r#"
vips:
  - name: web
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
      - { address: 10.0.0.2, mac: "02:00:00:00:01:02" }
      - { address: 10.0.0.3, mac: "02:00:00:00:01:03" }
  - name: old
    address: 192.0.2.11
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
"#;

#[test]
fn plan_predicts_exactly_what_the_reload_changes() {
    require_root!();
    let mut lb = Balancer::with_config(PLAN_CONFIG);
    let next = PLAN_CONFIG
        .replace(
            "      - { address: 10.0.0.3, mac: \"02:00:00:00:01:03\" }\n",
            "      - { address: 10.0.0.3, mac: \"02:00:00:00:01:03\" }\n      - { address: 10.0.0.4, mac: \"02:00:00:00:01:04\" }\n",
        )
        .replace("name: old\n    address: 192.0.2.11", "name: new\n    address: 192.0.2.12");
    let config = xlb::config::parse(std::path::Path::new("next.yaml"), &next).expect("valid");
    let desired = xlb::state::desired::DesiredState::new(&config, &xlb_tests::FACTS);
    let plan = xlb::apply::plan::plan(&lb.reconciler, &lb.maps, &desired).expect("plan");
    assert_eq!(plan.added.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["new"]);
    assert_eq!(plan.removed.iter().map(|v| v.name.as_str()).collect::<Vec<_>>(), ["old"]);
    assert_eq!(plan.updated.len(), 1);
    let web = &plan.updated[0];
    assert_eq!(web.backends_added, ["10.0.0.4"]);
    assert!(web.table_rebuilt);
    let predicted = web.remapped.expect("rebuilt table has a share");

    let web_id = lb.applied("web").meta.id;
    let before = lb.maps.table(web_id).unwrap();
    lb.reload(&next);
    let after = lb.maps.table(web_id).unwrap();
    let slot4 = lb.applied("web").slots[3];
    let moved = before.iter().zip(&after).filter(|(a, b)| a != b).count();
    assert_eq!(predicted, moved as f64 / before.len() as f64, "the plan's share is the reload's");
    // Maglev: nearly every slot that moves goes to the new backend (a few hundred others
    // shuffle), and the share stays within the ≤ 1.1/N bound.
    let to_new = before.iter().zip(&after).filter(|(a, b)| a != b && **b == slot4).count();
    assert!(to_new as f64 >= 0.95 * moved as f64, "{to_new} of {moved} moved slots went to the new backend");
    assert!((0.23..=0.25 * 1.1).contains(&predicted), "{predicted}");

    let again = xlb::apply::plan::plan(&lb.reconciler, &lb.maps, &desired).expect("plan");
    assert!(again.is_empty() && again.unchanged == 2, "{}", again.render());
}

#[test]
fn an_adopting_reconciler_keeps_ids_slots_and_tables() {
    require_root!();
    let mut lb = Balancer::with_config(PLAN_CONFIG);
    // Churn first, so slots and generations are not just 0, 1, 2.
    lb.reload(&PLAN_CONFIG.replace("      - { address: 10.0.0.2, mac: \"02:00:00:00:01:02\" }\n", ""));
    lb.reload(PLAN_CONFIG);
    let tables: Vec<Vec<u32>> = lb.reconciler.applied().values().map(|a| lb.maps.table(a.meta.id).unwrap()).collect();
    let backends: Vec<Backend> = (0..8).map(|slot| lb.maps.backend(slot).unwrap()).collect();

    let mut adopted = xlb::apply::reconcile::Reconciler::adopt(&lb.maps).expect("adopt");
    for (key, old) in lb.reconciler.applied() {
        let new = &adopted.applied()[key];
        assert_eq!((new.meta, &new.slots), (old.meta, &old.slots), "{}", old.vip.name);
        let ids = |a: &xlb::apply::reconcile::AppliedVip| {
            a.vip.backends.iter().map(|b| b.identity.clone()).collect::<Vec<_>>()
        };
        assert_eq!(ids(new), ids(old));
    }
    let changes =
        adopted.apply(&xlb::state::desired::DesiredState::new(&lb.config, &xlb_tests::FACTS), &mut lb.maps).unwrap();
    assert_eq!((changes.added.len(), changes.removed.len()), (0, 0), "{changes:?}");
    let after: Vec<Vec<u32>> = adopted.applied().values().map(|a| lb.maps.table(a.meta.id).unwrap()).collect();
    assert_eq!(after, tables, "the same configuration rebuilds the very same tables");
    assert_eq!((0..8).map(|slot| lb.maps.backend(slot).unwrap()).collect::<Vec<_>>(), backends, "slots untouched");
    assert_eq!(adopted.applied().values().map(|a| a.vip.name.as_str()).collect::<Vec<_>>(), ["web", "old"]);
}

#[test]
fn health_and_drain_states_shape_the_maps_exactly() {
    require_root!();
    // Panic off for `web` first: with every backend out its table must go empty.
    let no_panic = PLAN_CONFIG.replacen("    backends:\n", "    panic_threshold: 0\n    backends:\n", 1);
    let mut lb = Balancer::with_config(&no_panic);
    let web = lb.applied("web").clone();
    let mut states = xlb::state::desired::BackendStates::default();
    states.down.insert(("web".to_owned(), "10.0.0.2".to_owned()));
    states.drained.insert(("web".to_owned(), "10.0.0.3".to_owned()));
    let desired = xlb::state::desired::DesiredState::with_states(&lb.config, &xlb_tests::FACTS, &states);
    let changes = lb.reconciler.apply(&desired, &mut lb.maps).unwrap();
    assert_eq!((changes.updated.clone(), changes.tables_rebuilt), (vec!["web".to_owned()], 1));
    // Only 10.0.0.1 is in the table; the other two keep live slots (same generation), so
    // their established flows go on.
    let table = lb.maps.table(web.meta.id).unwrap();
    assert_eq!(table.len(), xlb::config::DEFAULT_TABLE_SIZE as usize);
    assert!(table.iter().all(|&slot| slot == web.slots[0]), "only the healthy, undrained backend");
    for &slot in &web.slots {
        let backend = lb.maps.backend(slot).unwrap();
        assert_eq!((backend.flags & BACKEND_FLAG_ACTIVE, backend.generation), (BACKEND_FLAG_ACTIVE, 1), "slot {slot}");
    }
    // All three out: the VIP keeps its entry with an empty table (no backend: counted drop).
    states.down.insert(("web".to_owned(), "10.0.0.1".to_owned()));
    let desired = xlb::state::desired::DesiredState::with_states(&lb.config, &xlb_tests::FACTS, &states);
    lb.reconciler.apply(&desired, &mut lb.maps).unwrap();
    assert_eq!(lb.applied("web").meta.table_size, 0);
    assert!(lb.maps.table(web.meta.id).unwrap().is_empty());
    let syn = Frame::v4("198.51.100.1", "192.0.2.10", L4::TcpSyn { sport: 40000, dport: 80 }).build();
    assert_eq!(lb.run(&syn).action, XdpAction::Drop);
    assert_eq!(lb.stat(Stat::DropNoBackend), 1);

    // With the default panic threshold (50 %) the same states put `web` in panic: new flows go
    // to every undrained backend, down or not, never to the drained one.
    let config = xlb::config::parse(std::path::Path::new("plan.yaml"), PLAN_CONFIG).unwrap();
    let desired = xlb::state::desired::DesiredState::with_states(&config, &xlb_tests::FACTS, &states);
    lb.reconciler.apply(&desired, &mut lb.maps).unwrap();
    let table = lb.maps.table(web.meta.id).unwrap();
    let undrained = [web.slots[0], web.slots[1]];
    assert!(table.iter().all(|slot| undrained.contains(slot)), "never the drained backend");
    assert!(undrained.iter().all(|slot| table.contains(slot)), "every undrained one, down or not");
    assert_eq!(lb.run(&syn).action, XdpAction::Tx);
}

/// Floods of new flows against the connection table and the NAT pools (issue 18): a new flow
/// never evicts a confirmed, live entry, and an exhausted pool costs a SYN O(1) work.
mod flood {
    use lb_common::{
        FAMILY_V4, FLOW_CONFIRMED, FLOW_CONFIRMED_IDLE_JIFFIES, FLOW_WAYS, FlowKey, FlowSet, NAT_FLAG_REPLIED,
        NatReverse, PROTO_TCP, PROTO_UDP, Stat,
    };
    use xlb::apply::testrun::XdpAction;
    use xlb_tests::{
        Balancer, FACTS, FORWARDING_CONFIG,
        model::{Model, Verdict},
        packets::{Frame, L4, hex},
        require_root,
    };

    /// The connection-table key of a frame from `src`:`sport` to `dst`:`dport`.
    fn key(src: &str, dst: &str, sport: u16, dport: u16, proto: u8) -> FlowKey {
        let (saddr, family) = xlb::config::ip_words(src.parse().expect("address"));
        let (daddr, _) = xlb::config::ip_words(dst.parse().expect("address"));
        FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, family, pad: 0 }
    }

    fn frame(src: &str, dst: &str, l4: L4) -> Frame {
        if dst.contains(':') { Frame::v6(src, dst, l4) } else { Frame::v4(src, dst, l4) }
    }

    /// A connection table of one set (8 entries), so that every flow competes for the same set;
    /// the reference model says where each packet must go (the Maglev pick of the VIP's table).
    struct OneSet {
        lb: Balancer,
        model: Model,
    }

    impl OneSet {
        fn new() -> Self {
            let lb = Balancer::with_flow_table(FORWARDING_CONFIG, FLOW_WAYS as u32);
            let model = Model::with_flow_table(&lb.config, &FACTS, FLOW_WAYS as u32);
            Self { lb, model }
        }

        /// Runs a frame that must be forwarded, byte for byte as the model says.
        fn forward(&mut self, frame: &Frame, case: &str) {
            let bytes = frame.build();
            let before = self.lb.stat(Stat::Forwarded);
            let out = self.lb.run(&bytes);
            match self.model.process(&bytes) {
                Verdict::Tx { stat: Stat::Forwarded, packet, .. } => {
                    assert_eq!(out.action, XdpAction::Tx, "{case}");
                    assert_eq!(hex(&out.packet), hex(&packet), "{case}: output bytes");
                }
                other => panic!("{case}: the model does not forward it: {other:?}"),
            }
            assert_eq!(self.lb.stat(Stat::Forwarded), before + 1, "{case}: counted as forwarded");
        }

        fn set(&self, any: &FlowKey) -> FlowSet {
            let (index, set) = self.lb.maps.flow_set_of(any).expect("read the set");
            assert_eq!(index, 0, "a table of one set");
            set
        }

        /// `None`: not in the table; else whether its entry is confirmed.
        fn state(&self, key: &FlowKey) -> Option<bool> {
            let set = self.set(key);
            set.way_of(key).map(|way| set.confirmed(way))
        }
    }

    /// Opens `count` flows from `client` to `vip`:80 and confirms them with an ACK each.
    fn confirmed_flows(h: &mut OneSet, client: &str, vip: &str, first_port: u16, count: u16) -> Vec<FlowKey> {
        (first_port..first_port + count)
            .map(|sport| {
                let k = key(client, vip, sport, 80, PROTO_TCP);
                h.forward(&frame(client, vip, L4::TcpSyn { sport, dport: 80 }), "SYN");
                assert_eq!(h.state(&k), Some(false), "a SYN records the flow embryonic");
                h.forward(&frame(client, vip, L4::TcpAck { sport, dport: 80 }), "first ACK");
                assert_eq!(h.state(&k), Some(true), "the first packet after the SYN confirms it");
                k
            })
            .collect()
    }

    #[test]
    fn a_syn_flood_never_evicts_confirmed_flows_and_is_still_forwarded_unrecorded() {
        require_root!();
        for (client, vip, flooder) in
            [("198.51.100.1", "192.0.2.1", "203.0.113.66"), ("2001:db8:ff::1", "2001:db8::1", "2001:db8:66::6")]
        {
            let mut h = OneSet::new();
            let established = confirmed_flows(&mut h, client, vip, 1000, FLOW_WAYS as u16);
            let before = h.set(&established[0]);
            let (full, miss) = (h.lb.stat(Stat::FlowSetFull), h.lb.stat(Stat::FlowMiss));
            // One source, SYNs from 300 ports: each is a new flow, sent by the Maglev table.
            for i in 0..300u16 {
                let sport = 20000 + i * 7;
                h.forward(&frame(flooder, vip, L4::TcpSyn { sport, dport: 80 }), "flood SYN");
                assert_eq!(h.state(&key(flooder, vip, sport, 80, PROTO_TCP)), None, "a flood SYN is not recorded");
            }
            assert_eq!(h.lb.stat(Stat::FlowSetFull), full + 300, "{vip}: every flood SYN counted unrecorded");
            assert_eq!(h.lb.stat(Stat::FlowMiss), miss + 300);
            let after = h.set(&established[0]);
            assert_eq!(after.hashes, before.hashes, "{vip}: no confirmed entry evicted");
            assert_eq!(after.entries, before.entries, "{vip}: no confirmed entry rewritten");
            assert!((0..FLOW_WAYS).all(|w| after.confirmed(w)));
            // The established flows go on from their entries.
            let miss = h.lb.stat(Stat::FlowMiss);
            for k in &established {
                let sport = u16::from_be(k.sport);
                h.forward(&frame(client, vip, L4::TcpAck { sport, dport: 80 }), "established ACK");
            }
            assert_eq!(h.lb.stat(Stat::FlowMiss), miss, "{vip}: every established flow found its entry");
        }
    }

    #[test]
    fn new_flows_replace_embryonic_entries_and_the_first_non_syn_confirms() {
        require_root!();
        let mut h = OneSet::new();
        let (client, vip) = ("198.51.100.1", "192.0.2.1");
        let established = confirmed_flows(&mut h, client, vip, 1000, 4);
        let embryonic: Vec<FlowKey> = (2000..2004)
            .map(|sport| {
                h.forward(&frame(client, vip, L4::TcpSyn { sport, dport: 80 }), "SYN");
                key(client, vip, sport, 80, PROTO_TCP)
            })
            .collect();
        // A retransmitted SYN does not confirm.
        h.forward(&frame(client, vip, L4::TcpSyn { sport: 2000, dport: 80 }), "retransmitted SYN");
        assert_eq!(h.state(&embryonic[0]), Some(false), "a second SYN leaves the entry embryonic");
        // New flows take the first embryonic entry (the set has no free one), each replacing
        // the one before: a flood churns one entry of a set and leaves the others alone.
        let newer: Vec<FlowKey> = (3000..3004)
            .map(|sport| {
                h.forward(&frame("203.0.113.66", vip, L4::TcpSyn { sport, dport: 80 }), "new SYN");
                let k = key("203.0.113.66", vip, sport, 80, PROTO_TCP);
                assert_eq!(h.state(&k), Some(false), "a new flow is recorded embryonic");
                k
            })
            .collect();
        assert_eq!(h.lb.stat(Stat::FlowSetFull), 0, "a set with embryonic entries takes new flows");
        for k in &established {
            assert_eq!(h.state(k), Some(true), "confirmed entries stay");
        }
        assert_eq!(h.state(&embryonic[0]), None, "the first embryonic entry was replaced");
        for k in &embryonic[1..] {
            assert_eq!(h.state(k), Some(false), "the other embryonic entries stay");
        }
        for k in &newer[..3] {
            assert_eq!(h.state(k), None, "each new flow replaced the one before");
        }
        // UDP: the first datagram records the flow embryonic, the second confirms it.
        let udp = key(client, vip, 5353, 53, PROTO_UDP);
        h.forward(&frame(client, vip, L4::Udp { sport: 5353, dport: 53 }), "first datagram");
        assert_eq!(h.state(&udp), Some(false), "a UDP flow's first datagram records it embryonic");
        h.forward(&frame(client, vip, L4::Udp { sport: 5353, dport: 53 }), "second datagram");
        assert_eq!(h.state(&udp), Some(true), "its second datagram confirms it");
        assert_eq!(h.lb.stat(Stat::FlowSetFull), 0);
        for k in &established {
            assert_eq!(h.state(k), Some(true), "confirmed entries stay");
        }
    }

    #[test]
    fn idle_confirmed_entries_may_be_replaced() {
        require_root!();
        let mut h = OneSet::new();
        let (client, vip) = ("198.51.100.1", "192.0.2.1");
        let established = confirmed_flows(&mut h, client, vip, 1000, FLOW_WAYS as u16);
        // Three entries idle for longer than the confirmed idle time (their stamps moved back; a
        // multiple of 8 keeps the state bits).
        let (index, mut set) = h.lb.maps.flow_set_of(&established[0]).expect("read the set");
        for way in 0..3 {
            set.used[way] = set.used[way].wrapping_sub(FLOW_CONFIRMED_IDLE_JIFFIES + 64);
            assert_ne!(set.used[way] & FLOW_CONFIRMED, 0);
        }
        let idle: Vec<FlowKey> = (0..3).map(|way| set.entries[way].key).collect();
        h.lb.maps.write_flow_set(index, &set).expect("write the set");
        for sport in 4000..4003 {
            h.forward(&frame("203.0.113.66", vip, L4::TcpSyn { sport, dport: 80 }), "new SYN");
            assert_eq!(h.state(&key("203.0.113.66", vip, sport, 80, PROTO_TCP)), Some(false), "recorded");
        }
        assert_eq!(h.lb.stat(Stat::FlowSetFull), 0, "idle entries are taken");
        for k in &idle {
            assert_eq!(h.state(k), None, "the idle flows were replaced");
        }
        for k in established.iter().filter(|k| !idle.contains(k)) {
            assert_eq!(h.state(k), Some(true), "the live confirmed flows stay");
        }
        // Now the set holds five live confirmed flows and three embryonic ones: new flows take
        // the embryonic ones; with those confirmed, the set is full.
        for sport in 4000..4003 {
            h.forward(&frame("203.0.113.66", vip, L4::TcpAck { sport, dport: 80 }), "ACK");
        }
        h.forward(&frame("203.0.113.67", vip, L4::TcpSyn { sport: 9, dport: 80 }), "SYN into a full set");
        assert_eq!(h.lb.stat(Stat::FlowSetFull), 1);
        assert_eq!(h.state(&key("203.0.113.67", vip, 9, 80, PROTO_TCP)), None);
    }

    const NAT_CONFIG: &str = r#"
node:
  nat_closing_timeout: 1s
nat_pools:
  - name: big
    addresses: [198.51.100.7]
    ports: 41000-41299
vips:
  - name: natbig
    address: 192.0.2.40
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: big
    backends:
      - { address: 10.1.0.9, port: 8080, mac: "02:00:00:00:01:01" }
"#;

    fn run_counted(lb: &Balancer, frame: &[u8], action: XdpAction, stat: Stat, case: &str) -> Vec<u8> {
        let before = lb.stat(stat);
        let out = lb.run(frame);
        assert_eq!(out.action, action, "{case}");
        assert_eq!(lb.stat(stat), before + 1, "{case}: counted as {}", stat.name());
        out.packet
    }

    /// The TCP source port of an IPv4 frame without options.
    fn source_port(frame: &[u8]) -> u16 {
        u16::from_be_bytes([frame[14 + 20], frame[14 + 20 + 1]])
    }

    #[test]
    fn an_exhausted_pool_drops_syns_without_a_scan_and_a_released_source_is_taken_again() {
        require_root!();
        let lb = Balancer::with_config(NAT_CONFIG);
        let slot = lb.applied("natbig").slots[0];
        let syn = |client: &str, sport| Frame::v4(client, "192.0.2.40", L4::TcpSyn { sport, dport: 80 }).build();
        // One real flow, then every other source of the pool taken (written as the data plane
        // writes its claims: 299 live flows toward 10.1.0.9:8080).
        let out = run_counted(&lb, &syn("203.0.113.1", 1111), XdpAction::Tx, Stat::NatForwarded, "first flow");
        let held = source_port(&out);
        let backend = xlb::config::ip_words("10.1.0.9".parse().unwrap()).0;
        let pool_addr = xlb::config::ip_words("198.51.100.7".parse().unwrap()).0;
        let vip = xlb::config::ip_words("192.0.2.40".parse().unwrap()).0;
        let now = xlb::apply::nat::monotonic_ns();
        let entries: Vec<(FlowKey, NatReverse)> = (41000..41300u16)
            .filter(|&port| port != held)
            .map(|port| {
                let k = FlowKey {
                    saddr: backend,
                    daddr: pool_addr,
                    sport: 8080u16.to_be(),
                    dport: port.to_be(),
                    proto: PROTO_TCP,
                    family: FAMILY_V4,
                    pad: 0,
                };
                let client = xlb::config::ip_words(format!("203.0.114.{}", port % 250).parse().unwrap()).0;
                let value = NatReverse {
                    client,
                    vip,
                    client_port: port.to_be(),
                    vip_port: 80u16.to_be(),
                    backend: slot,
                    flags: NAT_FLAG_REPLIED,
                    last_seen: now,
                    ..NatReverse::default()
                };
                (k, value)
            })
            .collect();
        lb.maps.insert_nat_reverse(&entries).expect("fill the pool");
        // The pool (300 sources) is full: the first SYN scans it and marks the slot exhausted;
        // every later one tries one candidate and is dropped.
        run_counted(&lb, &syn("203.0.113.2", 1), XdpAction::Drop, Stat::DropPoolExhausted, "pool full");
        let state = xlb::apply::dataplane::nat_sources(&lb.program, slot).expect("read the slot's state");
        assert_ne!(state.exhausted_at, 0, "the slot is marked exhausted");
        assert_eq!(u16::from_be(state.backend_port), 8080);
        let cursor = state.cursor;
        for sport in 2..102u16 {
            run_counted(&lb, &syn("203.0.113.2", sport), XdpAction::Drop, Stat::DropPoolExhausted, "exhausted");
        }
        let state = xlb::apply::dataplane::nat_sources(&lb.program, slot).expect("read the slot's state");
        assert_eq!(state.cursor, (cursor + 99) % 300 + 1, "each SYN tried exactly one candidate");
        assert_eq!(lb.stat(Stat::NatForwarded), 1);
        // The first flow is reset and expires (closing timeout 1 s); its client opens the same
        // tuple again: its dead entry releases the source, and the new claim takes it from the
        // slot's hints.
        let mut rst = Frame::v4("203.0.113.1", "192.0.2.40", L4::TcpAck { sport: 1111, dport: 80 }).build();
        rst[14 + 20 + 13] |= 0x04;
        xlb_tests::packets::fix_tcp_checksum(&mut rst);
        run_counted(&lb, &rst, XdpAction::Tx, Stat::NatForwarded, "RST");
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let cursor = xlb::apply::dataplane::nat_sources(&lb.program, slot).expect("state").cursor;
        let out = run_counted(&lb, &syn("203.0.113.1", 1111), XdpAction::Tx, Stat::NatSourceReused, "reopened");
        assert_eq!(source_port(&out), held, "the released source is taken again");
        assert_eq!(lb.stat(Stat::NatForwarded), 3);
        let state = xlb::apply::dataplane::nat_sources(&lb.program, slot).expect("state");
        assert_eq!((state.cursor, state.count), (cursor, 0), "no candidate tried besides the hint");
        // Full again: dropped.
        run_counted(&lb, &syn("203.0.113.3", 7), XdpAction::Drop, Stat::DropPoolExhausted, "full again");
    }
}
