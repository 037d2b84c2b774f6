//! Forwarding fixtures: every mode × family × case through the real XDP object under
//! BPF_PROG_TEST_RUN, with the exact output bytes compared to the reference model (which builds
//! its headers and checksums with etherparse) and the key fields checked by parsing the output.

use etherparse::{
    Icmpv4Type, Icmpv6Type, IpNumber, NetSlice, SlicedPacket, TransportSlice, icmpv4::DestUnreachableHeader,
};
use lb_common::{
    FAMILY_V4, FLOW_WAYS, FlowKey, PROTO_TCP, Stat, VIP_INDEX_PROBES, VIP_INDEX_SIZE, VipKey, VipMeta, flow_set,
    flow_sets,
};
use xlb::{apply::dataplane::FlowTableUsage, apply::testrun::XdpAction};
use xlb_tests::{
    Balancer, FACTS,
    model::{Model, Verdict},
    packets::{Frame, L4, LB_MAC, clear_df, hex, icmp_too_big, ip_and_8, l3_offset},
    require_root,
};

const CONFIG: &str = xlb_tests::FORWARDING_CONFIG;

struct Harness {
    lb: Balancer,
    model: Model,
}

impl Harness {
    fn new() -> Self {
        Self::with(CONFIG)
    }

    fn with(config: &str) -> Self {
        let lb = Balancer::with_config(config);
        let model = Model::new(&lb.config, &FACTS);
        Self { lb, model }
    }

    /// Runs the frame through both; asserts they agree on verdict, counter and bytes. Returns the
    /// model's verdict.
    fn run(&mut self, frame: &[u8], case: &str) -> Verdict {
        let before = self.lb.stats();
        let out = self.lb.run(frame);
        let expected = self.model.process(frame);
        match &expected {
            Verdict::Pass(_) => assert_eq!((out.action, &out.packet[..]), (XdpAction::Pass, frame), "{case}"),
            Verdict::Drop(_) => assert_eq!(out.action, XdpAction::Drop, "{case}"),
            Verdict::Tx { packet, .. } => {
                assert_eq!(out.action, XdpAction::Tx, "{case}");
                assert_eq!(hex(&out.packet), hex(packet), "{case}: output bytes");
            }
        }
        let moved: Vec<_> = before
            .iter()
            .zip(self.lb.stats())
            .filter(|((_, b), (s, a))| a != b && s.is_outcome())
            .map(|(_, (s, _))| s)
            .collect();
        assert_eq!(moved, vec![expected.stat()], "{case}: exactly one outcome counted");
        expected
    }

    /// Runs a frame that must be forwarded; returns the chosen backend and the output bytes.
    fn forwarded(&mut self, frame: &[u8], case: &str) -> (String, Vec<u8>) {
        match self.run(frame, case) {
            Verdict::Tx { stat: Stat::Forwarded, packet, backend: Some(b) } => (b, packet),
            other => panic!("{case}: expected forwarding, got {other:?}"),
        }
    }

    fn flow(&self, frame: &[u8]) -> Option<String> {
        let key = flow_key(frame);
        let entry = self.lb.maps.flow(&key).unwrap()?;
        let (vip, i) = self
            .lb
            .reconciler
            .applied()
            .values()
            .find_map(|a| a.slots.iter().position(|&s| s == entry.backend).map(|i| (a, i)))?;
        Some(vip.vip.backends[i].identity.clone())
    }
}

/// The connection-table key of a frame built by `Frame` (no VLAN).
fn flow_key(frame: &[u8]) -> FlowKey {
    let sliced = SlicedPacket::from_ethernet(frame).expect("parse");
    let (saddr, daddr, proto, family) = match sliced.net.expect("ip") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header();
            (
                [u32::from_ne_bytes(h.source()), 0, 0, 0],
                [u32::from_ne_bytes(h.destination()), 0, 0, 0],
                h.protocol().0,
                FAMILY_V4,
            )
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header();
            let w = |a: [u8; 16]| xlb::config::ip_words(std::net::IpAddr::from(a)).0;
            (w(h.source()), w(h.destination()), h.next_header().0, lb_common::FAMILY_V6)
        }
        NetSlice::Arp(_) => panic!("arp"),
    };
    let (sport, dport) = match sliced.transport.expect("l4") {
        TransportSlice::Tcp(t) => (t.source_port(), t.destination_port()),
        TransportSlice::Udp(u) => (u.source_port(), u.destination_port()),
        _ => (0, 0),
    };
    FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto, family, pad: 0 }
}

