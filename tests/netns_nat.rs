//! NAT mode end to end: a client behind a router, an xlb node, and backends that have no route
//! to the client at all — every packet of every flow, both ways, goes through xlb's XDP
//! program. Real TCP and UDP servers; full NAT through a pool, and DNAT only.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::Process,
    require_root,
    topology::{FAR_V4, FAR_V6, Topology, assert_spread, backend_v4, backend_v6, edge_client_v4, node_v4},
};

const VIP4: &str = "10.210.100.1";
const VIP6: &str = "fd00:210:100::1";
/// DNAT only: the backends see the client's address and route it back through the node.
const DNAT4: &str = "10.210.100.2";
/// The exhaustion VIP: one backend, a pool of 2 addresses × 10 000 ports.
const FULL4: &str = "10.210.100.3";
const POOL4: [&str; 2] = ["10.210.0.201", "10.210.0.202"];
const POOL6: &str = "fd00:210::201";
const SMALL_POOL: [&str; 2] = ["10.210.0.203", "10.210.0.204"];
/// SYN cookies always: the requests' VIP (backends on 8080), long-lived streams (8090) and a
/// bulk download (8095) on one address; IPv6 on VIP6's port 82.
const COOKIES4: &str = "10.210.100.4";
const WEIGHTS: [u32; 3] = [1, 2, 3];
const REQUESTS: usize = 300;
/// 300 requests: binomial σ ≤ 0.029 per share; 0.12 is over 4σ.
const TOLERANCE: f64 = 0.12;
/// Concurrent connections the small pool holds: 2 addresses × 10 000 ports, one backend.
const CAPACITY: usize = 20_000;

fn backends(v6: bool, port: u16) -> String {
    (0..3)
        .map(|i| {
            let address = if v6 { backend_v6(i) } else { backend_v4(i) };
            format!("      - {{ address: \"{address}\", port: {port}, weight: {} }}\n", WEIGHTS[i])
        })
        .collect()
}

fn config() -> String {
    let mut yaml = format!(
        "node:\n  nat_table_size: 65536\nnat_pools:\n  - name: edge4\n    addresses: [{}, {}]\n    ports: 20000-29999\n  - name: edge6\n    addresses: [\"{POOL6}\"]\n    ports: 20000-29999\n  - name: small\n    addresses: [{}, {}]\n    ports: 30000-39999\nvips:\n",
        POOL4[0], POOL4[1], SMALL_POOL[0], SMALL_POOL[1]
    );
    for (name, address, protocol, pool, port, v6) in [
        ("tcp4", VIP4, "tcp", "edge4", 8080, false),
        ("udp4", VIP4, "udp", "edge4", 8080, false),
        ("tcp6", VIP6, "tcp", "edge6", 8081, true),
        ("udp6", VIP6, "udp", "edge6", 8081, true),
    ] {
        yaml.push_str(&format!(
            "  - name: {name}\n    address: {address}\n    port: 80\n    protocol: {protocol}\n    mode: nat\n    snat_pool: {pool}\n    backends:\n{}",
            backends(v6, port)
        ));
    }
    yaml.push_str(&format!(
        "  - name: dnat4\n    address: {DNAT4}\n    port: 8080\n    protocol: tcp\n    mode: nat\n    backends:\n{}",
        backends(false, 8080)
    ));
    for (name, address, port, pool, backend_port, v6) in [
        ("cookies4", COOKIES4, 80, "edge4", 8080, false),
        ("cookies4_streams", COOKIES4, 8090, "edge4", 8090, false),
        ("cookies4_bulk", COOKIES4, 8095, "edge4", 8095, false),
        ("cookies6", VIP6, 82, "edge6", 8081, true),
    ] {
        yaml.push_str(&format!(
            "  - name: {name}\n    address: \"{address}\"\n    port: {port}\n    protocol: tcp\n    mode: nat\n    snat_pool: {pool}\n    syn_cookies: always\n    backends:\n{}",
            backends(v6, backend_port)
        ));
    }
    yaml.push_str(&format!(
        "  - name: full4\n    address: {FULL4}\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: small\n    backends:\n      - {{ address: {}, port: 9000 }}\n",
        backend_v4(0)
    ));
    yaml
}

