//! An edge in namespaces: a client, an xlb node and backends on one L2 segment (a bridge in a
//! switch namespace), real servers on the backends, and the agent attached on the node.
//!
//! Addresses: 10.210.0.0/24 and fd00:210::/64 on the segment; client .1, node .2, backend i at
//! .(11 + i); VIPs are configured on the backends' loopback (with arp_ignore/arp_announce so only
//! the node answers for them) and routed by the client via the node.

use std::{
    collections::{BTreeMap, BTreeSet},
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use xlb::{apply::dataplane::Loaded, serve::stats::Snapshot};

use crate::netns::{Netns, Process, sh, unique_name, veth, wait_for, xlb_bin};

/// The switch-side veth port of node `i`.
fn node_port(i: usize) -> String {
    if i == 0 { "p-lb".to_owned() } else { format!("p-lb{i}") }
}

/// Requests a client gives up after.
const MAX_FAILURES: usize = 5;

pub const CLIENT_V4: &str = "10.210.0.1";
pub const NODE_V4: &str = "10.210.0.2";
pub const CLIENT_V6: &str = "fd00:210::1";
pub const NODE_V6: &str = "fd00:210::2";

/// Host `host` of the segment, IPv4 and IPv6 (node i is host 2 + i, backend i host 11 + i).
fn segment_v4(host: usize) -> String {
    format!("10.210.0.{host}")
}
fn segment_v6(host: usize) -> String {
    format!("fd00:210::{host}")
}

pub fn backend_v4(i: usize) -> String {
    segment_v4(11 + i)
}
pub fn backend_v6(i: usize) -> String {
    segment_v6(11 + i)
}
pub fn backend_mac(i: usize) -> String {
    format!("02:00:00:21:00:{:02x}", 11 + i)
}

/// A VIP's `backends:` items for the first `count` backends (YAML at a VIP's indentation), each
/// with `extra` after its address (`", port: 8080"` for NAT, or nothing).
pub fn backends_yaml(count: usize, extra: &str) -> String {
    (0..count)
        .map(|i| format!("      - {{ address: {}{extra}, mac: \"{}\" }}\n", backend_v4(i), backend_mac(i)))
        .collect()
}

#[derive(Debug)]
pub struct Topology {
    /// Clients: on the segment (no router), or each behind the router on its own link.
    pub clients: Vec<Netns>,
    /// xlb nodes on the segment, node i at 10.210.0.(2 + i).
    pub nodes: Vec<Netns>,
    /// The router (BGP/ECMP) between clients and the segment, in an edge topology.
    pub router: Option<Netns>,
    pub backends: Vec<Netns>,
    /// XDP_PASS on the switch side of each node's veth (detached on drop).
    switch_xdp: Vec<Loaded>,
    // Dropped last: the segment the others hang off.
    _switch: Netns,
    pub dir: PathBuf,
    /// The agents' bpffs pin directories live under here (unique per topology, removed on drop).
    pub pin_dir: PathBuf,
    stop: Arc<AtomicBool>,
    servers: Vec<std::thread::JoinHandle<()>>,
    processes: Vec<Process>,
    /// Agents and `xlb decap` log to files in `dir` (see [`Topology::agent_log_path`]) instead of
    /// the test's stderr.
    pub logs_to_files: bool,
}

/// Frames leaving through XDP carry no checksum-offload state: senders must put real checksums
/// on the wire, as NICs do.
fn no_tx_offload(ns: &Netns, dev: &str) {
    sh("ip", &["netns", "exec", &ns.name, "ethtool", "-K", dev, "tx", "off"]);
}

/// The pass-everything XDP program on `dev` in `ns` (detached when dropped): the receiving side
/// of a veth takes XDP frames (XDP_TX, redirects) only while it runs XDP itself.
fn attach_pass(ns: &Netns, dev: &str) -> Loaded {
    let (name, dev) = (ns.name.clone(), dev.to_owned());
    ns.run(move || {
        let mut floor = Loaded::floor().expect("load the pass program");
        floor.attach(&dev).unwrap_or_else(|e| panic!("attach XDP to {dev} in {name}: {e}"));
        floor
    })
    .join()
    .expect("attach thread")
}

/// The backend of `add_far_backend`, behind node 0's second interface.
pub const FAR_V4: &str = "10.230.0.2";
pub const FAR_V6: &str = "fd00:230::2";

/// The router's address on the segment.
pub const ROUTER_V4: &str = "10.210.0.254";
pub const ROUTER_V6: &str = "fd00:210::254";

pub fn node_v4(i: usize) -> String {
    segment_v4(2 + i)
}
pub fn node_v6(i: usize) -> String {
    segment_v6(2 + i)
}
/// Client `c` behind the router (edge topology).
pub fn edge_client_v4(c: usize) -> String {
    format!("10.220.{c}.2")
}
pub fn edge_client_v6(c: usize) -> String {
    format!("fd00:220:{c}::2")
}

impl Topology {
    /// One client and one xlb node on the segment, `backends` backend namespaces each holding
    /// `vips` on loopback; the client routes the VIPs via the node.
    pub fn new(backends: usize, vips: &[&str]) -> Self {
        let topo = Self::build(1, 0, backends, vips);
        for vip in vips {
            let (via, len) = if vip.contains(':') { (NODE_V6, 128) } else { (NODE_V4, 32) };
            topo.clients[0].ip(&["route", "add", &format!("{vip}/{len}"), "via", via]);
        }
        topo
    }

    /// The edge: `clients` client namespaces behind a router (forwarding, L4 multipath hash),
    /// `nodes` xlb nodes and `backends` backends on the segment behind it. The router has no
    /// route to the VIPs until BGP (or `route_vips_statically`) gives it one.
    pub fn edge(nodes: usize, clients: usize, backends: usize, vips: &[&str]) -> Self {
        Self::build(nodes, clients, backends, vips)
    }

    fn build(nodes: usize, routed_clients: usize, backends: usize, vips: &[&str]) -> Self {
        let switch = Netns::new("sw");
        switch.ip(&["link", "add", "br0", "type", "bridge"]);
        switch.ip(&["link", "set", "br0", "up"]);
        let join = |ns: &Netns, port: &str, mac: Option<String>| {
            veth(ns, "eth0", &switch, port);
            if let Some(mac) = mac {
                ns.ip(&["link", "set", "eth0", "address", &mac]);
            }
            switch.ip(&["link", "set", port, "master", "br0"]);
            no_tx_offload(ns, "eth0");
            ns.sysctl(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]);
        };
        let addr = |ns: &Netns, dev: &str, v4: &str, v6: &str| {
            ns.ip(&["addr", "add", v4, "dev", dev]);
            ns.ip(&["addr", "add", v6, "dev", dev, "nodad"]);
        };

        let mut clients = Vec::new();
        let router = if routed_clients == 0 {
            let client = Netns::new("cl");
            join(&client, "p-cl", None);
            addr(&client, "eth0", &format!("{CLIENT_V4}/24"), &format!("{CLIENT_V6}/64"));
            clients.push(client);
            None
        } else {
            let router = Netns::new("rt");
            join(&router, "p-rt", None);
            addr(&router, "eth0", &format!("{ROUTER_V4}/24"), &format!("{ROUTER_V6}/64"));
            router.sysctl(&[
                "net.ipv4.ip_forward=1",
                "net.ipv6.conf.all.forwarding=1",
                // Spread flows over ECMP nexthops by L4 ports, not just addresses.
                "net.ipv4.fib_multipath_hash_policy=1",
                "net.ipv6.fib_multipath_hash_policy=1",
            ]);
            for c in 0..routed_clients {
                let client = Netns::new(&format!("cl{c}"));
                client.sysctl(&["net.ipv6.conf.all.accept_dad=0", "net.ipv6.conf.default.accept_dad=0"]);
                let port = format!("c{c}");
                veth(&client, "eth0", &router, &port);
                no_tx_offload(&client, "eth0");
                no_tx_offload(&router, &port);
                addr(&client, "eth0", &format!("{}/24", edge_client_v4(c)), &format!("{}/64", edge_client_v6(c)));
                addr(&router, &port, &format!("10.220.{c}.1/24"), &format!("fd00:220:{c}::1/64"));
                client.ip(&["route", "add", "default", "via", &format!("10.220.{c}.1")]);
                client.ip(&["-6", "route", "add", "default", "via", &format!("fd00:220:{c}::1")]);
                clients.push(client);
            }
            Some(router)
        };
        let default_routes = |ns: &Netns| {
            if router.is_some() {
                ns.ip(&["route", "add", "default", "via", ROUTER_V4]);
                ns.ip(&["-6", "route", "add", "default", "via", ROUTER_V6]);
            }
        };

        let node_list: Vec<Netns> = (0..nodes)
            .map(|i| {
                let node = Netns::new(if i == 0 { "lb".to_owned() } else { format!("lb{i}") }.as_str());
                join(&node, &node_port(i), Some(format!("02:00:00:21:00:{:02x}", 2 + i)));
                addr(&node, "eth0", &format!("{}/24", node_v4(i)), &format!("{}/64", node_v6(i)));
                default_routes(&node);
                node
            })
            .collect();

        let mut all = Vec::new();
        for i in 0..backends {
            let ns = Netns::new(&format!("be{i}"));
            join(&ns, &format!("p-be{i}"), Some(backend_mac(i)));
            addr(&ns, "eth0", &format!("{}/24", backend_v4(i)), &format!("{}/64", backend_v6(i)));
            ns.sysctl(&[
                "net.ipv4.conf.all.arp_ignore=1",
                "net.ipv4.conf.all.arp_announce=2",
                "net.ipv4.conf.eth0.arp_ignore=1",
                "net.ipv4.conf.eth0.arp_announce=2",
                "net.ipv4.conf.all.rp_filter=0",
                "net.ipv4.conf.eth0.rp_filter=0",
            ]);
            for vip in vips {
                let len = if vip.contains(':') { 128 } else { 32 };
                ns.ip(&["addr", "add", &format!("{vip}/{len}"), "dev", "lo"]);
            }
            // DSR: answers go from the backend to the client directly (via the router, if any).
            default_routes(&ns);
            all.push(ns);
        }
        let dir = std::env::temp_dir().join(unique_name("topo"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        // Nodes answer with XDP_TX into their veth; the switch side of a veth only takes XDP
        // frames while it runs XDP itself: give it the pass-everything program.
        let switch_xdp = (0..nodes).map(|i| attach_pass(&switch, &node_port(i))).collect();
        Self {
            clients,
            nodes: node_list,
            router,
            backends: all,
            switch_xdp,
            _switch: switch,
            dir,
            pin_dir: PathBuf::from("/sys/fs/bpf").join(unique_name("pins")),
            stop: Arc::new(AtomicBool::new(false)),
            servers: Vec::new(),
            processes: Vec::new(),
            logs_to_files: false,
        }
    }

    /// Lets the client (on the segment) send XDP frames — the traffic generator's: the switch
    /// side of its veth takes them only while it runs XDP itself.
    pub fn accept_generated_frames(&mut self) {
        let pass = attach_pass(&self._switch, "p-cl");
        self.switch_xdp.push(pass);
    }

    /// The first (or only) xlb node.
    pub fn node(&self) -> &Netns {
        &self.nodes[0]
    }

    /// The first (or only) client.
    pub fn client(&self) -> &Netns {
        &self.clients[0]
    }

    /// Where node `i`'s agent pins its data plane.
    pub fn pin_dir_of(&self, i: usize) -> PathBuf {
        self.pin_dir.join(format!("node{i}"))
    }

    /// The nexthops (`via` addresses) of the router's kernel route to `address`.
    pub fn router_nexthops(&self, address: &str) -> BTreeSet<String> {
        let router = self.router.as_ref().expect("an edge topology");
        let family = if address.contains(':') { "-6" } else { "-4" };
        let out = String::from_utf8_lossy(&router.ip(&[family, "route", "show", address]).stdout).into_owned();
        let words: Vec<&str> = out.split_whitespace().collect();
        words.windows(2).filter(|w| w[0] == "via").map(|w| w[1].to_owned()).collect()
    }

    /// Routes the VIPs on the router over every node (ECMP), as BGP would.
    pub fn route_vips_statically(&self, vips: &[&str]) {
        let router = self.router.as_ref().expect("an edge topology");
        for vip in vips {
            let v6 = vip.contains(':');
            let mut args: Vec<String> = if v6 { vec!["-6".into()] } else { vec![] };
            args.extend(["route".into(), "add".into(), format!("{vip}/{}", if v6 { 128 } else { 32 })]);
            for i in 0..self.nodes.len() {
                args.extend(["nexthop".into(), "via".into(), if v6 { node_v6(i) } else { node_v4(i) }]);
            }
            router.ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
        }
    }

    /// A backend on a link of its own to node 0's second interface, `eth1` (10.230.0.1,
    /// fd00:230::1 on the node; the backend at `FAR_V4` / `FAR_V6`, without a default route):
    /// only a two-armed node reaches it. Joins `backends` (its name is `be<index>`). The
    /// backend's side runs the pass program, as the switch side does, to take XDP frames.
    pub fn add_far_backend(&mut self) -> usize {
        let index = self.backends.len();
        let ns = Netns::new(&format!("bf{index}"));
        let node = &self.nodes[0];
        veth(node, "eth1", &ns, "eth0");
        node.ip(&["addr", "add", "10.230.0.1/24", "dev", "eth1"]);
        node.ip(&["addr", "add", "fd00:230::1/64", "dev", "eth1", "nodad"]);
        ns.ip(&["addr", "add", &format!("{FAR_V4}/24"), "dev", "eth0"]);
        ns.ip(&["addr", "add", &format!("{FAR_V6}/64"), "dev", "eth0", "nodad"]);
        no_tx_offload(node, "eth1");
        no_tx_offload(&ns, "eth0");
        // Connection-per-request loads through a NAT meet TIME_WAIT on reused sources.
        ns.sysctl(&["net.ipv4.tcp_max_tw_buckets=0"]);
        self.switch_xdp.push(attach_pass(&ns, "eth0"));
        self.backends.push(ns);
        index
    }

    /// Starts, on every backend, a TCP server and a UDP server on `vip:port` that answer each
    /// request with the backend's name (`be<i>`).
    pub fn serve(&mut self, vip: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(vip.parse().expect("VIP"), port);
            let name = format!("be{i}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            let tcp_name = name.clone();
            let tcp_ready = ready_tx.clone();
            self.servers.push(ns.run(move || {
                accept_loop(addr, &stop, &tcp_ready, |mut conn| {
                    let mut buf = [0u8; 64];
                    if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                        let _ = conn.write_all(tcp_name.as_bytes());
                        // Let the client close first: TIME_WAIT stays on its side, where
                        // connect() avoids reusing the port, not on ours, where a reused
                        // client port would meet it.
                        let _ = conn.read(&mut buf);
                    }
                });
            }));
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                socket.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(name.as_bytes(), peer);
                    }
                }
            }));
            for _ in 0..2 {
                ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
            }
        }
    }

    /// Starts, on every backend, an HTTP/1.1 server on `addr:port` that answers every request
    /// with 200 and the backend's name as the body, one request per connection.
    pub fn serve_http(&mut self, addr: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(addr.parse().expect("address"), port);
            let name = format!("be{i}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                accept_loop(addr, &stop, &ready_tx, |mut conn| {
                    // The request head, then the answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = conn.write_all(answer.as_bytes());
                });
            }));
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
        }
    }

    /// `count` HTTP GETs of `vip:port` from client `c`, each on a new connection; returns how
    /// many answers (200, body = the backend's name) each backend gave, and the failures.
    pub fn http_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, http_exchange, never).join().expect("client thread")
    }

    /// Starts, on every backend, a TCP server on `vip:port` that answers every line it reads on
    /// a connection with the backend's name and a newline, until the client closes.
    pub fn serve_streams(&mut self, vip: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(vip.parse().expect("VIP"), port);
            let name = format!("be{i}\n");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                ready_tx.send(()).expect("ready");
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = listener.accept() {
                        let name = name.clone();
                        let stop = Arc::clone(&stop);
                        conns.push(std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut conn = std::io::BufReader::new(conn);
                            let mut line = String::new();
                            while !stop.load(Ordering::Relaxed) {
                                line.clear();
                                match std::io::BufRead::read_line(&mut conn, &mut line) {
                                    Ok(0) => break,
                                    Ok(_) => {
                                        if conn.get_mut().write_all(name.as_bytes()).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                for conn in conns {
                    let _ = conn.join();
                }
            }));
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
        }
    }

    /// Opens `count` long TCP streams to `vip:port` from the client (see `serve_streams`);
    /// each exchanges a line every 50 ms until the returned `Streams` is finished. A stream that
    /// waits 3 s for an answer ends with an error.
    pub fn open_streams(&self, vip: &str, port: u16, count: usize) -> Streams {
        self.open_streams_waiting(vip, port, count, Duration::from_secs(3))
    }

    /// `open_streams` whose streams wait up to `answer_within` for each answer (a link that
    /// drops most frames, as a flood's does, leaves TCP retransmitting with backoff for seconds).
    pub fn open_streams_waiting(&self, vip: &str, port: u16, count: usize, answer_within: Duration) -> Streams {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges: Arc<Vec<std::sync::atomic::AtomicUsize>> =
            Arc::new((0..count).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        let threads = (0..count)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let exchanges = Arc::clone(&exchanges);
                self.clients[0].run(move || -> Result<String, String> {
                    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4)).map_err(|e| e.to_string())?;
                    conn.set_read_timeout(Some(answer_within)).map_err(|e| e.to_string())?;
                    let mut reader = std::io::BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
                    let mut writer = conn;
                    let mut first: Option<String> = None;
                    // Bounded: at most 1 200 exchanges and 120 s even if nobody says stop.
                    let began = std::time::Instant::now();
                    for n in 0..1200 {
                        if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(120) {
                            break;
                        }
                        writer.write_all(b"x\n").map_err(|e| format!("exchange {n}: {e}"))?;
                        let mut line = String::new();
                        std::io::BufRead::read_line(&mut reader, &mut line)
                            .map_err(|e| format!("exchange {n}: {e}"))?;
                        let name = line.trim().to_owned();
                        if name.is_empty() {
                            return Err(format!("exchange {n}: connection closed"));
                        }
                        match &first {
                            None => first = Some(name),
                            Some(f) if *f != name => {
                                return Err(format!("exchange {n}: answered by {name}, began on {f}"));
                            }
                            Some(_) => {}
                        }
                        exchanges[i].fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    first.ok_or_else(|| "no exchange".to_owned())
                })
            })
            .collect();
        Streams { stop, exchanges, threads }
    }

    /// Runs `xlb decap` on every backend.
    pub fn decap_on_backends(&mut self) {
        for (i, ns) in self.backends.iter().enumerate() {
            let mut cmd = ns.command(xlb_bin().to_str().expect("utf-8 path"));
            cmd.args(["decap", "--iface", "eth0"]);
            if self.logs_to_files {
                cmd.stderr(std::fs::File::create(self.decap_log_path(i)).expect("decap log file"));
            }
            self.processes.push(Process::spawn(cmd, &format!("xlb decap on be{i}")));
        }
        for ns in &self.backends {
            wait_for("decap attached", Duration::from_secs(10), || {
                let link = String::from_utf8(ns.ip(&["link", "show", "eth0"]).stdout).ok()?;
                link.contains("xdp").then_some(())
            });
        }
    }

    /// Writes `config` and starts `xlb run` on the node; waits until its admin socket answers.
    pub fn start_agent(&mut self, config: &str) -> usize {
        self.start_agent_with(config, &[])
    }

    /// `start_agent` with more `xlb run` arguments.
    pub fn start_agent_with(&mut self, config: &str, args: &[&str]) -> usize {
        self.start_agent_on(0, config, args)
    }

    /// Writes `config` and starts `xlb run` on node `i` with its stderr (the log) going to
    /// [`Topology::agent_log_path`]; does not wait for anything. Returns the agent's index and
    /// the instant it was spawned (after the config was written).
    pub fn spawn_agent_logged(&mut self, i: usize, config: &str, args: &[&str]) -> (usize, std::time::Instant) {
        let log = std::fs::File::create(self.agent_log_path(i)).expect("agent log file");
        let mut cmd = self.agent_command(i, config, args);
        cmd.stderr(log);
        let spawned = std::time::Instant::now();
        (self.spawn(cmd, &format!("xlb run on node {i}")), spawned)
    }

    /// Writes `config` and returns the `xlb run` command for node `i` (its own admin socket,
    /// pin and state directories), not started.
    pub fn agent_command(&self, i: usize, config: &str, args: &[&str]) -> std::process::Command {
        let path = self.config_path_of(i);
        std::fs::write(&path, config).expect("write config");
        let mut cmd = self.nodes[i].command_keep_mounts(xlb_bin().to_str().expect("utf-8 path"));
        cmd.args(["run", "--iface", "eth0", "--config"]).arg(&path).arg("--admin-socket").arg(self.socket_of(i));
        cmd.arg("--pin-dir").arg(self.pin_dir_of(i)).arg("--state-dir").arg(self.state_dir_of(i)).args(args);
        cmd
    }

    /// Starts `cmd`, killed when the topology goes; returns its index (see [`Topology::agent`]).
    pub fn spawn(&mut self, cmd: std::process::Command, what: &str) -> usize {
        self.processes.push(Process::spawn(cmd, what));
        self.processes.len() - 1
    }

    /// Node `i`'s agent's state directory (drains kept across restarts).
    pub fn state_dir_of(&self, i: usize) -> PathBuf {
        self.dir.join(format!("state{i}"))
    }

    /// Where `spawn_agent_logged` (and `start_agent_on`, when [`Topology::logs_to_files`]) sends
    /// node `i`'s agent log.
    pub fn agent_log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("agent{i}.log"))
    }

    /// Takes the pass-everything XDP program off the switch side of every node's veth: frames
    /// the nodes send with XDP_TX are then dropped by the veth driver (what an operator who
    /// forgot the peer's program sees).
    pub fn detach_switch_xdp(&mut self) {
        self.switch_xdp.clear();
    }

    /// Where backend `i`'s `xlb decap` logs when [`Topology::logs_to_files`].
    pub fn decap_log_path(&self, i: usize) -> PathBuf {
        self.dir.join(format!("decap{i}.log"))
    }

    /// Writes `config` and starts `xlb run` on node `i`; waits until its admin socket answers.
    pub fn start_agent_on(&mut self, i: usize, config: &str, args: &[&str]) -> usize {
        let mut cmd = self.agent_command(i, config, args);
        if self.logs_to_files {
            cmd.stderr(std::fs::File::create(self.agent_log_path(i)).expect("agent log file"));
        }
        let index = self.spawn(cmd, &format!("xlb run on node {i}"));
        wait_for("the agent's admin socket", Duration::from_secs(10), || self.stats_of(i));
        index
    }

    pub fn agent(&mut self, index: usize) -> &mut Process {
        &mut self.processes[index]
    }

    pub fn config_path(&self) -> PathBuf {
        self.config_path_of(0)
    }

    pub fn config_path_of(&self, i: usize) -> PathBuf {
        self.dir.join(if i == 0 { "xlb.yaml".to_owned() } else { format!("xlb{i}.yaml") })
    }

    pub fn socket(&self) -> PathBuf {
        self.socket_of(0)
    }

    pub fn socket_of(&self, i: usize) -> PathBuf {
        self.dir.join(if i == 0 { "admin.sock".to_owned() } else { format!("admin{i}.sock") })
    }

    pub fn stats(&self) -> Option<Snapshot> {
        self.stats_of(0)
    }

    pub fn stats_of(&self, i: usize) -> Option<Snapshot> {
        let out = self.xlb_on(i, &["stats", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("stats --json is JSON"))
    }

    /// The agent's `xlb status --vips --json` (every VIP), if it answers.
    pub fn status(&self) -> Option<xlb::serve::admin::Status> {
        self.status_of(0)
    }

    pub fn status_of(&self, i: usize) -> Option<xlb::serve::admin::Status> {
        let out = self.xlb_on(i, &["status", "--vips", "--json"]);
        out.status.success().then(|| serde_json::from_slice(&out.stdout).expect("status --json is JSON"))
    }

    /// Runs an `xlb` CLI command against node 0's agent (admin socket appended).
    pub fn xlb(&self, args: &[&str]) -> std::process::Output {
        self.xlb_on(0, args)
    }

    pub fn xlb_on(&self, i: usize, args: &[&str]) -> std::process::Output {
        std::process::Command::new(xlb_bin())
            .args(args)
            .arg("--admin-socket")
            .arg(self.socket_of(i))
            .output()
            .expect("run xlb")
    }

    /// `count` TCP request/answer exchanges with `vip:port` from the client, each on a new
    /// connection; returns how many answers each backend gave, and the failures.
    pub fn tcp_requests(&self, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        self.requests(vip, port, count, tcp_exchange)
    }

    /// `tcp_requests` from client `c`.
    pub fn tcp_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, tcp_exchange, never).join().expect("client thread")
    }

    /// `udp_requests` from client `c`.
    pub fn udp_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, udp_exchange, never).join().expect("client thread")
    }

    /// One UDP exchange from client `c`'s source port `sport`: which backend answered.
    pub fn udp_from_port(&self, c: usize, vip: &str, port: u16, sport: u16) -> std::io::Result<String> {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        self.clients[c].run(move || udp_exchange_from(addr, sport)).join().expect("client thread")
    }

    /// `count` UDP request/answer exchanges, each from a new source port.
    pub fn udp_requests(&self, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        self.requests(vip, port, count, udp_exchange)
    }

    /// Runs `exchange` `count` times from the client namespace, tallying the backend names it
    /// returns; gives up after MAX_FAILURES failures.
    fn requests(
        &self,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
    ) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests(vip, port, count, exchange, never).join().expect("client thread")
    }

    /// TCP requests (as `tcp_requests`) one after another in the background until `Load::finish`
    /// (at most `max` of them).
    pub fn tcp_load(&self, vip: &str, port: u16, max: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = self.spawn_requests(vip, port, max, tcp_exchange, Arc::clone(&stop));
        Load { stop, thread }
    }

    fn spawn_requests(
        &self,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(BTreeMap<String, usize>, usize)> {
        self.spawn_requests_from(0, vip, port, count, exchange, stop)
    }

    fn spawn_requests_from(
        &self,
        client: usize,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(BTreeMap<String, usize>, usize)> {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        self.clients[client].run(move || {
            let mut seen = BTreeMap::new();
            let mut failed = 0;
            for _ in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match exchange(addr) {
                    Ok(name) if !name.is_empty() => *seen.entry(name).or_insert(0) += 1,
                    other => {
                        failed += 1;
                        eprintln!("request to {addr} failed: {other:?}");
                    }
                }
                // Bounded in time too: a broken path fails fast instead of timing out
                // request after request.
                if failed >= MAX_FAILURES {
                    break;
                }
            }
            (seen, failed)
        })
    }

    /// Starts, on every backend, a TCP listener on its own address and `port` for health
    /// checks; `HealthSwitches::set` opens or closes each one.
    pub fn serve_health(&mut self, port: u16) -> HealthSwitches {
        let switches: Arc<Vec<AtomicBool>> =
            Arc::new((0..self.backends.len()).map(|_| AtomicBool::new(true)).collect());
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(backend_v4(i).parse().expect("address"), port);
            let stop = Arc::clone(&self.stop);
            let switches = Arc::clone(&switches);
            self.servers.push(ns.run(move || {
                let mut listener: Option<TcpListener> = None;
                while !stop.load(Ordering::Relaxed) {
                    if !switches[i].load(Ordering::Relaxed) {
                        // Closed: connects are refused.
                        listener = None;
                    } else if listener.is_none() {
                        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                        l.set_nonblocking(true).expect("nonblocking");
                        listener = Some(l);
                    }
                    if let Some(l) = &listener {
                        while l.accept().is_ok() {}
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        HealthSwitches(switches)
    }
}

/// One TCP request/answer exchange on a new connection.
fn tcp_exchange(addr: SocketAddr) -> std::io::Result<String> {
    // Long enough for two SYN retransmissions (1 s, then 2 s): a client's TCP retries a lost
    // SYN, and so does this one.
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A line: the stream servers answer lines, the others any bytes.
    conn.write_all(b"who\n")?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// One HTTP/1.1 GET on a new connection: the body of a 200 answer.
fn http_exchange(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(4)))?;
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("not a 200 answer: {answer:?}"))),
    }
}

/// Runs a listener on `addr` until `stop`, handing each accepted connection (blocking, with a
/// 2 s read timeout) to `handle`; signals `ready` once bound.
fn accept_loop(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
    mut handle: impl FnMut(TcpStream),
) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    ready.send(()).expect("ready");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                handle(conn);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One UDP request/answer exchange from a new source port.
fn udp_exchange(addr: SocketAddr) -> std::io::Result<String> {
    udp_exchange_from(addr, 0)
}

/// One UDP request/answer exchange from source port `sport` (0: any).
fn udp_exchange_from(addr: SocketAddr, sport: u16) -> std::io::Result<String> {
    let any: IpAddr = if addr.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
    let socket = UdpSocket::bind(SocketAddr::new(any, sport))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(b"who", addr)?;
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Requests running in the background (`Topology::tcp_load`).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(BTreeMap<String, usize>, usize)>,
}

impl Load {
    /// Stops the load; returns the answers by backend and the failures.
    pub fn finish(self) -> (BTreeMap<String, usize>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// The health listeners of `Topology::serve_health`, by backend index.
#[derive(Debug, Clone)]
pub struct HealthSwitches(Arc<Vec<AtomicBool>>);

impl HealthSwitches {
    pub fn set(&self, backend: usize, healthy: bool) {
        self.0[backend].store(healthy, Ordering::Relaxed);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Processes first (they hold XDP links), then server threads, then namespaces.
        self.processes.clear();
        for server in self.servers.drain(..) {
            let _ = server.join();
        }
        self.switch_xdp.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        // Pins (the link's among them) would keep the program and maps alive.
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// Asserts that `seen` spreads over backends in proportion to `weights` (by backend index),
/// each share within `tolerance` (absolute) of its weight's share.
pub fn assert_spread(seen: &BTreeMap<String, usize>, weights: &[u32], tolerance: f64, what: &str) {
    let total: usize = seen.values().sum();
    let weight_sum: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let share = *seen.get(&format!("be{i}")).unwrap_or(&0) as f64 / total as f64;
        let ideal = f64::from(*w) / f64::from(weight_sum);
        assert!(
            (share - ideal).abs() <= tolerance,
            "{what}: be{i} got {share:.3} of {total}, weight share {ideal:.3}; all: {seen:?}"
        );
    }
}

/// Long TCP streams in flight (`Topology::open_streams`).
#[derive(Debug)]
pub struct Streams {
    stop: Arc<AtomicBool>,
    exchanges: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    threads: Vec<std::thread::JoinHandle<Result<String, String>>>,
}

impl Streams {
    /// Exchanges each stream has completed so far.
    pub fn exchanges(&self) -> Vec<usize> {
        self.exchanges.iter().map(|e| e.load(Ordering::Relaxed)).collect()
    }

    /// Waits until every stream has completed `more` exchanges beyond what it had now, or one
    /// has ended; bounded by `timeout`. Returns whether all made that progress.
    pub fn progress(&self, more: usize, timeout: Duration) -> bool {
        let start = self.exchanges();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let now = self.exchanges();
            if now.iter().zip(&start).all(|(n, s)| *n >= s + more) {
                return true;
            }
            if self.threads.iter().any(|t| t.is_finished()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the streams; returns each one's backend, or why it broke.
    pub fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("stream thread panicked".into()))).collect()
    }
}
