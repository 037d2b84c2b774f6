//! `cargo xtask bench-l7`: requests/s and p99 through xlb's L7 tier against nginx as a reverse
//! proxy, in the same topology: a client namespace runs wrk, the node runs the agent (an l7
//! VIP) and nginx (on the node's own address), two backends run nginx as the origin. Bounded
//! wrk runs, interleaved; prints a table with the ratio xlb / nginx.

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xlb_tests::{
    netns::{Netns, Process, wait_for, xlb_bin},
    topology::{NODE_V4, Topology, backend_v4},
};

const VIP: &str = "10.210.100.1";
const ORIGIN_PORT: u16 = 8080;
const NGINX_PROXY_PORT: u16 = 8081;

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per wrk run (1..=60).
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Open connections (1..=1000).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// wrk threads (1..=8).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Runs per proxy, interleaved (1..=10).
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

/// One wrk run's results.
#[derive(Debug, Clone, Copy)]
struct Run {
    rps: f64,
    p99_ms: f64,
    errors: u64,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the L7 bench builds network namespaces: run it as root");
    }
    if !(1..=60).contains(&opts.duration)
        || !(1..=1000).contains(&opts.connections)
        || !(1..=8).contains(&opts.threads)
        || !(1..=10).contains(&opts.runs)
    {
        bail!("--duration 1..=60, --connections 1..=1000, --threads 1..=8, --runs 1..=10");
    }
    for tool in ["wrk", "nginx"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).stdout(Stdio::null()).status()?;
        if !found.success() {
            bail!("{tool} is not installed (scripts/setup.sh installs wrk and nginx-light)");
        }
    }
    if std::env::var_os("XLB_BIN").is_none() {
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::set_var("XLB_BIN", std::env::current_exe()?.with_file_name("xlb")) };
    }
    let topo = Topology::new(2, &[VIP]);
    // Dropped before the topology (declared after it): every nginx stopped, then the agent.
    let mut processes: Vec<Nginx> = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        let conf = nginx_conf(
            &topo,
            &format!("origin{i}"),
            &format!(
                "server {{ listen {}:{ORIGIN_PORT} reuseport; access_log off; location / {{ return 200 \"be{i}\\n\"; }} }}",
                backend_v4(i)
            ),
        )?;
        processes.push(nginx(ns, &conf, &format!("origin nginx on be{i}"))?);
    }
    let upstreams: String =
        (0..topo.backends.len()).map(|i| format!("server {}:{ORIGIN_PORT};", backend_v4(i))).collect();
    let conf = nginx_conf(
        &topo,
        "proxy",
        &format!(
            "upstream origin {{ {upstreams} keepalive 64; }}\n  server {{ listen {NODE_V4}:{NGINX_PROXY_PORT}; access_log off;\n    location / {{ proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; }} }}"
        ),
    )?;
    processes.push(nginx(topo.node(), &conf, "proxy nginx on the node")?);

    let backends: Vec<String> =
        (0..topo.backends.len()).map(|i| format!("{{ address: {}, port: {ORIGIN_PORT} }}", backend_v4(i))).collect();
    let config = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        - {{ path_prefix: /, backends: [{}] }}\n",
        backends.join(", ")
    );
    std::fs::write(topo.config_path(), config)?;
    let mut cmd = topo.node().command_keep_mounts(xlb_bin().to_str().context("utf-8 path")?);
    cmd.args(["run", "--iface", "eth0", "--config"])
        .arg(topo.config_path())
        .arg("--admin-socket")
        .arg(topo.socket())
        .arg("--pin-dir")
        .arg(topo.pin_dir_of(0))
        .env("XLB_LOG", "warn");
    let agent = Process::spawn(cmd, "xlb run");
    wait_for("the agent's admin socket", Duration::from_secs(10), || topo.stats());

    let xlb_url = format!("http://{VIP}/");
    let nginx_url = format!("http://{NODE_V4}:{NGINX_PROXY_PORT}/");
    // Both answer before measuring.
    for url in [&xlb_url, &nginx_url] {
        let out = topo.client().command("curl").args(["-sS", "--max-time", "5", url]).output()?;
        if !out.status.success() || !String::from_utf8_lossy(&out.stdout).starts_with("be") {
            bail!("{url} does not answer: {}", String::from_utf8_lossy(&out.stderr));
        }
    }
    println!(
        "== L7 bench: wrk -t{} -c{} -d{}s, {} interleaved runs each; origin: nginx on 2 backends; the node has {} CPUs",
        opts.threads,
        opts.connections,
        opts.duration,
        opts.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    let (mut xlb_runs, mut nginx_runs) = (Vec::new(), Vec::new());
    for _ in 0..opts.runs {
        xlb_runs.push(wrk(topo.client(), opts, &xlb_url)?);
        nginx_runs.push(wrk(topo.client(), opts, &nginx_url)?);
    }
    let median = |runs: &[Run], f: fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let row = |name: &str, runs: &[Run]| {
        let errors: u64 = runs.iter().map(|r| r.errors).sum();
        println!("{name:<22} {:>12.0} {:>10.2} {:>8}", median(runs, |r| r.rps), median(runs, |r| r.p99_ms), errors);
    };
    println!("\n{:<22} {:>12} {:>10} {:>8}", "proxy", "requests/s", "p99 ms", "errors");
    row("xlb l7", &xlb_runs);
    row("nginx reverse proxy", &nginx_runs);
    println!(
        "{:<22} {:>12.2} {:>10.2}",
        "ratio xlb / nginx",
        median(&xlb_runs, |r| r.rps) / median(&nginx_runs, |r| r.rps),
        median(&xlb_runs, |r| r.p99_ms) / median(&nginx_runs, |r| r.p99_ms)
    );
    println!("(medians; requests/s: higher is better, p99: lower is better)");
    drop(agent);
    drop(processes);
    Ok(())
}