/// Backends without a route beyond their segment (so only xlb can bring replies back), the
/// pool addresses on the node's interface (so backends can resolve them), servers on 8080
/// (IPv4) and 8081 (IPv6).
fn nat_topology() -> Topology {
    let mut topo = Topology::edge(1, 1, 3, &[]);
    for be in &topo.backends {
        be.ip(&["route", "del", "default"]);
        be.ip(&["-6", "route", "del", "default"]);
        // Connection-per-request loads through a NAT meet TIME_WAIT on reused sources.
        be.sysctl(&["net.ipv4.tcp_max_tw_buckets=0"]);
    }
    for addr in POOL4.iter().chain(&SMALL_POOL) {
        topo.node().ip(&["addr", "add", &format!("{addr}/24"), "dev", "eth0"]);
    }
    topo.node().ip(&["addr", "add", &format!("{POOL6}/64"), "dev", "eth0", "nodad", "preferred_lft", "0"]);
    topo.serve("0.0.0.0", 8080);
    topo.serve("::", 8081);
    topo.route_vips_statically(&[VIP4, VIP6, DNAT4, FULL4, COOKIES4]);
    topo
}

#[test]
fn full_nat_and_dnat_carry_tcp_and_udp_both_ways() {
    require_root!();
    let mut topo = nat_topology();
    topo.start_agent(&config());

    for (vip, what) in [(VIP4, "IPv4"), (VIP6, "IPv6")] {
        let (seen, failed) = topo.tcp_requests(vip, 80, REQUESTS);
        assert_eq!(failed, 0, "{what} TCP: {seen:?}");
        assert_spread(&seen, &WEIGHTS, TOLERANCE, &format!("{what} TCP through full NAT"));
        let (seen, failed) = topo.udp_requests(vip, 80, REQUESTS);
        assert_eq!(failed, 0, "{what} UDP: {seen:?}");
        assert_spread(&seen, &WEIGHTS, TOLERANCE, &format!("{what} UDP through full NAT"));
    }

    // The backends cannot reach the client on their own: a direct connection gets no answer.
    let direct = SocketAddr::new(backend_v4(0).parse().unwrap(), 8080);
    let reached = topo.client().run(move || TcpStream::connect_timeout(&direct, Duration::from_millis(500)).is_ok());
    assert!(!reached.join().unwrap(), "no path from the backends to the client except through xlb");

    // DNAT only: the backends route the client's network via the node.
    for be in &topo.backends {
        be.ip(&["route", "add", "10.220.0.0/16", "via", &node_v4(0)]);
    }
    let (seen, failed) = topo.tcp_requests(DNAT4, 8080, REQUESTS);
    assert_eq!(failed, 0, "DNAT: {seen:?}");
    assert_spread(&seen, &WEIGHTS, TOLERANCE, "TCP through DNAT");

    // Both pool addresses carried flows; the agent's sweep reports it per address.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage: BTreeMap<String, u64> = topo
            .stats()
            .map(|s| s.nat.pools.iter().filter(|p| p.pool == "edge4").map(|p| (p.address.clone(), p.flows)).collect())
            .unwrap_or_default();
        if usage.values().filter(|&&n| n > 0).count() == 2 || Instant::now() > deadline {
            break usage;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(usage.values().all(|&n| n > 0) && usage.len() == 2, "both pool addresses in use: {usage:?}");
    let stats = topo.stats().unwrap();
    for counter in ["nat_forwarded", "nat_replied"] {
        assert!(stats.counter(counter).unwrap() > 0, "{counter}");
    }
    for counter in ["drop_pool_exhausted", "drop_nat_table_full", "drop_nat_no_flow"] {
        assert_eq!(stats.counter(counter), Some(0), "{counter}");
    }
}

/// Opens `count` TCP connections to `host:port` and holds them until killed (at most 5
/// minutes); prints how many opened and how many failed. A separate process per 10 000
/// connections: this machine caps open files per process at 20 000.
const HOLDER: &str = r#"
import socket, sys, time
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
conns, failed, start = [], 0, time.time()
while len(conns) + failed < count and time.time() - start < 120:
    s = socket.socket()
    s.settimeout(3)
    try:
        s.connect((host, port))
        conns.append(s)
    except OSError:
        failed += 1
        s.close()
print(len(conns), failed, flush=True)
time.sleep(300)
"#;

/// Connections held by a child process in the client namespace (killed on drop).
fn hold_connections(topo: &Topology, target: &str, port: u16, count: usize) -> (Process, usize, usize) {
    use std::io::BufRead as _;
    let mut cmd = topo.client().command("/usr/bin/python3");
    cmd.args(["-c", HOLDER, target, &port.to_string(), &count.to_string()]).stdout(std::process::Stdio::piped());
    let mut process = Process::spawn(cmd, "connection holder");
    let stdout = process.child.stdout.take().expect("stdout");
    let mut line = String::new();
    std::io::BufReader::new(stdout).read_line(&mut line).expect("holder reports");
    let mut numbers = line.split_whitespace().map(|n| n.parse::<usize>().expect("counts"));
    let (opened, failed) = (numbers.next().expect("opened"), numbers.next().expect("failed"));
    (process, opened, failed)
}

#[test]
fn a_two_address_pool_fills_at_exactly_its_capacity() {
    require_root!();
    let topo = nat_topology();
    // A backend whose listener never accepts: established connections wait in its accept
    // queue (sized for all of them), costing this process no file descriptors.
    let backend = &topo.backends[0];
    backend.sysctl(&["net.core.somaxconn=65535"]);
    let listener = backend
        .run(|| {
            let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
            socket.set_reuse_address(true).expect("reuseaddr");
            socket.bind(&SocketAddr::from(([0, 0, 0, 0], 9000)).into()).expect("bind 9000");
            socket.listen(65535).expect("listen");
            socket
        })
        .join()
        .unwrap();
    let mut topo = topo;
    topo.start_agent(&config());
    let exhausted = || topo.stats().and_then(|s| s.counter("drop_pool_exhausted")).expect("stats");

    let half = CAPACITY / 2;
    let (_first, opened_a, failed_a) = hold_connections(&topo, FULL4, 80, half);
    let (_second, opened_b, failed_b) = hold_connections(&topo, FULL4, 80, half);
    assert_eq!(
        (opened_a + opened_b, failed_a + failed_b),
        (CAPACITY, 0),
        "the pool holds {CAPACITY} connections to one backend"
    );
    assert_eq!(exhausted(), 0, "no exhaustion before the pool is full");

    // Full: every further SYN is a counted drop (retransmissions too).
    let (_third, opened, failed) = hold_connections(&topo, FULL4, 80, 5);
    assert_eq!((opened, failed), (0, 5), "nothing beyond the pool's capacity");
    assert!(exhausted() >= 5, "pool_exhausted counted every refused SYN: {}", exhausted());

    // Both addresses carry half of the flows, one per port.
    let deadline = Instant::now() + Duration::from_secs(10);
    let usage = loop {
        let usage: Vec<u64> = topo
            .stats()
            .map(|s| s.nat.pools.iter().filter(|p| p.pool == "small").map(|p| p.flows).collect())
            .unwrap_or_default();
        if usage.iter().sum::<u64>() >= CAPACITY as u64 || Instant::now() > deadline {
            break usage;
        }
        std::thread::sleep(Duration::from_millis(250));
    };
    assert_eq!(usage, vec![CAPACITY as u64 / 2; 2], "each address holds 10 000 flows, one per port");
    // The same sweep counts them per backend: full4's one backend has them all.
    let status = topo.status().expect("status");
    let full4 = status.snapshot.vip("full4").expect("full4 in status");
    assert_eq!(full4.backends[0].connections.nat, CAPACITY as u64, "{:?}", full4.backends[0]);
    assert_eq!(full4.connections.total(), CAPACITY as u64, "{:?}", full4.connections);
    let out = topo.xlb(&["conns", "full4", "--json"]);
    let report: xlb::serve::conns::ConnsReport = serde_json::from_slice(&out.stdout).expect("conns JSON");
    assert_eq!((report.nat, report.mode.as_str(), report.flows.len()), (CAPACITY as u64, "nat", 100));
    for flow in &report.flows {
        let source = flow.nat_source.as_deref().unwrap_or("none");
        assert!(SMALL_POOL.iter().any(|a| source.starts_with(&format!("{a}:3"))), "{flow:?}");
        assert_eq!(flow.backend, full4.backends[0].address, "{flow:?}");
    }
    let text = String::from_utf8(topo.xlb(&["conns", "full4", "--limit", "3"]).stdout).unwrap();
    assert!(text.contains("19997 more not shown"), "{text}");

    // The backend really has them all, established.
    let out = xlb_tests::netns::sh(
        "ip",
        &["netns", "exec", &topo.backends[0].name, "ss", "-Htn", "state", "established", "( sport = :9000 )"],
    );
    let established = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(established, CAPACITY, "connections established at the backend");
    drop(listener);
}

#[test]
fn client_address_stays_hidden_behind_full_nat() {
    require_root!();
    let mut topo = nat_topology();
    // A backend server that answers with the address it sees the client at.
    let stop = Arc::new(AtomicBool::new(false));
    let peers = {
        let stop = Arc::clone(&stop);
        topo.backends[0].run(move || {
            use std::io::Write as _;
            let listener = TcpListener::bind(("0.0.0.0", 9000)).expect("bind 9000");
            listener.set_nonblocking(true).expect("nonblocking");
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut conn, peer)) => {
                        let _ = conn.write_all(peer.ip().to_string().as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(1)),
                }
            }
        })
    };
    topo.start_agent(&config());
    let target = SocketAddr::new(FULL4.parse().unwrap(), 80);
    let seen = topo
        .client()
        .run(move || {
            use std::io::Read as _;
            let mut conn = TcpStream::connect_timeout(&target, Duration::from_secs(3)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).expect("answer");
            text
        })
        .join()
        .unwrap();
    assert!(SMALL_POOL.contains(&seen.as_str()), "the backend sees a pool address ({seen}), not the client");
    assert_ne!(seen, edge_client_v4(0));
    stop.store(true, Ordering::Relaxed);
    peers.join().unwrap();
}