fn syn(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    frame(src, dst, L4::TcpSyn { sport, dport: 80 })
}
fn ack(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    frame(src, dst, L4::TcpAck { sport, dport: 80 })
}
fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    if src.contains(':') { Frame::v6(src, dst, l4).build() } else { Frame::v4(src, dst, l4).build() }
}

/// Checks an encapsulated frame by parsing it: outer header valid (checksum), addressed to
/// `backend`, carrying exactly `inner`.
fn assert_encapsulated(out: &[u8], backend: &str, inner: &[u8], case: &str) {
    let sliced = SlicedPacket::from_ethernet(out).unwrap_or_else(|e| panic!("{case}: {e}"));
    let l3 = l3_offset(out);
    match sliced.net.expect("outer IP") {
        NetSlice::Ipv4(ip) => {
            let h = ip.header().to_header();
            assert_eq!(h.header_checksum, h.calc_header_checksum(), "{case}: outer checksum");
            assert_eq!(std::net::IpAddr::from(h.destination).to_string(), backend, "{case}");
            assert_eq!(h.protocol, IpNumber::IPV4, "{case}");
            assert_eq!(&h.source[..3], &[172, 16, 0], "{case}: outer source inside 172.16.0.0/24");
            assert!(h.dont_fragment && h.time_to_live == 64, "{case}");
            assert_eq!(&out[l3 + 20..], inner, "{case}: inner packet carried unchanged");
        }
        NetSlice::Ipv6(ip) => {
            let h = ip.header().to_header();
            assert_eq!(std::net::IpAddr::from(h.destination).to_string(), backend, "{case}");
            assert_eq!(&h.source[..14], &"fd00:ffff::".parse::<std::net::Ipv6Addr>().unwrap().octets()[..14], "{case}");
            assert_eq!(usize::from(h.payload_length), inner.len(), "{case}");
            assert_eq!(&out[l3 + 40..], inner, "{case}: inner packet carried unchanged");
        }
        NetSlice::Arp(_) => panic!("arp"),
    }
}

#[test]
fn every_mode_and_family_forwards_new_flows_and_records_them() {
    require_root!();
    let mut h = Harness::new();
    let cases = [
        ("l2v4", syn("198.51.100.7", "192.0.2.1", 40001)),
        ("l2v6", syn("2001:db8:ff::7", "2001:db8::1", 40001)),
        ("dnsl2", frame("198.51.100.7", "192.0.2.1", L4::Udp { sport: 40001, dport: 53 })),
        ("ipip4", syn("198.51.100.7", "192.0.2.2", 40001)),
        ("ipip6", syn("2001:db8:ff::7", "2001:db8::2", 40001)),
        ("ip4in6", syn("198.51.100.7", "192.0.2.3", 40001)),
        ("dnsipip4", frame("198.51.100.7", "192.0.2.2", L4::Udp { sport: 40001, dport: 53 })),
        ("dnsipip6", frame("2001:db8:ff::7", "2001:db8::2", L4::Udp { sport: 40001, dport: 53 })),
    ];
    for (vip, input) in cases {
        let before = h.lb.vip(vip);
        let (backend, out) = h.forwarded(&input, vip);
        let l3 = l3_offset(&input);
        if vip.starts_with("l2") || vip == "dnsl2" {
            // Only the MACs change: the backend's as destination, the interface's as source.
            assert_eq!(&out[6..12], &LB_MAC, "{vip}");
            assert_eq!(&out[12..], &input[12..], "{vip}: IP and transport untouched");
        } else {
            assert_encapsulated(&out, &backend, &input[l3..], vip);
        }
        assert_eq!(h.flow(&input).as_deref(), Some(backend.as_str()), "{vip}: flow recorded with its backend");
        let after = h.lb.vip(vip);
        assert_eq!((after.packets, after.new_flows), (before.packets + 1, before.new_flows + 1), "{vip}");
        assert_eq!(after.bytes, before.bytes + input.len() as u64, "{vip}: bytes as received");
        let b = h.lb.backend(vip, &backend);
        assert_eq!((b.packets, b.new_flows), (1, 1), "{vip}: backend {backend}");
    }
    assert_eq!(h.lb.stat(Stat::FlowMiss), 8);
}

