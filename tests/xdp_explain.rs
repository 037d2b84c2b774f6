//! `xlb explain` against a real pinned data plane: the explanation names what the program did
//! (checked against the reference model's Maglev pick and against a real run of the same packet
//! through the live program), and explaining leaves every live table and counter as it was.

use std::{collections::BTreeMap, net::SocketAddr, path::PathBuf};

use lb_common::{FlowKey, VipKey};
use xlb::{
    apply::{
        dataplane::{Loaded, Maps, TableSizes},
        explain::{Explanation, LivePlane, Probe, Segment, explain, packet},
        reconcile::{AppliedVip, Reconciler},
        testrun::{self, XdpAction},
    },
    config::ip_words,
    state::desired::DesiredState,
};
use xlb_tests::{FACTS, FORWARDING_CONFIG, model::Model, packets::LB_MAC, parse_config, require_root};

/// Removes the test's pin directory, even when the test fails.
struct Unpin(PathBuf);

impl Drop for Unpin {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Plane {
    _unpin: Unpin,
    program: Loaded,
    maps: Maps,
    reconciler: Reconciler,
    live: LivePlane,
}

impl Plane {
    fn new(name: &str, yaml: &str) -> Self {
        let dir = PathBuf::from(format!("/sys/fs/bpf/xlb-test-explain-{name}-{}", std::process::id()));
        let _unpin = Unpin(dir.clone());
        let (program, mut maps, _) =
            Loaded::balancer_pinned(TableSizes { flows: 4096, nat: 1024 }, &dir).expect("pinned load");
        let mut reconciler = Reconciler::new();
        reconciler.apply(&DesiredState::new(&parse_config(yaml), &FACTS), &mut maps).expect("reconcile");
        let live = LivePlane { pin_dir: dir, iface: "test0".into(), ifindex: 0, iface_mac: LB_MAC };
        Plane { _unpin, program, maps, reconciler, live }
    }

    fn reload(&mut self, yaml: &str) {
        self.reconciler.apply(&DesiredState::new(&parse_config(yaml), &FACTS), &mut self.maps).expect("reload");
    }

    fn applied(&self) -> &BTreeMap<VipKey, AppliedVip> {
        self.reconciler.applied()
    }

    fn explain(&self, udp: bool, client: &str, vip: &str, segment: Option<Segment>) -> Explanation {
        let probe = Probe { udp, client: client.parse().unwrap(), vip: vip.parse().unwrap(), segment };
        let e = explain(&self.live, self.applied(), &probe).expect("explain");
        eprintln!("{}", xlb::serve::explain::render(&e));
        e
    }

    /// Runs the packet through the live program itself.
    fn send(&self, client: &str, vip: &str, segment: Segment) -> XdpAction {
        let frame = packet::build(client.parse().unwrap(), vip.parse().unwrap(), segment, LB_MAC).unwrap();
        testrun::run_on(self.program.xdp().unwrap(), &frame, 0).expect("test run").action
    }