#[test]
fn nat_flows_survive_an_agent_sigkill_and_restart() {
    require_root!();
    let mut topo = nat_topology();
    // Stream servers on every backend's own address, port 9100; a NAT VIP in front of them.
    topo.serve_streams("0.0.0.0", 9100);
    let config = config().replace(
        "  - name: full4\n",
        &format!(
            "  - name: streams\n    address: {FULL4}\n    port: 9100\n    protocol: tcp\n    mode: nat\n    snat_pool: edge4\n    backends:\n{}  - name: full4\n",
            backends(false, 9100)
        ),
    );
    let config = config
        .replace(&format!("    address: {FULL4}\n    port: 80\n"), &format!("    address: {FULL4}\n    port: 81\n"));
    let first = topo.start_agent(&config);
    let streams = topo.open_streams(FULL4, 9100, 24);
    assert!(streams.progress(3, Duration::from_secs(10)), "streams started: {:?}", streams.exchanges());

    // SIGKILL: the pinned program, program array and NAT tables keep translating both ways.
    topo.agent(first).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    assert!(streams.progress(5, Duration::from_secs(5)), "streams go on without an agent: {:?}", streams.exchanges());

    // A new agent adopts the pinned maps; the streams keep their sources and backends.
    topo.start_agent(&config);
    assert!(
        streams.progress(10, Duration::from_secs(10)),
        "streams go on after the restart: {:?}",
        streams.exchanges()
    );
    let results = streams.finish();
    let broken: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(broken.is_empty(), "NAT streams broken by the restart: {broken:?}");
    let stats = topo.stats().expect("the new agent answers");
    assert_eq!(stats.counter("drop_nat_unavailable"), Some(0));
    assert_eq!(stats.counter("drop_nat_no_flow"), Some(0), "no flow lost its NAT state");
}

