//! SYN cookies at NAT VIPs in the real XDP object under BPF_PROG_TEST_RUN: the SYN answered with a
//! cookie and nothing claimed, a valid cookie's ACK turned into the SYN to the backend from a
//! pool source, the backend's SYN-ACK answered with its ACK, sequence numbers shifted both ways
//! for the life of the flow, forged and stale cookies dropped, the automatic mode's threshold —
//! every output frame compared byte for byte with one built fresh (checksums by construction).

use std::net::IpAddr;

use etherparse::{PacketBuilder, SlicedPacket, TcpOptionElement, TransportSlice};
use lb_common::{
    FAMILY_V4, FlowKey, PROTO_TCP, SYN_COOKIE_PERIOD_SHIFT, Stat, SynCookieSecret, syn_cookie, syn_cookie_mss_index,
};
use xlb::{
    apply::{nat::monotonic_ns, testrun::XdpAction},
    config::ip_words,
};
use xlb_tests::{
    Balancer,
    packets::{CLIENT_MAC, LB_MAC, hex},
    require_root,
};

const BACKEND_MAC: [u8; 6] = [2, 0, 0, 0, 1, 1];
const SECRET: SynCookieSecret = SynCookieSecret { k0: 0x0123_4567_89ab_cdef, k1: 0xfedc_ba98_7654_3210 };

const CONFIG: &str = r#"
nat_pools:
  - name: p4
    addresses: [198.51.100.1]
    ports: 40000-40009
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
    syn_cookies: always
    backends:
      - { address: 10.1.0.1, port: 8080, mac: "02:00:00:00:01:01" }
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p6
    syn_cookies: always
    backends:
      - { address: "fd00::1", port: 8080, mac: "02:00:00:00:01:01" }
  - name: auto4
    address: 192.0.2.11
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    syn_cookies: { above: 10 }
    backends:
      - { address: 10.1.0.2, port: 8080, mac: "02:00:00:00:01:01" }
  - name: busy4
    address: 192.0.2.12
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    syn_cookies: { above: 1000000 }
    backends:
      - { address: 10.1.0.3, port: 8080, mac: "02:00:00:00:01:01" }
  - name: plain4
    address: 192.0.2.13
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: p4
    backends:
      - { address: 10.1.0.4, port: 8080, mac: "02:00:00:00:01:01" }
"#;

/// A TCP segment as a test writes or expects it.
#[derive(Clone)]
struct Segment {
    src: &'static str,
    dst: String,
    sport: u16,
    dport: u16,
    seq: u32,
    ack: Option<u32>,
    syn: bool,
    rst: bool,
    fin: bool,
    window: u16,
    options: Vec<TcpOptionElement>,
    payload: Vec<u8>,
    ttl: u8,
    macs: ([u8; 6], [u8; 6]),
}

impl Segment {
    fn new(src: &'static str, dst: &str, sport: u16, dport: u16, seq: u32) -> Self {
        Self {
            src,
            dst: dst.to_owned(),
            sport,
            dport,
            seq,
            ack: None,
            syn: false,
            rst: false,
            fin: false,
            window: 64_240,
            options: Vec::new(),
            payload: Vec::new(),
            ttl: 64,
            macs: (LB_MAC, CLIENT_MAC),
        }
    }

    fn build(&self) -> Vec<u8> {
        let (dst_mac, src_mac) = self.macs;
        let eth = PacketBuilder::ethernet2(src_mac, dst_mac);
        let ip = match (self.src.parse::<IpAddr>().expect("address"), self.dst.parse::<IpAddr>().expect("address")) {
            (IpAddr::V4(s), IpAddr::V4(d)) => eth.ipv4(s.octets(), d.octets(), self.ttl),
            (IpAddr::V6(s), IpAddr::V6(d)) => eth.ipv6(s.octets(), d.octets(), self.ttl),
            _ => panic!("mixed families"),
        };
        let mut tcp = ip.tcp(self.sport, self.dport, self.seq, self.window);
        if self.syn {
            tcp = tcp.syn();
        }
        if self.rst {
            tcp = tcp.rst();
        }
        if self.fin {
            tcp = tcp.fin();
        }
        if let Some(ack) = self.ack {
            tcp = tcp.ack(ack);
        }
        let tcp = tcp.options(&self.options).expect("options fit");
        let mut out = Vec::new();
        tcp.write(&mut out, &self.payload).expect("etherparse writes the frame");
        out
    }
}

