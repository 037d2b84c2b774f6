//! `cargo xtask bench live`: the peer benchmark. One generator, one topology, five forwarders:
//!
//! ```text
//!  source ns ── g0 ═══ l0 ── LB ns ── l1 ═══ s0 ── sink ns
//! ```
//!
//! The generator (lb-ebpf's `xlb_gen` under BPF_PROG_TEST_RUN's live-frames mode, headers
//! written from a template on every frame) sends UDP/IPv4 frames out of `g0`. The LB namespace
//! forwards them with xlb (dsr-l2 and dsr-ipip send them back out of `l0` to backends on the
//! generator's side; nat two-armed out of `l1`), nftables DNAT (`numgen`, conntrack) or plain
//! kernel routing (out of `l1`). Counting drop programs (`xlb_sink`) on `g0` and `s0` count what
//! arrives. Every veth runs threaded NAPI; the LB's receive thread (`napi/l0-*`) is pinned alone
//! on the last CPU, everything else on the first (the sinks' threads at SCHED_FIFO, so that a
//! busy generator never starves them). Per case: LB CPU ns per forwarded packet (that thread's
//! run time from /proc/PID/schedstat ÷ frames counted at the sinks) and Mpps delivered, for one
//! flow, 64 Ki flows and a new flow per packet; rounds interleave the forwarders. See
//! ../shared/FACTS.md for the recipe and why.

