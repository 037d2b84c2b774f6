//! The control plane at scale, shared by tests/netns_scale.rs (which asserts) and `cargo xtask
//! bench control-plane` (which measures): one xlb node with many VIPs, a /32 each, all
//! announced over BGP to a BIRD router; reloads that change every VIP's backends, or one VIP's;
//! a backend whose server dies during a reload.
//!
//! The agent is driven only through its public surface: `xlb run` (stderr to a log file),
//! SIGHUP, `xlb status --json`. What the network sees is read where it happens: BIRD's session
//! state (`birdc`), the router's kernel routes (`ip route`), BGP messages and SYNs on the wire
//! (packet sockets in the router's and the victim's namespaces, kernel timestamps).
//!
//! Topology (topology.rs's edge): a client behind the router (BIRD, hold 3 s, keepalive 1 s;
//! besides the /32s BGP gives it, the router has a static 10.240.0.0/16 via the node, so that a
//! lost session does not also stop the client's traffic and blur the health figure: routes are
//! judged by BIRD's /32s alone), the node at 10.210.0.2 with XDP on its eth0, and [`REAL_BACKENDS`] backend namespaces on the
//! segment (be`j` at 10.210.0.(11 + j)). VIP `i` is 10.240.(i / 250).(i % 250 + 1) port 80/tcp.
//! Every backend takes all of 10.240.0.0/16 as local (AnyIP) and serves TCP on 0.0.0.0:80,
//! which is also the port health checks probe: killing that server fails both.
//!
//! Backends of a VIP come from a pool of its own of `backends_per_vip + 1` segment addresses
//! (member `j` of the segment's [`SEGMENT_BACKENDS`] is be`j`'s address and MAC), drawn so that
//! VIPs' backend sets differ (every Maglev table is a build of its own, as on an edge whose VIPs
//! front different services): the VIP leaves one out, which one depending on the VIP's
//! offset, so bumping an offset swaps one backend out and another in — a reload that bumps every
//! offset changes every VIP's Maglev table. Only the first [`REAL_BACKENDS`] addresses exist;
//! the others take no traffic, since only the checked VIPs are driven: the first
//! `checked_vips` VIPs, whose backends are real ones only, always with be0 (the victim), each
//! with a TCP health check. Every `nat_every`-th other VIP is `mode: nat`, the rest `dsr-l2`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write as _,
    io::{Read as _, Write as _},
    net::{Ipv4Addr, SocketAddr, TcpListener},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU16, Ordering},
    },
    thread::JoinHandle,
    time::{Duration, Instant, SystemTime},
};

use crate::{
    bird::{self, Bird, Neighbor},
    netns::{Netns, xlb_bin},
    topology::{ROUTER_V4, Topology, backend_mac, backend_v4, node_v4},
};

/// Backend namespaces that exist (and serve); be0 is the victim.
pub const REAL_BACKENDS: usize = 5;
/// Backend addresses on the segment that VIPs draw their pools from (a prime: see `members`).
pub const SEGMENT_BACKENDS: usize = 181;
/// The backend whose server is killed.
pub const VICTIM: usize = 0;
pub const VIP_PORT: u16 = 80;
/// Every VIP lies in here; backends take it all as local.
pub const VIP_PREFIX: &str = "10.240.0.0/16";
/// The node's NAT source address (held on its eth0).
pub const NAT_POOL_ADDRESS: &str = "10.210.0.201";
/// NAT backends' port (the fictional ones: nothing is sent to them).
const NAT_BACKEND_PORT: u16 = 8080;
pub const NODE_AS: u32 = 65001;
pub const ROUTER_AS: u32 = 65000;
/// BIRD's timers toward the node, and the agent's hold time: keepalives every second.
pub const BGP_HOLD_SECS: u32 = 3;
pub const BGP_KEEPALIVE_SECS: u32 = 1;
/// BIRD's name for the session.
pub const BGP_PROTOCOL: &str = "n0";

/// VIP `i`'s address.
pub fn vip_address(i: usize) -> Ipv4Addr {
    assert!(i < 250 * 250, "at most 62 500 VIPs");
    Ipv4Addr::new(10, 240, (i / 250) as u8, (i % 250 + 1) as u8)
}

fn in_vip_prefix(a: Ipv4Addr) -> bool {
    a.octets()[..2] == [10, 240]
}

/// The shape of a scenario.
#[derive(Debug, Clone)]
pub struct Spec {
    pub vips: usize,
    /// Backends of each unchecked VIP (the pool has one more).
    pub backends_per_vip: usize,
    /// The first VIPs: real backends only, a TCP health check, driven by the client's load.
    pub checked_vips: usize,
    pub check_interval: Duration,
    pub check_timeout: Duration,
    pub fall: u32,
    pub rise: u32,
    /// Every `nat_every`-th unchecked VIP is `mode: nat` (0: none).
    pub nat_every: usize,
    /// `maglev_table_size` of every VIP; none: the agent's default.
    pub maglev_table_size: Option<u32>,
}

impl Spec {
    /// `vips` VIPs of 16 backends (8 from 5 000 VIPs on, so that 10 000 stay within 100 000
    /// backends), 4 checked VIPs probed every 200 ms, down after 2 failures.
    pub fn new(vips: usize) -> Spec {
        Spec {
            vips,
            backends_per_vip: if vips >= 5000 { 8 } else { 16 },
            checked_vips: 4.min(vips),
            check_interval: Duration::from_millis(200),
            check_timeout: Duration::from_millis(100),
            fall: 2,
            rise: 2,
            nat_every: 4,
            maglev_table_size: None,
        }
    }

    /// How soon a dead backend must stop getting new flows: fall × interval + 100 ms.
    pub fn health_bound(&self) -> Duration {
        self.check_interval * self.fall + Duration::from_millis(100)
    }

    /// The agent jitters each probe interval by up to ±10 %, so the fall-th failing probe may come
    /// up to fall × interval × 10 % after the nominal bound.
    pub fn probe_jitter(&self) -> Duration {
        self.check_interval * self.fall / 10
    }

    fn pool(&self) -> usize {
        self.backends_per_vip + 1
    }

    fn is_checked(&self, i: usize) -> bool {
        i < self.checked_vips
    }

    pub fn vip_name(&self, i: usize) -> String {
        if self.is_checked(i) { format!("chk{i}") } else { format!("v{i}") }
    }

    fn is_nat(&self, i: usize) -> bool {
        !self.is_checked(i) && self.nat_every > 0 && i % self.nat_every == self.nat_every - 1
    }

    /// Pool members (backend indices) of VIP `i` at offset `offset`.
    fn members(&self, i: usize, offset: usize) -> Vec<usize> {
        if self.is_checked(i) {
            // The victim always; one of the other real backends left out, in turn.
            let out = 1 + offset % (REAL_BACKENDS - 1);
            (0..REAL_BACKENDS).filter(|&j| j != out).collect()
        } else {
            // The VIP's pool: base, base + stride, … modulo a prime, so its members differ from
            // each other, and (strides below half the prime) no two VIPs' pools are the same set.
            let p = SEGMENT_BACKENDS;
            let (base, stride) = (i % p, 1 + i / p % (p / 2));
            let out = offset % self.pool();
            (0..self.pool()).filter(|&t| t != out).map(|t| (base + t * stride) % p).collect()
        }
    }