/// (sequence number, acknowledgment number, source address, source port) of a frame.
fn tcp_fields(frame: &[u8]) -> (u32, u32, String, u16) {
    let sliced = SlicedPacket::from_ethernet(frame).expect("parses");
    let Some(TransportSlice::Tcp(tcp)) = sliced.transport else { panic!("not TCP") };
    let src = match sliced.net {
        Some(etherparse::NetSlice::Ipv4(ip)) => ip.header().source_addr().to_string(),
        Some(etherparse::NetSlice::Ipv6(ip)) => ip.header().source_addr().to_string(),
        _ => panic!("not IP"),
    };
    (tcp.sequence_number(), tcp.acknowledgment_number(), src, tcp.source_port())
}

/// Runs `frame`: its verdict must be `action`, counted once as `stat`; returns the output.
fn run(lb: &Balancer, frame: &[u8], action: XdpAction, stat: Stat, case: &str) -> Vec<u8> {
    let before = lb.stat(stat);
    let out = lb.run(frame);
    assert_eq!(out.action, action, "{case}");
    assert_eq!(lb.stat(stat), before + 1, "{case}: counted as {}", stat.name());
    out.packet
}

/// Pool sources held by NAT flows (entries of the reverse table).
fn sources_held(lb: &Balancer) -> usize {
    lb.maps.nat_tables().expect("NAT tables").reverse_entries().len()
}

fn balancer() -> Balancer {
    let mut lb = Balancer::with_config(CONFIG);
    assert!(lb.maps.syn_cookies.as_ref().expect("cookie maps").secret().expect("read").is_set(), "a key at load");
    lb.maps.set_syn_cookie_secret(&SECRET).expect("secret written");
    lb
}

fn key(src: &str, dst: &str, sport: u16, dport: u16) -> FlowKey {
    let (saddr, family) = ip_words(src.parse().expect("address"));
    let (daddr, _) = ip_words(dst.parse().expect("address"));
    FlowKey { saddr, daddr, sport: sport.to_be(), dport: dport.to_be(), proto: PROTO_TCP, family, pad: 0 }
}

/// The SYN-ACK the data plane must answer `syn` with, for the cookie it chose (checked to be the
/// one `SECRET` makes for this connection, in this period or the one before).
fn expect_syn_ack(syn: &Segment, out: &[u8], mss: u16, case: &str) -> u32 {
    let (cookie, _, _, _) = tcp_fields(out);
    let flow = key(syn.src, &syn.dst, syn.sport, syn.dport);
    let family = flow.family;
    let period = monotonic_ns() >> SYN_COOKIE_PERIOD_SHIFT;
    let index = syn_cookie_mss_index(mss, family);
    assert!(
        [period, period - 1].iter().any(|p| syn_cookie(&SECRET, &flow, syn.seq, *p, index) == cookie),
        "{case}: {cookie:#x} is the connection's cookie"
    );
    let mut expected = Segment::new(leak(&syn.dst), syn.src, syn.dport, syn.sport, cookie);
    expected.syn = true;
    expected.ack = Some(syn.seq + 1);
    expected.window = 65_535;
    expected.options = vec![TcpOptionElement::MaximumSegmentSize(mss)];
    expected.macs = (CLIENT_MAC, LB_MAC);
    assert_eq!(hex(out), hex(&expected.build()), "{case}: SYN-ACK bytes");
    cookie
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}

