//! `cargo xtask bench`: the XDP program's cost per packet, as the kernel measures it under
//! BPF_PROG_TEST_RUN, next to the empty program (the harness floor) measured the same way; and
//! the userspace Maglev table build.
//!
//! Two methods:
//! - `repeat`: one call with `repeat = N`; the kernel re-runs the program on the same buffer. Only
//!   valid for paths that leave the packet unchanged (pass).
//! - `loop`: many calls with `repeat = 1`, a fresh packet each, averaging the kernel-reported
//!   durations. Valid for every path, including those that rewrite the packet; every forwarding
//!   case is measured this way.
//!
//! Every call's verdict is checked. Cases are interleaved run by run so that drift on a busy
//! machine hits all of them alike. "new" cases send a SYN of a distinct 5-tuple in every call,
//! so every call really inserts into the connection table.

use std::{collections::BTreeMap, time::Instant};

use anyhow::{Context as _, bail};
use lb_common::{FlowKey, FlowSet, NatReverse};
use xlb::{
    apply::dataplane::{Loaded, TableSizes},
    apply::testrun::{self, XdpAction},
    config::ip_from_words,
    state::maglev::{self, Member},
};
use xlb_tests::{Balancer, packets::L4};

use crate::{
    bench_flows::{Filled, Large, Plane, plane_of},
    bench_packets::{config, frame, limit_flooder},
};

#[derive(clap::Args)]
pub struct Options {
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
    /// Samples per case; min/median/max are over these.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Iterations of one `repeat` sample.
    #[arg(long, default_value_t = 200_000)]
    repeat: u32,
    /// Separate test runs in one `loop` sample.
    #[arg(long, default_value_t = 20_000)]
    loop_count: usize,
    /// Only cases whose name contains this, or one of these comma-separated parts (the floor is
    /// always measured).
    #[arg(long)]
    only: Option<String>,
    /// Also run every balancer case on this other build of the balancer object (an ELF file,
    /// e.g. a copy of `xlb-balancer` from before a change), interleaved with this build's runs,
    /// and print each case's ratio B / this build (net of the floor). Rows of that build are
    /// marked `[B]`.
    #[arg(long, value_name = "OBJECT")]
    compare: Option<std::path::PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Method {
    Repeat,
    Loop,
}

impl Method {
    fn name(self) -> &'static str {
        match self {
            Method::Repeat => "repeat",
            Method::Loop => "loop",
        }
    }
}

/// Which program a case runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Program {
    Floor,
    Balancer,
    /// The balancer with a connection table of `FLOOD_TABLE` entries filled with confirmed
    /// flows (`fill_flows`).
    Flood,
    /// A balancer whose tables hold many flows (`bench_flows`).
    Large(Plane),
}

/// Connection-table size of the flood cases: the 65 536 entries.
const FLOOD_TABLE: u32 = 65_536;
/// Flows opened (SYN, then ACK) into the flood balancer's table before the runs, per family:
/// twice its size in all, so that nearly every set is full of confirmed flows.
const FLOOD_FILL: usize = FLOOD_TABLE as usize;
/// Sources of the full pool (`poolfull`, 1 address × ports 1024-65023).
const FULL_POOL: u16 = 64_000;

