//! SYN floods end to end: the live-frames generator floods a VIP from the client's namespace
//! while 20 long-lived connections run and 20 legitimate clients open new ones, at dsr-l2,
//! dsr-ipip and nat VIPs. One source (its prefix limited by `sources.new_flows`), then random
//! spoofed sources (nothing to limit: the connection table's embryonic entries protect the
//! live ones; at a NAT VIP with SYN cookies, the cookies keep the pool free). Each phase prints
//! its figures.

use std::{
    collections::BTreeSet,
    io::{BufRead as _, BufReader, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use lb_common::{GEN_NEW_PORT_PER_FRAME, GEN_SPOOFED, NAT_TOUCH_NS};
use xlb::serve::conns::ConnsReport;
use xlb_tests::{
    netns::wait_for,
    require_root,
    topology::{CLIENT_V4, Topology, backends_yaml},
    traffic::{Endpoints, Generator, tcp_syn_v4},
};

const L2: &str = "10.210.100.1";
const IPIP: &str = "10.210.100.2";
const NAT: &str = "10.210.100.3";
const POOL: &str = "10.210.0.201";
/// A NAT VIP with SYN cookies in the automatic mode, and its own pool (its claims counted apart).
const NAT_COOKIES: &str = "10.210.100.4";
const COOKIE_POOL: &str = "10.210.0.202";
/// Its threshold: new flows per second above which its SYNs are answered with cookies.
const COOKIES_ABOVE: u64 = 2000;
/// The node's MAC on the segment (node 0).
const NODE_MAC: [u8; 6] = [2, 0, 0, 0x21, 0, 2];
/// Legitimate clients and long-lived connections per VIP and phase.
const CLIENTS: usize = 20;
/// Bounds on a flood: frames and time.
const FLOOD_FRAMES: u64 = 40_000_000;
const FLOOD_TIME: Duration = Duration::from_secs(6);
/// Flood frames: the generator's smallest (its template's size).
const FRAME: usize = lb_common::GEN_TEMPLATE_BYTES;
/// How long a long-lived stream waits for an answer, and for all of them to exchange again after
/// a flood (TCP's backoff after a run of lost retransmissions: 0.2, 0.4, … 6.4 s).
const STREAM_PATIENCE: Duration = Duration::from_secs(30);
/// The one flooding source: a /24 of its own, apart from the legitimate client's.
const FLOODER: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);

fn config() -> String {
    let backends = |extra: &str| backends_yaml(3, extra);
    format!(
        "node:\n  tunnel_source_v4: 10.210.200.0/24\n  flow_table_size: 65536\n  sources:\n    new_flows: {{ rate: 2000, burst: 2000 }}\n\
         nat_pools:\n  - name: pool\n    addresses: [{POOL}]\n    ports: 20000-59999\n\
           - name: cookie_pool\n    addresses: [{COOKIE_POOL}]\n    ports: 20000-59999\nvips:\n\
         - name: l2\n    address: {L2}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}\
         - name: ipip\n    address: {IPIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-ipip\n    backends:\n{}\
         - name: nat\n    address: {NAT}\n    port: 8080\n    protocol: tcp\n    mode: nat\n    snat_pool: pool\n    backends:\n{}\
         - name: nat_cookies\n    address: {NAT_COOKIES}\n    port: 8080\n    protocol: tcp\n    mode: nat\n    snat_pool: cookie_pool\n    syn_cookies: {{ above: {COOKIES_ABOVE} }}\n    backends:\n{}",
        backends(""),
        backends(""),
        backends(", port: 8080"),
        backends(", port: 8080"),
    )
    .replace("\n- name", "\n  - name")
}

/// Floods `vip`:8080 from the client's namespace until `stop` (bounded); returns frames sent
/// and the time taken.
fn flood(topo: &Topology, vip: &str, mode: u32, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Duration)> {
    let vip: Ipv4Addr = vip.parse().expect("VIP");
    topo.clients[0].run(move || {
        let client_mac = std::fs::read_to_string("/sys/class/net/eth0/address").expect("client MAC");
        let mac: Vec<u8> = client_mac.trim().split(':').map(|b| u8::from_str_radix(b, 16).expect("hex")).collect();
        let mut generator = Generator::load().expect("load the generator");
        let at = Endpoints {
            src_mac: mac.try_into().expect("6 bytes"),
            dst_mac: NODE_MAC,
            saddr: FLOODER,
            daddr: vip,
            sport: 1024,
            dport: 8080,
        };
        let template = tcp_syn_v4(at, mode);
        generator.set(&template, FRAME).expect("template");
        // SAFETY: a NUL-terminated interface name.
        let ifindex = unsafe { libc::if_nametoindex(c"eth0".as_ptr()) };
        let (start, mut sent) = (Instant::now(), 0u64);
        while !stop.load(Ordering::Relaxed) && start.elapsed() < FLOOD_TIME && sent < FLOOD_FRAMES {
            generator.send(ifindex, 1 << 18).expect("send");
            sent += 1 << 18;
        }
        (sent, start.elapsed())
    })
}

/// `CLIENTS` legitimate clients at once, each opening a connection to `vip`:8080 during the flood
/// (SYNs retried by the kernel: 4 s to connect) and exchanging a line (10 s for the answer: on
/// the flooded link the data may need TCP's retransmissions, and through SYN cookies the first
/// data waits for its RTO); how many succeeded.
fn legitimate(topo: &Topology, vip: &str) -> usize {
    let addr = SocketAddr::new(vip.parse().expect("VIP"), 8080);
    let clients: Vec<_> = (0..CLIENTS)
        .map(|_| {
            topo.clients[0].run(move || -> std::io::Result<()> {
                let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
                conn.set_read_timeout(Some(Duration::from_secs(10)))?;
                conn.write_all(b"hello\n")?;
                let mut line = String::new();
                BufReader::new(conn).read_line(&mut line)?;
                if line.trim().is_empty() { Err(std::io::Error::other("no answer")) } else { Ok(()) }
            })
        })
        .collect();
    clients.into_iter().map(std::thread::JoinHandle::join).filter(|r| matches!(r, Ok(Ok(())))).count()
}

/// The confirmed connection-table entries (or NAT flows) of `vip` from the legitimate client.
fn held(topo: &Topology, name: &str) -> BTreeSet<String> {
    // (The agent answers once it has measured the kernel's clock, shortly after it starts.)
    let out = wait_for("xlb conns", Duration::from_secs(10), || {
        Some(topo.xlb(&["conns", name, "--limit", "10000", "--json"])).filter(|out| out.status.success())
    });
    let report: ConnsReport = serde_json::from_slice(&out.stdout).expect("conns JSON");
    report
        .flows
        .into_iter()
        .filter(|f| f.client.starts_with(&format!("{CLIENT_V4}:")) && (f.state == "confirmed" || f.state == "nat"))
        .map(|f| f.client)
        .collect()
}

/// One phase: long-lived connections open, then a flood with legitimate clients during it.
/// (A one-source flood's ports repeat every 65 536 SYNs: a repeated SYN of a flow its limit
/// admitted is that flow's retransmission, sent on like any packet of a known flow.)
/// Returns the legitimate clients that succeeded.
fn phase(topo: &Topology, name: &str, vip: &str, mode: u32, what: &str) -> usize {
    // (Entries of earlier phases' closed connections stay until they idle out.)
    let earlier = held(topo, name);
    // The flood offers several times what the node's veth takes in, so the link drops most
    // frames, the streams' too: a stream may sit in TCP's retransmission backoff for seconds,
    // which says nothing of the balancer. It must not break, and must exchange again after.
    let streams = topo.open_streams_waiting(vip, 8080, CLIENTS, STREAM_PATIENCE);
    assert!(streams.progress(2, Duration::from_secs(10)), "{what} {name}: the long-lived connections exchange");
    let before: BTreeSet<String> = held(topo, name).difference(&earlier).cloned().collect();
    assert_eq!(before.len(), CLIENTS, "{what} {name}: every long-lived connection is held: {before:?}");
    let stats_before = topo.stats().expect("stats");
    let stop = Arc::new(AtomicBool::new(false));
    let flooder = flood(topo, vip, mode, Arc::clone(&stop));
    // Let the flood reach its rate before the clients come.
    std::thread::sleep(Duration::from_millis(500));
    let succeeded = legitimate(topo, vip);
    let during = streams.exchanges();
    std::thread::sleep(Duration::from_secs(1));
    let kept = streams.exchanges().iter().zip(&during).filter(|(now, then)| now > then).count();
    stop.store(true, Ordering::Relaxed);
    let (frames, took) = flooder.join().expect("flood thread");
    // Read once the flood is over and every long-lived connection has exchanged again (one that
    // lost a packet to the saturated links may sit in retransmission backoff): `conns` lists the
    // most recently active entries first, and during the flood those are its own. A NAT entry's
    // activity time is refreshed at most every `NAT_TOUCH_NS`, so a live flow's may still predate
    // the flood's last tens of thousands of entries for that long: wait it out while the
    // connections exchange (a CI run once listed a live flow past `--limit` this way).
    std::thread::sleep(Duration::from_nanos(NAT_TOUCH_NS) + Duration::from_millis(300));
    let recovered = streams.progress(2, STREAM_PATIENCE);
    let after = held(topo, name);
    let results = streams.finish();
    let stats = topo.stats().expect("stats");
    let delta =
        |counter: &str| stats.counter(counter).unwrap_or(0).saturating_sub(stats_before.counter(counter).unwrap_or(0));
    let evicted = before.difference(&after).count();
    println!(
        "{what} at {name}: {frames} SYNs in {took:.1?} ({:.2} Mpps offered, {:.2} Mpps reached XDP); legitimate \
         clients {succeeded}/{CLIENTS} \
         ({:.0}%); long-lived exchanging in the flood's last second {kept}/{CLIENTS}, kept {}/{CLIENTS}, evicted \
         {evicted}; forwarded {}, limited {}, set full {}, NAT \
         forwarded {}, pool exhausted {}, NAT table full {}, SYN cookies sent {}, opened {}",
        frames as f64 / took.as_secs_f64() / 1e6,
        stats.rx_packets.saturating_sub(stats_before.rx_packets) as f64 / took.as_secs_f64() / 1e6,
        succeeded as f64 * 100.0 / CLIENTS as f64,
        results.iter().filter(|r| r.is_ok()).count(),
        delta("forwarded"),
        delta("drop_source_limited"),
        delta("flow_set_full"),
        delta("nat_forwarded"),
        delta("drop_pool_exhausted"),
        delta("drop_nat_table_full"),
        delta("syn_cookie_sent"),
        delta("syn_cookie_opened"),
    );
    assert!(recovered, "{what} {name}: the long-lived connections exchange after the flood: {results:?}");
    for r in &results {
        assert!(r.is_ok(), "{what} {name}: a long-lived connection broke: {r:?}");
    }
    assert_eq!(evicted, 0, "{what} {name}: confirmed entries evicted by the flood: {before:?} → {after:?}");
    assert!(frames >= 1 << 18, "{what} {name}: the generator sent");
    succeeded
}

#[test]
fn syn_floods_neither_evict_live_flows_nor_keep_legitimate_clients_out() {
    require_root!();
    let mut topo = Topology::new(3, &[L2, IPIP, NAT, NAT_COOKIES]);
    topo.accept_generated_frames();
    for pool in [POOL, COOKIE_POOL] {
        topo.node().ip(&["addr", "add", &format!("{pool}/24"), "dev", "eth0"]);
    }
    topo.decap_on_backends();
    topo.serve_streams("0.0.0.0", 8080);
    topo.start_agent(&config());

    for (name, vip) in [("l2", L2), ("ipip", IPIP), ("nat", NAT)] {
        let succeeded = phase(&topo, name, vip, GEN_NEW_PORT_PER_FRAME, "one-source SYN flood");
        assert!(
            succeeded * 100 >= CLIENTS * 99,
            "one-source flood at {name}: {succeeded}/{CLIENTS} clients got through"
        );
    }
    let stats = topo.stats().expect("stats");
    assert!(stats.counter("drop_source_limited").unwrap_or(0) > 0, "the flooding prefix was limited");
    let status = topo.xlb(&["status"]);
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("10.240.0.0/24"), "status lists the limited prefix:\n{text}");

    for (name, vip) in [("l2", L2), ("ipip", IPIP)] {
        let succeeded = phase(&topo, name, vip, GEN_SPOOFED, "spoofed-source SYN flood");
        assert!(succeeded * 100 >= CLIENTS * 99, "spoofed flood at {name}: {succeeded}/{CLIENTS} clients got through");
    }
    // NAT under a spoofed flood: every spoofed SYN claims a pool port (held for
    // nat_closing_timeout) until the pool or the NAT table runs out — a flood longer than this
    // phase's then keeps legitimate SYNs out too, which SYN cookies (issue 18 item 4) are for.
    // Measured and printed; its live flows must survive all the same.
    let succeeded = phase(&topo, "nat", NAT, GEN_SPOOFED, "spoofed-source SYN flood");
    println!("spoofed flood at nat: {succeeded}/{CLIENTS} legitimate clients got through");

    // The same flood at a NAT VIP with SYN cookies (automatic): past its threshold its SYNs are
    // answered with cookies and claim nothing; the legitimate clients complete the cookie
    // handshake (their kernels' own TCP) and reach a backend through a port claimed then.
    let before = topo.stats().expect("stats");
    let succeeded = phase(&topo, "nat_cookies", NAT_COOKIES, GEN_SPOOFED, "spoofed-source SYN flood");
    let after = topo.stats().expect("stats");
    let delta =
        |counter: &str| after.counter(counter).unwrap_or(0).saturating_sub(before.counter(counter).unwrap_or(0));
    let claimed = wait_for("the cookie pool's flows", Duration::from_secs(10), || {
        let stats = topo.stats()?;
        let flows: u64 = stats.nat.pools.iter().filter(|p| p.pool == "cookie_pool").map(|p| p.flows).sum();
        (flows > 0).then_some(flows)
    });
    println!(
        "spoofed flood at nat_cookies: {succeeded}/{CLIENTS} legitimate clients; pool sources held {claimed}; \
         SYN cookies sent {}, opened {}, invalid {}",
        delta("syn_cookie_sent"),
        delta("syn_cookie_opened"),
        delta("drop_syn_cookie_invalid"),
    );
    assert!(succeeded * 100 >= CLIENTS * 99, "spoofed flood at nat_cookies: {succeeded}/{CLIENTS} clients got through");
    assert!(delta("syn_cookie_sent") > 10_000, "the flood was answered with cookies");
    assert!(delta("syn_cookie_opened") >= CLIENTS as u64, "the legitimate clients came through cookies");
    // Before the meter trips (a window's worth of SYNs) and the legitimate clients' and the
    // long-lived connections' own: far below the ~10^5 a flood claims without cookies.
    assert!(claimed < 5 * COOKIES_ABOVE, "the flood claimed {claimed} pool sources");
    assert_eq!(delta("drop_pool_exhausted"), 0);
}