#[test]
fn dsr_ipip_uses_the_next_hop_or_the_backends_own_mac() {
    require_root!();
    let mut h = Harness::new();
    let mut seen = std::collections::BTreeMap::new();
    for port in 0..64 {
        let (backend, out) = h.forwarded(&syn("198.51.100.7", "192.0.2.2", 41000 + port), "ipip4");
        seen.insert(backend, out[0..6].to_vec());
    }
    assert_eq!(seen.get("10.1.0.1").map(Vec::as_slice), Some(&[2, 0, 0, 0, 0, 0xfe][..]), "routed: next hop");
    assert_eq!(seen.get("10.1.0.2").map(Vec::as_slice), Some(&[2, 0, 0, 0, 2, 2][..]), "on-link: its own MAC");
}

#[test]
fn tunnel_source_varies_per_flow_inside_the_prefix() {
    require_root!();
    let mut h = Harness::new();
    let sources: std::collections::BTreeSet<[u8; 4]> = (0..32)
        .map(|p| {
            let (_, out) = h.forwarded(&syn("198.51.100.7", "192.0.2.2", 42000 + p), "ipip4");
            out[26..30].try_into().unwrap()
        })
        .collect();
    assert!(sources.len() > 20, "32 flows, {} outer sources", sources.len());
    assert!(sources.iter().all(|s| s[..3] == [172, 16, 0]));
}

#[test]
fn established_flows_stay_when_the_table_changes_and_removed_backends_rehash() {
    require_root!();
    let mut h = Harness::new();
    // Open many flows, then drain 10.0.0.3 (weight 0: out of the table, flows kept).
    let flows: Vec<u16> = (0..60).map(|i| 43000 + i).collect();
    let mut owner = std::collections::BTreeMap::new();
    for &p in &flows {
        let (b, _) = h.forwarded(&syn("198.51.100.9", "192.0.2.1", p), "syn");
        owner.insert(p, b);
    }
    assert!(owner.values().any(|b| b == "10.0.0.3"), "some flows went to 10.0.0.3");
    let drained = CONFIG.replace("mac: \"02:00:00:00:01:03\", weight: 3", "mac: \"02:00:00:00:01:03\", weight: 0");
    h.lb.reload(&drained);
    h.model = Model::new(&h.lb.config, &FACTS);
    for &p in &flows {
        let out = h.lb.run(&ack("198.51.100.9", "192.0.2.1", p));
        assert_eq!(out.action, XdpAction::Tx);
        let mac = out.packet[5];
        assert_eq!(format!("10.0.0.{mac}"), owner[&p], "flow {p} stays on its backend after the table changed");
    }
    // New flows no longer reach the drained backend.
    for p in 0..60 {
        let (b, _) = h.forwarded(&syn("198.51.100.10", "192.0.2.1", 44000 + p), "new after drain");
        assert_ne!(b, "10.0.0.3");
    }

    // Remove 10.0.0.3: its flows re-hash (counted), everyone else's stay.
    let removed = CONFIG.replace("      - { address: 10.0.0.3, mac: \"02:00:00:00:01:03\", weight: 3 }\n", "");
    let totals = h.lb.vip("l2v4");
    h.lb.reload(&removed);
    assert_eq!(h.lb.vip("l2v4"), totals, "the VIP keeps what its removed backend counted");
    let stale_before = h.lb.stat(Stat::FlowStale);
    let model = Model::new(&h.lb.config, &FACTS);
    let vip = VipKey::v4(u32::from_ne_bytes([192, 0, 2, 1]), 80u16.to_be(), PROTO_TCP);
    for &p in &flows {
        let input = ack("198.51.100.9", "192.0.2.1", p);
        let out = h.lb.run(&input);
        let now = format!("10.0.0.{}", out.packet[5]);
        if owner[&p] == "10.0.0.3" {
            assert_eq!(Some(now.clone()), model.pick(&vip, &flow_key(&input)), "flow {p} re-hashed by the new table");
            assert_eq!(h.flow(&input), Some(now), "and re-recorded");
        } else {
            assert_eq!(now, owner[&p], "flow {p} stays");
        }
    }
    let moved = owner.values().filter(|b| *b == "10.0.0.3").count() as u64;
    assert_eq!(h.lb.stat(Stat::FlowStale) - stale_before, moved);
}

