//! `cargo xtask bench`: the XDP program's cost per packet, as the kernel measures it under
//! BPF_PROG_TEST_RUN, next to the empty program (the harness floor) measured the same way.
//!
//! Two methods:
//! - `repeat`: one call with `repeat = N`; the kernel re-runs the program on the same buffer. Only
//!   valid for paths that leave the packet unchanged.
//! - `loop`: many calls with `repeat = 1`, a fresh packet each, averaging the kernel-reported
//!   durations. Valid for every path, including those that rewrite the packet.
//!
//! Every call's verdict is checked. Cases are interleaved run by run so that drift on a busy
//! machine hits all of them alike.

use anyhow::{Context as _, bail};
use xlb::{
    dataplane::Loaded,
    testrun::{self, XdpAction},
};
use xlb_tests::{
    Balancer,
    packets::{Frame, L4},
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
}

const CONFIG: &str = "vips:
  - name: web4
    address: 192.0.2.10
    port: 80
    protocol: tcp
  - name: web6
    address: 2001:db8::10
    port: 80
    protocol: tcp
";

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
}

struct Case {
    name: &'static str,
    program: Program,
    methods: &'static [Method],
    /// Packets for one sample; `loop` cycles through them, `repeat` uses the first.
    packets: Vec<Vec<u8>>,
    expected: XdpAction,
}

struct Row {
    case: &'static str,
    method: Method,
    samples: Vec<f64>,
}

impl Row {
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

fn cases() -> Vec<Case> {
    let tcp = |dport| L4::TcpAck { sport: 40000, dport };
    let one = |f: Frame| vec![f.build()];
    vec![
        Case {
            name: "floor",
            program: Program::Floor,
            methods: BOTH,
            packets: one(Frame::v4("198.51.100.1", "192.0.2.10", tcp(80))),
            expected: XdpAction::Pass,
        },
        Case {
            name: "pass-v4-nonvip",
            program: Program::Balancer,
            methods: BOTH,
            packets: one(Frame::v4("198.51.100.1", "192.0.2.99", tcp(80))),
            expected: XdpAction::Pass,
        },
        Case {
            name: "pass-v6-nonvip",
            program: Program::Balancer,
            methods: BOTH,
            packets: one(Frame::v6("2001:db8::1", "2001:db8::99", tcp(80))),
            expected: XdpAction::Pass,
        },
        Case {
            name: "vip-v4-hit",
            program: Program::Balancer,
            methods: BOTH,
            packets: one(Frame::v4("198.51.100.1", "192.0.2.10", tcp(80))),
            expected: XdpAction::Pass,
        },
        Case {
            name: "vip-v6-hit",
            program: Program::Balancer,
            methods: BOTH,
            packets: one(Frame::v6("2001:db8::1", "2001:db8::10", tcp(80))),
            expected: XdpAction::Pass,
        },
    ]
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the bench runs BPF_PROG_TEST_RUN and needs root");
    }
    if opts.runs == 0 || opts.loop_count == 0 || opts.repeat < 2 {
        bail!("--runs and --loop-count must be at least 1 and --repeat at least 2");
    }
    let floor = Loaded::floor().context("loading the floor program")?;
    let balancer = Balancer::with_config(CONFIG);
    let cases = cases();
    let mut rows: Vec<Row> = cases
        .iter()
        .flat_map(|c| c.methods.iter().map(|&method| Row { case: c.name, method, samples: Vec::new() }))
        .collect();

    for _ in 0..opts.runs {
        let mut row = rows.iter_mut();
        for case in &cases {
            let prog = match case.program {
                Program::Floor => floor.xdp()?,
                Program::Balancer => balancer.program.xdp()?,
            };
            for &method in case.methods {
                let ns = match method {
                    Method::Repeat => testrun::repeat(prog, &case.packets[0], opts.repeat, case.expected),
                    Method::Loop => {
                        testrun::run_loop(prog, case.packets.iter().cycle().take(opts.loop_count), case.expected)
                    }
                }
                .with_context(|| format!("case {} ({})", case.name, method.name()))?;
                row.next().expect("one row per case and method").samples.push(ns);
            }
        }
    }

    if opts.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({"case": r.case, "method": r.method.name(), "runs": r.samples.len(), "min_ns": r.min(), "median_ns": r.median(), "max_ns": r.max()})
            );
        }
    } else {
        print_table(&rows, opts);
    }
    Ok(())
}

fn print_table(rows: &[Row], opts: &Options) {
    let floor = |method| rows.iter().find(|r| r.case == "floor" && r.method == method).map(Row::median).unwrap_or(0.0);
    println!(
        "XDP cost per packet under BPF_PROG_TEST_RUN, ns ({} runs; repeat = {} iterations per run, loop = {} separate runs per run)",
        opts.runs, opts.repeat, opts.loop_count
    );
    println!("{:<28} {:<7} {:>8} {:>8} {:>8} {:>16}", "case", "method", "min", "median", "max", "net of floor");
    for r in rows {
        let net = if r.case == "floor" { "-".to_owned() } else { format!("{:.1}", r.median() - floor(r.method)) };
        println!(
            "{:<28} {:<7} {:>8.1} {:>8.1} {:>8.1} {:>16}",
            r.case,
            r.method.name(),
            r.min(),
            r.median(),
            r.max(),
            net
        );
    }
}
