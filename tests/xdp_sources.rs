//! Source policy in the real XDP object under BPF_PROG_TEST_RUN: allow and deny lists (longest
//! prefix, the VIP's before the node's, `allow_only`), per-prefix new-flow limits, reloads —
//! verdicts, counters and untouched bytes of refused frames, and what the maps hold.

use lb_common::{
    FAMILY_V4, FlowKey, PROTO_TCP, SOURCE_SCOPE_NODE, SourceBucket, SourceBucketKey, Stat, source_bucket_slots,
    source_scope,
};
use xlb::apply::source_report::SourceReport;
use xlb_tests::{
    Balancer,
    packets::{Frame, L4},
    require_root,
};

const CONFIG: &str = r#"
node:
  next_hop_mac: 02:00:00:00:00:fe
  sources:
    deny: [203.0.113.0/24, "2001:db8:bad::/48"]
    allow: [203.0.113.128/25]
nat_pools:
  - name: p4
    addresses: [198.51.100.201]
    ports: 40000-40009
vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
    mode: dsr-l2
    sources:
      deny: [198.51.100.7]
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: dns4
    address: 192.0.2.10
    port: 53
    protocol: udp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: admin
    address: 192.0.2.11
    port: 22
    protocol: tcp
    mode: dsr-l2
    sources:
      allow: [10.9.0.0/16]
      allow_only: true
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: "fd00::1", mac: "02:00:00:00:01:01" }
  - name: nat4
    address: 192.0.2.12
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    sources:
      new_flows: { rate: 1, burst: 3 }
    backends:
      - { address: 10.1.0.1, mac: "02:00:00:00:01:01" }
"#;

fn frame(src: &str, dst: &str, l4: L4) -> Vec<u8> {
    if dst.contains(':') { Frame::v6(src, dst, l4).build() } else { Frame::v4(src, dst, l4).build() }
}

fn syn(sport: u16, dport: u16) -> L4 {
    L4::TcpSyn { sport, dport }
}

#[test]
fn allow_and_deny_lists_decide_by_longest_prefix_the_vips_before_the_nodes() {
    require_root!();
    let lb = Balancer::with_config(CONFIG);
    let denied = Some(Stat::DropSourceDenied);
    let cases: [(&str, Vec<u8>, Option<Stat>); 10] = [
        ("node deny", frame("203.0.113.5", "192.0.2.10", syn(1000, 80)), denied),
        ("node allow inside the node deny", frame("203.0.113.200", "192.0.2.10", syn(1001, 80)), None),
        ("node deny, udp", frame("203.0.113.5", "192.0.2.10", L4::Udp { sport: 1, dport: 53 }), denied),
        ("the VIP's own deny", frame("198.51.100.7", "192.0.2.10", syn(1002, 80)), denied),
        ("the VIP's deny is its own", frame("198.51.100.7", "192.0.2.10", L4::Udp { sport: 2, dport: 53 }), None),
        ("allow_only, allowed", frame("10.9.1.1", "192.0.2.11", syn(1003, 22)), None),
        ("allow_only, not allowed", frame("10.8.0.1", "192.0.2.11", syn(1004, 22)), Some(Stat::DropSourceNotAllowed)),
        ("node deny, IPv6", frame("2001:db8:bad:1::1", "2001:db8::10", syn(1005, 80)), denied),
        ("outside the IPv6 deny", frame("2001:db8:beef::1", "2001:db8::10", syn(1006, 80)), None),
        ("node deny before a NAT flow", frame("203.0.113.6", "192.0.2.12", syn(1007, 80)), denied),
    ];
    for (case, bytes, refused) in &cases {
        lb.expect_verdict(bytes, *refused, case);
    }
    // A denied source's unknown non-SYN (an ACK flood) is refused too, not sent unrecorded.
    lb.expect_verdict(&frame("203.0.113.5", "192.0.2.10", L4::TcpAck { sport: 1000, dport: 80 }), denied, "ACK");
}