    fn check(&self) -> Result<(), String> {
        if self.vips == 0 || self.vips > 250 * 250 {
            return Err(format!("{} VIPs: 1..=62500", self.vips));
        }
        if self.backends_per_vip == 0 || self.pool() > SEGMENT_BACKENDS {
            return Err(format!("{} backends per VIP: 1..={}", self.backends_per_vip, SEGMENT_BACKENDS - 1));
        }
        if self.checked_vips > self.vips {
            return Err("more checked VIPs than VIPs".into());
        }
        Ok(())
    }
}

/// A config file's worth of VIPs at given offsets.
#[derive(Debug, Clone)]
pub struct Plan {
    pub spec: Spec,
    pub offsets: Vec<usize>,
}

impl Plan {
    pub fn new(spec: Spec) -> Plan {
        let offsets = vec![0; spec.vips];
        Plan { spec, offsets }
    }

    pub fn yaml(&self) -> String {
        let s = &self.spec;
        let mut y = String::with_capacity(s.vips * (120 + 70 * s.backends_per_vip));
        let _ = write!(
            y,
            "node:\n  flow_table_size: 65536\n  nat_table_size: 16384\n\
             bgp:\n  local_as: {NODE_AS}\n  router_id: {node}\n  hold_time: {BGP_HOLD_SECS}s\n  connect_retry: 1s\n  \
             peers:\n    - {{ address: {ROUTER_V4}, remote_as: {ROUTER_AS} }}\n\
             nat_pools:\n  - name: np\n    addresses: [{NAT_POOL_ADDRESS}]\n    ports: 20000-59999\nvips:\n",
            node = node_v4(0),
        );
        for i in 0..s.vips {
            let _ = write!(
                y,
                "  - name: {}\n    address: {}\n    port: {VIP_PORT}\n    protocol: tcp\n",
                s.vip_name(i),
                vip_address(i)
            );
            if let Some(size) = s.maglev_table_size {
                let _ = writeln!(y, "    maglev_table_size: {size}");
            }
            let nat = s.is_nat(i);
            y.push_str(if nat { "    mode: nat\n    snat_pool: np\n" } else { "    mode: dsr-l2\n" });
            if s.is_checked(i) {
                let _ = writeln!(
                    y,
                    "    health_check: {{ type: tcp, interval: {}ms, timeout: {}ms, rise: {}, fall: {} }}",
                    s.check_interval.as_millis(),
                    s.check_timeout.as_millis(),
                    s.rise,
                    s.fall
                );
            }
            y.push_str("    backends:\n");
            for j in s.members(i, self.offsets[i]) {
                let port = if nat { format!("port: {NAT_BACKEND_PORT}, ") } else { String::new() };
                let _ = writeln!(y, "      - {{ address: {}, {port}mac: \"{}\" }}", backend_v4(j), backend_mac(j));
            }
        }
        y
    }

    /// VIP name → its backends' addresses, as status should show them once applied.
    pub fn expected(&self) -> BTreeMap<String, BTreeSet<String>> {
        (0..self.spec.vips)
            .map(|i| {
                let members = self.spec.members(i, self.offsets[i]);
                (self.spec.vip_name(i), members.into_iter().map(backend_v4).collect())
            })
            .collect()
    }

    /// The VIPs the client drives (the checked ones).
    pub fn driven(&self) -> Vec<SocketAddr> {
        (0..self.spec.checked_vips).map(|i| SocketAddr::from((vip_address(i), VIP_PORT))).collect()
    }
}

/// What `xlb status --json` (the summary) or `xlb status --vips --json` says, reduced to what
/// the scenarios look at. Read from the JSON loosely (by field name), so that an agent with more
/// fields still reads.
#[derive(Debug, Clone, Default)]
pub struct StatusView {
    pub generation: u64,
    pub reload_ok: Option<bool>,
    pub reload_message: Option<String>,
    /// VIPs applied, and VIPs a pass has still to write.
    pub applied: usize,
    pub pending: usize,
    /// VIP name → (backend address → up): every VIP and backend from `--vips`; from the summary
    /// only the VIPs not fully serving, with their backends that take no new flows.
    pub vips: BTreeMap<String, BTreeMap<String, bool>>,
}

impl StatusView {
    fn parse(json: &[u8]) -> Result<StatusView, String> {
        let v: serde_json::Value = serde_json::from_slice(json).map_err(|e| format!("status --json: {e}"))?;
        let generation = v["config_generation"].as_u64().ok_or("status --json has no config_generation")?;
        let reload = &v["last_reload"];
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_owned();
        let mut vips = BTreeMap::new();
        let applied = if let Some(full) = v["snapshot"]["vips"].as_array() {
            for vip in full {
                let backends = vip["backends"]
                    .as_array()
                    .map(|bs| bs.iter().map(|b| (text(&b["address"]), b["up"].as_bool() == Some(true))).collect());
                vips.insert(text(&vip["name"]), backends.unwrap_or_default());
            }
            full.len()
        } else {
            for vip in v["degraded"].as_array().ok_or("status --json has neither snapshot.vips nor degraded")? {
                let backends = vip["not_serving"].as_array().map(|bs| {
                    bs.iter().filter(|b| b["reason"] == "down").map(|b| (text(&b["address"]), false)).collect()
                });
                vips.insert(text(&vip["name"]), backends.unwrap_or_default());
            }
            v["vips"].as_u64().ok_or("status --json has no vips count")? as usize
        };
        Ok(StatusView {
            generation,
            reload_ok: reload["ok"].as_bool(),
            reload_message: reload["message"].as_str().map(str::to_owned),
            applied,
            pending: v["pending_vips"].as_u64().unwrap_or(0) as usize,
            vips,
        })
    }

    /// Whether every VIP of `expected`, and only those, is applied with exactly its backends;
    /// else the first difference.
    pub fn matches(&self, expected: &BTreeMap<String, BTreeSet<String>>) -> Result<(), String> {
        if self.vips.len() != expected.len() {
            return Err(format!("{} of {} VIPs applied", self.vips.len(), expected.len()));
        }
        for (name, want) in expected {
            let Some(have) = self.vips.get(name) else { return Err(format!("VIP {name} not applied")) };
            if !have.keys().eq(want.iter()) {
                return Err(format!("VIP {name}: backends {:?}, want {want:?}", have.keys().collect::<Vec<_>>()));
            }
        }
        Ok(())
    }

    /// Whether the victim is down in every checked VIP.
    fn victim_down(&self, spec: &Spec) -> bool {
        let victim = backend_v4(VICTIM);
        (0..spec.checked_vips).all(|i| self.vips.get(&spec.vip_name(i)).and_then(|b| b.get(&victim)) == Some(&false))
    }
}

/// One `xlb status --json` (the summary) against `socket`: its latency, and what it said.
pub fn status(socket: &Path) -> (Duration, Result<StatusView, String>) {
    status_with(socket, &[])
}