/// A client's SYN as Linux sends it: MSS, SACK permitted, timestamps, window scale.
fn client_syn(src: &'static str, dst: &str, sport: u16, isn: u32, mss: u16) -> Segment {
    let mut syn = Segment::new(src, dst, sport, 80, isn);
    syn.syn = true;
    syn.options = vec![
        TcpOptionElement::MaximumSegmentSize(mss),
        TcpOptionElement::SelectiveAcknowledgementPermitted,
        TcpOptionElement::Timestamp(12345, 0),
        TcpOptionElement::Noop,
        TcpOptionElement::WindowScale(7),
    ];
    syn
}

/// The whole life of a cookie flow at `vip` (family by address): SYN → cookie; ACK → SYN to the
/// backend; early data → SYN again; backend SYN-ACK → ACK; data both ways shifted; a repeated
/// SYN-ACK answered again.
fn cookie_flow(client: &'static str, vip: &str, backend: &'static str, pool: &str, mss: u16, expected_mss: u16) {
    let lb = balancer();
    let case = format!("{client} → {vip}");
    let isn = 0xfff0_0000;
    let syn = client_syn(client, vip, 51_000, isn, mss);
    let out = run(&lb, &syn.build(), XdpAction::Tx, Stat::SynCookieSent, &case);
    let cookie = expect_syn_ack(&syn, &out, expected_mss, &case);
    assert_eq!(sources_held(&lb), 0, "{case}: a SYN claims nothing");

    // The ACK returning the cookie: a pool source claimed, the SYN to the backend.
    let mut ack = Segment::new(client, vip, 51_000, 80, isn + 1);
    ack.ack = Some(cookie.wrapping_add(1));
    ack.window = 502;
    let out = run(&lb, &ack.build(), XdpAction::Tx, Stat::SynCookieOpened, &case);
    let (_, _, src, sport) = tcp_fields(&out);
    assert_eq!(src, pool, "{case}: from the pool");
    let mut to_backend = Segment::new(leak(&src), backend, sport, 8080, isn);
    to_backend.syn = true;
    to_backend.window = 502;
    to_backend.options = vec![TcpOptionElement::MaximumSegmentSize(expected_mss)];
    to_backend.macs = (BACKEND_MAC, LB_MAC);
    assert_eq!(hex(&out), hex(&to_backend.build()), "{case}: SYN to the backend");
    assert_eq!(sources_held(&lb), 1, "{case}: the flow holds one source");

    // Data before the backend answered: the SYN again.
    let mut early = ack.clone();
    early.payload = b"GET / HTTP/1.1\r\n\r\n".to_vec();
    let out = run(&lb, &early.build(), XdpAction::Tx, Stat::SynCookieSynResent, &case);
    assert_eq!(hex(&out), hex(&to_backend.build()), "{case}: the SYN again");

    // The backend's SYN-ACK: answered with the ACK that completes its handshake.
    let backend_isn = 0x7000_0000;
    let mut syn_ack = Segment::new(backend, &src, 8080, sport, backend_isn);
    syn_ack.syn = true;
    syn_ack.ack = Some(isn + 1);
    syn_ack.options = vec![TcpOptionElement::MaximumSegmentSize(1460)];
    syn_ack.macs = (LB_MAC, BACKEND_MAC);
    let mut handshake = Segment::new(leak(&src), backend, sport, 8080, isn + 1);
    handshake.ack = Some(backend_isn + 1);
    handshake.window = 502;
    handshake.macs = (BACKEND_MAC, LB_MAC);
    let out = run(&lb, &syn_ack.build(), XdpAction::Tx, Stat::SynCookieHandshake, &case);
    assert_eq!(hex(&out), hex(&handshake.build()), "{case}: the handshake's ACK");

    // The client's data: its acknowledgment shifted into the backend's space.
    let out = run(&lb, &early.build(), XdpAction::Tx, Stat::NatForwarded, &case);
    let mut forwarded = Segment::new(leak(&src), backend, sport, 8080, isn + 1);
    forwarded.ack = Some(backend_isn + 1);
    forwarded.window = 502;
    forwarded.payload = early.payload.clone();
    forwarded.ttl = 63;
    forwarded.macs = (BACKEND_MAC, LB_MAC);
    assert_eq!(hex(&out), hex(&forwarded.build()), "{case}: client data toward the backend");

    // The backend's data: its sequence number shifted into the client's space.
    let mut reply = Segment::new(backend, &src, 8080, sport, backend_isn + 1);
    reply.ack = Some(isn + 1 + early.payload.len() as u32);
    reply.payload = b"HTTP/1.1 200 OK\r\n\r\n".to_vec();
    reply.macs = (LB_MAC, BACKEND_MAC);
    let out = run(&lb, &reply.build(), XdpAction::Tx, Stat::NatReplied, &case);
    let mut back = Segment::new(leak(vip), client, 80, 51_000, cookie.wrapping_add(1));
    back.ack = reply.ack;
    back.payload = reply.payload.clone();
    back.ttl = 63;
    back.macs = (CLIENT_MAC, LB_MAC);
    assert_eq!(hex(&out), hex(&back.build()), "{case}: backend data toward the client");

    // A repeated SYN-ACK (our ACK lost) is answered again, the shift unchanged.
    let out = run(&lb, &syn_ack.build(), XdpAction::Tx, Stat::SynCookieHandshake, &case);
    assert_eq!(hex(&out), hex(&handshake.build()), "{case}: the handshake's ACK again");
    let out = run(&lb, &reply.build(), XdpAction::Tx, Stat::NatReplied, &case);
    assert_eq!(hex(&out), hex(&back.build()), "{case}: still shifted");
    assert_eq!(lb.backend(if vip.contains(':') { "web6" } else { "web4" }, backend).new_flows, 1);
}