#[test]
fn a_reload_changes_the_lists_and_removes_what_it_no_longer_names() {
    require_root!();
    let mut lb = Balancer::with_config(CONFIG);
    let rules = |lb: &Balancer| lb.maps.sources.as_ref().expect("source maps").rules().expect("read the trie").len();
    // Node: 2 deny + 1 allow; web4: 1 deny; admin: 1 allow.
    assert_eq!(rules(&lb), 5, "every entry in the trie, each in its scope");
    let web4_denied = frame("198.51.100.7", "192.0.2.10", syn(2000, 80));
    lb.expect_verdict(&web4_denied, Some(Stat::DropSourceDenied), "before the reload");
    let without = CONFIG.replace("      deny: [198.51.100.7]\n", "      deny: [198.51.100.8]\n").replace(
        "    deny: [203.0.113.0/24, \"2001:db8:bad::/48\"]\n    allow: [203.0.113.128/25]\n",
        "    deny: []\n",
    );
    lb.reload(&without);
    assert_eq!(rules(&lb), 2, "the node's entries and web4's old one removed, its new one written");
    lb.expect_verdict(&web4_denied, None, "no longer denied");
    lb.expect_verdict(
        &frame("198.51.100.8", "192.0.2.10", syn(2001, 80)),
        Some(Stat::DropSourceDenied),
        "newly denied",
    );
    lb.expect_verdict(&frame("203.0.113.5", "192.0.2.10", syn(2002, 80)), None, "the node's deny is gone");
    // A flow established before a reload denies its source ends with that reload: its entry
    // is removed, so its next packet is judged (and dropped) as a packet of an unknown flow.
    lb.expect_verdict(&frame("198.51.100.50", "192.0.2.10", syn(2100, 80)), None, "SYN");
    let ack = frame("198.51.100.50", "192.0.2.10", L4::TcpAck { sport: 2100, dport: 80 });
    lb.expect_verdict(&ack, None, "ACK: confirmed");
    let mut other = frame("198.51.100.51", "192.0.2.10", syn(2101, 80));
    lb.expect_verdict(&other, None, "another source's SYN");
    other = frame("198.51.100.51", "192.0.2.10", L4::TcpAck { sport: 2101, dport: 80 });
    lb.expect_verdict(&other, None, "another source's ACK");
    let held = |lb: &Balancer, src: &str, sport: u16| {
        let (saddr, family) = xlb::config::ip_words(src.parse().expect("address"));
        let (daddr, _) = xlb::config::ip_words("192.0.2.10".parse().expect("address"));
        let key =
            FlowKey { saddr, daddr, sport: sport.to_be(), dport: 80u16.to_be(), proto: PROTO_TCP, family, pad: 0 };
        lb.maps.flow_set_of(&key).expect("read the set").1.way_of(&key).is_some()
    };
    assert!(held(&lb, "198.51.100.50", 2100) && held(&lb, "198.51.100.51", 2101), "both flows are in the table");
    lb.reload(&without.replace("deny: [198.51.100.8]", "deny: [198.51.100.8, 198.51.100.50]"));
    assert!(!held(&lb, "198.51.100.50", 2100), "the reload removed the denied source's entry");
    assert!(held(&lb, "198.51.100.51", 2101), "and only that one");
    lb.expect_verdict(&ack, Some(Stat::DropSourceDenied), "the denied source's established flow");
    lb.expect_verdict(&other, None, "another source's established flow goes on");
    // NAT alike: the flow's entries go (its pool port with them) and its next packet is judged.
    let nat_syn = frame("198.51.100.60", "192.0.2.12", syn(2200, 80));
    lb.expect_verdict(&nat_syn, None, "NAT SYN");
    let nat_ack = frame("198.51.100.60", "192.0.2.12", L4::TcpAck { sport: 2200, dport: 80 });
    lb.expect_verdict(&nat_ack, None, "NAT flow known");
    let nat_flows = |lb: &Balancer| lb.maps.nat_tables().expect("NAT tables").reverse_entries().len();
    let before = nat_flows(&lb);
    lb.reload(&without.replace("deny: [198.51.100.8]", "deny: [198.51.100.8, 198.51.100.50]").replace(
        "    sources:\n      new_flows: { rate: 1, burst: 3 }\n",
        "    sources:\n      new_flows: { rate: 1, burst: 3 }\n      deny: [198.51.100.60]\n",
    ));
    assert_eq!(nat_flows(&lb), before - 1, "the refused source's NAT flow removed");
    lb.expect_verdict(&nat_ack, Some(Stat::DropNatNoFlow), "its next packet: a NAT flow no more");
    lb.expect_verdict(&nat_syn, Some(Stat::DropSourceDenied), "and a new SYN is refused");
    lb.reload(&without);
    // Without any policy the VIP's slot is zeroed: nothing is judged.
    let none = without.replace("    sources:\n      deny: [198.51.100.8]\n", "");
    lb.reload(&none);
    lb.expect_verdict(&frame("198.51.100.8", "192.0.2.10", syn(2003, 80)), None, "policy removed");
}