/// `xlb status --vips --json`: every VIP with its backends (what the summary only counts).
pub fn full_status(socket: &Path) -> Result<StatusView, String> {
    status_with(socket, &["--vips"]).1
}

fn status_with(socket: &Path, more: &[&str]) -> (Duration, Result<StatusView, String>) {
    let start = Instant::now();
    let out = Command::new(xlb_bin()).args(["status", "--json"]).args(more).arg("--admin-socket").arg(socket).output();
    let took = start.elapsed();
    let view = match out {
        Ok(out) if out.status.success() => StatusView::parse(&out.stdout),
        Ok(out) => Err(format!("xlb status: {}", String::from_utf8_lossy(&out.stderr).trim())),
        Err(e) => Err(format!("running xlb status: {e}")),
    };
    (took, view)
}

/// The value of `name=value` in a log line (up to the next space).
fn log_field<'a>(line: &'a str, name: &str) -> Option<&'a str> {
    line.split(' ').find_map(|word| word.strip_prefix(name)?.strip_prefix('='))
}

/// The time stamp a tracing line starts with (`2026-12-04T05:05:05.545845Z`), as wall time.
pub fn log_time(line: &str) -> Option<SystemTime> {
    let stamp = line.get(..27).filter(|s| s.ends_with('Z') && s.as_bytes()[10] == b'T')?;
    let num = |r: std::ops::Range<usize>| stamp.get(r)?.parse::<i64>().ok();
    let (y, m, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hh, mm, ss, micros) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = u64::try_from(days * 86_400 + hh * 3600 + mm * 60 + ss).ok()?;
    Some(SystemTime::UNIX_EPOCH + Duration::from_secs(secs) + Duration::from_micros(micros as u64))
}

fn since(later: SystemTime, earlier: SystemTime) -> Duration {
    later.duration_since(earlier).unwrap_or_default()
}

/// A finished wait for the agent: how long it took, the latency of the status call that saw
/// it, and what the agent's own log says (its time stamp of `log_line`), when it has that line.
#[derive(Debug, Clone)]
pub struct Done {
    pub took: Duration,
    pub status_call: Duration,
    pub log_took: Option<Duration>,
    /// What the agent's log line says it spent reading the config (`parse_ms`), for a reload.
    pub log_parse: Option<Duration>,
}

/// A reload that was asked for.
#[derive(Debug, Clone)]
pub struct Reload {
    pub generation: u64,
    pub sent: Instant,
    pub sent_wall: SystemTime,
    expected: BTreeMap<String, BTreeSet<String>>,
}

/// The whole scenario: topology, BIRD, backend servers, the BGP capture, the agent.
/// Field order is drop order: servers and capture, BIRD, then the namespaces.
#[derive(Debug)]
pub struct Scale {
    pub servers: Servers,
    pub bgp: Capture,
    pub bird: Bird,
    pub topo: Topology,
    pub plan: Plan,
    /// Pause between the status polls of the waits (`wait_*`): short for the bench's figures,
    /// longer where only the outcome matters.
    pub poll_every: Duration,
    agent: Option<usize>,
    spawned_wall: Option<SystemTime>,
    /// The generation last seen applied.
    generation: u64,
}

impl Scale {
    /// Builds the topology, starts the backends' servers, BIRD and the BGP capture. No agent yet.
    pub fn build(spec: Spec) -> Scale {
        spec.check().unwrap_or_else(|e| panic!("scale spec: {e}"));
        let topo = Topology::edge(1, 1, REAL_BACKENDS, &[]);
        topo.node().ip(&["addr", "add", &format!("{NAT_POOL_ADDRESS}/24"), "dev", "eth0"]);
        for be in &topo.backends {
            // AnyIP: every VIP is local; arp_ignore (set by the topology) keeps them off ARP.
            be.ip(&["route", "add", "local", VIP_PREFIX, "dev", "lo"]);
        }
        let servers = Servers::start(&topo.backends);
        let router = topo.router.as_ref().expect("edge topology");
        router.ip(&["route", "add", VIP_PREFIX, "via", &node_v4(0), "metric", "1000"]);
        let bgp = Capture::start(router, "eth0", |p| p.sport == 179 || p.dport == 179);
        let neighbor =
            Neighbor::new(BGP_PROTOCOL, ROUTER_V4, &node_v4(0), NODE_AS).timers(BGP_HOLD_SECS, BGP_KEEPALIVE_SECS);
        let dir = Bird::temp_dir();
        let config = bird::config(ROUTER_V4, &[neighbor], false, &Bird::log_path(&dir));
        let bird = Bird::start(router, dir, &config);
        Scale {
            servers,
            bgp,
            bird,
            topo,
            plan: Plan::new(spec),
            poll_every: Duration::from_millis(5),
            agent: None,
            spawned_wall: None,
            generation: 0,
        }
    }

    pub fn spec(&self) -> &Spec {
        &self.plan.spec
    }

    pub fn socket(&self) -> PathBuf {
        self.topo.socket()
    }

    /// Starts `xlb run` (reloads on SIGHUP only) with the plan's config; returns when it was
    /// spawned.
    pub fn start_agent(&mut self) -> Instant {
        let yaml = self.plan.yaml();
        self.spawned_wall = Some(SystemTime::now());
        let (index, spawned) = self.topo.spawn_agent_logged(0, &yaml, &["--no-watch"]);
        self.agent = Some(index);
        spawned
    }

    pub fn agent_pid(&mut self) -> Option<u32> {
        let index = self.agent?;
        Some(self.topo.agent(index).child.id())
    }

    /// The agent's log so far.
    pub fn agent_log(&self) -> String {
        std::fs::read_to_string(self.topo.agent_log_path(0)).unwrap_or_default()
    }

    /// `Some(first line of its error)` once the agent has exited.
    pub fn agent_exited(&mut self) -> Option<String> {
        let index = self.agent?;
        let status = self.topo.agent(index).child.try_wait().ok()??;
        let log = self.agent_log();
        let error = log
            .lines()
            .find_map(|l| l.strip_prefix("xlb: "))
            .or_else(|| log.lines().find(|l| l.contains("ERROR")))
            .or_else(|| log.lines().rev().find(|l| !l.trim().is_empty()))
            .unwrap_or("no log");
        Some(format!("{error} ({status})"))
    }

    /// The first log line after `after` that contains `text`, as the agent stamped it.
    fn log_line_time(&self, text: &str, after: SystemTime) -> Option<SystemTime> {
        self.log_line(text, after).map(|(t, _)| t)
    }

    /// The first agent log line containing `text` logged at or after `after`, with its time.
    fn log_line(&self, text: &str, after: SystemTime) -> Option<(SystemTime, String)> {
        self.agent_log()
            .lines()
            .filter(|l| l.contains(text))
            .filter_map(|l| Some((log_time(l)?, l.to_owned())))
            .find(|(t, _)| *t >= after)
    }

