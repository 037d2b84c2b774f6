//! The bench's large-flow-set cases: the connection table (and the NAT table) holding 10^5–10^6
//! flows, visited in random order, so that a lookup misses the CPU caches as on a busy edge node;
//! and new flows inserted into a table 90 % full. Each plane is a balancer filled by running
//! real SYN + ACK pairs through the program, and checked to hold what its cases claim.

use anyhow::{Context as _, ensure};
use lb_common::{FLOW_TABLE_SIZE, FlowKey, NAT_TABLE_SIZE, PROTO_TCP, Stat};
use xlb::apply::{
    dataplane::TableSizes,
    testrun::{self, XdpAction},
};
use xlb_tests::{Balancer, packets::L4, rng::Rng};

use crate::bench_packets::{config, frame};

/// A balancer whose tables hold many flows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plane {
    /// 10^5 flows per family (and 10^5 NAT flows) in the default tables.
    Flows100k,
    /// 10^6 flows per family in a table of 4 Mi entries (the 2 Mi flows fill half).
    Flows1m,
    /// Tables filled to 90 % less what the new-flow cases insert, so they end at 90 %.
    Full90,
}

/// What a large case sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Large {
    /// ACKs of flows the plane holds, to `dst`, drawn at random.
    Established(Plane, &'static str),
    /// SYNs of tuples no flow of the plane has, to `dst`.
    New(Plane, &'static str),
}

impl Large {
    pub fn plane(self) -> Plane {
        match self {
            Large::Established(plane, _) | Large::New(plane, _) => plane,
        }
    }
}

/// The VIPs of the bench config the planes fill (dsr-ipip v4 and v6, nat v4).
const DSR_V4: &str = "192.0.2.10";
const DSR_V6: &str = "2001:db8::10";
const NAT_V4: &str = "192.0.2.30";

/// Flows per client address in the tuples below (distinct source ports).
const PORTS_PER_CLIENT: usize = 50_000;

/// Flow `i` of the filled set toward `dst`: client address `i / 50 000`, port `10 000 + i mod
/// 50 000`; `fresh` > 0 gives run `fresh`'s new tuples, apart from every filled one.
fn tuple(dst: &str, i: usize, fresh: usize) -> (String, u16) {
    let (client, port) = (i / PORTS_PER_CLIENT, (10_000 + i % PORTS_PER_CLIENT) as u16);
    let src = match (dst.contains(':'), fresh) {
        (true, 0) => format!("2001:db8:e::{client:x}"),
        (true, f) => format!("2001:db8:f{f:x}::{client:x}"),
        (false, 0) => format!("10.200.0.{client}"),
        (false, f) => format!("10.{}.0.{client}", 200 + f),
    };
    (src, port)
}

fn key(src: &str, dst: &str, sport: u16) -> FlowKey {
    let words = |a: &str| xlb::config::ip_words(a.parse().expect("address"));
    let ((saddr, family), (daddr, _)) = (words(src), words(dst));
    FlowKey { saddr, daddr, sport: sport.to_be(), dport: 80u16.to_be(), proto: PROTO_TCP, family, pad: 0 }
}

/// Entries of the 10^6-flow plane's connection table.
pub const TABLE_1M: u32 = 4 << 20;

/// The filled plane `plane` of build `build` (built before the runs for every large case chosen).
pub fn plane_of(planes: &[Filled], plane: Plane, build: usize) -> anyhow::Result<&Filled> {
    planes
        .iter()
        .find(|p| p.plane == plane && p.build == build)
        .with_context(|| format!("plane {plane:?} of build {build} was not filled"))
}

/// One filled balancer, with how many flows it holds toward each VIP.
pub struct Filled {
    pub plane: Plane,
    /// Which balancer build (0 this one, 1 the `--compare` object) fills it.
    pub build: usize,
    pub balancer: Balancer,
    /// (VIP, flows filled).
    fills: Vec<(&'static str, usize)>,
    pub notes: Vec<String>,
}

impl Filled {
    /// Builds and fills `plane`; `inserts` is how many new flows the run's new-flow cases add
    /// per VIP (the 90 % plane leaves room for them).
    pub fn new(plane: Plane, inserts: usize, object: &[u8], build: usize) -> anyhow::Result<Self> {
        let (sizes, fills) = match plane {
            Plane::Flows100k => (
                TableSizes { flows: FLOW_TABLE_SIZE, nat: NAT_TABLE_SIZE },
                vec![(DSR_V4, 100_000), (DSR_V6, 100_000), (NAT_V4, 100_000)],
            ),
            Plane::Flows1m => {
                (TableSizes { flows: TABLE_1M, nat: 1024 }, vec![(DSR_V4, 1_000_000), (DSR_V6, 1_000_000)])
            }
            Plane::Full90 => {
                let dsr = (FLOW_TABLE_SIZE as usize * 9 / 10 - 2 * inserts) / 2;
                let nat = 2 * NAT_TABLE_SIZE as usize * 9 / 10 - inserts;
                (
                    TableSizes { flows: FLOW_TABLE_SIZE, nat: 2 * NAT_TABLE_SIZE },
                    vec![(DSR_V4, dsr), (DSR_V6, dsr), (NAT_V4, nat)],
                )
            }
        };
        // Filled NAT flows never see a reply: under the default 10 s for unanswered flows, the
        // first ones would expire (and their sources be reclaimed) while a large fill runs.
        let yaml = config().replacen("node:\n", "node:\n  nat_closing_timeout: 1h\n", 1);
        let balancer = Balancer::from_object(&yaml, sizes, object);
        let prog = balancer.program.xdp()?;
        for &(dst, count) in &fills {
            let pairs = (0..count).flat_map(|i| {
                let (src, sport) = tuple(dst, i, 0);
                [L4::TcpSyn { sport, dport: 80 }, L4::TcpAck { sport, dport: 80 }].map(|l4| frame(&src, dst, l4))
            });
            testrun::run_loop(prog, pairs, XdpAction::Tx).with_context(|| format!("filling {plane:?} toward {dst}"))?;
        }
        let usage = balancer.maps.flow_table_usage()?;
        let dsr: usize = fills.iter().filter(|(d, _)| *d != NAT_V4).map(|(_, n)| n).sum();
        let nat = fills.iter().find(|(d, _)| *d == NAT_V4).map_or(0, |(_, n)| *n);
        let nat_held = balancer.maps.nat_tables()?.reverse_entries().len();
        // Sets of 8 overflow a little at 90 %: a flow that found its set full of confirmed ones
        // is sent unrecorded (flow_set_full), and the established cases never draw it.
        let set_full = balancer.stat(Stat::FlowSetFull);
        ensure!(
            usage.entries as usize + set_full as usize == dsr && nat_held == nat,
            "{plane:?}: filled {dsr} flows and {nat} NAT flows; the tables hold {} (+{set_full} unrecorded) and {nat_held}",
            usage.entries
        );
        let notes = vec![format!(
            "{plane:?}{}: connection table {} of {} entries in use ({:.0} %), {set_full} flows unrecorded (full sets); NAT table {nat_held} of {} flows",
            if build == 0 { "" } else { " [B]" },
            usage.entries,
            usage.size,
            100.0 * usage.entries as f64 / usage.size as f64,
            sizes.nat
        )];
        Ok(Self { plane, build, balancer, fills, notes })
    }

    /// `count` packets of `case` for sample `run`: established ones only of flows the table holds.
    pub fn packets(&self, case: Large, run: usize, count: usize) -> anyhow::Result<Vec<Vec<u8>>> {
        match case {
            Large::Established(_, dst) => {
                let filled = self.fills.iter().find(|(d, _)| *d == dst).map(|(_, n)| *n).context("a filled VIP")?;
                let mut rng = Rng::new(run as u64 + 1);
                let nat = self.balancer.maps.nat_tables()?;
                let mut out = Vec::with_capacity(count);
                while out.len() < count {
                    let (src, sport) = tuple(dst, rng.below(filled as u64) as usize, 0);
                    let key = key(&src, dst, sport);
                    let held =
                        if dst == NAT_V4 { nat.flow(&key).is_some() } else { self.balancer.maps.flow(&key)?.is_some() };
                    if held {
                        out.push(frame(&src, dst, L4::TcpAck { sport, dport: 80 }));
                    }
                }
                Ok(out)
            }
            Large::New(_, dst) => Ok((0..count)
                .map(|i| {
                    let (src, sport) = tuple(dst, i, run + 1);
                    frame(&src, dst, L4::TcpSyn { sport, dport: 80 })
                })
                .collect()),
        }
    }

    /// Connection-table misses so far (an established case must add none).
    pub fn misses(&self) -> u64 {
        self.balancer.stat(Stat::FlowMiss)
    }
}

/// What one dependent read at a random place of `bytes` of memory costs here, in ns: a pointer
/// chase over one word per 64-byte line, in a random cycle, on 4 KiB pages (as the kernel backs
/// a BPF array map's values). The floor under a connection-table lookup in a table that size:
/// however its lines are laid out, a lookup at 10^6 random flows pays at least one such read
/// more than one that hits the caches.
pub fn dependent_read_ns(bytes: usize) -> f64 {
    const LINE_WORDS: usize = 64 / size_of::<usize>();
    let lines = (bytes / 64).max(2);
    let mut memory = vec![0usize; lines * LINE_WORDS];
    // SAFETY: advice on the vector's own pages (the range rounded inward to whole pages); it
    // changes how they are backed, never their contents.
    unsafe {
        let start = memory.as_mut_ptr() as usize;
        let first = start.next_multiple_of(4096);
        let end = (start + memory.len() * size_of::<usize>()) & !4095;
        if end > first {
            libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_NOHUGEPAGE);
        }
    }
    // One cycle through every line (Sattolo's shuffle), so that no read can be predicted.
    let mut order: Vec<usize> = (0..lines).collect();
    let mut rng = Rng::new(7);
    for i in (1..lines).rev() {
        order.swap(i, rng.below(i as u64) as usize);
    }
    for (i, &line) in order.iter().enumerate() {
        memory[line * LINE_WORDS] = order[(i + 1) % lines] * LINE_WORDS;
    }
    let chase = |steps: usize, mut at: usize| {
        for _ in 0..steps {
            at = memory[at];
        }
        at
    };
    // Once round to fault every page in, then time a bounded number of reads.
    let at = chase(lines, 0);
    let steps = 2_000_000;
    let start = std::time::Instant::now();
    let end = std::hint::black_box(chase(steps, at));
    let ns = start.elapsed().as_nanos() as f64 / steps as f64;
    std::hint::black_box(end);
    ns
}
