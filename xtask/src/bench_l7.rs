//! `cargo xtask bench-l7`: xlb's L7 tier against nginx as a reverse proxy, in the same topology
//! and with the same functions on: a client namespace runs the load (wrk, h2load), the node runs
//! the agent (l7 VIPs, plain and TLS) and nginx (on the node's own address), two backends run
//! nginx as the origin. Per case, bounded runs interleaved; prints requests/s, p99, the proxy's
//! CPU seconds per 10 000 requests and the ratios xlb / nginx.

use std::{process::Command, time::Duration};

use anyhow::{Context as _, bail};
use xlb_tests::{
    netns::{Netns, Process, self_signed_certificate, wait_for},
    topology::{NODE_V4, Topology, backend_v4},
};

use crate::bench_l7_load::{self as load, Load, Nginx, Run, Tool};

const VIP: &str = "10.210.100.1";
const ORIGIN_PORT: u16 = 8080;
const NGINX_PORT: u16 = 8081;
const NGINX_TLS_PORT: u16 = 8443;
/// The large response's size.
const LARGE: usize = 64 * 1024;
/// What each proxy has on while measured (function is not bought off).
const FUNCTIONS: &str = "both proxies: access log of every request (xlb: JSON lines, nginx: combined, buffer=64k), \
retries on another backend (xlb: retries 2, nginx: proxy_next_upstream error timeout, 3 tries), a rate limit far above \
the load (1 000 000/s); xlb's metrics";

#[derive(clap::Args)]
pub struct Options {
    /// Seconds per load run (1..=60).
    #[arg(long, default_value_t = 8)]
    duration: u64,
    /// Open connections (1..=1000).
    #[arg(long, default_value_t = 64)]
    connections: u32,
    /// Load tool threads (1..=8).
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Runs per proxy and case, interleaved (1..=10); with 3, a p99 median moved by ±0.05
    /// between invocations.
    #[arg(long, default_value_t = 5)]
    runs: u32,
    /// Only these cases (comma-separated: keep-alive, new-conn, tls, h2, 64KiB).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
}

/// One line of the table: how the client loads both proxies.
struct Case {
    name: &'static str,
    tool: Tool,
    tls: bool,
    path: &'static str,
}