    /// Waits until status shows every VIP applied with its backends (counted from `spawned`).
    /// `Err("refused: ...")` when the agent exits.
    pub fn wait_started(&mut self, spawned: Instant, timeout: Duration) -> Result<Done, String> {
        let expected = self.plan.expected();
        let mut last;
        loop {
            if let Some(error) = self.agent_exited() {
                return Err(format!("refused: {error}"));
            }
            // The summary says when every VIP is written; the full table then says with what.
            let (took, view) = status(&self.socket());
            let seen = spawned.elapsed();
            let applied = view.and_then(|v| {
                if v.applied == expected.len() && v.pending == 0 {
                    full_status(&self.socket())?.matches(&expected).map(|()| v)
                } else {
                    Err(format!("{} of {} VIPs applied, {} pending", v.applied, expected.len(), v.pending))
                }
            });
            match applied {
                Ok(view) => {
                    self.generation = view.generation;
                    let log_took =
                        self.spawned_wall.and_then(|at| Some(since(self.log_line_time("data plane filled", at)?, at)));
                    return Ok(Done { took: seen, status_call: took, log_took, log_parse: None });
                }
                Err(e) => last = e,
            }
            if spawned.elapsed() > timeout {
                return Err(format!("not applied within {timeout:?}: {last}"));
            }
            std::thread::sleep(self.poll_after(spawned));
        }
    }

    /// Rewrites the config (atomically) and sends SIGHUP.
    fn reload(&mut self) -> Reload {
        let path = self.topo.config_path();
        let tmp = path.with_extension("yaml.new");
        std::fs::write(&tmp, self.plan.yaml()).expect("write config");
        std::fs::rename(&tmp, &path).expect("replace config");
        let pid = self.agent_pid().expect("an agent") as i32;
        let (sent, sent_wall) = (Instant::now(), SystemTime::now());
        // SAFETY: kill with our own child's pid and a valid signal.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        Reload { generation: self.generation + 1, sent, sent_wall, expected: self.plan.expected() }
    }

    /// Every VIP's backend set changes (one backend out, another in).
    pub fn reload_all(&mut self) -> Reload {
        for o in &mut self.plan.offsets {
            *o += 1;
        }
        self.reload()
    }

    /// VIP `i`'s backend set changes; no other VIP's.
    pub fn reload_one(&mut self, i: usize) -> Reload {
        self.plan.offsets[i] += 1;
        self.reload()
    }

    /// Waits until status shows `reload`'s generation, the last reload ok and every VIP with
    /// its new backends.
    pub fn wait_reloaded(&mut self, reload: &Reload, timeout: Duration) -> Result<Done, String> {
        let mut last;
        loop {
            if let Some(error) = self.agent_exited() {
                return Err(format!("the agent exited: {error}"));
            }
            let (took, view) = status(&self.socket());
            // The time is when the summary first says so; the full table check after it is
            // verification, not part of the reload.
            let seen = reload.sent.elapsed();
            match view {
                Ok(v) if v.generation >= reload.generation && v.reload_ok == Some(false) => {
                    return Err(format!("reload failed: {}", v.reload_message.unwrap_or_default()));
                }
                Ok(v) if v.generation >= reload.generation && v.reload_ok == Some(true) && v.pending > 0 => {
                    last = format!("generation {}: {} VIPs pending", v.generation, v.pending);
                }
                Ok(v) if v.generation >= reload.generation && v.reload_ok == Some(true) => {
                    match full_status(&self.socket()).and_then(|full| full.matches(&reload.expected)) {
                        Ok(()) => {
                            self.generation = v.generation;
                            let line = self.log_line("reloaded", reload.sent_wall);
                            let log_took = line.as_ref().map(|(t, _)| since(*t, reload.sent_wall));
                            let log_parse = line.as_ref().and_then(|(_, l)| log_field(l, "parse_ms"));
                            let log_parse = log_parse.and_then(|v| v.parse().ok()).map(Duration::from_millis);
                            return Ok(Done { took: seen, status_call: took, log_took, log_parse });
                        }
                        Err(e) => last = format!("generation {}: {e}", v.generation),
                    }
                }
                Ok(v) => last = format!("generation {}", v.generation),
                Err(e) => last = e,
            }
            if reload.sent.elapsed() > timeout {
                return Err(format!("generation {} not applied within {timeout:?}: {last}", reload.generation));
            }
            std::thread::sleep(self.poll_after(reload.sent));
        }
    }

    /// The router's kernel routes to VIPs.
    pub fn router_vip_routes(&self) -> BTreeSet<Ipv4Addr> {
        router_routes(&self.topo.router.as_ref().expect("router").name)
    }

