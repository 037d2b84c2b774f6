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

mod traffic;

pub use traffic::*;

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
    switch: Netns,
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
    ethtool(ns, &["-K", dev, "tx", "off"]);
}

/// `ethtool args` inside `ns`.
fn ethtool(ns: &Netns, args: &[&str]) {
    sh("ip", &[&["netns", "exec", &ns.name, "ethtool"][..], args].concat());
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
            switch,
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
        let pass = attach_pass(&self.switch, "p-cl");
        self.switch_xdp.push(pass);
    }

    /// The namespace of the segment's bridge: one end of every veth of the segment.
    pub fn switch(&self) -> &Netns {
        &self.switch
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

    /// Gives node `i`'s veth as many queues as the machine has CPUs, on both ends — a
    /// multi-queue NIC's shape. The switch end spreads flows over them by hash, so frames into
    /// the node fill one 256-frame XDP ring per queue, each drained by its own NAPI, where one
    /// ring overflowed under bulk transfers (a burst is up to a softirq's budget of 300 frames).
    pub fn spread_node_queues(&self, i: usize) {
        let queues = std::thread::available_parallelism().map_or(1, |n| n.get()).to_string();
        let q = queues.as_str();
        ethtool(&self.switch, &["-L", &node_port(i), "rx", q, "tx", q]);
        ethtool(&self.nodes[i], &["-L", "eth0", "rx", q, "tx", q]);
    }

    /// Turns node `i`'s transmit offloads back on (checksums, scatter-gather, segmentation), as
    /// a host's NIC has them. Only where nothing forwards the node's own packets through XDP
    /// (see `no_tx_offload`): a bench of what the node itself serves.
    pub fn offload_node_tx(&self, i: usize) {
        ethtool(&self.nodes[i], &["-K", "eth0", "tx", "on", "sg", "on", "tso", "on", "gso", "on"]);
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
