//! VIP connection limits (`connection_limit`) in the real XDP object under BPF_PROG_TEST_RUN,
//! their rates written by the agent's own writer (`apply::conn_limits`): a VIP's burst of new
//! flows admitted, the next one dropped untouched or answered with a RST whose every field and
//! checksum is checked (IPv4 and IPv6, direct server return and NAT), established flows never
//! judged, other VIPs unaffected, counts in the VIP's bucket; a reload that removes the limit
//! clears it. A concurrent limit: open connections counted in the connection table as the
//! limits thread counts them, a client's FIN freeing its place at the next count.

use etherparse::{NetHeaders, PacketHeaders, TransportHeader};
use lb_common::Stat;
use std::collections::BTreeMap;

use xlb::{
    apply::{
        conn_limits::{ConcurrentStatus, ConnLimitStatus, ConnLimitWriter, OpenCount, limited_vips},
        conns::{self, SlotOwners},
        testrun::XdpAction,
    },
    sources::{jiffies::KernelClock, limits::GlobalLimiter},
};
use xlb_tests::{
    Balancer,
    packets::{CLIENT_MAC, Frame, L4, LB_MAC},
    require_root,
};

const CONFIG: &str = r#"
node:
  next_hop_mac: 02:00:00:00:00:fe
nat_pools:
  - name: p4
    addresses: [198.51.100.201]
    ports: 40000-40099
vips:
  - name: drop4
    address: 192.0.2.20
    port: 80
    protocol: tcp
    mode: dsr-l2
    connection_limit: { new_per_second: 1, burst: 3 }
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: rst4
    address: 192.0.2.21
    port: 80
    protocol: tcp
    mode: dsr-l2
    connection_limit: { new_per_second: 1, burst: 2, on_limit: reset }
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: rst6
    address: 2001:db8::21
    port: 80
    protocol: tcp
    mode: dsr-l2
    connection_limit: { new_per_second: 1, burst: 2, on_limit: reset }
    backends:
      - { address: "fd00::1", mac: "02:00:00:00:01:01" }
  - name: nat4
    address: 192.0.2.22
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    connection_limit: { new_per_second: 1, burst: 2, on_limit: reset }
    backends:
      - { address: 10.1.0.1, mac: "02:00:00:00:01:01" }
  - name: dns4
    address: 192.0.2.20
    port: 53
    protocol: udp
    mode: dsr-l2
    connection_limit: { new_per_second: 1, burst: 2 }
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: conc4
    address: 192.0.2.24
    port: 80
    protocol: tcp
    mode: dsr-l2
    connection_limit: { concurrent: 3, on_limit: reset }
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
  - name: free4
    address: 192.0.2.23
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
"#;

/// The balancer with its limits written, and the writer (it holds the limit maps).
struct Limited {
    lb: Balancer,
    writer: ConnLimitWriter,
    limiter: GlobalLimiter,
    /// Open connections by VIP id, as the limits thread last counted them.
    counts: BTreeMap<u32, OpenCount>,
    _runtime: tokio::runtime::Runtime,
}

impl Limited {
    fn new(yaml: &str) -> Self {
        let mut lb = Balancer::with_config(yaml);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let limiter = runtime.block_on(async { GlobalLimiter::start(None) });
        let maps = lb.maps.conn_limits.take().expect("the object has connection limits");
        let mut limited =
            Limited { lb, writer: ConnLimitWriter::new(maps), limiter, counts: BTreeMap::new(), _runtime: runtime };
        limited.write();
        limited
    }

    /// What the agent's limits thread does after a pass; what it would publish.
    fn write(&mut self) -> Vec<ConnLimitStatus> {
        let vips = limited_vips(&self.lb.config, self.lb.reconciler.applied());
        self.writer.refresh(&vips, &self.limiter, &self.counts, true).expect("limits written")
    }

    /// What the limits thread does for a concurrent limit: reads VIP `name`'s bucket, counts
    /// its open connections in the connection table, and writes the ceiling.
    fn recount(&mut self, name: &str, clock: &KernelClock) -> Vec<ConnLimitStatus> {
        let applied = self.lb.reconciler.applied();
        let owners = SlotOwners::of(applied);
        let (key, vip) = applied.iter().find(|(_, a)| a.vip.name == name).expect("applied");
        let index = owners.vip_index(key).expect("owned slots");
        let admitted_before = self.writer.bucket(vip.meta.id).expect("bucket").admitted;
        let table = self.lb.maps.flow_table_counter().expect("the connection table");
        let now = clock.now().expect("jiffies");
        let open = conns::open_per_vip(&table, now, &owners, clock.hz, &|v| v == index);
        let count = OpenCount { admitted_before, open: open.get(&index).copied().unwrap_or(0) };
        self.counts.insert(vip.meta.id, count);
        self.write()
    }