    /// Waits until BIRD's session is Established and the router's kernel has a route to every VIP.
    pub fn wait_routes(&self, timeout: Duration) -> Result<Duration, String> {
        let start = Instant::now();
        loop {
            let have = self.router_vip_routes().len();
            if have == self.spec().vips {
                return Ok(start.elapsed());
            }
            if start.elapsed() > timeout {
                return Err(format!(
                    "{have} of {} VIP routes in the router's kernel after {timeout:?}; BIRD: {:?}",
                    self.spec().vips,
                    bird_state(&self.bird.socket)
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the monitors of a reload window: the router's routes, BIRD's session state and,
    /// with `status_every`, the latency of `xlb status` polled that often.
    pub fn monitors(&self, status_every: Option<Duration>) -> Monitors {
        Monitors::start(self, status_every)
    }

    /// The full reload with a backend killed during it: the client drives the checked VIPs,
    /// the victim's namespace records SYNs; 50 ms after SIGHUP the victim's server dies. Waits
    /// for the reload, then for status to show the victim down, then 1.5 s more of traffic.
    pub fn full_reload_with_kill(&mut self, timeout: Duration) -> FullReload {
        let victim_ns = &self.topo.backends[VICTIM];
        let syns = Capture::start(victim_ns, "eth0", |p| {
            p.dport == VIP_PORT && p.flags & (SYN | ACK) == SYN && in_vip_prefix(p.dst)
        });
        let load = Load::start(self.topo.client(), self.plan.driven(), 40_000, timeout + Duration::from_secs(10));
        // A second of traffic before: the rate of new flows to the victim (the resolution).
        std::thread::sleep(Duration::from_secs(1));
        let reload = self.reload_all();
        std::thread::sleep(Duration::from_millis(50).saturating_sub(reload.sent.elapsed()));
        let killed_at = self.servers.kill(VICTIM);
        let done = self.wait_reloaded(&reload, timeout);
        let victim_down = self.wait_victim_down(timeout);
        std::thread::sleep(Duration::from_millis(1500));
        let load = load.finish();
        let syns = syns.finish();
        let health = HealthDown::compute(&syns, killed_at, &load, reload.sent_wall);
        FullReload { reload: done, victim_down, health, load }
    }

    /// The pause between status polls of a wait that began at `since`: `poll_every`, or 2 % of
    /// the time waited so far when that is longer. Each poll runs the CLI, a process of its own;
    /// polling a 5 s reload every 5 ms would take CPU from the agent it measures.
    fn poll_after(&self, since: Instant) -> Duration {
        self.poll_every.max(since.elapsed() / 50)
    }

    /// Waits until status shows the victim down in every checked VIP; how long since the kill.
    fn wait_victim_down(&mut self, timeout: Duration) -> Result<Duration, String> {
        let killed = self.servers.killed_at(VICTIM).ok_or("the victim was not killed")?;
        loop {
            let (_, view) = status(&self.socket());
            if view.as_ref().is_ok_and(|v| v.victim_down(self.spec())) {
                return Ok(since(SystemTime::now(), killed));
            }
            if since(SystemTime::now(), killed) > timeout {
                return Err(format!("status does not show be{VICTIM} down {timeout:?} after its server died"));
            }
            std::thread::sleep(self.poll_every.max(Duration::from_millis(20)));
        }
    }

    /// Resident memory of the agent (VmRSS), bytes.
    pub fn agent_rss(&mut self) -> Option<u64> {
        let pid = self.agent_pid()?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
        let kb = status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().strip_suffix("kB")?.trim();
        kb.parse::<u64>().ok().map(|kb| kb * 1024)
    }

    /// BPF map memory the agent holds (its maps' and their inner maps' memlock).
    pub fn agent_bpf_memory(&mut self) -> Result<BpfMemory, String> {
        let pid = self.agent_pid().ok_or("no agent")?;
        bpf_memory(pid)
    }
}

/// The router's kernel routes (installed by BIRD) to VIPs, in namespace `router`.
pub fn router_routes(router: &str) -> BTreeSet<Ipv4Addr> {
    let Ok(out) = Command::new("ip").args(["-n", router, "-4", "route", "show", "proto", "bird"]).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| in_vip_prefix(*a))
        .collect()
}

/// BIRD's view of its session to the node (`birdc show protocols`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdState {
    /// up, start, ...
    pub state: String,
    /// When it last changed state (and, once down, why).
    pub since: String,
    /// The BGP state: Established, Active, Connect, ...
    pub info: String,
}

/// See [`BirdState`].
pub fn bird_state(socket: &Path) -> Option<BirdState> {
    let out = Command::new("birdc").arg("-s").arg(socket).args(["show", "protocols", BGP_PROTOCOL]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(BGP_PROTOCOL))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // Name Proto Table State Since... Info: since may be one word or two (date and time).
    let info = words.last()?.to_string();
    Some(BirdState { state: words.get(3)?.to_string(), since: words[4..words.len() - 1].join(" "), info })
}

/// When BIRD's Established session last changed state, once that has settled: BIRD stamps the
/// protocol again when its channels finish feeding, a millisecond or more after the session came
/// up, so a stamp read right after the routes arrived may still move without any flap. Two polls
/// 100 ms apart must agree (bounded at 5 s; then the last reading stands).
fn settled_since(socket: &Path) -> Option<String> {
    let start = Instant::now();
    let mut last: Option<BirdState> = None;
    loop {
        let now = bird_state(socket);
        let settled = matches!((&last, &now), (Some(a), Some(b)) if a == b && b.info == "Established");
        if settled || start.elapsed() > Duration::from_secs(5) {
            return now.map(|s| s.since);
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a full reload with a kill showed.
#[derive(Debug)]
pub struct FullReload {
    pub reload: Result<Done, String>,
    /// From the kill until status showed the victim down everywhere.
    pub victim_down: Result<Duration, String>,
    pub health: HealthDown,
    pub load: LoadResult,
}

/// New flows the data plane sent to the victim after its server died, seen as SYNs arriving in
/// its namespace (kernel time stamps; the first SYN of each client port only — the client never
/// reuses a port, so each is a new flow for XDP too).
///
/// The last of them says when the victim stopped getting new flows only if traffic kept reaching
/// the node after it: a lost BGP session or route stops new flows to every backend. So the
/// client's answers (from the other backends) must keep coming for a second after it, never more
/// than [`HealthDown::MAX_SILENCE`] apart; at ~300 flows/s, a quarter of them to the victim while
/// it is in its VIPs' tables, that many flows without one to it leave no doubt it was out.
#[derive(Debug, Clone)]
pub struct HealthDown {
    /// From the kill to the last new flow to the victim (zero if none came after the kill).
    pub last_new_flow: Duration,
    pub new_flows_after_kill: usize,
    /// New flows to the victim per second in the second before the reload: the measurement's
    /// resolution is about one over this.
    pub rate_before: f64,
    /// The longest time without an answer in the second after the victim's last new flow
    /// (counting from that flow).
    pub silence_after: Duration,
}

impl HealthDown {
    /// Longest gap between answers that still counts as traffic flowing.
    pub const MAX_SILENCE: Duration = Duration::from_millis(250);
    /// How long answers must go on after the victim's last new flow.
    pub const CONFIRM: Duration = Duration::from_secs(1);

    fn compute(syns: &[Seen], killed_at: SystemTime, load: &LoadResult, reload_at: SystemTime) -> HealthDown {
        let mut first: BTreeMap<(Ipv4Addr, u16), SystemTime> = BTreeMap::new();
        for s in syns {
            first.entry((s.src, s.sport)).or_insert(s.at);
        }
        let after: Vec<SystemTime> = first.values().copied().filter(|t| *t >= killed_at).collect();
        let last = after.iter().max().copied().unwrap_or(killed_at);
        let window = Duration::from_secs(1);
        let before = first
            .values()
            .filter(|t| **t < reload_at && reload_at.duration_since(**t).is_ok_and(|d| d <= window))
            .count();
        // Answers from `last` to a second later, and the gaps between them (from `last` to the
        // first, and from the last one to the second's end).
        let end = last + Self::CONFIRM;
        let mut times: Vec<SystemTime> =
            load.answers.iter().map(|(t, _)| *t).filter(|t| *t > last && *t <= end).collect();
        times.sort();
        let points: Vec<SystemTime> = std::iter::once(last).chain(times).chain(std::iter::once(end)).collect();
        let silence_after = points.windows(2).map(|w| since(w[1], w[0])).max().unwrap_or_default();
        HealthDown {
            last_new_flow: since(last, killed_at),
            new_flows_after_kill: after.len(),
            rate_before: before as f64 / window.as_secs_f64(),
            silence_after,
        }
    }

    /// Whether the figure means anything: traffic reached the victim before, and kept reaching
    /// the node after its last new flow (see the type's doc).
    pub fn valid(&self) -> Result<(), String> {
        if self.rate_before < 5.0 {
            return Err(format!("only {:.0} new flows/s reached the victim before the reload", self.rate_before));
        }
        if self.silence_after > Self::MAX_SILENCE {
            return Err(format!(
                "traffic stopped reaching the node: {} ms without an answer within a second after the victim's last new flow",
                self.silence_after.as_millis()
            ));
        }
        Ok(())
    }
}

/// Monitors of a reload window. Stopped and joined on drop too.
#[derive(Debug)]
pub struct Monitors {
    pub started: Instant,
    started_wall: SystemTime,
    stop: Arc<AtomicBool>,
    status: Option<JoinHandle<Vec<(Instant, Duration, bool)>>>,
    routes: Option<JoinHandle<Vec<(Instant, usize)>>>,
    bird: Option<JoinHandle<Vec<BirdSample>>>,
    since_before: Option<String>,
}

/// One poll of BIRD: when, and what it said (nothing: birdc failed).
type BirdSample = (Instant, Option<BirdState>);

/// Bound on any monitor's life.
const MONITOR_MAX: Duration = Duration::from_secs(600);

impl Monitors {
    fn start(scale: &Scale, status_every: Option<Duration>) -> Monitors {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = scale.socket();
        let s = Arc::clone(&stop);
        let status = status_every.map(|every| {
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let start = Instant::now();
                while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                    let at = Instant::now();
                    let (took, view) = status(&socket);
                    samples.push((at, took, view.is_ok()));
                    std::thread::sleep(every);
                }
                samples
            })
        });
        let router = scale.topo.router.as_ref().expect("router").name.clone();
        let s = Arc::clone(&stop);
        let routes = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                let dump = Instant::now();
                samples.push((dump, router_routes(&router).len()));
                // Dumping 10 000 routes costs a CPU tens of milliseconds: at most a tenth of one.
                std::thread::sleep(Duration::from_millis(50).max(dump.elapsed() * 10));
            }
            samples
        });
        let bird_socket = scale.bird.socket.clone();
        let since_before = settled_since(&bird_socket);
        let s = Arc::clone(&stop);
        let bird = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                samples.push((Instant::now(), bird_state(&bird_socket)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Monitors {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            stop,
            status,
            routes: Some(routes),
            bird: Some(bird),
            since_before,
        }
    }

    /// Stops the monitors; what they saw, with the BGP messages the node sent meanwhile.
    pub fn finish(mut self, scale: &Scale) -> Observed {
        // The first BGP message after the window closes the last gap.
        std::thread::sleep(Duration::from_millis(u64::from(BGP_KEEPALIVE_SECS) * 1200));
        let ended = Instant::now();
        let ended_wall = SystemTime::now();
        self.stop.store(true, Ordering::Relaxed);
        let status = self.status.take().map(|t| t.join().expect("status monitor")).unwrap_or_default();
        let routes = self.routes.take().map(|t| t.join().expect("route monitor")).unwrap_or_default();
        let bird = self.bird.take().map(|t| t.join().expect("BIRD monitor")).unwrap_or_default();
        let since_after = bird_state(&scale.bird.socket).map(|s| s.since);
        let node: Ipv4Addr = node_v4(0).parse().expect("node address");
        let captured = scale.bgp.snapshot();
        let notifications = captured.iter().filter(|p| p.bgp_type == Some(3)).count();
        let peer_messages = captured
            .iter()
            .filter(|p| p.dst == node && p.payload > 0 && p.at > self.started_wall && p.at <= ended_wall)
            .count();
        // Gaps between the node's messages over the window: from the last one before it to the
        // first one after it (or the window's end, if none came).
        let times: Vec<SystemTime> = captured.iter().filter(|p| p.src == node && p.payload > 0).map(|p| p.at).collect();
        let before = times.iter().copied().filter(|t| *t <= self.started_wall).max();
        let inside: Vec<SystemTime> =
            times.iter().copied().filter(|t| *t > self.started_wall && *t <= ended_wall).collect();
        let mut series: Vec<SystemTime> = before.into_iter().chain(inside.iter().copied()).collect();
        series.sort();
        let mut gap = Duration::ZERO;
        let mut gap_at = Duration::ZERO;
        for w in series.windows(2) {
            let g = since(w[1], w[0]);
            if g > gap {
                (gap, gap_at) = (g, since(w[0], self.started_wall));
            }
        }
        if let Some(last) = series.last() {
            let tail = since(ended_wall, *last);
            if tail > gap {
                (gap, gap_at) = (tail, since(*last, self.started_wall));
            }
        }
        let expected = scale.spec().vips;
        let missing: Vec<(Duration, usize)> = routes
            .iter()
            .filter(|(_, n)| *n != expected)
            .map(|(at, n)| (at.saturating_duration_since(self.started), *n))
            .collect();
        let not_established: Vec<(Duration, String)> = bird
            .iter()
            .filter(|(_, s)| s.as_ref().is_none_or(|s| s.info != "Established"))
            .map(|(at, s)| (at.saturating_duration_since(self.started), format!("{s:?}")))
            .collect();
        Observed {
            window: ended - self.started,
            status_latencies: status.iter().map(|(_, d, _)| *d).collect(),
            status_failures: status.iter().filter(|(_, _, ok)| !ok).count(),
            route_polls: routes.len(),
            routes_short: missing,
            min_routes: routes.iter().map(|(_, n)| *n).min().unwrap_or(0),
            bird_polls: bird.len(),
            not_established,
            since_before: self.since_before.clone(),
            since_after,
            messages: inside.len(),
            peer_messages,
            keepalive_gap: gap,
            keepalive_gap_at: gap_at,
            notifications,
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.status.take() {
            let _ = t.join();
        }
        if let Some(t) = self.routes.take() {
            let _ = t.join();
        }
        if let Some(t) = self.bird.take() {
            let _ = t.join();
        }
    }
}

/// What the monitors saw over a window.
#[derive(Debug, Clone)]
pub struct Observed {
    pub window: Duration,
    pub status_latencies: Vec<Duration>,
    pub status_failures: usize,
    pub route_polls: usize,
    /// Polls (time into the window, routes present) that found fewer routes than VIPs.
    pub routes_short: Vec<(Duration, usize)>,
    pub min_routes: usize,
    pub bird_polls: usize,
    /// Polls at which BIRD's session was not Established.
    pub not_established: Vec<(Duration, String)>,
    /// When BIRD last saw the session change state, before and after: a change means it went
    /// down (and perhaps up again) in between.
    pub since_before: Option<String>,
    pub since_after: Option<String>,
    /// BGP messages (TCP segments with payload) the node sent within the window, and the router.
    pub messages: usize,
    pub peer_messages: usize,
    /// The longest time without a BGP message from the node, and where in the window it began.
    pub keepalive_gap: Duration,
    pub keepalive_gap_at: Duration,
    /// NOTIFICATION messages on the session (either way) since the capture started.
    pub notifications: usize,
}

impl Observed {
    /// Whether BIRD kept the session Established through the window.
    pub fn established_throughout(&self) -> bool {
        self.bird_polls > 0
            && self.not_established.is_empty()
            && self.since_before.is_some()
            && self.since_before == self.since_after
            && self.notifications == 0
    }

    pub fn status_worst(&self) -> Duration {
        self.status_latencies.iter().copied().max().unwrap_or_default()
    }
}

/// The backends' TCP servers on 0.0.0.0:80: each answers a line with its name (`be<j>`);
/// `kill` closes one's listener for good (connections are then refused, health checks fail).
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    alive: Arc<Vec<AtomicBool>>,
    killed: Arc<Mutex<Vec<Option<SystemTime>>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    fn start(backends: &[Netns]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let alive: Arc<Vec<AtomicBool>> = Arc::new(backends.iter().map(|_| AtomicBool::new(true)).collect());
        let killed = Arc::new(Mutex::new(vec![None; backends.len()]));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let threads = backends
            .iter()
            .enumerate()
            .map(|(j, ns)| {
                let (stop, alive, killed, ready) =
                    (Arc::clone(&stop), Arc::clone(&alive), Arc::clone(&killed), ready_tx.clone());
                ns.run(move || serve(j, &stop, &alive[j], &killed, &ready))
            })
            .collect();
        for _ in backends {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("backend server started");
        }
        Servers { stop, alive, killed, threads }
    }

    /// Kills backend `j`'s server; returns when it died (stamped just before its listener
    /// closed, so that nothing after the stamp can reach it).
    pub fn kill(&self, j: usize) -> SystemTime {
        self.alive[j].store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = self.killed_at(j) {
                return at;
            }
            assert!(Instant::now() < deadline, "backend {j}'s server did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn killed_at(&self, j: usize) -> Option<SystemTime> {
        self.killed.lock().unwrap_or_else(|p| p.into_inner())[j]
    }
}

fn serve(
    j: usize,
    stop: &AtomicBool,
    alive: &AtomicBool,
    killed: &Mutex<Vec<Option<SystemTime>>>,
    ready: &std::sync::mpsc::Sender<()>,
) {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, VIP_PORT));
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} on be{j}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    let _ = ready.send(());
    let name = format!("be{j}\n");
    while !stop.load(Ordering::Relaxed) {
        if !alive.load(Ordering::Relaxed) {
            killed.lock().unwrap_or_else(|p| p.into_inner())[j] = Some(SystemTime::now());
            drop(listener);
            return;
        }
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                // Health checks connect and close; clients send a line and read the answer,
                // then close first (TIME_WAIT stays on their side).
                if conn.read(&mut buf).is_ok_and(|n| n > 0) && conn.write_all(name.as_bytes()).is_ok() {
                    let _ = conn.read(&mut buf);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client load over some VIPs (round robin), one connection after another, every connection
/// from a source port no other has used (so every SYN is a new flow for the data plane).
/// Stopped on drop too.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadResult>>,
}

/// What a load saw, by wall time.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Answers: when, and which backend.
    pub answers: Vec<(SystemTime, String)>,
    /// Connections refused (a dead backend's RST).
    pub refused: Vec<SystemTime>,
    /// Other failures: time outs, unreachable.
    pub failed: Vec<(SystemTime, String)>,
}

impl LoadResult {
    /// The longest time without an answer between the first and the last connection attempt.
    pub fn longest_silence(&self) -> Duration {
        let mut times: Vec<SystemTime> = self.answers.iter().map(|(t, _)| *t).collect();
        times.sort();
        times.windows(2).map(|w| since(w[1], w[0])).max().unwrap_or_default()
    }
}

/// Source ports the loads take, never reused within a process (below the ephemeral range's
/// usual start would collide with nothing either way: the client namespace runs nothing else).
static NEXT_PORT: AtomicU16 = AtomicU16::new(FIRST_PORT);
const FIRST_PORT: u16 = 20000;
const LAST_PORT: u16 = 60999;

impl Load {
    /// At most `max` connections and `max_time`, pacing 2 ms between connections.
    pub fn start(client: &Netns, vips: Vec<SocketAddr>, max: usize, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = client.run(move || {
            let mut result = LoadResult::default();
            let start = Instant::now();
            for n in 0..max {
                if s.load(Ordering::Relaxed) || start.elapsed() > max_time {
                    break;
                }
                let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
                if port >= LAST_PORT {
                    result.failed.push((SystemTime::now(), "out of fresh source ports".into()));
                    break;
                }
                match exchange(vips[n % vips.len()], port) {
                    Ok(name) => result.answers.push((SystemTime::now(), name)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        result.refused.push(SystemTime::now())
                    }
                    Err(e) => result.failed.push((SystemTime::now(), e.to_string())),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            result
        });
        Load { stop, thread: Some(thread) }
    }

    pub fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().expect("load thread")).unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on a new connection from source port `port`. The connect timeout stays under the
/// SYN retransmission time (1 s), so no SYN is ever sent twice.
fn exchange(addr: SocketAddr, port: u16) -> std::io::Result<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_millis(900))?;
    let mut conn: std::net::TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.write_all(b"who\n")?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf)?;
    let name = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(name)
}

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;