#[test]
fn tcp_without_syn_is_forwarded_by_the_table_but_not_recorded() {
    require_root!();
    let mut h = Harness::new();
    let input = ack("198.51.100.11", "192.0.2.1", 45000);
    let vip = h.lb.vip("l2v4");
    let (backend, _) = h.forwarded(&input, "non-SYN miss");
    assert_eq!(h.flow(&input), None, "not recorded");
    assert_eq!(h.lb.vip("l2v4").new_flows, vip.new_flows);
    assert_eq!(h.lb.stat(Stat::FlowMiss), 1);
    // The same packet again goes to the same backend (the table is deterministic).
    assert_eq!(h.forwarded(&input, "again").0, backend);
    // SYN-ACK-shaped packets (SYN with ACK) do not open flows either.
    assert_eq!(h.lb.maps.flow_table_usage().unwrap().entries, 0);
}

#[test]
fn a_full_set_gives_its_first_embryonic_entry_to_a_new_flow() {
    require_root!();
    // The smallest table: 128 sets of FLOW_WAYS entries.
    let lb = Balancer::with_flow_table(CONFIG, 1024);
    let sets = flow_sets(1024);
    let key = |port| flow_key(&syn("198.51.100.12", "192.0.2.1", port));
    let target = flow_set(key(50000).hash(), sets);
    let ports: Vec<u16> =
        (50000..60000).filter(|&p| flow_set(key(p).hash(), sets) == target).take(FLOW_WAYS + 1).collect();
    assert_eq!(ports.len(), FLOW_WAYS + 1, "enough client ports fall in one set");
    // Entries remember their last packet to the tick (jiffies, at least 100 Hz): apart by more.
    let tick = || std::thread::sleep(std::time::Duration::from_millis(25));
    for &p in &ports[..FLOW_WAYS] {
        assert_eq!(lb.run(&syn("198.51.100.12", "192.0.2.1", p)).action, XdpAction::Tx);
        tick();
    }
    assert!(ports[..FLOW_WAYS].iter().all(|&p| lb.maps.flow(&key(p)).unwrap().is_some()), "the set is full");
    // The first flow's ACK confirms its entry; the others are embryonic (SYN only), so the
    // first of those — the second flow's — gives way (xdp_packets.rs `flood` has the rules).
    assert_eq!(lb.run(&ack("198.51.100.12", "192.0.2.1", ports[0])).action, XdpAction::Tx);
    tick();
    assert_eq!(lb.run(&syn("198.51.100.12", "192.0.2.1", ports[FLOW_WAYS])).action, XdpAction::Tx);
    let held: Vec<bool> = ports.iter().map(|&p| lb.maps.flow(&key(p)).unwrap().is_some()).collect();
    let mut expected = vec![true; FLOW_WAYS + 1];
    expected[1] = false;
    assert_eq!(held, expected, "only the first embryonic flow ({}) gave way", ports[1]);
    assert_eq!(lb.maps.flow_table_usage().unwrap(), FlowTableUsage { entries: FLOW_WAYS as u64, size: 1024 });
}

#[test]
fn the_vip_index_mirrors_the_vip_map_through_reloads() {
    require_root!();
    let mut lb = Balancer::with_config(CONFIG);
    let indexed = |lb: &Balancer| {
        let mut entries: Vec<(VipKey, VipMeta)> =
            lb.maps.vip_index().unwrap().into_iter().map(|(_, key, meta)| (key, meta)).collect();
        entries.sort_by_key(|(key, _)| *key);
        entries
    };
    let vips = lb.maps.vips().unwrap();
    assert!(vips.len() >= 5, "{vips:?}");
    assert_eq!(indexed(&lb), vips);
    let removed = CONFIG.replace("    port: 53\n", "    port: 54\n");
    assert_ne!(removed, CONFIG);
    lb.reload(&removed);
    let vips = lb.maps.vips().unwrap();
    assert!(vips.iter().any(|(key, _)| key.port == 54u16.to_be()));
    assert!(!vips.iter().any(|(key, _)| key.port == 53u16.to_be()));
    assert_eq!(indexed(&lb), vips, "the index follows a reload");
}