    fn bucket(&self, vip: &str) -> (u64, u64) {
        let bucket = self.writer.bucket(self.lb.applied(vip).meta.id).expect("read the bucket");
        (bucket.admitted, bucket.limited)
    }
}

fn syn(src: &str, dst: &str, sport: u16) -> Vec<u8> {
    let l4 = L4::TcpSyn { sport, dport: 80 };
    if dst.contains(':') { Frame::v6(src, dst, l4).build() } else { Frame::v4(src, dst, l4).build() }
}

/// Runs the SYN `frame` (from `client`:`sport` to `vip`:80, sequence number 1000): it must
/// come back out as a RST answering it, every field and checksum right.
fn expect_reset(lb: &Balancer, frame: &[u8], client: &str, vip: &str, sport: u16, case: &str) {
    let before = lb.stat(Stat::ConnLimitReset);
    let out = lb.run(frame);
    assert_eq!(out.action, XdpAction::Tx, "{case}: the RST goes back out");
    assert_eq!(lb.stat(Stat::ConnLimitReset), before + 1, "{case}: counted");
    assert_eq!(&out.packet[0..6], &CLIENT_MAC, "{case}: to the hop the SYN came from");
    assert_eq!(&out.packet[6..12], &LB_MAC, "{case}: from the interface it came in on");
    let headers = PacketHeaders::from_ethernet_slice(&out.packet).expect("the RST parses");
    let Some(TransportHeader::Tcp(tcp)) = &headers.transport else { panic!("{case}: not TCP") };
    assert!(tcp.rst && tcp.ack && !tcp.syn && !tcp.fin, "{case}: RST|ACK");
    assert_eq!((tcp.source_port, tcp.destination_port), (80, sport), "{case}: ports swapped");
    assert_eq!((tcp.sequence_number, tcp.acknowledgment_number), (0, 1001), "{case}: acknowledges the SYN");
    assert_eq!(tcp.window_size, 0, "{case}: no window");
    assert!(headers.payload.slice().is_empty(), "{case}: the SYN's payload is not echoed");
    match &headers.net {
        Some(NetHeaders::Ipv4(ip, _)) => {
            assert_eq!(ip.source, vip.parse::<std::net::Ipv4Addr>().expect("v4").octets(), "{case}: from the VIP");
            assert_eq!(ip.destination, client.parse::<std::net::Ipv4Addr>().expect("v4").octets(), "{case}");
            assert_eq!(ip.header_checksum, ip.calc_header_checksum(), "{case}: IPv4 checksum");
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv4(ip, &[]).expect("sum"), "{case}: TCP checksum");
        }
        Some(NetHeaders::Ipv6(ip, _)) => {
            assert_eq!(ip.source, vip.parse::<std::net::Ipv6Addr>().expect("v6").octets(), "{case}: from the VIP");
            assert_eq!(ip.destination, client.parse::<std::net::Ipv6Addr>().expect("v6").octets(), "{case}");
            assert_eq!(tcp.checksum, tcp.calc_checksum_ipv6(ip, &[]).expect("sum"), "{case}: TCP checksum");
        }
        _ => panic!("{case}: not IP"),
    }
}