#[test]
fn new_flow_limits_admit_the_burst_then_refuse_the_prefix_and_allowed_sources_are_exempt() {
    require_root!();
    let yaml = CONFIG.replace(
        "    allow: [203.0.113.128/25]\n",
        "    allow: [203.0.113.128/25]\n    new_flows: { rate: 1, burst: 4, prefix_v4: 24 }\n",
    );
    let lb = Balancer::with_config(&yaml);
    let limited = Some(Stat::DropSourceLimited);
    // The node's limit, shared over the node's VIPs: four new flows of 198.51.100.0/24 at once.
    for port in 0..4 {
        lb.expect_verdict(&frame("198.51.100.20", "192.0.2.10", syn(3000 + port, 80)), None, "within the burst");
    }
    lb.expect_verdict(&frame("198.51.100.20", "192.0.2.10", syn(3010, 80)), limited, "past the burst");
    lb.expect_verdict(
        &frame("198.51.100.99", "192.0.2.10", L4::Udp { sport: 9, dport: 53 }),
        limited,
        "same /24, other VIP",
    );
    lb.expect_verdict(&frame("198.51.101.1", "192.0.2.10", syn(3011, 80)), None, "another /24 has its own bucket");
    // Established flows are never judged; an unknown ACK is not a new flow and is not counted.
    let ack = frame("198.51.100.20", "192.0.2.10", L4::TcpAck { sport: 3000, dport: 80 });
    lb.expect_verdict(&ack, None, "an admitted flow's ACK");
    lb.expect_verdict(
        &frame("198.51.100.20", "192.0.2.10", L4::TcpAck { sport: 3999, dport: 80 }),
        None,
        "unknown ACK",
    );
    // Allowed sources are never limited.
    for port in 0..20 {
        lb.expect_verdict(&frame("203.0.113.200", "192.0.2.10", syn(3100 + port, 80)), None, "allowed: unlimited");
    }
    // A VIP's own limit (nat4: burst 3) replaces the node's and counts in buckets of its own.
    for port in 0..3 {
        lb.expect_verdict(&frame("198.51.102.1", "192.0.2.12", syn(3200 + port, 80)), None, "nat4 burst");
    }
    let before = lb.stat(Stat::NatForwarded);
    lb.expect_verdict(&frame("198.51.102.1", "192.0.2.12", syn(3210, 80)), limited, "nat4 past its burst");
    assert_eq!(lb.stat(Stat::NatForwarded), before, "a refused SYN claims no pool port");

    // The buckets as the agent reads them, and the report of the sources being limited.
    let buckets = lb.maps.sources.as_ref().expect("source maps").buckets().expect("handle").read().expect("read");
    let node_bucket = buckets
        .iter()
        .find(|b| b.key.scope >> 8 == SOURCE_SCOPE_NODE && b.key.addr[0] == u32::from_ne_bytes([198, 51, 100, 0]))
        .copied()
        .expect("the node's bucket of 198.51.100.0/24");
    assert_eq!((node_bucket.admitted, node_bucket.limited), (4, 2), "admitted and refused in the node's bucket");
    let nat_id = lb.applied("nat4").meta.id;
    let vip_bucket = buckets.iter().find(|b| b.key.scope >> 8 == nat_id).copied().expect("nat4's own bucket");
    assert_eq!((vip_bucket.admitted, vip_bucket.limited), (3, 1));
    let mut report = SourceReport::default();
    let describe =
        |id, family| xlb::apply::source_report::describe_scope(&lb.config, lb.reconciler.applied(), id, family);
    let start = std::time::Instant::now();
    assert!(report.update(buckets, start, describe).is_empty(), "the first look has nothing to compare with");
    lb.expect_verdict(&frame("198.51.100.20", "192.0.2.10", syn(3300, 80)), limited, "still limited");
    let buckets = lb.maps.sources.as_ref().expect("source maps").buckets().expect("handle").read().expect("read");
    let listed = report.update(buckets, start + std::time::Duration::from_secs(1), describe);
    assert_eq!(listed.len(), 1, "only the prefix refused since the last look: {listed:?}");
    assert_eq!(
        (listed[0].scope.as_str(), listed[0].prefix.as_str(), listed[0].refused_per_second, listed[0].refused_total),
        ("node", "198.51.100.0/24", 1, 3)
    );
}

