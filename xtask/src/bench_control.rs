//! `cargo xtask bench control-plane`: how the agent's control plane copes with many VIPs. Runs
//! the real agent (release build) in namespaces — a BIRD router (hold 3 s, keepalive 1 s), the
//! xlb node, live backends — the scenario of xlb_tests::scale, and prints per pass (one per
//! `--vips` count):
//!
//! - `control-start-N`: from spawning `xlb run` until `xlb status --json` (the summary) shows all
//!   N VIPs written and one `xlb status --vips --json` confirms their backends (the agent's own
//!   log time of "data plane filled" in the note, when it logs it);
//! - `control-routes-N`: from spawning until the router's kernel has a route to every VIP;
//! - `control-reload-all-N`: from SIGHUP (every VIP's backend set changed) until status shows the
//!   next config generation, the last reload ok and every VIP with its new backends;
//! - `control-reload-one-N`: the same with one VIP changed (median of `--reload-one-runs`);
//! - first pass only, `control-health-down-ms`: a backend's server killed 50 ms into the full
//!   reload; from the kill to the last new flow (SYN) that reached it, against fall × interval +
//!   100 ms;
//! - `control-status-worst-ms`: the slowest `xlb status` (the summary) while the reloads ran
//!   (polled every 100 ms in a thread besides the reload-done polls); `control-status-idle-ms` the median
//!   before them;
//! - `control-keepalive-gap-ms`: the longest time without a BGP message from the node, as the
//!   router's interface saw it, while the reloads ran; whether BIRD's session stayed Established
//!   and every route installed in the note;
//! - agent RSS after start and after the full reload, BPF map memory (memlock of its maps and
//!   their inner maps), and both per 1 000 VIPs.
//!
//! Passes after the first carry their VIP count in every row name. An agent that refuses a
//! count gets "refused: <its error>" in that pass's rows. Every wait is bounded.

use std::time::Duration;

use anyhow::{Context as _, bail};
use xlb_tests::scale::{BpfMemory, Done, Scale, Spec};

#[derive(clap::Args)]
pub struct Options {
    /// Print one JSON object per row instead of a table.
    #[arg(long)]
    json: bool,
    /// VIP counts, one pass each (comma-separated).
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    vips: Vec<usize>,
    /// `maglev_table_size` of every VIP (a prime) [default: the agent's default].
    #[arg(long)]
    maglev_table_size: Option<u32>,
    /// One-VIP reloads per pass (1..=20); the median is reported.
    #[arg(long, default_value_t = 3)]
    reload_one_runs: usize,
}

/// One line of the report.
struct Row {
    case: String,
    value: Option<f64>,
    unit: &'static str,
    /// The value must be at most this.
    target: Option<f64>,
    note: String,
}

impl Row {
    fn new(case: impl Into<String>, value: Option<f64>, unit: &'static str, target: Option<f64>, note: String) -> Row {
        Row { case: case.into(), value, unit, target, note }
    }