const CASES: [Case; 5] = [
    Case { name: "keep-alive", tool: Tool::Wrk, tls: false, path: "/" },
    Case { name: "new-conn", tool: Tool::WrkClose, tls: false, path: "/" },
    Case { name: "tls", tool: Tool::Wrk, tls: true, path: "/" },
    Case { name: "h2", tool: Tool::H2load, tls: true, path: "/" },
    Case { name: "64KiB", tool: Tool::Wrk, tls: false, path: "/64k" },
];

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
    if let Some(unknown) = opts.only.iter().find(|o| !CASES.iter().any(|c| c.name == o.as_str())) {
        bail!("--only {unknown}: no such case; the cases are keep-alive, new-conn, tls, h2, 64KiB");
    }
    for tool in ["wrk", "h2load", "nginx", "openssl"] {
        let found = Command::new("sh").args(["-c", &format!("command -v {tool}")]).output()?;
        if !found.status.success() {
            bail!("{tool} is not installed (scripts/setup.sh installs wrk, nghttp2-client, nginx-light and openssl)");
        }
    }
    if std::env::var_os("XLB_BIN").is_none() {
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::set_var("XLB_BIN", std::env::current_exe()?.with_file_name("xlb")) };
    }
    let mut topo = Topology::new(2, &[VIP]);
    // Both proxies' p99 in the 64KiB case was a chain of TCP retransmission timeouts
    // (300-700 ms), not a measure of either proxy, while a veth's 256-frame XDP ring overflowed
    // (~900 frames dropped per 10 000 requests). The node forwards nothing with XDP_TX here (l7
    // VIPs only), so the switch side of its veth needs no XDP program, and one queue per CPU on
    // the node's veth gives the frames into its XDP one ring per queue: no drops since. Nothing
    // forwards the node's own packets through XDP either, so it sends as a host's NIC lets it:
    // checksums and segmentation offloaded (a 64 KiB response leaves in a few large segments
    // instead of 45 frames built and bridged one by one: both proxies' CPU per request halved).
    topo.detach_switch_xdp();
    topo.spread_node_queues(0);
    topo.offload_node_tx(0);
    // Loads above the proxies' idle backend connections (h2: 640 requests at once) open and close
    // a backend connection per request; the TIME_WAIT ports they leave behind make every later
    // connect() search the port range (76 % of either proxy's CPU in the second h2 run). The
    // usual proxy host setting, for both proxies alike:
    for ns in [topo.node(), topo.client()] {
        let out = ns
            .command("sysctl")
            .args(["-qw", "net.ipv4.tcp_tw_reuse=1", "net.ipv4.ip_local_port_range=1024 65000"])
            .output()?;
        if !out.status.success() {
            bail!("sysctl in {}: {}", ns.name, String::from_utf8_lossy(&out.stderr));
        }
    }
    let (cert, key) = self_signed_certificate(&topo.dir, "bench.test");
    // Dropped before the topology (declared after it): every nginx stopped, then the agent.
    let mut origins: Vec<Nginx> = Vec::new();
    for (i, ns) in topo.backends.iter().enumerate() {
        let dir = topo.dir.join(format!("origin{i}"));
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("64k"), large_body())?;
        let server = format!(
            "server {{ listen {}:{ORIGIN_PORT} reuseport; access_log off; root {};\n    location = / {{ return 200 \"be{i}\\n\"; }} }}",
            backend_v4(i),
            dir.display()
        );
        origins.push(Nginx::start(ns, &nginx_conf(&dir, &server)?, &format!("origin nginx on be{i}"))?);
    }
    let proxy_dir = topo.dir.join("proxy");
    std::fs::create_dir_all(&proxy_dir)?;
    let proxy =
        Nginx::start(topo.node(), &nginx_conf(&proxy_dir, &nginx_proxy(&proxy_dir, &cert, &key))?, "proxy nginx")?;

    let agent_log = topo.dir.join("agent.log");
    let mut cmd = topo.agent_command(0, &xlb_config(&cert, &key), &["--log-format", "json"]);
    cmd.env("XLB_LOG", "info").stderr(std::fs::File::create(&agent_log)?);
    let agent = Process::spawn(cmd, "xlb run");
    wait_for("the agent's admin socket", Duration::from_secs(10), || topo.stats());

    let url = |xlb: bool, case: &Case| match (xlb, case.tls) {
        (true, false) => format!("http://{VIP}{}", case.path),
        (true, true) => format!("https://{VIP}{}", case.path),
        (false, false) => format!("http://{NODE_V4}:{NGINX_PORT}{}", case.path),
        (false, true) => format!("https://{NODE_V4}:{NGINX_TLS_PORT}{}", case.path),
    };
    let cases: Vec<&Case> =
        CASES.iter().filter(|c| opts.only.is_empty() || opts.only.iter().any(|o| o == c.name)).collect();
    // Every URL answers what it should before anything is measured.
    for case in &cases {
        for xlb in [true, false] {
            check_answer(topo.client(), &url(xlb, case), case.path)?;
        }
    }
    let tls = [
        tls_session(topo.client(), &format!("{VIP}:443"))?,
        tls_session(topo.client(), &format!("{NODE_V4}:{NGINX_TLS_PORT}"))?,
    ];
    println!(
        "== L7 bench: {} connections, {} load threads, {} s per run, {} interleaved runs per proxy and case; origin: nginx on 2 backends; the node has {} CPUs (load, proxies and origins share them)",
        opts.connections,
        opts.threads,
        opts.duration,
        opts.runs,
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("   {FUNCTIONS}");
    println!(
        "   node and client: net.ipv4.tcp_tw_reuse=1, ip_local_port_range 1024-65000; node's veth: one queue per CPU, transmit offloads on, no XDP on its switch side"
    );
    println!("   TLS: xlb {}; nginx {}", tls[0], tls[1]);
    let load = Load { seconds: opts.duration, connections: opts.connections, threads: opts.threads };
    let xlb_pid = [agent.child.id()];
    let nginx_pid = [proxy.pid()];
    let lab: Vec<&Netns> = [topo.switch(), topo.node(), topo.client()].into_iter().chain(&topo.backends).collect();
    let mut table = Vec::new();
    for case in &cases {
        let (mut xlb_runs, mut nginx_runs) = (Vec::new(), Vec::new());
        for _ in 0..opts.runs {
            xlb_runs.push(load::run(topo.client(), case.tool, load, &url(true, case), &xlb_pid, &lab, &topo.dir)?);
            nginx_runs.push(load::run(topo.client(), case.tool, load, &url(false, case), &nginx_pid, &lab, &topo.dir)?);
        }
        table.push((case.name, xlb_runs, nginx_runs));
    }
    print_table(&table);
    let logged = std::fs::read_to_string(&agent_log).unwrap_or_default().matches("\"target\":\"xlb::access\"").count();
    println!("(the agent's access log holds {logged} request lines)");
    drop(agent);
    drop(proxy);
    drop(origins);
    Ok(())
}