#[test]
fn a_prefix_takes_a_free_or_idle_bucket_slot_never_one_a_limited_prefix_holds() {
    require_root!();
    let yaml = CONFIG.replace(
        "    allow: [203.0.113.128/25]\n",
        "    allow: [203.0.113.128/25]\n    new_flows: { rate: 1, burst: 4 }\n",
    );
    let lb = Balancer::with_config(&yaml);
    let buckets = lb.maps.sources.as_ref().expect("source maps").buckets().expect("handle");
    let node4 = source_scope(SOURCE_SCOPE_NODE, FAMILY_V4);
    let key = SourceBucketKey { scope: node4, addr: [u32::from_ne_bytes([198, 51, 103, 0]), 0, 0, 0] };
    let (first, second) = source_bucket_slots(&key);
    // Both slots held by other prefixes that are being limited (next admission an hour away).
    let resident = |third: u8, tat_ns: u64| SourceBucket {
        key: SourceBucketKey { scope: node4, addr: [u32::from_ne_bytes([192, 0, third, 0]), 0, 0, 0] },
        tat_ns,
        ..SourceBucket::default()
    };
    buckets.write(first, &resident(1, u64::MAX / 2)).expect("write");
    buckets.write(second, &resident(2, u64::MAX / 2)).expect("write");
    let before = lb.stat(Stat::SourceUntracked);
    lb.expect_verdict(
        &frame("198.51.103.9", "192.0.2.10", syn(4000, 80)),
        None,
        "both slots limited: admitted untracked",
    );
    assert_eq!(lb.stat(Stat::SourceUntracked), before + 1, "counted as untracked");
    let held = buckets.read().expect("read");
    assert!(held.iter().all(|b| b.key != key), "no bucket taken from a limited prefix");
    // One resident idle (its schedule behind the clock): the new prefix takes that slot.
    buckets.write(second, &resident(2, 1)).expect("write");
    lb.expect_verdict(&frame("198.51.103.9", "192.0.2.10", syn(4001, 80)), None, "takes the idle slot");
    let held = buckets.read().expect("read");
    let taken = held.iter().find(|b| b.key == key).expect("the prefix has a bucket now");
    assert_eq!(taken.admitted, 1);
    assert!(held.iter().any(|b| b.key == resident(1, 0).key), "the limited resident keeps its slot");
    assert!(held.iter().all(|b| b.key != resident(2, 0).key), "the idle one gave its slot up");
}