#[test]
fn an_adopted_vip_index_is_repaired_from_the_vip_map() {
    require_root!();
    use aya::maps::{Array, Map, MapData};
    use lb_common::VipSlot;
    use xlb::{apply::dataplane::Loaded, apply::reconcile::Reconciler, state::desired::DesiredState};
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlb-test-adopt-{}", std::process::id()));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(dir.clone());
    let sizes = xlb::apply::dataplane::TableSizes { flows: 1024, nat: 1024 };
    let config = xlb_tests::parse_config(CONFIG);
    {
        let (_program, mut maps, adopted) = Loaded::balancer_pinned(sizes, &dir).expect("pinned load");
        assert!(!adopted);
        Reconciler::new().apply(&DesiredState::new(&config, &FACTS), &mut maps).expect("reconcile");
    }
    // A previous agent's index gone wrong: one VIP's slot with another meta, one slot of a VIP
    // the map does not have, and one VIP's slot cleared.
    let vips = {
        let (_program, maps, _) = Loaded::balancer_pinned(sizes, &dir).expect("pinned load");
        maps.vips().unwrap()
    };
    let map = MapData::from_pin(dir.join(lb_common::maps::VIP_INDEX)).expect("the pinned index");
    let mut index: Array<MapData, VipSlot> = Array::try_from(Map::Array(map)).unwrap();
    let slot_of = |index: &Array<MapData, VipSlot>, key: &VipKey| {
        (0..VIP_INDEX_SIZE).find(|&s| index.get(&s, 0).is_ok_and(|held| held.check != 0 && held.key == *key))
    };
    let (changed, changed_meta) = vips[0];
    let (cleared, _) = vips[1];
    let slot = slot_of(&index, &changed).expect("indexed");
    index.set(slot, &VipSlot::new(changed, VipMeta { table_size: 7, ..changed_meta }), 0).unwrap();
    let slot = slot_of(&index, &cleared).expect("indexed");
    index.set(slot, &VipSlot::default(), 0).unwrap();
    let ghost = VipKey::v4(u32::from_be_bytes([203, 0, 113, 99]).to_be(), 80u16.to_be(), PROTO_TCP);
    let home = ghost.index_hash() & (VIP_INDEX_SIZE - 1);
    index.set(home, &VipSlot::new(ghost, changed_meta), 0).unwrap();
    drop(index);

    let (_program, maps, adopted) = Loaded::balancer_pinned(sizes, &dir).expect("pinned load");
    assert!(adopted);
    let mut indexed: Vec<(VipKey, VipMeta)> =
        maps.vip_index().unwrap().into_iter().map(|(_, key, meta)| (key, meta)).collect();
    indexed.sort_by_key(|(key, _)| *key);
    assert_eq!(indexed, maps.vips().unwrap(), "the index holds exactly the map again");
    let map = MapData::from_pin(dir.join(lb_common::maps::VIP_INDEX)).expect("the pinned index");
    let index: Array<MapData, VipSlot> = Array::try_from(Map::Array(map)).unwrap();
    assert_eq!(slot_of(&index, &ghost), None, "the ghost's slot is cleared");
}