/// A two-armed node: clients on `eth0`, the backend behind `eth1` (its own link, no route to
/// anything else). One data plane runs on both interfaces; packets to the backend leave by
/// `eth1` and its replies by `eth0`, both through the XDP redirect — every NAT packet of the
/// test is counted as redirected, none as sent back out of its own interface.
#[test]
fn nat_through_a_second_interface_redirects_both_ways() {
    require_root!();
    let mut topo = Topology::edge(1, 1, 0, &[]);
    let far = topo.add_far_backend();
    topo.node().ip(&["addr", "add", "10.230.0.100/24", "dev", "eth1"]);
    topo.node().ip(&["addr", "add", "fd00:230::100/64", "dev", "eth1", "nodad", "preferred_lft", "0"]);
    topo.serve("0.0.0.0", 8080);
    topo.serve("::", 8081);
    topo.route_vips_statically(&[VIP4, VIP6]);
    let mut config = String::from(
        "nat_pools:\n  - name: far4\n    addresses: [10.230.0.100]\n    ports: 20000-29999\n  - name: far6\n    addresses: [\"fd00:230::100\"]\n    ports: 20000-29999\nvips:\n",
    );
    for (protocol, v6) in [("tcp", false), ("udp", false), ("tcp", true), ("udp", true)] {
        let (address, pool, backend, port) =
            if v6 { (VIP6, "far6", FAR_V6, 8081) } else { (VIP4, "far4", FAR_V4, 8080) };
        config.push_str(&format!(
            "  - name: {protocol}{}\n    address: {address}\n    port: 80\n    protocol: {protocol}\n    mode: nat\n    snat_pool: {pool}\n    backends:\n      - {{ address: \"{backend}\", port: {port}, interface: eth1 }}\n",
            if v6 { 6 } else { 4 }
        ));
    }
    topo.start_agent_with(&config, &["--iface", "eth1"]);

    let name = format!("be{far}");
    for (vip, what) in [(VIP4, "IPv4"), (VIP6, "IPv6")] {
        let (seen, failed) = topo.tcp_requests(vip, 80, 100);
        assert_eq!((failed, seen.get(&name)), (0, Some(&100)), "{what} TCP: {seen:?}");
        let (seen, failed) = topo.udp_requests(vip, 80, 100);
        assert_eq!((failed, seen.get(&name)), (0, Some(&100)), "{what} UDP: {seen:?}");
    }
    let stats = topo.stats().unwrap();
    let count = |name: &str| stats.counter(name).unwrap_or_else(|| panic!("{name} counted"));
    let (forwarded, replied, redirected) = (count("nat_forwarded"), count("nat_replied"), count("nat_redirected"));
    // 200 TCP connections (SYN, ACK, data, FIN, ACK at least) and 200 UDP exchanges each way.
    assert!(forwarded >= 200 * 4 + 200 && replied >= 200 * 3 + 200, "forwarded {forwarded}, replied {replied}");
    eprintln!("forwarded {forwarded}, replied {replied}, redirected {redirected}");
    assert_eq!(redirected, forwarded + replied, "every NAT packet left by the other interface");
    assert_eq!(count("drop_no_egress"), 0);

    // The client has no route to the backend's link: only the node connects them.
    let direct = SocketAddr::new(FAR_V4.parse().unwrap(), 8080);
    let reached = topo.client().run(move || TcpStream::connect_timeout(&direct, Duration::from_millis(500)).is_ok());
    assert!(!reached.join().unwrap(), "no path from the client to the far backend except through xlb");
}