#[test]
fn a_cookie_flow_v4_from_syn_to_data_both_ways() {
    require_root!();
    cookie_flow("203.0.113.7", "192.0.2.10", "10.1.0.1", "198.51.100.1", 1460, 1460);
}

#[test]
fn a_cookie_flow_v6_from_syn_to_data_both_ways() {
    require_root!();
    // A 1400-byte MSS is carried as the largest cookie MSS not above it.
    cookie_flow("2001:db8:c::7", "2001:db8::10", "fd00::1", "2001:db8:ff::1", 1430, 1420);
}

#[test]
fn forged_stale_and_misplaced_cookies_are_dropped_and_claim_nothing() {
    require_root!();
    let lb = balancer();
    let isn = 1000;
    let flow = key("203.0.113.7", "192.0.2.10", 51_000, 80);
    let period = monotonic_ns() >> SYN_COOKIE_PERIOD_SHIFT;
    let index = syn_cookie_mss_index(1460, FAMILY_V4);
    let ack_with = |ack: u32, seq: u32| {
        let mut segment = Segment::new("203.0.113.7", "192.0.2.10", 51_000, 80, seq);
        segment.ack = Some(ack);
        segment.build()
    };
    for (cookie, seq, what) in [
        (0x1234_5678, isn + 1, "a guessed cookie"),
        (syn_cookie(&SECRET, &flow, isn, period, index), isn + 2, "another sequence number"),
        (syn_cookie(&SECRET, &flow, isn, period - 2, index), isn + 1, "a cookie two periods old"),
        (syn_cookie(&SynCookieSecret { k0: 1, k1: 2 }, &flow, isn, period, index), isn + 1, "another secret"),
    ] {
        let frame = ack_with(cookie.wrapping_add(1), seq);
        let out = run(&lb, &frame, XdpAction::Drop, Stat::DropSynCookieInvalid, what);
        assert_eq!(out, frame, "{what}: untouched");
    }
    // The right one opens the flow.
    let good = syn_cookie(&SECRET, &flow, isn, period, index);
    run(&lb, &ack_with(good.wrapping_add(1), isn + 1), XdpAction::Tx, Stat::SynCookieOpened, "valid");
    assert_eq!(sources_held(&lb), 1, "only the valid ACK claimed a source");
    // A VIP without cookies drops an ACK of no flow as before.
    let mut plain = Segment::new("203.0.113.7", "192.0.2.13", 51_000, 80, isn + 1);
    plain.ack = Some(good.wrapping_add(1));
    run(&lb, &plain.build(), XdpAction::Drop, Stat::DropNatNoFlow, "no cookies at plain4");
}