#[test]
fn vips_the_index_cannot_hold_are_found_in_the_vip_map() {
    require_root!();
    // Seven VIP addresses whose keys share one home slot: the index holds VIP_INDEX_PROBES of
    // them, the map all.
    let key = |addr: u32| VipKey::v4(addr.to_be(), 80u16.to_be(), PROTO_TCP);
    let base = u32::from_be_bytes([198, 18, 0, 0]);
    let home = key(base).index_hash() & (VIP_INDEX_SIZE - 1);
    let addrs: Vec<std::net::Ipv4Addr> = (base..base + (1 << 23))
        .filter(|&a| key(a).index_hash() & (VIP_INDEX_SIZE - 1) == home)
        .take(7)
        .map(std::net::Ipv4Addr::from)
        .collect();
    assert_eq!(addrs.len(), 7);
    let mut config = String::from("vips:\n");
    for (i, addr) in addrs.iter().enumerate() {
        config.push_str(&format!(
            "  - name: v{i}\n    address: {addr}\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n      - {{ address: 10.0.0.{}, mac: \"02:00:00:00:01:{:02x}\" }}\n",
            i + 1,
            i + 1
        ));
    }
    let lb = Balancer::with_config(&config);
    let index = lb.maps.vip_index().unwrap();
    assert_eq!(index.len(), VIP_INDEX_PROBES as usize, "{index:?}");
    assert_eq!(lb.maps.vips().unwrap().len(), 7);
    for (i, addr) in addrs.iter().enumerate() {
        let out = lb.run(&syn("198.51.100.13", &addr.to_string(), 40000));
        assert_eq!(out.action, XdpAction::Tx, "{addr}");
        assert_eq!(out.packet[5], i as u8 + 1, "{addr} goes to its own backend");
    }
}

#[test]
fn source_ip_hashing_keeps_a_client_on_one_backend() {
    require_root!();
    let mut h = Harness::new();
    for client in 1..20 {
        let src = format!("198.51.100.{client}");
        let backends: std::collections::BTreeSet<String> =
            (0..10).map(|p| h.forwarded(&syn(&src, "192.0.2.4", 46000 + p), "sticky").0).collect();
        assert_eq!(backends.len(), 1, "client {src} saw {backends:?}");
    }
}

#[test]
fn vlan_tags_are_kept_in_both_modes() {
    require_root!();
    let mut h = Harness::new();
    let tagged = Frame::v4("198.51.100.7", "192.0.2.1", L4::TcpSyn { sport: 47000, dport: 80 }).vlan(42).build();
    let (_, out) = h.forwarded(&tagged, "l2 vlan");
    assert_eq!(&out[12..18], &tagged[12..18], "802.1Q tag and ethertype kept");
    let tagged = Frame::v6("2001:db8:ff::7", "2001:db8::2", L4::TcpSyn { sport: 47000, dport: 80 }).vlan(42).build();
    let (backend, out) = h.forwarded(&tagged, "ipip6 vlan");
    assert_eq!(&out[12..16], &[0x81, 0x00, 0x00, 42], "tag kept in front of the outer header");
    assert_eq!(&out[16..18], &[0x86, 0xdd]);
    assert_encapsulated(&out, &backend, &tagged[18..], "ipip6 vlan");
}

#[test]
fn ttl_and_hop_limit_one_are_forwarded_unchanged() {
    require_root!();
    // The balancer is not an IP hop: like IPVS direct routing and Katran it leaves the client's
    // TTL alone (the outer header of a tunnel has its own).
    let mut h = Harness::new();
    for (case, input) in [
        ("l2 ttl 1", Frame::v4("198.51.100.7", "192.0.2.1", L4::TcpSyn { sport: 48000, dport: 80 }).ttl(1).build()),
        (
            "ipip hop limit 1",
            Frame::v6("2001:db8:ff::7", "2001:db8::2", L4::TcpSyn { sport: 48000, dport: 80 }).ttl(1).build(),
        ),
    ] {
        let (_, out) = h.forwarded(&input, case);
        let inner_l3 = out.len() - (input.len() - 14);
        let ttl_at = if input[12..14] == [0x08, 0x00] { inner_l3 + 8 } else { inner_l3 + 7 };
        assert_eq!(out[ttl_at], 1, "{case}: TTL unchanged");
    }
}