    fn verdict(&self) -> &'static str {
        match (self.value, self.target) {
            (Some(v), Some(t)) if v <= t => "ok",
            (Some(_), Some(_)) => "MISSED",
            (None, Some(_)) => "FAILED",
            _ => "-",
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// Targets by VIP count (none for counts the goals do not name).
fn start_target(vips: usize) -> Option<f64> {
    match vips {
        1000 => Some(2000.0),
        10000 => Some(10_000.0),
        _ => None,
    }
}

fn reload_all_target(vips: usize) -> Option<f64> {
    match vips {
        1000 => Some(1000.0),
        10000 => Some(5000.0),
        _ => None,
    }
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the control-plane bench builds network namespaces and attaches XDP: run it as root");
    }
    if opts.vips.is_empty() || opts.vips.iter().any(|&n| !(10..=50_000).contains(&n)) {
        bail!("--vips: counts of 10..=50000");
    }
    if !(1..=20).contains(&opts.reload_one_runs) {
        bail!("--reload-one-runs must be 1..=20");
    }
    for tool in ["bird", "birdc"] {
        let found = std::process::Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(std::process::Stdio::null())
            .status()?;
        if !found.success() {
            bail!("{tool} is not installed (scripts/setup.sh installs bird2)");
        }
    }
    if std::env::var_os("XLB_BIN").is_none() {
        build_agent()?;
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::set_var("XLB_BIN", std::env::current_exe()?.with_file_name("xlb")) };
    }
    let mut rows = Vec::new();
    let mut memory: Vec<(usize, u64, u64)> = Vec::new();
    for (pass, &vips) in opts.vips.iter().enumerate() {
        let mut spec = Spec::new(vips);
        spec.maglev_table_size = opts.maglev_table_size;
        if !opts.json {
            eprintln!("== pass {}: {vips} VIPs ({} backends each)", pass + 1, spec.backends_per_vip);
        }
        let before = rows.len();
        if let Some(m) = run_pass(opts, spec, pass == 0, &mut rows)? {
            memory.push((vips, m.0, m.1));
        }
        if !opts.json {
            print_table(&rows[before..]);
        }
    }
    // Per 1 000 VIPs: what the largest two passes differ by (fixed costs cancel), else the
    // one pass's total.
    memory.sort();
    let per_thousand = match memory.as_slice() {
        [.., (n1, rss1, bpf1), (n2, rss2, bpf2)] if n2 > n1 => Some((
            (*rss2 as f64 - *rss1 as f64) / (*n2 - *n1) as f64 * 1000.0,
            (*bpf2 as f64 - *bpf1 as f64) / (*n2 - *n1) as f64 * 1000.0,
            format!("difference between the {n1} and {n2} VIP passes (fixed costs cancel)"),
        )),
        [(n, rss, bpf)] => Some((
            *rss as f64 / *n as f64 * 1000.0,
            *bpf as f64 / *n as f64 * 1000.0,
            format!("the {n} VIP pass's total / {}, fixed costs included", n / 1000),
        )),
        _ => None,
    };
    let before = rows.len();
    if let Some((rss, bpf, how)) = per_thousand {
        rows.push(Row::new("control-rss-per-1000-vips", Some(mib(rss as u64)), "MiB", None, how.clone()));
        rows.push(Row::new("control-bpf-per-1000-vips", Some(mib(bpf as u64)), "MiB", None, how));
    }
    if opts.json {
        for r in &rows {
            println!(
                "{}",
                serde_json::json!({"case": r.case, "value": r.value.map(|v| (v * 10.0).round() / 10.0), "unit": r.unit, "target": r.target, "verdict": r.verdict(), "note": r.note})
            );
        }
    } else {
        print_table(&rows[before..]);
    }
    Ok(())
}

/// `cargo build --release -p lb-userspace --bin xlb`: the agent this bench runs.
fn build_agent() -> anyhow::Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    let status = std::process::Command::new(cargo)
        .args(["build", "--release", "--quiet", "-p", "lb-userspace", "--bin", "xlb", "--manifest-path"])
        .arg(manifest)
        .status()
        .context("running cargo build")?;
    if !status.success() {
        bail!("building the agent (cargo build --release -p lb-userspace) failed");
    }
    Ok(())
}