#[test]
fn a_backend_refusal_reaches_the_client_with_the_sequence_it_expects() {
    require_root!();
    let lb = balancer();
    let isn = 5000;
    let syn = client_syn("203.0.113.9", "192.0.2.10", 52_000, isn, 1460);
    let out = run(&lb, &syn.build(), XdpAction::Tx, Stat::SynCookieSent, "SYN");
    let (cookie, _, _, _) = tcp_fields(&out);
    let mut ack = Segment::new("203.0.113.9", "192.0.2.10", 52_000, 80, isn + 1);
    ack.ack = Some(cookie.wrapping_add(1));
    let out = run(&lb, &ack.build(), XdpAction::Tx, Stat::SynCookieOpened, "ACK");
    let (_, _, src, sport) = tcp_fields(&out);
    // The backend refuses: RST|ACK with sequence 0.
    let mut rst = Segment::new("10.1.0.1", &src, 8080, sport, 0);
    rst.rst = true;
    rst.ack = Some(isn + 1);
    rst.window = 0;
    rst.macs = (LB_MAC, BACKEND_MAC);
    let out = run(&lb, &rst.build(), XdpAction::Tx, Stat::NatReplied, "RST");
    let mut expected = Segment::new("192.0.2.10", "203.0.113.9", 80, 52_000, cookie.wrapping_add(1));
    expected.rst = true;
    expected.ack = Some(isn + 1);
    expected.window = 0;
    expected.ttl = 63;
    expected.macs = (CLIENT_MAC, LB_MAC);
    assert_eq!(hex(&out), hex(&expected.build()), "the client's RST");
    // Anything else from the backend before its SYN-ACK is dropped.
    let mut stray = Segment::new("10.1.0.1", &src, 8080, sport, 77);
    stray.ack = Some(isn + 1);
    stray.macs = (LB_MAC, BACKEND_MAC);
    run(&lb, &stray.build(), XdpAction::Drop, Stat::DropSynCookieNoState, "data before the SYN-ACK");
}

#[test]
fn the_automatic_mode_answers_with_cookies_only_above_its_threshold() {
    require_root!();
    let lb = balancer();
    // `above: 10` is one SYN per 134 ms window: the first SYN opens its flow as usual, the
    // second in the same window trips the meter (a window boundary between them, 1 in ~10^4,
    // moves the trip to the third).
    let syn = |vip: &str, port: u16| client_syn("203.0.113.20", vip, port, 100, 1460).build();
    run(&lb, &syn("192.0.2.11", 50_000), XdpAction::Tx, Stat::NatForwarded, "first SYN at auto4");
    let mut first_cookie = None;
    for port in 50_001..50_010 {
        let out = lb.run(&syn("192.0.2.11", port));
        assert_eq!(out.action, XdpAction::Tx);
        let (_, ack, src, _) = tcp_fields(&out.packet);
        let cookie = src == "192.0.2.11" && ack == 101;
        match first_cookie {
            None if cookie => first_cookie = Some(port),
            Some(_) => assert!(cookie, "port {port}: cookies stay on once tripped"),
            None => {}
        }
    }
    let first = first_cookie.expect("the meter trips");
    assert!(first <= 50_002, "tripped by the second or third SYN, not at {first}");
    // Far below its threshold, busy4 never answers with cookies.
    let before = lb.stat(Stat::SynCookieSent);
    for port in 50_000..50_008 {
        run(&lb, &syn("192.0.2.12", port), XdpAction::Tx, Stat::NatForwarded, "busy4");
    }
    assert_eq!(lb.stat(Stat::SynCookieSent), before);
}