#[test]
fn too_big_once_encapsulated_answers_the_client_with_icmp() {
    require_root!();
    let mut h = Harness::new();
    // 1500-byte datagrams with DF: 20 (IPv4) or 40 (IPv6) bytes of tunnel header do not fit.
    let cases = [
        (
            "ipip4",
            Frame::v4("198.51.100.7", "192.0.2.2", L4::TcpAck { sport: 49000, dport: 80 }).payload_len(1460).build(),
            1480,
        ),
        (
            "ip4in6",
            Frame::v4("198.51.100.7", "192.0.2.3", L4::TcpAck { sport: 49000, dport: 80 }).payload_len(1460).build(),
            1460,
        ),
        (
            "ipip6",
            Frame::v6("2001:db8:ff::7", "2001:db8::2", L4::TcpAck { sport: 49000, dport: 80 })
                .payload_len(1440)
                .build(),
            1460,
        ),
    ];
    for (case, input, mtu) in cases {
        let out = match h.run(&input, case) {
            Verdict::Tx { stat: Stat::IcmpTooBigSent, packet, .. } => packet,
            other => panic!("{case}: {other:?}"),
        };
        // Back to the client's MAC, from ours.
        assert_eq!((&out[0..6], &out[6..12]), (&input[6..12], &input[0..6]), "{case}");
        let sliced = SlicedPacket::from_ethernet(&out).expect("parse");
        match (sliced.net.expect("ip"), sliced.transport.expect("icmp")) {
            (NetSlice::Ipv4(ip), TransportSlice::Icmpv4(icmp)) => {
                let h4 = ip.header().to_header();
                assert_eq!(h4.header_checksum, h4.calc_header_checksum(), "{case}");
                assert_eq!(h4.source, [192, 0, 2, input[33]], "{case}: from the VIP");
                assert_eq!(h4.destination, [198, 51, 100, 7], "{case}: to the client");
                assert_eq!(
                    icmp.icmp_type(),
                    Icmpv4Type::DestinationUnreachable(DestUnreachableHeader::FragmentationNeeded {
                        next_hop_mtu: mtu as u16
                    }),
                    "{case}"
                );
                assert_eq!(
                    icmp.header().checksum,
                    icmp.icmp_type().calc_checksum(icmp.payload()),
                    "{case}: ICMP checksum"
                );
                assert_eq!(icmp.payload(), &ip_and_8(&input)[..], "{case}: quotes IP header + 8 bytes");
            }
            (NetSlice::Ipv6(ip), TransportSlice::Icmpv6(icmp)) => {
                let h6 = ip.header().to_header();
                assert_eq!(icmp.icmp_type(), Icmpv6Type::PacketTooBig { mtu }, "{case}");
                let sum = icmp.icmp_type().calc_checksum(h6.source, h6.destination, icmp.payload()).unwrap();
                assert_eq!(icmp.header().checksum, sum, "{case}: ICMPv6 checksum");
                assert_eq!(icmp.payload(), &ip_and_8(&input)[..], "{case}");
            }
            other => panic!("{case}: {other:?}"),
        }
    }
    // Without DF it can be neither fragmented here nor answered: dropped, counted.
    let mut no_df =
        Frame::v4("198.51.100.7", "192.0.2.2", L4::TcpAck { sport: 49001, dport: 80 }).payload_len(1460).build();
    clear_df(&mut no_df);
    assert_eq!(h.run(&no_df, "no DF"), Verdict::Drop(Stat::DropTooBig));
    // One byte less fits.
    let fits = Frame::v4("198.51.100.7", "192.0.2.2", L4::TcpAck { sport: 49002, dport: 80 }).payload_len(1440).build();
    h.forwarded(&fits, "fits exactly");
}

#[test]
fn icmp_too_big_about_a_vip_flow_goes_to_the_flows_backend() {
    require_root!();
    let mut h = Harness::new();
    for (vip, client, vip_addr, router) in [
        ("l2v4", "198.51.100.7", "192.0.2.1", "203.0.113.1"),
        ("ipip4", "198.51.100.7", "192.0.2.2", "203.0.113.1"),
        ("l2v6", "2001:db8:ff::7", "2001:db8::1", "2001:db8:aa::1"),
        ("ipip6", "2001:db8:ff::7", "2001:db8::2", "2001:db8:aa::1"),
    ] {
        for port in 50000..50016 {
            let (owner, _) = h.forwarded(&syn(client, vip_addr, port), vip);
            // The backend's reply (VIP:80 → client:port) was too big for a router on the way.
            let reply = if client.contains(':') {
                Frame::v6(vip_addr, client, L4::TcpAck { sport: 80, dport: port })
            } else {
                Frame::v4(vip_addr, client, L4::TcpAck { sport: 80, dport: port })
            }
            .build();
            let error = icmp_too_big(router, vip_addr, 1400, &ip_and_8(&reply));
            let events = h.lb.stat(Stat::IcmpErrorToBackend);
            let (to, _) = h.forwarded(&error, &format!("{vip} ICMP error for port {port}"));
            assert_eq!(to, owner, "{vip}: the error reaches the backend that owns the flow");
            assert_eq!(h.lb.stat(Stat::IcmpErrorToBackend), events + 1);
        }
    }
    // An error about something that is not a VIP flow is not ours.
    let other = Frame::v4("192.0.2.99", "198.51.100.7", L4::TcpAck { sport: 80, dport: 1 }).build();
    assert_eq!(
        h.run(&icmp_too_big("203.0.113.1", "192.0.2.99", 1400, &ip_and_8(&other)), "stray"),
        Verdict::Pass(Stat::PassNotVip)
    );
}