#[test]
fn a_vip_admits_its_burst_then_drops_new_flows_while_established_ones_and_other_vips_go_on() {
    require_root!();
    let mut limited = Limited::new(CONFIG);
    let lb = &limited.lb;
    for port in 0..3 {
        lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 1000 + port), None, "within the burst");
    }
    // Any source: the limit is the VIP's, not a prefix's.
    let refused = Some(Stat::DropConnLimited);
    lb.expect_verdict(&syn("203.0.113.9", "192.0.2.20", 1010), refused, "past the burst, another source");
    lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 1011), refused, "past the burst");
    // An admitted flow's packets are not new flows; its SYN sent again is not counted either.
    let ack = Frame::v4("198.51.100.1", "192.0.2.20", L4::TcpAck { sport: 1000, dport: 80 }).build();
    lb.expect_verdict(&ack, None, "an admitted flow's ACK");
    lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 1000), None, "an admitted flow's SYN again");
    // Other VIPs: a VIP without a limit, and the UDP VIP on the same address with its own.
    for port in 0..5 {
        lb.expect_verdict(&syn("198.51.100.1", "192.0.2.23", 2000 + port), None, "a VIP without a limit");
    }
    let udp = |sport| Frame::v4("198.51.100.2", "192.0.2.20", L4::Udp { sport, dport: 53 }).build();
    lb.expect_verdict(&udp(1), None, "UDP 1");
    lb.expect_verdict(&udp(2), None, "UDP 2");
    lb.expect_verdict(&udp(3), refused, "UDP past its own burst");
    lb.expect_verdict(&udp(1), None, "a known UDP flow");
    assert_eq!(limited.bucket("drop4"), (3, 2), "the TCP VIP's bucket: admitted, limited");
    assert_eq!(limited.bucket("dns4"), (2, 1), "the UDP VIP's bucket");
    // What `xlb status` and `/metrics` show.
    let statuses = limited.write();
    let drop4 = statuses.iter().find(|s| s.vip == "drop4").expect("drop4 reported");
    assert_eq!((drop4.global, drop4.rate, drop4.reset, drop4.admitted, drop4.limited), (false, Some(1.0), false, 3, 2));
    assert!(!statuses.iter().any(|s| s.vip == "free4"), "a VIP without a limit is not reported");
    let text = ConnLimitStatus::render(&statuses);
    assert!(
        text.contains("connection limits:") && text.lines().any(|l| l.contains("drop4") && l.contains("drop")),
        "{text}"
    );
}

#[test]
fn on_limit_reset_answers_the_refused_syn_with_a_rst_ipv4_ipv6_and_nat() {
    require_root!();
    let limited = Limited::new(CONFIG);
    let lb = &limited.lb;
    for (vip, client) in
        [("192.0.2.21", "198.51.100.5"), ("2001:db8::21", "2001:db8:c::5"), ("192.0.2.22", "198.51.100.6")]
    {
        lb.expect_verdict(&syn(client, vip, 3000), None, &format!("{vip}: first"));
        lb.expect_verdict(&syn(client, vip, 3001), None, &format!("{vip}: second"));
        expect_reset(lb, &syn(client, vip, 3002), client, vip, 3002, &format!("{vip}: past the burst"));
        // With a payload (a SYN may carry one): trimmed.
        let mut frame = if vip.contains(':') {
            Frame::v6(client, vip, L4::TcpSyn { sport: 3003, dport: 80 })
        } else {
            Frame::v4(client, vip, L4::TcpSyn { sport: 3003, dport: 80 })
        };
        frame.payload = vec![7; 300];
        expect_reset(lb, &frame.build(), client, vip, 3003, &format!("{vip}: with a payload"));
    }
    assert_eq!(limited.bucket("rst4"), (2, 2));
    assert_eq!(limited.bucket("nat4"), (2, 2), "the NAT VIP counts in its own bucket");
}

#[test]
fn a_reload_that_removes_the_limit_clears_it_and_one_that_adds_it_starts_a_full_bucket() {
    require_root!();
    let mut limited = Limited::new(CONFIG);
    for port in 0..3 {
        limited.lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 4000 + port), None, "burst");
    }
    limited.lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 4010), Some(Stat::DropConnLimited), "limited");
    let without = CONFIG.replace("    connection_limit: { new_per_second: 1, burst: 3 }\n", "");
    limited.lb.reload(&without);
    limited.write();
    for port in 0..5 {
        limited.lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 4100 + port), None, "no limit any more");
    }
    limited.lb.reload(CONFIG);
    limited.write();
    for port in 0..3 {
        limited.lb.expect_verdict(
            &syn("198.51.100.1", "192.0.2.20", 4200 + port),
            None,
            "the limit back, a full burst",
        );
    }
    limited.lb.expect_verdict(&syn("198.51.100.1", "192.0.2.20", 4210), Some(Stat::DropConnLimited), "limited again");
    assert_eq!(limited.bucket("drop4"), (3, 1), "counted afresh");
}