#[test]
fn a_closed_cookie_flow_s_reused_port_opens_a_new_flow() {
    require_root!();
    let lb = balancer();
    let open = |isn: u32| {
        let syn = client_syn("203.0.113.30", "192.0.2.10", 53_000, isn, 1460);
        let out = run(&lb, &syn.build(), XdpAction::Tx, Stat::SynCookieSent, "SYN");
        let (cookie, _, _, _) = tcp_fields(&out);
        let mut ack = Segment::new("203.0.113.30", "192.0.2.10", 53_000, 80, isn + 1);
        ack.ack = Some(cookie.wrapping_add(1));
        let out = run(&lb, &ack.build(), XdpAction::Tx, Stat::SynCookieOpened, "ACK of the cookie");
        let (seq, _, src, sport) = tcp_fields(&out);
        assert_eq!(seq, isn, "the SYN to the backend carries this connection's sequence number");
        (cookie, src, sport)
    };
    let (cookie, src, sport) = open(10_000);
    // The backend completes its handshake, then the client closes.
    let mut syn_ack = Segment::new("10.1.0.1", &src, 8080, sport, 90_000);
    syn_ack.syn = true;
    syn_ack.ack = Some(10_001);
    syn_ack.macs = (LB_MAC, BACKEND_MAC);
    run(&lb, &syn_ack.build(), XdpAction::Tx, Stat::SynCookieHandshake, "SYN-ACK");
    let mut fin = Segment::new("203.0.113.30", "192.0.2.10", 53_000, 80, 10_001);
    fin.ack = Some(cookie.wrapping_add(1));
    fin.fin = true;
    run(&lb, &fin.build(), XdpAction::Tx, Stat::NatForwarded, "the client's FIN");
    // The same client port again: a new connection, with a new cookie and a source of its own.
    let (_, _, _) = open(20_000);
    assert_eq!(sources_held(&lb), 1, "the closed flow's source was freed");
}

#[test]
fn a_restarted_agent_keeps_the_key_and_the_meters() {
    require_root!();
    use xlb::{
        apply::{
            dataplane::{Loaded, TableSizes},
            reconcile::Reconciler,
        },
        state::desired::DesiredState,
    };
    let dir = std::path::PathBuf::from(format!("/sys/fs/bpf/xlb-test-cookies-{}", std::process::id()));
    struct Unpin(std::path::PathBuf);
    impl Drop for Unpin {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _unpin = Unpin(dir.clone());
    let sizes = TableSizes { flows: 1024, nat: 1024 };
    let config = xlb_tests::parse_config(CONFIG);
    let (key, meters) = {
        let (_program, mut maps, adopted) = Loaded::balancer_pinned(sizes, &dir).expect("pinned load");
        assert!(!adopted);
        Reconciler::new().apply(&DesiredState::new(&config, &xlb_tests::FACTS), &mut maps).expect("reconcile");
        let cookies = maps.syn_cookies.as_ref().expect("cookie maps");
        (cookies.secret().expect("key"), cookies.meters().expect("meters"))
    };
    assert!(key.is_set(), "a random key at the first load");
    // auto4 (10/s) and busy4 (10^6/s): one threshold each, per 134 ms window.
    let mut thresholds: Vec<u32> = meters.iter().map(|(_, m)| m.threshold).collect();
    thresholds.sort_unstable();
    assert_eq!(thresholds, vec![1, 134_217]);
    let (_program, maps, adopted) = Loaded::balancer_pinned(sizes, &dir).expect("pinned load");
    assert!(adopted);
    let cookies = maps.syn_cookies.as_ref().expect("cookie maps");
    assert_eq!(cookies.secret().expect("key"), key, "the adopted key is kept: cookies in flight stay valid");
    assert_eq!(cookies.meters().expect("meters"), meters, "the meters are the pinned ones");
    // Another node (another pin directory) gets a key of its own.
    let other_dir = std::path::PathBuf::from(format!("{}-other", dir.display()));
    let _unpin_other = Unpin(other_dir.clone());
    let (_other, other_maps, _) = Loaded::balancer_pinned(sizes, &other_dir).expect("pinned load");
    assert_ne!(other_maps.syn_cookies.as_ref().expect("cookie maps").secret().expect("key"), key);
}