/// An nginx master whose drop stops it with SIGTERM, so that it takes its workers along (the
/// SIGKILL of `Process`'s drop would leave them running without it).
struct Nginx(Process);

impl Drop for Nginx {
    fn drop(&mut self) {
        if !matches!(self.0.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill with our own child's pid (`ip netns exec` execs nginx) and a valid signal.
        unsafe { libc::kill(self.0.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn nginx_conf(topo: &Topology, name: &str, http: &str) -> anyhow::Result<std::path::PathBuf> {
    let dir = topo.dir.join(name);
    std::fs::create_dir_all(&dir)?;
    let d = dir.display();
    let text = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  keepalive_requests 100000;\n  {http}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}

fn nginx(ns: &Netns, conf: &std::path::Path, what: &str) -> anyhow::Result<Nginx> {
    let mut cmd = ns.command("nginx");
    cmd.arg("-c").arg(conf).args(["-g", "daemon off;"]).stdout(Stdio::null());
    let mut nginx = Nginx(Process::spawn(cmd, what));
    std::thread::sleep(Duration::from_millis(300));
    if let Some(status) = nginx.0.child.try_wait()? {
        bail!("{what} exited at start ({status}); see {}", conf.with_file_name("error.log").display());
    }
    Ok(nginx)
}

fn wrk(client: &Netns, opts: &Options, url: &str) -> anyhow::Result<Run> {
    let out = client
        .command("timeout")
        .arg((opts.duration + 30).to_string())
        .args(["wrk", &format!("-t{}", opts.threads), &format!("-c{}", opts.connections)])
        .args([&format!("-d{}s", opts.duration), "--latency", url])
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("wrk {url} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    parse_wrk(&text).with_context(|| format!("reading wrk's output:\n{text}"))
}

/// Requests/sec, the 99% latency and the error count from wrk's text.
fn parse_wrk(text: &str) -> Option<Run> {
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let p99 = text.lines().find_map(|l| l.trim().strip_prefix("99%"))?.trim();
    let p99_ms = if let Some(us) = p99.strip_suffix("us") {
        us.parse::<f64>().ok()? / 1000.0
    } else if let Some(ms) = p99.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        p99.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0
    };
    let mut errors = 0;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.trim().strip_prefix("Socket errors:") {
            errors += rest.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    Some(Run { rps, p99_ms, errors })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 2s test @ http://x/\n  2 threads and 8 connections\n  Latency Distribution\n     50%  300.00us\n     99%    2.50ms\n  4000 requests in 2.00s, 1MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 3\nRequests/sec:   2000.50\nTransfer/sec:    100KB\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!((run.rps, run.p99_ms, run.errors), (2000.5, 2.5, 6));
        assert_eq!(parse_wrk("     99%  1.20s\nRequests/sec: 1\n").unwrap().p99_ms, 1200.0);
        assert!(parse_wrk("nothing").is_none());
    }
}