    /// Everything explain must leave alone: counters, the flow's connection-table entry, NAT flows.
    fn live_state(&self, key: &FlowKey) -> String {
        let nat = self.maps.nat_tables().unwrap();
        format!(
            "{:?} {:?} {:?} {}",
            self.maps.stats().unwrap(),
            self.maps.flow(key).unwrap(),
            nat.flow(key),
            nat.reverse_entries().len()
        )
    }
}

fn key(client: &str, vip: &str, proto: u8) -> FlowKey {
    let (c, v): (SocketAddr, SocketAddr) = (client.parse().unwrap(), vip.parse().unwrap());
    let (saddr, family) = ip_words(c.ip());
    FlowKey {
        saddr,
        daddr: ip_words(v.ip()).0,
        sport: c.port().to_be(),
        dport: v.port().to_be(),
        proto,
        family,
        pad: 0,
    }
}

fn vip_key(vip: &str, proto: u8) -> VipKey {
    let v: SocketAddr = vip.parse().unwrap();
    let (addr, family) = ip_words(v.ip());
    VipKey { addr, port: v.port().to_be(), proto, family }
}

fn counters(e: &Explanation) -> Vec<&str> {
    e.counters.iter().map(|c| c.counter.as_str()).collect()
}

/// The MAC FORWARDING_CONFIG gives dsr-l2 backend `address`.
fn mac_of(address: &str) -> String {
    let line = FORWARDING_CONFIG.lines().find(|l| l.contains(&format!("address: {address},"))).unwrap();
    line.split("mac: \"").nth(1).unwrap().split('"').next().unwrap().to_owned()
}

#[test]
fn a_new_flow_is_explained_as_the_program_and_the_model_pick_it_and_nothing_live_changes() {
    require_root!();
    let mut plane = Plane::new("dsr", FORWARDING_CONFIG);
    let model = Model::new(&parse_config(FORWARDING_CONFIG), &FACTS);
    let (client, vip) = ("198.51.100.7:40000", "192.0.2.1:80");
    let flow = key(client, vip, lb_common::PROTO_TCP);
    let expected = model.pick(&vip_key(vip, lb_common::PROTO_TCP), &flow).expect("the model picks a backend");
    let before = plane.live_state(&flow);

    let e = plane.explain(false, client, vip, None);
    assert!(e.packet.starts_with("tcp SYN 198.51.100.7:40000 → 192.0.2.1:80"), "{}", e.packet);
    let named = e.vip.as_ref().expect("a VIP");
    assert_eq!((named.name.as_str(), named.mode.as_str()), ("l2v4", "dsr-l2"));
    assert_eq!(e.known, None, "the live tables hold nothing of this flow yet");
    let maglev = e.maglev.as_ref().expect("a Maglev entry");
    assert_eq!(maglev.entry, flow.hash() % plane.applied()[&vip_key(vip, lb_common::PROTO_TCP)].meta.table_size);
    assert_eq!(maglev.backend.as_deref(), Some(expected.as_str()));
    assert_eq!(e.backend.as_deref(), Some(expected.as_str()));
    assert_eq!(e.action, "tx");
    assert_eq!(counters(&e), ["forwarded", "flow_miss"]);
    assert!(e.records.as_deref().is_some_and(|r| r.contains("embryonic")), "{:?}", e.records);
    assert_eq!(e.headers_out[0], format!("ethernet 02:00:00:00:00:02 → {}", mac_of(&expected)));
    assert_eq!(e.headers_out[1..], e.headers_in[1..], "dsr-l2 leaves the IP packet as it is");
    assert_eq!(plane.live_state(&flow), before, "explaining changed nothing live");

    // The flow opens for real: the live table now holds it, confirmed by its ACK.
    assert_eq!(plane.send(client, vip, Segment::Syn), XdpAction::Tx);
    assert_eq!(plane.send(client, vip, Segment::Ack), XdpAction::Tx);
    let recorded = plane.maps.flow(&flow).unwrap().expect("recorded");
    let e = plane.explain(false, client, vip, None);
    assert!(e.packet.starts_with("tcp ACK"), "the flow's next packet is an ACK: {}", e.packet);
    let known = e.known.as_ref().expect("known");
    assert_eq!((known.table.as_str(), known.state.as_str()), ("connection table", "confirmed"));
    assert_eq!(known.backend, expected);
    assert_eq!(e.backend.as_deref(), Some(expected.as_str()));
    assert_eq!(counters(&e), ["forwarded"], "a hit: no miss counted");
    assert_eq!(e.records, None);

    // Its backend stops taking new flows: the table sends new flows elsewhere, this one stays.
    let parked = FORWARDING_CONFIG.replacen(
        &format!("address: {expected}, mac: \"{}\"", mac_of(&expected)),
        &format!("address: {expected}, mac: \"{}\", weight: 0 }} #", mac_of(&expected)),
        1,
    );
    plane.reload(&parked);
    let before = plane.live_state(&flow);
    let e = plane.explain(false, client, vip, None);
    assert_eq!(e.known.as_ref().map(|k| k.backend.as_str()), Some(expected.as_str()));
    let now = e.maglev.as_ref().and_then(|m| m.backend.clone()).expect("the table names a backend");
    assert_ne!(now, expected, "weight 0: the table no longer names it");
    assert_eq!(Some(now), Model::new(&parse_config(&parked), &FACTS).pick(&vip_key(vip, 6), &flow));
    assert_eq!(e.backend.as_deref(), Some(expected.as_str()), "the established flow stays on its backend");
    assert_eq!(plane.live_state(&flow), before);
    assert_eq!(plane.maps.flow(&flow).unwrap(), Some(recorded));
}

#[test]
fn nat_explains_translation_and_source_without_claiming_a_live_port() {
    require_root!();
    let plane = Plane::new("nat", FORWARDING_CONFIG);
    let (client, vip) = ("198.51.100.9:41000", "192.0.2.6:80");
    let flow = key(client, vip, lb_common::PROTO_TCP);
    let before = plane.live_state(&flow);
    let e = plane.explain(false, client, vip, None);
    assert_eq!(e.vip.as_ref().map(|v| v.mode.as_str()), Some("nat"));
    assert_eq!(e.action, "tx");
    assert_eq!(counters(&e)[0], "nat_forwarded");
    let backend = e.backend.clone().expect("a backend");
    assert_eq!(e.maglev.as_ref().and_then(|m| m.backend.clone()), Some(backend.clone()));
    let records = e.records.clone().expect("a NAT flow opened");
    assert!(records.starts_with("opens a NAT flow: source 198.18.0."), "{records}");
    // Backend 10.2.0.1 has port 8080 of its own; 10.2.0.2 keeps the VIP's port.
    let (address, port) = match backend.as_str() {
        "10.2.0.1:8080" => ("10.2.0.1", 8080),
        "10.2.0.2" => ("10.2.0.2", 80),
        other => panic!("not a backend of nat4: {other}"),
    };
    assert!(e.headers_out[1].starts_with("ipv4 198.18.0."), "{:?}", e.headers_out);
    assert!(e.headers_out[1].contains(&format!("→ {address} ")), "{:?}", e.headers_out);
    assert!(e.headers_out[2].contains(&format!("→ {port} [SYN]")), "{:?}", e.headers_out);
    assert_eq!(plane.live_state(&flow), before, "no live port claimed, no counter moved");

    // Opened for real: explain finds it in the NAT table with the source the live program chose.
    assert_eq!(plane.send(client, vip, Segment::Syn), XdpAction::Tx);
    let live = plane.maps.nat_tables().unwrap().flow(&flow).expect("a live NAT flow");
    let e = plane.explain(false, client, vip, None);
    let known = e.known.clone().expect("known");
    assert_eq!(known.table, "NAT table");
    assert_eq!(known.backend, backend);
    let port = u16::from_be(live.source_port);
    assert!(known.source.as_deref().is_some_and(|s| s.ends_with(&format!(":{port}"))), "{:?}", known.source);
    assert_eq!(counters(&e), ["nat_forwarded"]);
}

#[test]
fn other_traffic_and_bad_requests_are_explained_in_words() {
    require_root!();
    let plane = Plane::new("other", FORWARDING_CONFIG);
    let e = plane.explain(false, "198.51.100.7:40000", "203.0.113.1:80", None);
    assert_eq!(e.vip, None);
    assert_eq!(e.action, "pass");
    assert_eq!(counters(&e), ["pass_not_vip"]);
    assert!(e.headers_out.is_empty());
    let text = xlb::serve::explain::render(&e);
    assert!(text.contains("no VIP serves this address"), "{text}");

    // The VIP parks its only backend: nothing to send to.
    let e = plane.explain(false, "198.51.100.7:40000", "192.0.2.5:80", None);
    assert_eq!((e.action.as_str(), counters(&e)[0]), ("drop", "drop_no_backend"));

    let e = plane.explain(true, "[2001:db8:9::7]:5353", "[2001:db8::2]:53", None);
    assert_eq!(e.vip.as_ref().map(|v| v.name.as_str()), Some("dnsipip6"));
    assert!(e.headers_out[1].starts_with("ipv6 fd00:ffff::"), "IP6IP6 outer header: {:?}", e.headers_out);
    assert!(e.headers_out[2].starts_with("ipv6 2001:db8:9::7 → 2001:db8::2"), "{:?}", e.headers_out);

    let mixed = Probe {
        udp: false,
        client: "[2001:db8::7]:1".parse().unwrap(),
        vip: "192.0.2.1:80".parse().unwrap(),
        segment: None,
    };
    let err = explain(&plane.live, plane.applied(), &mixed).unwrap_err().to_string();
    assert!(err.contains("must both be IPv4 or both IPv6"), "{err}");
    let udp_syn = Probe { udp: true, segment: Some(Segment::Syn), client: "198.51.100.7:53".parse().unwrap(), ..mixed };
    let err = explain(&plane.live, plane.applied(), &udp_syn).unwrap_err().to_string();
    assert!(err.contains("--packet"), "{err}");
}

/// One backend, a pool of two sources: which source a new flow gets depends on the live pool.
const TINY_POOL: &str = r#"
vips:
  - name: tiny
    address: 192.0.2.8
    port: 53
    protocol: udp
    mode: nat
    snat_pool: tiny
    backends:
      - { address: 10.2.0.3, mac: "02:00:00:00:03:03" }
nat_pools:
  - name: tiny
    addresses: [198.18.0.9]
    ports: 30000-30001
"#;

#[test]
fn a_new_nat_flow_is_given_the_source_the_live_pool_has_free() {
    require_root!();
    let plane = Plane::new("pool", TINY_POOL);
    let vip = "192.0.2.8:53";
    let source_of = |e: &Explanation| {
        e.records.as_deref().and_then(|r| r.split("source ").nth(1)).map(|r| r.split(' ').next().unwrap().to_owned())
    };
    let live_source = |client: &str| {
        let flow = plane.maps.nat_tables().unwrap().flow(&key(client, vip, lb_common::PROTO_UDP)).expect("live flow");
        format!("198.18.0.9:{}", u16::from_be(flow.source_port))
    };
    let first = "198.51.100.1:1000";
    let e = plane.explain(true, first, vip, None);
    let explained = source_of(&e).expect("a source");
    // A second client whose claim starts at the same source as the first one's (with nothing
    // live, explain names the start): a pool of two gives one among a few client ports.
    let second = (1001..1017)
        .map(|port| format!("198.51.100.2:{port}"))
        .find(|client| source_of(&plane.explain(true, client, vip, None)).as_ref() == Some(&explained))
        .expect("a client whose claim starts at the same source");
    assert_eq!(plane.send(first, vip, Segment::Udp), XdpAction::Tx);
    assert_eq!(live_source(first), explained, "the live claim took the source explain named");

    // Now that source is held live: the second client's explanation steps over it, and the
    // live claim agrees; a third client finds the pool full.
    let before = plane.live_state(&key(&second, vip, lb_common::PROTO_UDP));
    let e = plane.explain(true, &second, vip, None);
    let explained = source_of(&e).expect("a source");
    assert_ne!(explained, live_source(first));
    assert_eq!(plane.live_state(&key(&second, vip, lb_common::PROTO_UDP)), before);
    assert_eq!(plane.send(&second, vip, Segment::Udp), XdpAction::Tx);
    assert_eq!(live_source(&second), explained);
    let e = plane.explain(true, "198.51.100.3:1000", vip, None);
    assert_eq!((e.action.as_str(), counters(&e)[0]), ("drop", "drop_pool_exhausted"));
    assert_eq!(e.records, None);
}

/// A NAT VIP with SYN cookies: explain answers a SYN with a cookie (the live key), checks an ACK's
/// cookie, and follows an open cookie flow through its sequence state (seeded from the live one).
#[test]
fn explain_follows_syn_cookies() {
    require_root!();
    const COOKIES: &str = "nat_pools:\n  - name: p\n    addresses: [198.51.100.1]\n    ports: 40000-40009\nvips:\n  - name: web\n    address: 192.0.2.40\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: p\n    syn_cookies: always\n    backends:\n      - { address: 10.1.0.1, port: 8080, mac: \"02:00:00:00:01:01\" }\n";
    let plane = Plane::new("cookies", COOKIES);
    let run = |frame: &[u8]| testrun::run_on(plane.program.xdp().unwrap(), frame, 0).expect("test run");
    let tcp = |src: [u8; 4], dst: [u8; 4], ports: (u16, u16), seq: u32, flags: (bool, Option<u32>)| {
        let eth = etherparse::PacketBuilder::ethernet2([2, 0, 0, 0, 0, 9], LB_MAC).ipv4(src, dst, 64);
        let mut b = eth.tcp(ports.0, ports.1, seq, 64240);
        if flags.0 {
            b = b.syn();
        }
        if let Some(ack) = flags.1 {
            b = b.ack(ack);
        }
        let mut out = Vec::new();
        b.write(&mut out, &[]).unwrap();
        out
    };

    let e = plane.explain(false, "203.0.113.5:41000", "192.0.2.40:80", Some(Segment::Syn));
    assert_eq!(e.action, "tx");
    assert!(counters(&e).contains(&"syn_cookie_sent"), "{:?}", counters(&e));
    let e = plane.explain(false, "203.0.113.5:41000", "192.0.2.40:80", Some(Segment::Ack));
    assert!(counters(&e).contains(&"drop_syn_cookie_invalid"), "an ACK without a cookie: {:?}", counters(&e));

    // A cookie flow opened in the live program: SYN, the cookie's ACK, the backend's SYN-ACK.
    let client = [203, 0, 113, 5];
    let out = run(&tcp(client, [192, 0, 2, 40], (41000, 80), 0, (true, None)));
    let cookie = u32::from_be_bytes(out.packet[38..42].try_into().unwrap());
    let out = run(&tcp(client, [192, 0, 2, 40], (41000, 80), 1, (false, Some(cookie.wrapping_add(1)))));
    assert_eq!(out.action, XdpAction::Tx, "the cookie's ACK opens the flow");
    let (src, sport) = ([out.packet[26], out.packet[27], out.packet[28], out.packet[29]], {
        u16::from_be_bytes([out.packet[34], out.packet[35]])
    });
    let out = run(&tcp([10, 1, 0, 1], src, (8080, sport), 5000, (true, Some(1))));
    assert_eq!(out.action, XdpAction::Tx, "the backend's SYN-ACK answered");
    let key = FlowKey {
        saddr: ip_words("203.0.113.5".parse().unwrap()).0,
        daddr: ip_words("192.0.2.40".parse().unwrap()).0,
        sport: 41000u16.to_be(),
        dport: 80u16.to_be(),
        proto: lb_common::PROTO_TCP,
        family: lb_common::FAMILY_V4,
        pad: 0,
    };
    let before = plane.live_state(&key);
    let e = plane.explain(false, "203.0.113.5:41000", "192.0.2.40:80", Some(Segment::Ack));
    assert_eq!(e.action, "tx");
    assert!(counters(&e).contains(&"nat_forwarded"), "the flow's data goes on: {:?}", counters(&e));
    assert_eq!(plane.live_state(&key), before, "explaining left the live state alone");
}