/// One pass; returns the agent's RSS and BPF memory after start when it ran.
fn run_pass(opts: &Options, spec: Spec, first: bool, rows: &mut Vec<Row>) -> anyhow::Result<Option<(u64, u64)>> {
    let n = spec.vips;
    let name = |what: &str| if first { what.to_owned() } else { format!("{what}-{n}") };
    // Bounds on waiting for the agent: generous, for an agent ten times slower than today's.
    let patience = Duration::from_secs(60) + Duration::from_millis(25) * n as u32;
    let mut scale = Scale::build(spec.clone());
    let spawned = scale.start_agent();
    let started = match scale.wait_started(spawned, patience) {
        Ok(done) => done,
        Err(e) => {
            let e = first_line(&e);
            rows.push(Row::new(format!("control-start-{n}"), None, "ms", start_target(n), e.clone()));
            rows.push(Row::new(format!("control-reload-all-{n}"), None, "ms", reload_all_target(n), e));
            return Ok(None);
        }
    };
    rows.push(Row::new(
        format!("control-start-{n}"),
        Some(ms(started.took)),
        "ms",
        start_target(n),
        done_note(&started, "data plane filled"),
    ));
    match scale.wait_routes(Duration::from_secs(30)) {
        Ok(_) => rows.push(Row::new(
            format!("control-routes-{n}"),
            Some(ms(spawned.elapsed())),
            "ms",
            None,
            format!("until the router's kernel routed all {n} VIPs (BGP)"),
        )),
        Err(e) => rows.push(Row::new(format!("control-routes-{n}"), None, "ms", None, first_line(&e))),
    }
    let rss_start = scale.agent_rss().unwrap_or_default();
    let bpf = scale.agent_bpf_memory();
    let bpf_total = bpf.as_ref().map(BpfMemory::total).unwrap_or_default();
    let mut idle: Vec<Duration> = (0..5).map(|_| xlb_tests::scale::status(&scale.socket()).0).collect();
    idle.sort();

    let monitors = scale.monitors(Some(Duration::from_millis(100)));
    let (reload_all, health) = if first {
        let full = scale.full_reload_with_kill(patience);
        (full.reload.clone(), Some(full))
    } else {
        let reload = scale.reload_all();
        (scale.wait_reloaded(&reload, patience), None)
    };
    match &reload_all {
        Ok(done) => rows.push(Row::new(
            format!("control-reload-all-{n}"),
            Some(ms(done.took)),
            "ms",
            reload_all_target(n),
            done_note(done, "reloaded"),
        )),
        Err(e) => {
            rows.push(Row::new(format!("control-reload-all-{n}"), None, "ms", reload_all_target(n), first_line(e)))
        }
    }
    let rss_reload = scale.agent_rss().unwrap_or_default();
    let mut ones = Vec::new();
    let mut one_error = None;
    for k in 0..opts.reload_one_runs {
        // Unchecked VIPs spread over the table.
        let vip = spec.checked_vips + (k * 7919) % (n - spec.checked_vips);
        let reload = scale.reload_one(vip);
        match scale.wait_reloaded(&reload, patience) {
            Ok(done) => ones.push(done),
            Err(e) => {
                one_error = Some(first_line(&e));
                break;
            }
        }
    }
    ones.sort_by_key(|d| d.took);
    match (ones.get(ones.len() / 2), one_error) {
        (Some(median), None) => rows.push(Row::new(
            format!("control-reload-one-{n}"),
            Some(ms(median.took)),
            "ms",
            Some(50.0),
            format!(
                "median of {}, max {:.0} ms; {}",
                ones.len(),
                ms(ones.last().map_or(Duration::ZERO, |d| d.took)),
                done_note(median, "reloaded")
            ),
        )),
        (_, error) => rows.push(Row::new(
            format!("control-reload-one-{n}"),
            None,
            "ms",
            Some(50.0),
            error.unwrap_or_else(|| "no run".into()),
        )),
    }
    let seen = monitors.finish(&scale);

    if let Some(full) = &health {
        let h = &full.health;
        let bound = ms(spec.health_bound());
        let valid = h.valid();
        rows.push(Row::new(
            name("control-health-down-ms"),
            valid.is_ok().then(|| ms(h.last_new_flow)),
            "ms",
            Some(bound),
            format!(
                "{}fall {} × interval {} ms + 100 ms (probes jitter ±10 %); {} new flows after the kill; \
                 resolution ~{:.0} ms ({:.0} new flows/s to it before); status showed it down after {}",
                match &valid {
                    Ok(()) => String::new(),
                    Err(e) => format!(
                        "NO FIGURE ({e}; the last new flow came {:.0} ms after the kill); ",
                        ms(h.last_new_flow)
                    ),
                },
                spec.fall,
                spec.check_interval.as_millis(),
                h.new_flows_after_kill,
                1000.0 / h.rate_before.max(1.0),
                h.rate_before,
                full.victim_down.as_ref().map_or_else(|e| e.clone(), |d| format!("{:.0} ms", ms(*d))),
            ),
        ));
    }
    rows.push(Row::new(
        name("control-status-worst-ms"),
        Some(ms(seen.status_worst())),
        "ms",
        Some(100.0),
        format!(
            "{} polls over {:.1} s, {} failed",
            seen.status_latencies.len(),
            seen.window.as_secs_f64(),
            seen.status_failures
        ),
    ));
    rows.push(Row::new(
        name("control-status-idle-ms"),
        Some(ms(idle[idle.len() / 2])),
        "ms",
        None,
        "median of 5 before the reloads".into(),
    ));
    let keepalive = f64::from(xlb_tests::scale::BGP_KEEPALIVE_SECS) * 1000.0;
    rows.push(Row::new(
        name("control-keepalive-gap-ms"),
        Some(ms(seen.keepalive_gap)),
        "ms",
        Some(1.1 * keepalive),
        format!(
            "at +{:.1} s; BIRD session Established throughout: {}{}; routes installed throughout: {} (fewest {} of {n}, {} polls)",
            seen.keepalive_gap_at.as_secs_f64(),
            if seen.established_throughout() { "yes" } else { "NO" },
            if seen.notifications > 0 { format!(" ({} NOTIFICATIONs)", seen.notifications) } else { String::new() },
            if seen.routes_short.is_empty() { "yes" } else { "NO" },
            seen.min_routes,
            seen.route_polls,
        ),
    ));
    rows.push(Row::new(format!("control-rss-start-{n}"), Some(mib(rss_start)), "MiB", None, "agent VmRSS".into()));
    rows.push(Row::new(
        format!("control-rss-reload-{n}"),
        Some(mib(rss_reload)),
        "MiB",
        None,
        "after the full reload".into(),
    ));
    rows.push(match &bpf {
        Ok(m) => Row::new(
            format!("control-bpf-memory-{n}"),
            Some(mib(m.total())),
            "MiB",
            None,
            format!(
                "memlock: {} maps {:.1} MiB + {} inner maps {:.1} MiB",
                m.maps,
                mib(m.bytes),
                m.inner_maps,
                mib(m.inner_bytes)
            ),
        ),
        Err(e) => Row::new(format!("control-bpf-memory-{n}"), None, "MiB", None, e.clone()),
    });
    Ok(Some((rss_start, bpf_total)))
}

/// The status-observed time with the agent's own log time beside it.
fn done_note(done: &Done, line: &str) -> String {
    let log = done
        .log_took
        .map_or_else(|| format!("no \"{line}\" log line"), |d| format!("agent log \"{line}\" at {:.0} ms", ms(d)));
    let parse = done.log_parse.map(|d| format!(" (config read {:.0} ms)", ms(d))).unwrap_or_default();
    format!("{log}{parse}; the status call that saw it took {:.0} ms", ms(done.status_call))
}

fn first_line(text: &str) -> String {
    text.lines().next().unwrap_or_default().to_owned()
}

fn print_table(rows: &[Row]) {
    println!("{:<34} {:>10} {:<4} {:>9} {:<7} note", "case", "value", "unit", "target", "verdict");
    for r in rows {
        let value = r.value.map_or_else(|| "-".to_owned(), |v| format!("{v:.1}"));
        let target = r.target.map_or_else(String::new, |t| format!("≤ {t:.0}"));
        println!("{:<34} {:>10} {:<4} {:>9} {:<7} {}", r.case, value, r.unit, target, r.verdict(), r.note);
    }
}