/// How a case's packets are made for sample `run`: established flows reuse a few tuples
/// (opened once beforehand); new flows get tuples no other call has used.
#[derive(Debug, Clone, Copy)]
enum Traffic {
    Same(&'static str, &'static str),
    Established(&'static str, &'static str),
    New(&'static str),
    /// The backends' replies to the flows of this established case (NAT).
    Replies(&'static str),
    /// SYNs from one source (one per run) and a new port each, to this VIP.
    Flood(&'static str),
    /// Packets of a large plane's flows (`bench_flows`).
    Large(Large),
}

struct Case {
    name: &'static str,
    program: Program,
    methods: &'static [Method],
    traffic: Traffic,
    expected: XdpAction,
}

struct Row {
    case: &'static str,
    method: &'static str,
    /// Which balancer build: 0 this one, 1 the `--compare` object.
    build: usize,
    samples: Vec<f64>,
}

impl Row {
    fn build_name(&self) -> &'static str {
        if self.build == 0 { "this" } else { "B" }
    }
    fn label(&self) -> String {
        if self.build == 0 { self.case.to_owned() } else { format!("{} [B]", self.case) }
    }
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples.clone();
        s.sort_by(f64::total_cmp);
        s
    }
    fn min(&self) -> f64 {
        self.sorted()[0]
    }
    fn median(&self) -> f64 {
        let s = self.sorted();
        let n = s.len();
        if n % 2 == 1 { s[n / 2] } else { (s[n / 2 - 1] + s[n / 2]) / 2.0 }
    }
    fn max(&self) -> f64 {
        *self.sorted().last().unwrap_or(&0.0)
    }
}

const BOTH: &[Method] = &[Method::Repeat, Method::Loop];
const LOOP: &[Method] = &[Method::Loop];

fn cases() -> Vec<Case> {
    use Traffic::*;
    let case = |name, program, methods, traffic, expected| Case { name, program, methods, traffic, expected };
    vec![
        case("floor", Program::Floor, BOTH, Same("198.51.100.1", "192.0.2.10"), XdpAction::Pass),
        case("pass-v4-nonvip", Program::Balancer, BOTH, Same("198.51.100.1", "192.0.2.99"), XdpAction::Pass),
        case("pass-v6-nonvip", Program::Balancer, BOTH, Same("2001:db8:ff::1", "2001:db8::99"), XdpAction::Pass),
        case(
            "dsr-ipip-v4-established",
            Program::Balancer,
            LOOP,
            Established("198.51.100.1", "192.0.2.10"),
            XdpAction::Tx,
        ),
        case("dsr-ipip-v4-new", Program::Balancer, LOOP, New("192.0.2.10"), XdpAction::Tx),
        case(
            "dsr-ipip-v6-established",
            Program::Balancer,
            LOOP,
            Established("2001:db8:ff::1", "2001:db8::10"),
            XdpAction::Tx,
        ),
        case("dsr-ipip-v6-new", Program::Balancer, LOOP, New("2001:db8::10"), XdpAction::Tx),
        case(
            "dsr-l2-v4-established",
            Program::Balancer,
            LOOP,
            Established("198.51.100.1", "192.0.2.20"),
            XdpAction::Tx,
        ),
        case("dsr-l2-v4-new", Program::Balancer, LOOP, New("192.0.2.20"), XdpAction::Tx),
        case("nat-v4-established", Program::Balancer, LOOP, Established("198.51.100.1", "192.0.2.30"), XdpAction::Tx),
        case("nat-v4-new", Program::Balancer, LOOP, New("192.0.2.30"), XdpAction::Tx),
        case("nat-v4-reply", Program::Balancer, LOOP, Replies("nat-v4-established"), XdpAction::Tx),
        case(
            "nat-v6-established",
            Program::Balancer,
            LOOP,
            Established("2001:db8:ff::1", "2001:db8::30"),
            XdpAction::Tx,
        ),
        case("nat-v6-new", Program::Balancer, LOOP, New("2001:db8::30"), XdpAction::Tx),
        case("nat-v6-reply", Program::Balancer, LOOP, Replies("nat-v6-established"), XdpAction::Tx),
        case("nat-v4-new-pool-exhausted", Program::Balancer, LOOP, New("192.0.2.31"), XdpAction::Drop),
        case("flood-syn-v4", Program::Flood, LOOP, Flood("192.0.2.20"), XdpAction::Tx),
        case("flood-syn-v6", Program::Flood, LOOP, Flood("2001:db8::10"), XdpAction::Tx),
        case("flood-syn-v4-limited", Program::Balancer, LOOP, Flood("192.0.2.21"), XdpAction::Drop),
        case("flood-syn-v4-denied", Program::Balancer, LOOP, Flood("192.0.2.22"), XdpAction::Drop),
        case("flood-syn-v4-nat-cookies", Program::Balancer, LOOP, Flood("192.0.2.32"), XdpAction::Tx),
    ]
    .into_iter()
    .chain(large_cases())
    .collect()
}

/// The large-flow-set cases: random visits of 10^5 and 10^6 held flows, and inserts into a table
/// 90 % full.
fn large_cases() -> Vec<Case> {
    use Plane::*;
    let case = |name, traffic: Large| Case {
        name,
        program: Program::Large(traffic.plane()),
        methods: LOOP,
        traffic: Traffic::Large(traffic),
        expected: XdpAction::Tx,
    };
    vec![
        case("dsr-ipip-v4-established-100k", Large::Established(Flows100k, "192.0.2.10")),
        case("dsr-ipip-v6-established-100k", Large::Established(Flows100k, "2001:db8::10")),
        case("nat-v4-established-100k", Large::Established(Flows100k, "192.0.2.30")),
        case("dsr-ipip-v4-established-1m", Large::Established(Flows1m, "192.0.2.10")),
        case("dsr-ipip-v6-established-1m", Large::Established(Flows1m, "2001:db8::10")),
        case("dsr-ipip-v4-new-90pct-full", Large::New(Full90, "192.0.2.10")),
        case("dsr-ipip-v6-new-90pct-full", Large::New(Full90, "2001:db8::10")),
        case("nat-v4-new-90pct-full", Large::New(Full90, "192.0.2.30")),
    ]
}

/// Flows of an established case: 16 tuples from one client.
const ESTABLISHED_FLOWS: u16 = 16;

fn packets(
    traffic: Traffic,
    run: usize,
    count: usize,
    build: usize,
    replies: &BTreeMap<(usize, &str), Vec<Vec<u8>>>,
) -> Vec<Vec<u8>> {
    match traffic {
        Traffic::Replies(of) => replies.get(&(build, of)).cloned().unwrap_or_default(),
        // Made by its plane (`Filled::packets`).
        Traffic::Large(_) => Vec::new(),
        Traffic::Same(src, dst) => vec![frame(src, dst, L4::TcpAck { sport: 40000, dport: 80 })],
        Traffic::Established(src, dst) => {
            (0..ESTABLISHED_FLOWS).map(|i| frame(src, dst, L4::TcpAck { sport: 40000 + i, dport: 80 })).collect()
        }
        Traffic::Flood(dst) => (0..count)
            .map(|i| {
                let src = if dst.contains(':') {
                    format!("2001:db8:66::{:x}", run + 1)
                } else {
                    format!("203.0.113.{}", run + 1)
                };
                frame(&src, dst, L4::TcpSyn { sport: 1024 + i as u16, dport: 80 })
            })
            .collect(),
        Traffic::New(dst) => (0..count)
            .map(|i| {
                // A distinct client address per call and per run: 10.<run>.<i/250>.<i%250>.
                let (hi, lo) = ((i / 250) as u8, (i % 250) as u8 + 1);
                let src = if dst.contains(':') {
                    format!("2001:db8:f{run:x}::{hi:x}:{lo:x}")
                } else {
                    format!("10.{}.{hi}.{lo}", 100 + run)
                };
                frame(&src, dst, L4::TcpSyn { sport: 40000, dport: 80 })
            })
            .collect(),
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench runs BPF_PROG_TEST_RUN and needs root");
    }
    if opts.runs == 0 || opts.runs > 50 || opts.loop_count == 0 || opts.loop_count > 60_000 || opts.repeat < 2 {
        bail!("--runs must be 1..=50, --loop-count 1..=60000 (distinct new-flow tuples), --repeat at least 2");
    }
    let cpu = pin_to_current_cpu()?;
    let floor = Loaded::floor().context("loading the floor program")?;
    // Tables larger than every insert the run makes, as in production.
    let flows =
        std::env::var("XLB_BENCH_FLOWS").ok().and_then(|v| v.parse().ok()).unwrap_or(lb_common::FLOW_TABLE_SIZE);
    // Both families' new-flow cases fill the one NAT table.
    let nat = (2 * opts.runs * opts.loop_count + usize::from(FULL_POOL) + 1024).next_power_of_two() as u32;
    let sizes = TableSizes { flows, nat };
    let mut objects = vec![xlb::apply::dataplane::BALANCER_OBJECT.to_vec()];
    if let Some(path) = &opts.compare {
        objects.push(std::fs::read(path).with_context(|| format!("--compare: reading {}", path.display()))?);
    }
    let balancers: Vec<Balancer> = objects.iter().map(|o| Balancer::from_object(&config(), sizes, o)).collect();
    let cases: Vec<Case> = cases()
        .into_iter()
        .filter(|c| {
            c.name == "floor" || opts.only.as_deref().is_none_or(|only| only.split(',').any(|o| c.name.contains(o)))
        })
        .collect();
    let flood_sizes = TableSizes { flows: FLOOD_TABLE, nat: 1024 };
    let flood: Vec<(Balancer, Vec<FlowSet>)> = if cases.iter().any(|c| c.program == Program::Flood) {
        objects
            .iter()
            .map(|o| {
                let b = Balancer::from_object(&config(), flood_sizes, o);
                let before = fill_flows(&b)?;
                Ok((b, before))
            })
            .collect::<anyhow::Result<_>>()?
    } else {
        Vec::new()
    };
    // Large planes, filled once per build (each holds up to 2 Mi flows, ~300 MB at 10^6).
    let mut planes: Vec<Filled> = Vec::new();
    for case in &cases {
        for (build, object) in objects.iter().enumerate() {
            if let Program::Large(plane) = case.program
                && !planes.iter().any(|p| p.plane == plane && p.build == build)
            {
                planes.push(Filled::new(plane, opts.runs * opts.loop_count, object, build)?);
            }
        }
    }
    if cases.iter().any(|c| c.name == "flood-syn-v4-limited") {
        limit_flooder(&balancers[0])?;
    }
    let mut exhausted_before = None;
    if cases.iter().any(|c| c.name == "nat-v4-new-pool-exhausted") {
        for (build, balancer) in balancers.iter().enumerate() {
            fill_pool(balancer)?;
            // The first SYN finds the pool full (and marks the backend exhausted).
            let syns: Vec<Vec<u8>> =
                (0..5).map(|i| frame("10.99.0.1", "192.0.2.31", L4::TcpSyn { sport: 1000 + i, dport: 80 })).collect();
            let ns =
                testrun::run_loop(balancer.program.xdp()?, &syns, XdpAction::Drop).context("SYN to the full pool")?;
            if build == 1 {
                exhausted_before = Some(ns);
            }
        }
    }
    // Open the established flows once.
    for balancer in &balancers {
        for case in &cases {
            if let Traffic::Established(src, dst) = case.traffic {
                let syns: Vec<Vec<u8>> = (0..ESTABLISHED_FLOWS)
                    .map(|i| frame(src, dst, L4::TcpSyn { sport: 40000 + i, dport: 80 }))
                    .collect();
                testrun::run_loop(balancer.program.xdp()?, &syns, XdpAction::Tx)
                    .with_context(|| format!("opening flows of {}", case.name))?;
            }
        }
    }
    // The backends' answers to the established NAT flows, to the sources those flows got.
    let mut replies: BTreeMap<(usize, &str), Vec<Vec<u8>>> = BTreeMap::new();
    for case in &cases {
        if let Traffic::Replies(of) = case.traffic {
            let Some(Case { traffic: Traffic::Established(src, dst), .. }) = cases.iter().find(|c| c.name == of) else {
                bail!("{}: run it together with {of} (its flows are the ones answered)", case.name);
            };
            for (build, balancer) in balancers.iter().enumerate() {
                replies.insert((build, of), nat_replies(balancer, src, dst)?);
            }
        }
    }
    // The builds a case runs on: the floor once, balancer cases on each build.
    // The floor once; the full-pool case on this build only (older builds scan the whole pool
    // for every SYN: tens of ms each; measured apart above).
    let builds = |case: &Case| {
        if case.program == Program::Floor
            || case.name == "nat-v4-new-pool-exhausted"
            // Builds from before source policies have none to judge by.
            || case.name.starts_with("flood-syn-v4-limited")
            || case.name.starts_with("flood-syn-v4-denied")
            // (and before SYN cookies: they would open NAT flows).
            || case.name == "flood-syn-v4-nat-cookies"
        {
            0..1
        } else {
            0..balancers.len()
        }
    };
    let mut rows: Vec<Row> = cases
        .iter()
        .flat_map(|c| {
            builds(c).flat_map(move |build| {
                c.methods.iter().map(move |&method| Row {
                    case: c.name,
                    method: method.name(),
                    build,
                    samples: Vec::new(),
                })
            })
        })
        .collect();

    for run in 0..opts.runs {
        let mut row = rows.iter_mut();
        for (case, build) in cases.iter().flat_map(|c| builds(c).map(move |build| (c, build))) {
            // A large case runs on its build's filled plane, whose balancer then also says what
            // it counted.
            let large = match case.traffic {
                Traffic::Large(large) => Some((large, plane_of(&planes, large.plane(), build)?)),
                _ => None,
            };
            let balancer = large.map_or(&balancers[build], |(_, filled)| &filled.balancer);
            let prog = match case.program {
                Program::Floor => floor.xdp()?,
                Program::Flood => flood[build].0.program.xdp()?,
                Program::Balancer | Program::Large(_) => balancer.program.xdp()?,
            };
            let packets = match large {
                Some((large, filled)) => filled.packets(large, run, opts.loop_count)?,
                None => packets(case.traffic, run, opts.loop_count, build, &replies),
            };
            let misses_before = large.map(|(_, filled)| filled.misses());
            for &method in case.methods {
                let ns = match method {
                    Method::Repeat => testrun::repeat(prog, &packets[0], opts.repeat, case.expected),
                    Method::Loop => {
                        testrun::run_loop(prog, packets.iter().cycle().take(opts.loop_count), case.expected)
                    }
                }
                .with_context(|| {
                    // What the program counted says why a verdict was unexpected.
                    let counted: Vec<String> = balancer
                        .stats()
                        .into_iter()
                        .filter(|(s, v)| *v > 0 && (s.is_drop() || !s.is_outcome()))
                        .map(|(s, v)| format!("{}={v}", s.name()))
                        .collect();
                    format!("case {} ({}); drops and events so far: {}", case.name, method.name(), counted.join(" "))
                })?;
                row.next().expect("one row per case and method").samples.push(ns);
                if let (Some((Large::Established(..), filled)), Some(before)) = (large, misses_before) {
                    let added = filled.misses() - before;
                    anyhow::ensure!(
                        added == 0,
                        "{}: {added} connection-table misses in an established case",
                        case.name
                    );
                }
            }
        }
    }
    rows.push(maglev_build(opts.runs)?);
    let mut notes: Vec<String> = planes.iter().flat_map(|p| p.notes.clone()).collect();
    if planes.iter().any(|p| p.plane == Plane::Flows1m) {
        let bytes = lb_common::flow_sets(crate::bench_flows::TABLE_1M) as usize * size_of::<FlowSet>();
        notes.push(format!(
            "memory: one dependent read at a random place of {} MiB (the 10^6-flow table's size, 4 KiB pages) costs {:.0} ns here, in userspace",
            bytes >> 20,
            crate::bench_flows::dependent_read_ns(bytes)
        ));
    }
    if !planes.is_empty() && !std::path::Path::new("/sys/bus/event_source/devices/cpu").exists() {
        notes.push("cache misses: not shown, this kernel exposes no hardware counters (no `cpu` PMU)".into());
    }
    for (build, (balancer, before)) in flood.iter().enumerate() {
        let after = balancer.maps.flow_sets()?;
        let (held, confirmed, evicted) = evictions(before, &after);
        notes.push(format!(
            "flood ({}): {held} flows in the {FLOOD_TABLE}-entry table before the flood ({confirmed} marked confirmed), {evicted} of them evicted by it",
            if build == 0 { "this build" } else { "B" }
        ));
    }
    if let Some(ns) = exhausted_before {
        notes.push(format!(
            "nat-v4-new-pool-exhausted [B]: {ns:.0} ns per SYN (5 SYNs; not interleaved: a full scan each)"
        ));
    }

    if opts.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({"case": r.case, "build": r.build_name(), "method": r.method, "runs": r.samples.len(), "min_ns": r.min(), "median_ns": r.median(), "max_ns": r.max()})
            );
        }
    } else {
        print_table(&rows, opts, cpu);
    }
    for note in notes {
        println!("{note}");
    }
    Ok(())
}