/// An IPv4 TCP packet a capture kept.
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// The kernel's receive time stamp.
    pub at: SystemTime,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub sport: u16,
    pub dport: u16,
    pub flags: u8,
    /// TCP payload bytes.
    pub payload: usize,
    /// The type of the first BGP message the payload starts with (3: NOTIFICATION), if it does.
    pub bgp_type: Option<u8>,
}

/// A packet socket on one interface of a namespace, keeping the IPv4 TCP packets `keep` wants,
/// with the kernel's receive time stamps. Stopped on drop.
#[derive(Debug)]
pub struct Capture {
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Vec<Seen>>>,
    thread: Option<JoinHandle<()>>,
}

/// `SIOCGSTAMPNS`: the receive time of the last packet read from a socket.
const SIOCGSTAMPNS: libc::c_ulong = 0x8907;
/// Bound on what one capture keeps.
const CAPTURE_MAX: usize = 1_000_000;

impl Capture {
    pub fn start(ns: &Netns, dev: &str, keep: fn(&Seen) -> bool) -> Capture {
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Vec::new()));
        let (s, kept) = (Arc::clone(&stop), Arc::clone(&seen));
        let dev = dev.to_owned();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = ns.run(move || {
            let fd = packet_socket(&dev).unwrap_or_else(|e| panic!("packet socket on {dev}: {e}"));
            let _ = ready_tx.send(());
            let mut buf = [0u8; 2048];
            while !s.load(Ordering::Relaxed) {
                // SAFETY: `buf` is valid for writes of its length; fd is an open socket.
                let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
                let Ok(n) = usize::try_from(n) else { continue };
                let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
                // SAFETY: SIOCGSTAMPNS writes one timespec into `ts`.
                let rc = unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
                let at = if rc == 0 {
                    SystemTime::UNIX_EPOCH + Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
                } else {
                    SystemTime::now()
                };
                if let Some(p) = parse_tcp(&buf[..n], at)
                    && keep(&p)
                {
                    let mut kept = kept.lock().unwrap_or_else(|p| p.into_inner());
                    if kept.len() < CAPTURE_MAX {
                        kept.push(p);
                    }
                }
            }
        });
        ready_rx.recv_timeout(Duration::from_secs(5)).expect("capture started");
        Capture { stop, seen, thread: Some(thread) }
    }

    /// What it kept so far.
    pub fn snapshot(&self) -> Vec<Seen> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    pub fn finish(mut self) -> Vec<Seen> {
        self.stop_thread();
        self.snapshot()
    }

    fn stop_thread(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        self.stop_thread();
    }
}