/// Sends `BULK` bytes (a pattern) to each connection, then closes it; exits after 120 s idle.
const BULK_SERVER: &str = r#"
import socket
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 8095))
s.listen(16)
s.settimeout(120)
data = bytes(range(256)) * 16384
while True:
    c, _ = s.accept()
    c.sendall(data)
    c.close()
"#;
const BULK: usize = 256 * 16384;

#[test]
fn syn_cookies_carry_real_tcp_through_full_nat() {
    require_root!();
    let mut topo = nat_topology();
    topo.serve_streams("0.0.0.0", 8090);
    let _bulk: Vec<Process> = topo
        .backends
        .iter()
        .map(|be| {
            let mut cmd = be.command("python3");
            cmd.args(["-c", BULK_SERVER]);
            Process::spawn(cmd, "bulk server")
        })
        .collect();
    topo.start_agent(&config());

    // A connection per request: each a cookie handshake with the client's kernel, and the
    // backend's opened by xlb.
    for (vip, port, what) in [(COOKIES4, 80, "IPv4"), (VIP6, 82, "IPv6")] {
        let (seen, failed) = topo.tcp_requests(vip, port, REQUESTS);
        assert_eq!(failed, 0, "{what} through SYN cookies: {seen:?}");
        assert_spread(&seen, &WEIGHTS, TOLERANCE, &format!("{what} TCP through SYN cookies"));
    }

    // Long-lived cookie flows keep exchanging (sequence numbers shifted on every packet).
    let streams = topo.open_streams(COOKIES4, 8090, 20);
    assert!(streams.progress(20, Duration::from_secs(20)), "streams through SYN cookies exchange");
    for result in streams.finish() {
        assert!(result.is_ok(), "a stream through SYN cookies broke: {result:?}");
    }

    // 4 MiB down one cookie flow, byte for byte (windows without scaling, thousands of segments).
    let addr = SocketAddr::new(COOKIES4.parse().unwrap(), 8095);
    let received = topo
        .client()
        .run(move || -> std::io::Result<Vec<u8>> {
            let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
            conn.set_read_timeout(Some(Duration::from_secs(20)))?;
            let mut data = Vec::with_capacity(BULK);
            std::io::Read::read_to_end(&mut conn, &mut data)?;
            Ok(data)
        })
        .join()
        .expect("client thread")
        .expect("bulk download");
    assert_eq!(received.len(), BULK, "the whole download");
    assert!(received.iter().enumerate().all(|(i, b)| *b == i as u8), "the download's bytes in order");

    let stats = topo.stats().expect("stats");
    let count = |name: &str| stats.counter(name).unwrap_or(0);
    let flows = 2 * REQUESTS as u64 + 20 + 1;
    println!(
        "SYN cookies: sent {}, opened {}, handshakes {}, SYNs resent {}, invalid {}, no state {}",
        count("syn_cookie_sent"),
        count("syn_cookie_opened"),
        count("syn_cookie_handshake"),
        count("syn_cookie_syn_resent"),
        count("drop_syn_cookie_invalid"),
        count("drop_syn_cookie_no_state"),
    );
    assert!(count("syn_cookie_sent") >= flows, "every connection got a cookie");
    assert!(count("syn_cookie_opened") >= flows, "every connection opened through its cookie");
    assert!(count("syn_cookie_handshake") >= flows, "every backend handshake completed by xlb");
    assert_eq!(count("drop_syn_cookie_no_state"), 0);
    assert_eq!(count("drop_syn_cookie_invalid"), 0, "no real client's cookie was refused");
}