/// Opens `FLOOD_FILL` flows per family (SYN, then an ACK that confirms each) into the flood
/// balancer's table, and returns the table as they left it.
fn fill_flows(balancer: &Balancer) -> anyhow::Result<Vec<FlowSet>> {
    for (dst, v6) in [("192.0.2.20", false), ("2001:db8::10", true)] {
        let packets: Vec<Vec<u8>> = (0..FLOOD_FILL)
            .flat_map(|i| {
                let (hi, lo) = (i / 250, i % 250 + 1);
                let src = if v6 {
                    format!("2001:db8:e::{hi:x}:{lo:x}")
                } else {
                    format!("10.{}.{}.{lo}", 200 + hi / 250, hi % 250)
                };
                [L4::TcpSyn { sport: 40000, dport: 80 }, L4::TcpAck { sport: 40000, dport: 80 }]
                    .map(|l4| frame(&src, dst, l4))
            })
            .collect();
        testrun::run_loop(balancer.program.xdp()?, &packets, XdpAction::Tx)
            .context("opening the flood case's flows")?;
    }
    Ok(balancer.maps.flow_sets()?)
}

/// Entries in use in `before`, how many of them are marked confirmed, and how many no longer
/// hold their flow in `after`.
fn evictions(before: &[FlowSet], after: &[FlowSet]) -> (usize, usize, usize) {
    let (mut held, mut confirmed, mut evicted) = (0, 0, 0);
    for (b, a) in before.iter().zip(after) {
        for way in 0..lb_common::FLOW_WAYS {
            if b.used[way] == 0 {
                continue;
            }
            held += 1;
            confirmed += usize::from(b.confirmed(way));
            evicted +=
                usize::from(a.used[way] == 0 || a.hashes[way] != b.hashes[way] || a.entries[way] != b.entries[way]);
        }
    }
    (held, confirmed, evicted)
}