/// An AF_PACKET socket on `dev` (in the calling thread's namespace) for frames both ways (only
/// ETH_P_ALL sockets see outgoing ones), reads time out every 50 ms, receive time stamps on.
fn packet_socket(dev: &str) -> std::io::Result<OwnedFd> {
    let proto = (libc::ETH_P_ALL as u16).to_be();
    // SAFETY: plain socket creation; the fd is owned right after.
    let raw = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, i32::from(proto)) };
    if raw < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    let name = std::ffi::CString::new(dev).map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated name.
    let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) };
    if ifindex == 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: zeroed sockaddr_ll is valid; the fields set below make it a bind address.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = proto;
    sll.sll_ifindex = ifindex as i32;
    // SAFETY: `sll` is a valid sockaddr_ll of the size passed.
    let rc = unsafe {
        libc::bind(fd.as_raw_fd(), (&raw const sll).cast(), std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t)
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let timeout = libc::timeval { tv_sec: 0, tv_usec: 50_000 };
    let buf: libc::c_int = 4 << 20;
    let one: libc::c_int = 1;
    // SAFETY: each option gets a value of the type it expects, with its size.
    unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&raw const buf).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
        // Stamps every packet on receipt (SIOCGSTAMPNS reads the last one's).
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_TIMESTAMPNS,
            (&raw const one).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    // The first SIOCGSTAMPNS turns the socket's stamp keeping on (it answers ENOENT).
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: SIOCGSTAMPNS writes one timespec.
    unsafe { libc::ioctl(fd.as_raw_fd(), SIOCGSTAMPNS as _, &mut ts) };
    Ok(fd)
}

