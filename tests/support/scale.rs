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

mod bpf_memory;
mod capture;
mod traffic;
mod watch;

pub use bpf_memory::*;
pub use capture::*;
pub use traffic::*;
pub use watch::*;

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