/// Takes every source of `poolfull` toward natfull4's backend (10.4.0.1:80), as live NAT flows
/// would: the reverse-table entries the data plane's claims write.
fn fill_pool(balancer: &Balancer) -> anyhow::Result<()> {
    let words = |a: &str| xlb::config::ip_words(a.parse().expect("address")).0;
    let slot = balancer.applied("natfull4").slots[0];
    let now = xlb::apply::nat::monotonic_ns();
    let entries: Vec<(FlowKey, NatReverse)> = (0..FULL_POOL)
        .map(|i| {
            let key = FlowKey {
                saddr: words("10.4.0.1"),
                daddr: words("198.19.0.1"),
                sport: 80u16.to_be(),
                dport: (1024 + i).to_be(),
                proto: lb_common::PROTO_TCP,
                family: lb_common::FAMILY_V4,
                pad: 0,
            };
            let value = NatReverse {
                client: words(&format!("10.98.{}.{}", i / 250, i % 250 + 1)),
                vip: words("192.0.2.31"),
                client_port: 40000u16.to_be(),
                vip_port: 80u16.to_be(),
                backend: slot,
                flags: lb_common::NAT_FLAG_REPLIED,
                last_seen: now,
                ..NatReverse::default()
            };
            (key, value)
        })
        .collect();
    Ok(balancer.maps.insert_nat_reverse(&entries)?)
}