/// An Ethernet frame holding IPv4 TCP.
fn parse_tcp(frame: &[u8], at: SystemTime) -> Option<Seen> {
    if frame.len() < 14 + 20 || frame[12..14] != [0x08, 0x00] {
        return None;
    }
    let ip = &frame[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    if ip[0] >> 4 != 4 || ip[9] != 6 || ip.len() < ihl + 20 {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]])).min(ip.len());
    let tcp = &ip[ihl..];
    let doff = usize::from(tcp[12] >> 4) * 4;
    let payload = total.saturating_sub(ihl + doff);
    let data = tcp.get(doff..doff + payload).unwrap_or_default();
    let bgp_type = (data.len() >= 19 && data[..16].iter().all(|b| *b == 0xff)).then(|| data[18]);
    Some(Seen {
        at,
        src: Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        dst: Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        flags: tcp[13],
        payload,
        bgp_type,
    })
}

/// BPF map memory of a process: the maps it holds descriptors of, and the maps those hold
/// (array- or hash-of-maps: Maglev tables), by the kernel's `memlock` figure.
#[derive(Debug, Clone, Copy, Default)]
pub struct BpfMemory {
    pub maps: usize,
    pub bytes: u64,
    pub inner_maps: usize,
    pub inner_bytes: u64,
}

impl BpfMemory {
    pub fn total(&self) -> u64 {
        self.bytes + self.inner_bytes
    }
}

const BPF_MAP_TYPE_ARRAY_OF_MAPS: u32 = 12;
const BPF_MAP_TYPE_HASH_OF_MAPS: u32 = 13;
const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_GET_FD_BY_ID: libc::c_long = 14;

/// `field:\tvalue` lines of an fdinfo file.
fn fdinfo(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// The `bpf(2)` attribute union, large enough for the commands used here.
#[repr(C, align(8))]
#[derive(Default)]
struct BpfAttr([u64; 8]);

fn bpf(cmd: libc::c_long, attr: &mut BpfAttr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a valid, zero-padded bpf_attr of the size passed.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, cmd, std::ptr::from_mut(attr), std::mem::size_of::<BpfAttr>()) };
    if rc < 0 { Err(std::io::Error::last_os_error()) } else { Ok(rc) }
}

/// A descriptor of map `id` in this process.
fn map_fd_by_id(id: u32) -> std::io::Result<OwnedFd> {
    let mut attr = BpfAttr::default();
    attr.0[0] = u64::from(id);
    let fd = bpf(BPF_MAP_GET_FD_BY_ID, &mut attr)?;
    // SAFETY: the kernel just gave us this descriptor.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn own_fdinfo(fd: &OwnedFd) -> String {
    std::fs::read_to_string(format!("/proc/self/fdinfo/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// The inner map ids held by a map-of-maps (`fd`, keys of `key_size` bytes).
fn inner_map_ids(fd: &OwnedFd, key_size: usize) -> std::io::Result<Vec<u32>> {
    let mut ids = Vec::new();
    let mut key = vec![0u8; key_size];
    let mut next = vec![0u8; key_size];
    let mut first = true;
    for _ in 0..10_000_000 {
        let mut attr = BpfAttr::default();
        attr.0[0] = fd.as_raw_fd() as u64;
        attr.0[1] = if first { 0 } else { key.as_ptr() as u64 };
        attr.0[2] = next.as_mut_ptr() as u64;
        match bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => break,
            Err(e) => return Err(e),
        }
        first = false;
        key.copy_from_slice(&next);
        let mut value = 0u32;
        let mut attr = BpfAttr::default();
        attr.0[0] = fd.as_raw_fd() as u64;
        attr.0[1] = key.as_ptr() as u64;
        attr.0[2] = std::ptr::from_mut(&mut value) as u64;
        match bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) {
            Ok(_) => ids.push(value),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(ids)
}

/// See [`BpfMemory`].
pub fn bpf_memory(pid: u32) -> Result<BpfMemory, String> {
    let dir = format!("/proc/{pid}/fdinfo");
    let entries = std::fs::read_dir(&dir).map_err(|e| format!("{dir}: {e}"))?;
    let mut maps: BTreeMap<u64, (u64, u32, u64)> = BTreeMap::new();
    for entry in entries.flatten() {
        let Ok(text) = std::fs::read_to_string(entry.path()) else { continue };
        let (Some(id), Some(memlock)) = (fdinfo(&text, "map_id"), fdinfo(&text, "memlock")) else { continue };
        let kind = fdinfo(&text, "map_type").unwrap_or_default() as u32;
        maps.insert(id, (memlock, kind, fdinfo(&text, "key_size").unwrap_or(4)));
    }
    let mut memory =
        BpfMemory { maps: maps.len(), bytes: maps.values().map(|(m, _, _)| m).sum(), ..Default::default() };
    let mut inner_seen = BTreeSet::new();
    for (id, (_, kind, key_size)) in &maps {
        if *kind != BPF_MAP_TYPE_ARRAY_OF_MAPS && *kind != BPF_MAP_TYPE_HASH_OF_MAPS {
            continue;
        }
        let outer = map_fd_by_id(*id as u32).map_err(|e| format!("map {id}: {e}"))?;
        for inner in inner_map_ids(&outer, *key_size as usize).map_err(|e| format!("map {id}: {e}"))? {
            if maps.contains_key(&u64::from(inner)) || !inner_seen.insert(inner) {
                continue;
            }
            let Ok(fd) = map_fd_by_id(inner) else { continue };
            memory.inner_maps += 1;
            memory.inner_bytes += fdinfo(&own_fdinfo(&fd), "memlock").unwrap_or_default();
        }
    }
    Ok(memory)
}