fn print_table(table: &[(&str, Vec<Run>, Vec<Run>)]) {
    let median = |runs: &[Run], f: &dyn Fn(&Run) -> f64| {
        let mut v: Vec<f64> = runs.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let per_10k = |count: fn(&Run) -> u64| {
        move |r: &Run| if r.requests == 0 { f64::NAN } else { count(r) as f64 * 10_000.0 / r.requests as f64 }
    };
    let dropped = per_10k(|r| r.lost.frames_dropped);
    let retransmitted = per_10k(|r| r.lost.segments_retransmitted);
    println!(
        "\n{:<11} {:<12} {:>11} {:>8} {:>8} {:>14} {:>7} {:>11} {:>11}",
        "case", "proxy", "requests/s", "p50 ms", "p99 ms", "CPU s/10k req", "errors", "drops/10k", "retrans/10k"
    );
    for (name, xlb, nginx) in table {
        for (proxy, runs) in [("xlb l7", xlb), ("nginx", nginx)] {
            let errors: u64 = runs.iter().map(|r| r.errors).sum();
            println!(
                "{:<11} {proxy:<12} {:>11.0} {:>8.2} {:>8.2} {:>14.3} {errors:>7} {:>11.1} {:>11.1}",
                if proxy == "xlb l7" { name } else { "" },
                median(runs, &|r| r.rps),
                median(runs, &|r| r.p50_ms),
                median(runs, &|r| r.p99_ms),
                median(runs, &Run::cpu_per_10k),
                median(runs, &dropped),
                median(runs, &retransmitted)
            );
        }
        let ratio = |f: fn(&Run) -> f64| median(xlb, &f) / median(nginx, &f);
        println!(
            "{:<11} {:<12} {:>11.2} {:>8.2} {:>8.2} {:>14.2}",
            "",
            "xlb / nginx",
            ratio(|r| r.rps),
            ratio(|r| r.p50_ms),
            ratio(|r| r.p99_ms),
            ratio(Run::cpu_per_10k)
        );
    }
    println!("(medians; requests/s: higher is better; latency and CPU per request: lower is better;");
    println!(" drops: frames the lab's veths dropped, retrans: TCP segments sent again, in all namespaces)");
}

/// A 64 KiB body whose bytes say where they are (a truncated or shifted copy shows).
fn large_body() -> Vec<u8> {
    (0..LARGE).map(|i| b"0123456789abcdef"[(i / 64) % 16]).collect()
}

/// The URL answers 200 with the origin's body (`be…` or the large body, byte for byte).
fn check_answer(client: &Netns, url: &str, path: &str) -> anyhow::Result<()> {
    let out = client.command("curl").args(["-sSk", "--max-time", "5", "--fail", url]).output()?;
    if !out.status.success() {
        bail!("{url} does not answer: {}", String::from_utf8_lossy(&out.stderr));
    }
    let good = if path == "/64k" { out.stdout == large_body() } else { out.stdout.starts_with(b"be") };
    if !good {
        bail!("{url} answers something else than the origin ({} bytes)", out.stdout.len());
    }
    Ok(())
}

/// The protocol, cipher and key exchange `endpoint` negotiates with OpenSSL's client.
fn tls_session(client: &Netns, endpoint: &str) -> anyhow::Result<String> {
    let out = client
        .command("timeout")
        .args(["5", "openssl", "s_client", "-connect", endpoint, "-alpn", "h2,http/1.1"])
        .stdin(std::process::Stdio::null())
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let cipher = text.lines().find_map(|l| l.trim().strip_prefix("New, ")).map(str::to_owned);
    let key = text.lines().find_map(|l| l.trim().strip_prefix("Server Temp Key: ")).unwrap_or("?");
    let cipher = cipher.with_context(|| format!("no TLS session with {endpoint}: {text}"))?;
    Ok(format!("{cipher}, {key}"))
}

fn xlb_config(cert: &std::path::Path, key: &std::path::Path) -> String {
    let backends: Vec<String> =
        (0..2).map(|i| format!("{{ address: {}, port: {ORIGIN_PORT} }}", backend_v4(i))).collect();
    let route = format!(
        "      retries: 2\n      routes:\n        - {{ name: all, path_prefix: /, rate_limit: {{ requests_per_second: 1000000, burst: 1000000 }}, backends: [{}] }}\n",
        backends.join(", ")
    );
    let vip = |name: &str, port: u16, tls: String| {
        format!(
            "  - name: {name}\n    address: {VIP}\n    port: {port}\n    protocol: tcp\n    mode: l7\n    l7:\n{tls}{route}"
        )
    };
    let tls = format!("      tls: {{ cert: {}, key: {} }}\n", cert.display(), key.display());
    format!("vips:\n{}{}", vip("web", 80, String::new()), vip("web-tls", 443, tls))
}

fn nginx_proxy(dir: &std::path::Path, cert: &std::path::Path, key: &std::path::Path) -> String {
    let upstreams: String = (0..2).map(|i| format!("server {}:{ORIGIN_PORT};", backend_v4(i))).collect();
    format!(
        "access_log {d}/access.log combined buffer=64k flush=1s;
  limit_req_zone $server_name zone=all:1m rate=1000000r/s;
  upstream origin {{ {upstreams} keepalive 64; }}
  server {{
    listen {NODE_V4}:{NGINX_PORT}; listen {NODE_V4}:{NGINX_TLS_PORT} ssl http2;
    ssl_certificate {cert}; ssl_certificate_key {key}; ssl_protocols TLSv1.2 TLSv1.3;
    location / {{
      limit_req zone=all burst=1000000 nodelay;
      proxy_pass http://origin; proxy_http_version 1.1; proxy_set_header Connection \"\";
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for; proxy_set_header X-Forwarded-Proto $scheme;
      proxy_next_upstream error timeout; proxy_next_upstream_tries 3;
    }}
  }}",
        d = dir.display(),
        cert = cert.display(),
        key = key.display()
    )
}

fn nginx_conf(dir: &std::path::Path, http: &str) -> anyhow::Result<std::path::PathBuf> {
    let d = dir.display();
    let text = format!(
        "worker_processes 2;\npid {d}/nginx.pid;\nerror_log {d}/error.log warn;\nevents {{ worker_connections 4096; }}\nhttp {{\n  client_body_temp_path {d}; proxy_temp_path {d}; fastcgi_temp_path {d}; uwsgi_temp_path {d}; scgi_temp_path {d};\n  keepalive_requests 100000;\n  {http}\n}}\n"
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, text)?;
    Ok(path)
}