/// For each established flow from `src` to the NAT VIP `dst`: the backend's reply to the source
/// the flow was given.
fn nat_replies(balancer: &Balancer, src: &str, dst: &str) -> anyhow::Result<Vec<Vec<u8>>> {
    let words = |a: &str| xlb::config::ip_words(a.parse().expect("address"));
    let ((saddr, family), (daddr, _)) = (words(src), words(dst));
    (0..ESTABLISHED_FLOWS)
        .map(|i| {
            let key = FlowKey {
                saddr,
                daddr,
                sport: (40000 + i).to_be(),
                dport: 80u16.to_be(),
                proto: lb_common::PROTO_TCP,
                family,
                pad: 0,
            };
            let flow = balancer.maps.nat_tables()?.flow(&key).context("an established NAT flow is in the table")?;
            let backend = balancer.maps.backend(flow.backend)?;
            let backend_addr = ip_from_words(backend.addr, backend.family).to_string();
            let source = ip_from_words(flow.source, family).to_string();
            let l4 = L4::TcpAck { sport: u16::from_be(flow.backend_port), dport: u16::from_be(flow.source_port) };
            Ok(frame(&backend_addr, &source, l4))
        })
        .collect()
}

/// Wall time of building a 65537-slot table over 100 weighted backends.
fn maglev_build(runs: usize) -> anyhow::Result<Row> {
    let names: Vec<String> = (0..100).map(|i| format!("10.9.{}.{}", i / 250, i % 250 + 1)).collect();
    let members: Vec<Member<'_>> =
        names.iter().enumerate().map(|(i, n)| Member { identity: n, weight: 1 + (i % 4) as u32 }).collect();
    let mut samples = Vec::new();
    for _ in 0..runs {
        let start = Instant::now();
        let table = maglev::build(&members, 65537)?;
        samples.push(start.elapsed().as_nanos() as f64);
        anyhow::ensure!(table.slots.len() == 65537);
    }
    Ok(Row { case: "maglev-build-m65537-n100", method: "wall", build: 0, samples })
}