use std::{
    net::Ipv4Addr,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use lb_common::{GEN_CYCLE, GEN_NEW_PER_FRAME, GEN_ONE_FLOW};
use xlb_tests::{
    netns::{Netns, Process, sh, veth},
    traffic::{Endpoints, Generator, Sink, udp_v4},
};

use crate::bench_live_chart as chart;

const GEN_V4: Ipv4Addr = Ipv4Addr::new(10, 240, 0, 1);
const LB_IN_V4: &str = "10.240.0.2";
const LB_OUT_V4: &str = "10.241.0.1";
const SINK_V4: [&str; 2] = ["10.241.0.2", "10.241.0.3"];
const VIP: Ipv4Addr = Ipv4Addr::new(10, 240, 1, 1);
/// Where the frames come from (a client network routed through the generator).
const CLIENT_V4: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
const FRAME_LEN: usize = 128;

#[derive(clap::Args)]
pub struct Options {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// Draw the medians as grouped bars into this PNG file.
    #[arg(long)]
    chart: Option<PathBuf>,
    /// Interleaved rounds (1..=10).
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// Milliseconds of traffic per measurement (200..=10000).
    #[arg(long, default_value_t = 1500)]
    millis: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forwarder {
    XlbDsrL2,
    XlbDsrIpip,
    XlbNat,
    NftDnat,
    Routing,
}

impl Forwarder {
    const ALL: [Forwarder; 5] =
        [Forwarder::XlbDsrL2, Forwarder::XlbDsrIpip, Forwarder::XlbNat, Forwarder::NftDnat, Forwarder::Routing];

    pub fn name(self) -> &'static str {
        match self {
            Forwarder::XlbDsrL2 => "xlb dsr-l2",
            Forwarder::XlbDsrIpip => "xlb dsr-ipip",
            Forwarder::XlbNat => "xlb nat",
            Forwarder::NftDnat => "nftables DNAT",
            Forwarder::Routing => "kernel routing",
        }
    }

    fn is_xlb(self) -> bool {
        matches!(self, Forwarder::XlbDsrL2 | Forwarder::XlbDsrIpip | Forwarder::XlbNat)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flows {
    One,
    Many,
    NewPerPacket,
}

impl Flows {
    const ALL: [Flows; 3] = [Flows::One, Flows::Many, Flows::NewPerPacket];

    pub fn name(self) -> &'static str {
        match self {
            Flows::One => "1 flow",
            Flows::Many => "64 Ki flows",
            Flows::NewPerPacket => "new flow per packet",
        }
    }
}

/// One measurement.
#[derive(Debug, Clone, Copy)]
struct Sample {
    ns_per_packet: f64,
    mpps: f64,
}

/// The namespaces, addresses and sinks.
struct Lab {
    source: Netns,
    lb: Netns,
    sink: Netns,
    g0_mac: [u8; 6],
    l0_mac: [u8; 6],
    s0_mac: [u8; 6],
    sinks: Vec<Sink>,
    dir: PathBuf,
}

/// The agent's counters that moved the most between two reads, drops first: what a case's
/// frames did besides being forwarded.
fn counter_moves(before: &serde_json::Value, after: &serde_json::Value) -> String {
    let values = |v: &serde_json::Value| -> Vec<(String, bool, u64)> {
        v["counters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some((c["name"].as_str()?.to_owned(), c["drop"].as_bool()?, c["value"].as_u64()?)))
            .collect()
    };
    let before = values(before);
    let mut moved: Vec<(bool, u64, String)> = values(after)
        .into_iter()
        .filter_map(|(name, drop, value)| {
            let old = before.iter().find(|(n, _, _)| *n == name).map_or(0, |(_, _, v)| *v);
            (value > old).then(|| (drop, value - old, name))
        })
        .collect();
    moved.sort_by(|a, b| b.0.cmp(&a.0).then(b.1.cmp(&a.1)));
    moved.iter().take(4).map(|(_, n, name)| format!("{name} +{n}")).collect::<Vec<_>>().join(", ")
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the live bench builds network namespaces and loads XDP programs: run it as root");
    }
    if !(1..=10).contains(&opts.rounds) || !(200..=10_000).contains(&opts.millis) {
        bail!("--rounds 1..=10, --millis 200..=10000");
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if cpus < 2 {
        bail!("the LB's receive CPU must be pinned alone: this machine has {cpus} CPU");
    }
    let lab = Lab::build()?;
    let mut samples: Vec<(Forwarder, Flows, Vec<Sample>)> = Vec::new();
    for f in Forwarder::ALL {
        for c in Flows::ALL {
            samples.push((f, c, Vec::new()));
        }
    }
    if !opts.json {
        println!(
            "== live-frames peer bench: {} rounds × {} ms per case, {FRAME_LEN}-byte UDP frames; LB receive thread alone on CPU {}",
            opts.rounds,
            opts.millis,
            cpus - 1
        );
    }
    for round in 0..opts.rounds {
        for forwarder in Forwarder::ALL {
            let running = lab.start(forwarder).with_context(|| format!("starting {}", forwarder.name()))?;
            for flows in Flows::ALL {
                let before = lab.agent_stats(forwarder);
                let sample = lab
                    .measure(forwarder, flows, Duration::from_millis(opts.millis), cpus - 1)
                    .with_context(|| format!("{} with {}", forwarder.name(), flows.name()))?;
                let moves = match (before, lab.agent_stats(forwarder)) {
                    (Some(b), Some(a)) => format!("  [{}]", counter_moves(&b, &a)),
                    _ => String::new(),
                };
                if !opts.json {
                    eprintln!(
                        "  round {} {:>15} {:>20}: {:>7.0} ns/packet {:>6.3} Mpps{moves}",
                        round + 1,
                        forwarder.name(),
                        flows.name(),
                        sample.ns_per_packet,
                        sample.mpps
                    );
                }
                if let Some((_, _, list)) = samples.iter_mut().find(|(f, c, _)| *f == forwarder && *c == flows) {
                    list.push(sample);
                }
            }
            lab.stop(forwarder, running)?;
        }
    }
    report(opts, &samples)?;
    if let Some(path) = &opts.chart {
        let bars: Vec<chart::Bar> = samples
            .iter()
            .map(|(f, c, list)| chart::Bar {
                group: c.name(),
                series: f.name(),
                median: median(list, |s| s.ns_per_packet),
                min: list.iter().map(|s| s.ns_per_packet).fold(f64::INFINITY, f64::min),
                max: list.iter().map(|s| s.ns_per_packet).fold(0.0, f64::max),
            })
            .collect();
        chart::draw(path, &bars)?;
        if !opts.json {
            println!("chart: {}", path.display());
        }
    }
    drop(lab);
    Ok(())
}

fn median(list: &[Sample], value: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = list.iter().map(value).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

fn report(opts: &Options, samples: &[(Forwarder, Flows, Vec<Sample>)]) -> anyhow::Result<()> {
    let med = |f: Forwarder, c: Flows| {
        samples.iter().find(|(x, y, _)| *x == f && *y == c).map_or(f64::NAN, |(_, _, l)| median(l, |s| s.ns_per_packet))
    };
    if !opts.json {
        println!(
            "{:<16} {:<20} {:>22} {:>20} {:>10} {:>10}",
            "forwarder", "flows", "LB ns/packet min/med/max", "Mpps min/med/max", "÷ nft", "÷ routing"
        );
    }
    for (forwarder, flows, list) in samples {
        let stats = |v: &dyn Fn(&Sample) -> f64| {
            let mut values: Vec<f64> = list.iter().map(v).collect();
            values.sort_by(f64::total_cmp);
            (values.first().copied().unwrap_or(f64::NAN), median(list, v), values.last().copied().unwrap_or(f64::NAN))
        };
        let ns = stats(&|s| s.ns_per_packet);
        let mpps = stats(&|s| s.mpps);
        let vs_nft = ns.1 / med(Forwarder::NftDnat, *flows);
        let vs_routing = ns.1 / med(Forwarder::Routing, *flows);
        // xlb's targets: at most 1/5 of nftables DNAT's cost and below plain routing's.
        let verdict =
            if forwarder.is_xlb() { if vs_nft <= 0.2 && vs_routing < 1.0 { "meets" } else { "MISSES" } } else { "" };
        if opts.json {
            let row = serde_json::json!({
                "forwarder": forwarder.name(), "flows": flows.name(),
                "ns_per_packet": {"min": ns.0.round(), "median": ns.1.round(), "max": ns.2.round()},
                "mpps": {"min": (mpps.0 * 1000.0).round() / 1000.0, "median": (mpps.1 * 1000.0).round() / 1000.0, "max": (mpps.2 * 1000.0).round() / 1000.0},
                "ratio_to_nftables": (vs_nft * 100.0).round() / 100.0,
                "ratio_to_routing": (vs_routing * 100.0).round() / 100.0,
                "target": if forwarder.is_xlb() { Some(verdict) } else { None },
            });
            println!("{row}");
        } else {
            println!(
                "{:<16} {:<20} {:>6.0} / {:>5.0} / {:>5.0}   {:>5.3} / {:>5.3} / {:>5.3} {:>10.2} {:>10.2} {verdict}",
                forwarder.name(),
                flows.name(),
                ns.0,
                ns.1,
                ns.2,
                mpps.0,
                mpps.1,
                mpps.2,
                vs_nft,
                vs_routing
            );
        }
    }
    Ok(())
}

fn mac_of(ns: &Netns, dev: &str) -> anyhow::Result<[u8; 6]> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    let text = links[0]["address"].as_str().context("no address")?;
    let bytes: Vec<u8> = text.split(':').map(|b| u8::from_str_radix(b, 16)).collect::<Result<_, _>>()?;
    bytes.try_into().map_err(|_| anyhow::anyhow!("not a MAC: {text}"))
}

fn format_mac(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Threaded NAPI on `dev` (with GRO on, so that a veth without XDP uses NAPI too).
fn threaded_napi(ns: &Netns, dev: &str) {
    sh("ip", &["netns", "exec", &ns.name, "ethtool", "-K", dev, "gro", "on", "tx", "off"]);
    sh("ip", &["netns", "exec", &ns.name, "sh", "-c", &format!("echo 1 > /sys/class/net/{dev}/threaded")]);
}

impl Lab {
    fn build() -> anyhow::Result<Lab> {
        let (source, lb, sink) = (Netns::new("lvg"), Netns::new("lvl"), Netns::new("lvs"));
        veth(&source, "g0", &lb, "l0");
        veth(&lb, "l1", &sink, "s0");
        source.ip(&["addr", "add", &format!("{GEN_V4}/24"), "dev", "g0"]);
        lb.ip(&["addr", "add", &format!("{LB_IN_V4}/24"), "dev", "l0"]);
        lb.ip(&["addr", "add", &format!("{LB_OUT_V4}/24"), "dev", "l1"]);
        for a in SINK_V4 {
            sink.ip(&["addr", "add", &format!("{a}/24"), "dev", "s0"]);
        }
        lb.ip(&["route", "add", "10.250.0.0/16", "via", &GEN_V4.to_string(), "dev", "l0"]);
        lb.sysctl(&["net.ipv4.ip_forward=1", "net.ipv4.conf.all.rp_filter=0", "net.ipv4.conf.l0.rp_filter=0"]);
        lb.sysctl(&["net.ipv4.conf.all.send_redirects=0", "net.ipv4.conf.l0.send_redirects=0"]);
        let (g0_mac, l0_mac, s0_mac) = (mac_of(&source, "g0")?, mac_of(&lb, "l0")?, mac_of(&sink, "s0")?);
        // The sinks drop ARP too: the LB knows their MACs statically.
        for a in SINK_V4 {
            lb.ip(&["neigh", "replace", a, "lladdr", &format_mac(s0_mac), "dev", "l1", "nud", "permanent"]);
        }
        lb.ip(&[
            "neigh",
            "replace",
            &GEN_V4.to_string(),
            "lladdr",
            &format_mac(g0_mac),
            "dev",
            "l0",
            "nud",
            "permanent",
        ]);
        for (ns, dev) in [(&source, "g0"), (&lb, "l0"), (&lb, "l1"), (&sink, "s0")] {
            threaded_napi(ns, dev);
        }
        let attach = |ns: &Netns, dev: &'static str| {
            ns.run(move || Sink::attach(dev)).join().map_err(|_| anyhow::anyhow!("sink thread panicked"))?
        };
        let sinks = vec![attach(&source, "g0")?, attach(&sink, "s0")?];
        let dir = std::env::temp_dir().join(format!("xlb-bench-live-{}", std::process::id()));
        std::fs::create_dir_all(&dir)?;
        Ok(Lab { source, lb, sink, g0_mac, l0_mac, s0_mac, sinks, dir })
    }

    fn config(&self, forwarder: Forwarder) -> String {
        let g0 = format_mac(self.g0_mac);
        let s0 = format_mac(self.s0_mac);
        let head = format!("vips:\n  - name: live\n    address: {VIP}\n    port: 80\n    protocol: udp\n");
        match forwarder {
            Forwarder::XlbDsrL2 => format!(
                "{head}    mode: dsr-l2\n    backends:\n      - {{ address: 10.240.0.10, mac: \"{g0}\" }}\n      - {{ address: 10.240.0.11, mac: \"{g0}\" }}\n"
            ),
            Forwarder::XlbDsrIpip => format!(
                "node:\n  next_hop_mac: \"{g0}\"\n  tunnel_source_v4: {LB_IN_V4}\n{head}    mode: dsr-ipip\n    backends:\n      - {{ address: 10.242.0.10 }}\n      - {{ address: 10.242.0.11 }}\n"
            ),
            _ => {
                let pool: Vec<String> = (100..108).map(|i| format!("10.241.0.{i}")).collect();
                format!(
                    "nat_pools:\n  - name: live\n    addresses: [{}]\n    ports: 1024-65535\n{head}    mode: nat\n    snat_pool: live\n    backends:\n      - {{ address: {}, port: 9, interface: l1, mac: \"{s0}\" }}\n      - {{ address: {}, port: 9, interface: l1, mac: \"{s0}\" }}\n",
                    pool.join(", "),
                    SINK_V4[0],
                    SINK_V4[1]
                )
            }
        }
    }

    fn start(&self, forwarder: Forwarder) -> anyhow::Result<Option<Process>> {
        match forwarder {
            Forwarder::Routing => Ok(None),
            Forwarder::NftDnat => {
                let rules = format!(
                    "table ip live {{\n  chain pre {{\n    type nat hook prerouting priority -100;\n    ip daddr {VIP} udp dport 80 dnat to numgen inc mod 2 map {{ 0 : {}, 1 : {} }}\n  }}\n}}\n",
                    SINK_V4[0], SINK_V4[1]
                );
                let path = self.dir.join("live.nft");
                std::fs::write(&path, rules)?;
                let out = self.lb.command("nft").arg("-f").arg(&path).output()?;
                if !out.status.success() {
                    bail!("nft -f: {}", String::from_utf8_lossy(&out.stderr));
                }
                Ok(None)
            }
            _ => {
                let config = self.dir.join("xlb.yaml");
                std::fs::write(&config, self.config(forwarder))?;
                let socket = self.dir.join("xlb.sock");
                let pins = PathBuf::from(format!("/sys/fs/bpf/xlb-bench-live-{}", std::process::id()));
                let _ = std::fs::remove_dir_all(&pins);
                if forwarder == Forwarder::XlbNat {
                    for i in 100..164 {
                        let _ = self
                            .lb
                            .command("ip")
                            .args(["addr", "add", &format!("10.241.0.{i}/32"), "dev", "l1"])
                            .output();
                    }
                }
                let xlb = agent_bin()?;
                let mut cmd = self.lb.command_keep_mounts(xlb.to_str().context("utf-8 path")?);
                cmd.args(["run", "--iface", "l0"]);
                if forwarder == Forwarder::XlbNat {
                    cmd.args(["--iface", "l1"]);
                }
                cmd.arg("--config")
                    .arg(&config)
                    .arg("--admin-socket")
                    .arg(&socket)
                    .arg("--pin-dir")
                    .arg(&pins)
                    .arg("--detach-on-exit")
                    .arg("--no-watch")
                    .arg("--state-dir")
                    .arg(self.dir.join("state"))
                    .env("XLB_LOG", "warn");
                let mut agent = Process::spawn(cmd, "xlb run");
                // The agent's threads stay off the LB's receive CPU.
                for task in std::fs::read_dir(format!("/proc/{}/task", agent.child.id()))?.flatten() {
                    if let Some(tid) = task.file_name().to_str().and_then(|t| t.parse().ok()) {
                        let _ = set_affinity(tid, 0);
                    }
                }
                let deadline = Instant::now() + Duration::from_secs(20);
                loop {
                    if let Some(exit) = agent.child.try_wait()? {
                        bail!("the agent exited ({exit}); its error is above");
                    }
                    let out = std::process::Command::new(&xlb)
                        .args(["status", "--json", "--admin-socket"])
                        .arg(&socket)
                        .output()?;
                    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                    if status["config_generation"].as_u64() >= Some(1) && status["vips_up"].as_u64() == Some(1) {
                        break;
                    }
                    if Instant::now() > deadline {
                        bail!("the agent did not serve the VIP within 20 s");
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
                Ok(Some(agent))
            }
        }
    }

    /// The running agent's counters (`xlb stats --json`), for xlb's cases.
    fn agent_stats(&self, forwarder: Forwarder) -> Option<serde_json::Value> {
        if !forwarder.is_xlb() {
            return None;
        }
        let out = std::process::Command::new(agent_bin().ok()?)
            .args(["stats", "--json", "--admin-socket"])
            .arg(self.dir.join("xlb.sock"))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    fn stop(&self, forwarder: Forwarder, agent: Option<Process>) -> anyhow::Result<()> {
        if let Some(mut agent) = agent {
            agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(20));
        }
        if forwarder == Forwarder::NftDnat {
            let _ = self.lb.command("nft").args(["delete", "table", "ip", "live"]).output();
        }
        Ok(())
    }

    fn template(&self, forwarder: Forwarder, flows: Flows) -> lb_common::GenTemplate {
        let (daddr, dport) = match forwarder {
            Forwarder::Routing => (SINK_V4[0].parse().expect("address"), 9),
            _ => (VIP, 80),
        };
        let mode = match flows {
            Flows::One => GEN_ONE_FLOW,
            Flows::Many => GEN_CYCLE,
            Flows::NewPerPacket => GEN_NEW_PER_FRAME,
        };
        let at = Endpoints { src_mac: self.g0_mac, dst_mac: self.l0_mac, saddr: CLIENT_V4, daddr, sport: 1024, dport };
        udp_v4(at, FRAME_LEN, mode, 65_536)
    }

    /// Frames and bytes counted by each sink (`g0`'s, `s0`'s).
    fn delivered(&self) -> anyhow::Result<[(u64, u64); 2]> {
        Ok([self.sinks[0].count()?, self.sinks[1].count()?])
    }

    fn measure(&self, forwarder: Forwarder, flows: Flows, length: Duration, lb_cpu: usize) -> anyhow::Result<Sample> {
        let lb_thread = pin_threads(lb_cpu)?;
        let template = self.template(forwarder, flows);
        let ifindex = ifindex_in(&self.source, "g0")?;
        let (d0, t0) = (self.delivered()?, runtime_ns(lb_thread)?);
        // What the forwarder must deliver, and where: direct server return goes back out of
        // `l0` to the generator's side (IPIP adds a 20-byte header), the rest out of `l1`.
        let (at, size) = match forwarder {
            Forwarder::XlbDsrL2 => (0, FRAME_LEN),
            Forwarder::XlbDsrIpip => (0, FRAME_LEN + 20),
            _ => (1, FRAME_LEN),
        };
        let started = Instant::now();
        let sent = self
            .source
            .run(move || -> anyhow::Result<u64> {
                pin_self(0)?;
                let mut generator = Generator::load()?;
                generator.set(&template, FRAME_LEN)?;
                let deadline = Instant::now() + length;
                while Instant::now() < deadline {
                    generator.send(ifindex, 200_000)?;
                }
                generator.generated()
            })
            .join()
            .map_err(|_| anyhow::anyhow!("the generator thread panicked"))??;
        // Frames still in flight land within a few ms.
        std::thread::sleep(Duration::from_millis(50));
        let elapsed = started.elapsed().as_secs_f64();
        let (d1, t1) = (self.delivered()?, runtime_ns(lb_thread)?);
        let delivered = d1[at].0.saturating_sub(d0[at].0);
        let elsewhere = d1[1 - at].0.saturating_sub(d0[1 - at].0);
        let bytes = d1[at].1.saturating_sub(d0[at].1);
        if delivered < sent / 100 {
            bail!("only {delivered} of {sent} frames reached the sink: the forwarder does not forward");
        }
        // The links' own chatter (neighbour discovery) arrives too: a few frames at most.
        let average = bytes as f64 / delivered as f64;
        if elsewhere > delivered / 100 || (average - size as f64).abs() > size as f64 / 200.0 {
            bail!(
                "{delivered} frames of {average:.1} bytes on average reached the sink ({elsewhere} the other one); expected {size}-byte frames there"
            );
        }
        Ok(Sample {
            ns_per_packet: t1.saturating_sub(t0) as f64 / delivered as f64,
            mpps: delivered as f64 / elapsed / 1e6,
        })
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.sinks.clear();
        let _ = std::fs::remove_dir_all(&self.dir);
        // The namespaces go with their Netns values.
        let _ = (&self.source, &self.lb, &self.sink);
    }
}

/// The agent: `$XLB_BIN`, else the `xlb` built beside this xtask (same profile).
fn agent_bin() -> anyhow::Result<PathBuf> {
    if let Some(path) = std::env::var_os("XLB_BIN") {
        return Ok(PathBuf::from(path));
    }
    let exe = std::env::current_exe()?;
    let path = exe.with_file_name("xlb");
    if !path.exists() {
        bail!("{} not found: build it first (cargo build --release --bin xlb), or set XLB_BIN", path.display());
    }
    Ok(path)
}

fn ifindex_in(ns: &Netns, dev: &str) -> anyhow::Result<u32> {
    let out = ns.ip(&["-j", "link", "show", "dev", dev]);
    let links: serde_json::Value = serde_json::from_slice(&out.stdout).context("ip -j link")?;
    links[0]["ifindex"].as_u64().and_then(|i| u32::try_from(i).ok()).context("no ifindex")
}

/// Threads whose name starts with `prefix` (kernel threads included), by pid.
fn threads(prefix: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else { continue };
        let comm = std::fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        if comm.trim_end().starts_with(prefix) {
            out.push(pid);
        }
    }
    out
}

fn set_affinity(pid: i32, cpu: usize) -> anyhow::Result<()> {
    // SAFETY: cpu_set_t is plain data; CPU_ZERO/CPU_SET write within it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a valid cpu_set_t and `cpu` is below CPU_SETSIZE on this machine.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: sched_setaffinity reads `size_of::<cpu_set_t>()` bytes of a live local.
    if unsafe { libc::sched_setaffinity(pid, size_of::<libc::cpu_set_t>(), &set) } != 0 {
        bail!("pinning thread {pid} to CPU {cpu}: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

fn pin_self(cpu: usize) -> anyhow::Result<()> {
    set_affinity(0, cpu)
}

/// Pins the NAPI threads (they are recreated when XDP is attached or detached): the LB's
/// receive thread alone on `lb_cpu`, the others on CPU 0, the sinks' at SCHED_FIFO. Returns the
/// LB's receive thread.
fn pin_threads(lb_cpu: usize) -> anyhow::Result<i32> {
    let lb = threads("napi/l0-");
    let [lb_thread] = lb[..] else { bail!("expected one receive thread of l0, found {lb:?}") };
    set_affinity(lb_thread, lb_cpu)?;
    for prefix in ["napi/g0-", "napi/s0-", "napi/l1-"] {
        for pid in threads(prefix) {
            set_affinity(pid, 0)?;
            let param = libc::sched_param { sched_priority: 50 };
            // SAFETY: sched_setscheduler reads a live sched_param.
            unsafe { libc::sched_setscheduler(pid, libc::SCHED_FIFO, &param) };
        }
    }
    Ok(lb_thread)
}

/// A thread's run time so far (ns; the first field of /proc/PID/schedstat).
fn runtime_ns(pid: i32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/schedstat"))?;
    text.split_whitespace().next().and_then(|v| v.parse().ok()).context("schedstat")
}