#[test]
fn a_concurrent_limit_holds_open_connections_and_frees_the_places_clients_closed() {
    require_root!();
    let clock = KernelClock::calibrate().expect("the kernel's HZ");
    let mut limited = Limited::new(CONFIG);
    let (client, vip) = ("198.51.100.7", "192.0.2.24");
    let frame = |l4| Frame::v4(client, vip, l4).build();
    let open = |limited: &mut Limited, sport: u16, case: &str| {
        limited.lb.expect_verdict(&frame(L4::TcpSyn { sport, dport: 80 }), None, case);
        limited.lb.expect_verdict(&frame(L4::TcpAck { sport, dport: 80 }), None, case);
    };
    let status = |statuses: Vec<ConnLimitStatus>| statuses.into_iter().find(|s| s.vip == "conc4").expect("reported");
    // Not counted yet: no ceiling (the thread counts before its first write).
    let first = status(limited.recount("conc4", &clock));
    assert_eq!(first.concurrent, Some(ConcurrentStatus { limit: 3, allowed: 3, open: 0 }));
    assert_eq!(first.rate, None, "no rate limit");
    for sport in 5000..5003 {
        open(&mut limited, sport, "within the limit");
    }
    expect_reset(&limited.lb, &syn(client, vip, 5003), client, vip, 5003, "a fourth connection");
    // Counted: 3 open, none free.
    let full = status(limited.recount("conc4", &clock));
    assert_eq!(full.concurrent, Some(ConcurrentStatus { limit: 3, allowed: 3, open: 3 }), "{full:?}");
    expect_reset(&limited.lb, &syn(client, vip, 5004), client, vip, 5004, "still full");
    // The client closes one: its entry is marked, the next count frees its place (one only).
    limited.lb.expect_verdict(&frame(L4::TcpFin { sport: 5000, dport: 80 }), None, "the FIN goes on to the backend");
    let (_, set) = limited.lb.maps.flow_set_of(&flow_key(client, vip, 5000)).expect("the set");
    let way = set.way_of(&flow_key(client, vip, 5000)).expect("still in the table");
    assert_ne!(set.used[way] & lb_common::FLOW_CLOSED, 0, "marked closed");
    // The client's last ACKs (of the server's FIN) leave it closed.
    limited.lb.expect_verdict(&frame(L4::TcpAck { sport: 5000, dport: 80 }), None, "the client's last ACK");
    let (_, set) = limited.lb.maps.flow_set_of(&flow_key(client, vip, 5000)).expect("the set");
    assert_ne!(set.used[way] & lb_common::FLOW_CLOSED, 0, "still closed after the last ACK");
    expect_reset(&limited.lb, &syn(client, vip, 5005), client, vip, 5005, "not freed before the count");
    let freed = status(limited.recount("conc4", &clock));
    assert_eq!(freed.concurrent.map(|c| c.open), Some(2), "{freed:?}");
    open(&mut limited, 5006, "the freed place");
    expect_reset(&limited.lb, &syn(client, vip, 5007), client, vip, 5007, "full again");
    // The closed 4-tuple reused: its SYN is a new connection, judged like any other.
    expect_reset(&limited.lb, &syn(client, vip, 5000), client, vip, 5000, "a reused 4-tuple, over the limit");
    limited.lb.expect_verdict(&frame(L4::TcpFin { sport: 5001, dport: 80 }), None, "another client closes");
    let freed = status(limited.recount("conc4", &clock));
    assert_eq!(freed.concurrent.map(|c| c.open), Some(2), "{freed:?}");
    open(&mut limited, 5000, "the reused 4-tuple in the freed place");
    let (_, set) = limited.lb.maps.flow_set_of(&flow_key(client, vip, 5000)).expect("the set");
    let way = set.way_of(&flow_key(client, vip, 5000)).expect("recorded again");
    assert_eq!(set.used[way] & lb_common::FLOW_CLOSED, 0, "open again");
    let reused = status(limited.recount("conc4", &clock));
    assert_eq!(reused.concurrent.map(|c| c.open), Some(3), "the reused tuple counts again: {reused:?}");
    expect_reset(&limited.lb, &syn(client, vip, 5008), client, vip, 5008, "full: nothing more");
    let text = ConnLimitStatus::render(&[reused]);
    assert!(text.lines().any(|l| l.contains("conc4") && l.contains("3/3") && l.contains("rst")), "{text}");
}

fn flow_key(client: &str, vip: &str, sport: u16) -> lb_common::FlowKey {
    let (saddr, family) = xlb::config::ip_words(client.parse().expect("address"));
    let (daddr, _) = xlb::config::ip_words(vip.parse().expect("address"));
    lb_common::FlowKey {
        saddr,
        daddr,
        sport: sport.to_be(),
        dport: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        family,
        pad: 0,
    }
}