/// Keeps the whole bench on the CPU it started on. Moving between CPUs mid-run leaves the
/// per-CPU connection-table lists and the caches cold and made runs swing by ±30–50 %; pinned,
/// repeated runs agree within a few percent.
fn pin_to_current_cpu() -> anyhow::Result<usize> {
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    anyhow::ensure!(cpu >= 0, "sched_getcpu: {}", std::io::Error::last_os_error());
    let cpu = cpu as usize;
    // SAFETY: a zeroed cpu_set_t is the empty set; CPU_SET writes inside it (cpu < CPU_SETSIZE,
    // checked by the kernel's answer above being a real CPU); sched_setaffinity reads it.
    let pinned = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set)
    };
    anyhow::ensure!(pinned == 0, "pinning the bench to CPU {cpu}: {}", std::io::Error::last_os_error());
    Ok(cpu)
}

fn print_table(rows: &[Row], opts: &Options, cpu: usize) {
    let floor = |method| rows.iter().find(|r| r.case == "floor" && r.method == method).map(Row::median).unwrap_or(0.0);
    println!(
        "XDP cost per packet under BPF_PROG_TEST_RUN, ns ({} runs; repeat = {} iterations per run, loop = {} separate runs per run; pinned to CPU {cpu})",
        opts.runs, opts.repeat, opts.loop_count
    );
    println!("{:<32} {:<7} {:>10} {:>10} {:>10} {:>14}", "case", "method", "min", "median", "max", "net of floor");
    for r in rows.iter().filter(|r| r.method != "wall") {
        let net = if r.case == "floor" { "-".to_owned() } else { format!("{:.1}", r.median() - floor(r.method)) };
        println!(
            "{:<32} {:<7} {:>10.1} {:>10.1} {:>10.1} {:>14}",
            r.label(),
            r.method,
            r.min(),
            r.median(),
            r.max(),
            net
        );
    }
    let net_of = |case: &str, build: usize| {
        rows.iter()
            .find(|r| r.case == case && r.method == "loop" && r.build == build)
            .map(|r| r.median() - floor("loop"))
    };
    let net = |case: &str| net_of(case, 0);
    for (nat, dsr) in
        [("nat-v4-established", "dsr-ipip-v4-established"), ("nat-v6-established", "dsr-ipip-v6-established")]
    {
        if let (Some(a), Some(b)) = (net(nat), net(dsr)) {
            println!("{nat} / {dsr} (net): {:.2} (target ≤ 1.2)", a / b);
        }
    }
    for (large, small, target) in [
        ("dsr-ipip-v4-established-1m", "dsr-ipip-v4-established", 1.5),
        ("dsr-ipip-v6-established-1m", "dsr-ipip-v6-established", 1.5),
        ("dsr-ipip-v4-established-100k", "dsr-ipip-v4-established", 1.5),
        ("dsr-ipip-v4-new-90pct-full", "dsr-ipip-v4-new", 1.5),
    ] {
        if let (Some(a), Some(b)) = (net(large), net(small)) {
            println!("{large} / {small} (net): {:.2} (target ≤ {target})", a / b);
        }
    }
    for (flood, new) in [
        ("flood-syn-v4", "dsr-l2-v4-new"),
        ("flood-syn-v6", "dsr-ipip-v6-new"),
        ("nat-v4-new-pool-exhausted", "nat-v4-new"),
        ("flood-syn-v4-limited", "dsr-l2-v4-new"),
        ("flood-syn-v4-denied", "dsr-l2-v4-new"),
        ("flood-syn-v4-nat-cookies", "nat-v4-new"),
    ] {
        if let (Some(a), Some(b)) = (net(flood), net(new)) {
            println!("{flood} / {new} (net): {:.2} (target ≤ 1.0)", a / b);
        }
    }
    if opts.compare.is_some() {
        println!("\nB / this build, net of the floor (loop), medians of the same runs:");
        for r in rows.iter().filter(|r| r.build == 1 && r.method == "loop") {
            if let (Some(this), Some(b)) = (net_of(r.case, 0), net_of(r.case, 1)) {
                println!("{:<32} {:>6.2}", r.case, b / this);
            }
        }
    }
    println!("\nUserspace, µs (target ≤ 2000)");
    for r in rows.iter().filter(|r| r.method == "wall") {
        println!(
            "{:<28} {:<7} {:>10.1} {:>10.1} {:>10.1}",
            r.case,
            r.method,
            r.min() / 1e3,
            r.median() / 1e3,
            r.max() / 1e3
        );
    }
}