#[test]
fn a_vip_without_backends_drops_and_counts() {
    require_root!();
    let mut h = Harness::new();
    assert_eq!(h.run(&syn("198.51.100.7", "192.0.2.5", 51000), "empty"), Verdict::Drop(Stat::DropNoBackend));
}

#[test]
fn weights_decide_the_spread_of_new_flows() {
    require_root!();
    let mut h = Harness::new();
    let mut counts = std::collections::BTreeMap::<String, u32>::new();
    for i in 0..6000u32 {
        let src = format!("198.51.{}.{}", 100 + i / 250, i % 250);
        *counts.entry(h.forwarded(&syn(&src, "192.0.2.1", 52000), "spread").0).or_default() += 1;
    }
    for (backend, weight) in [("10.0.0.1", 1.0), ("10.0.0.2", 2.0), ("10.0.0.3", 3.0)] {
        let share = f64::from(counts[backend]) / 6000.0;
        assert!((share - weight / 6.0).abs() < 0.03, "{backend}: {share:.3} of flows, weight {weight}/6");
    }
}

#[test]
fn a_mode_change_applies_to_established_flows_too() {
    require_root!();
    let mut h = Harness::new();
    let input = syn("198.51.100.7", "192.0.2.1", 53000);
    let (backend, _) = h.forwarded(&input, "l2 SYN");
    // The VIP turns dsr-ipip (same backends): its flows now go through the tunnel.
    let ipip = CONFIG.replacen("    protocol: tcp\n    mode: dsr-l2\n", "    protocol: tcp\n    mode: dsr-ipip\n", 1);
    assert_eq!(h.lb.reload(&ipip).updated, vec!["l2v4".to_owned()]);
    let established = ack("198.51.100.7", "192.0.2.1", 53000);
    let out = h.lb.run(&established);
    assert_eq!(out.action, XdpAction::Tx);
    assert_encapsulated(&out.packet, &backend, &established[14..], "after the mode change");
}

#[test]
fn a_port_range_vip_serves_its_ports_and_leaves_the_exact_port_vip_alone() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let range_backend = [2, 0, 0, 0, 1, 4];
    for (dport, tcp, expect) in [
        (440, true, Some(range_backend)),
        (445, true, Some(range_backend)),
        (450, true, Some(range_backend)),
        (439, true, None),
        (451, true, None),
        (445, false, None),
    ] {
        let l4 = if tcp { L4::TcpSyn { sport: 40000, dport } } else { L4::Udp { sport: 40000, dport } };
        let frame = Frame::v4("198.51.100.7", "192.0.2.1", l4).build();
        let out = lb.run(&frame);
        match expect {
            Some(mac) => {
                assert_eq!(out.action, XdpAction::Tx, "port {dport}");
                assert_eq!(out.packet[0..6], mac, "port {dport} goes to the range's backend");
            }
            None => {
                assert_eq!((out.action, out.packet), (XdpAction::Pass, frame), "port {dport} (tcp {tcp}) is not ours")
            }
        }
    }
    // Port 80 of the same address is its own VIP (l2v4, backends 10.0.0.1-3), not the range's.
    let out = lb.run(&Frame::v4("198.51.100.7", "192.0.2.1", L4::TcpSyn { sport: 40001, dport: 80 }).build());
    assert_eq!(out.action, XdpAction::Tx);
    assert_ne!(out.packet[0..6], range_backend);
    assert_eq!(lb.applied("range4").vip.endpoint, "192.0.2.1:440-450/tcp");
}
