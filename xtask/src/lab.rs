//! `cargo xtask lab`: the lab. Builds the edge of config/lab.yaml in namespaces — two clients
//! behind a BIRD router that spreads VIP traffic over two xlb nodes by ECMP, three backends with
//! real servers and `xlb decap` — waits for both nodes' BGP announcements, drives TCP and UDP
//! through every VIP from both clients, prints what got through, on which backend and through
//! which node, and the agents' state; then tears it all down (or, with --keep, waits for Ctrl-C
//! and prints how to poke at it).

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xlb_tests::{
    bird::{Bird, Neighbor},
    http_load::{hold_connections, http_load, redis_server, tcp_load},
    topology::{ROUTER_V4, ROUTER_V6, Topology, backend_v4, node_v4, node_v6},
};

const NODES: usize = 2;
const CLIENTS: usize = 2;

#[derive(clap::Args)]
pub struct Options {
    /// Requests per VIP and client (TCP connections or UDP exchanges).
    #[arg(long, default_value_t = 150)]
    requests: usize,
    /// Leave the lab running until Ctrl-C, printing how to reach it.
    #[arg(long)]
    keep: bool,
    /// The configuration to run (its addresses must match the lab's segment).
    #[arg(long, default_value = "config/lab.yaml")]
    config: PathBuf,
    /// Show the agents' logs as they run (access log lines included), each node's full status
    /// (every VIP and backend) and BIRD's protocols; by default the lab prints a summary.
    #[arg(long, short)]
    verbose: bool,
}

pub fn run(opts: &Options) -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the lab builds network namespaces and attaches XDP: run it as root");
    }
    if opts.requests == 0 || opts.requests > 10_000 {
        bail!("--requests must be 1..=10000");
    }
    if std::env::var_os("XLB_BIN").is_none() {
        // SAFETY: single-threaded at this point; nothing else reads the environment.
        unsafe { std::env::set_var("XLB_BIN", std::env::current_exe()?.with_file_name("xlb")) };
    }
    let text = std::fs::read_to_string(&opts.config).with_context(|| format!("reading {}", opts.config.display()))?;
    let config = xlb::config::parse(&opts.config, &text)?;
    let bgp = config.bgp.as_ref().context("the lab needs a bgp: section (the router learns the VIPs from it)")?;
    let router_as = bgp.peers.first().context("bgp.peers is empty")?.remote_as;
    let addresses: Vec<String> = dedup(config.vips.iter().map(|v| v.address.to_string()));
    let vip_refs: Vec<&str> = addresses.iter().map(String::as_str).collect();

    println!(
        "== building the lab: {CLIENTS} clients → router (BIRD, ECMP) → {NODES} xlb nodes → 3 backends; VIPs {}",
        addresses.join(" ")
    );
    let mut topo = Topology::edge(NODES, CLIENTS, 3, &vip_refs);
    topo.logs_to_files = !opts.verbose;
    topo.decap_on_backends();
    // DSR backends answer on the VIP; NAT backends on their own address and port.
    let served = config.vips.iter().flat_map(|v| match v.mode {
        xlb::config::Mode::Nat => v
            .backends
            .iter()
            .map(|b| (if b.address.is_ipv4() { "0.0.0.0" } else { "::" }.to_owned(), b.port.unwrap_or(v.port)))
            .collect::<Vec<_>>(),
        _ => vec![(v.address.to_string(), v.port)],
    });
    for (address, port) in dedup(served) {
        topo.serve(&address, port);
    }
    // L7 backends answer HTTP on their own address.
    let http_ports =
        config.vips.iter().filter_map(|v| v.l7.as_ref()).flat_map(|l7| {
            l7.routes.iter().flat_map(|r| r.backends.iter().map(|b| b.address.port())).collect::<Vec<_>>()
        });
    for port in dedup(http_ports) {
        topo.serve_http("0.0.0.0", port);
    }
    // The Redis server global limits are shared through, on the backend that holds its address.
    if let Some(global) = &config.global_limits {
        let (host, _) = global.redis.rsplit_once(':').context("global_limits.redis")?;
        let backend = (0..3)
            .find(|&i| backend_v4(i) == host)
            .with_context(|| format!("global_limits.redis: {host} is none of the lab's backends"))?;
        let cmd = redis_server(&topo.backends[backend], host);
        topo.spawn(cmd, "redis-server");
    }
    let router = topo.router.as_ref().context("edge topology")?;
    let mut neighbors = Vec::new();
    for i in 0..NODES {
        let mut v4 = Neighbor::new(&format!("node{i}_v4"), ROUTER_V4, &node_v4(i), bgp.local_as);
        let mut v6 = Neighbor::new(&format!("node{i}_v6"), ROUTER_V6, &node_v6(i), bgp.local_as);
        v4.local_as = router_as;
        v6.local_as = router_as;
        neighbors.extend([v4, v6]);
    }
    let dir = Bird::temp_dir();
    let bird =
        Bird::start(router, dir.clone(), &xlb_tests::bird::config(ROUTER_V4, &neighbors, false, &Bird::log_path(&dir)));
    let start = Instant::now();
    for i in 0..NODES {
        // Same file on every node but for its BGP router id and its own NAT pool addresses
        // (which it holds on its interface, so backends resolve them to it).
        let mut node_text =
            text.replace(&format!("router_id: {}", bgp.router_id), &format!("router_id: {}", node_v4(i)));
        for pool in &config.nat_pools {
            for address in &pool.addresses {
                let own = nth_after(*address, i);
                node_text = node_text.replace(&address.to_string(), &own.to_string());
                // IPv6: deprecated (preferred_lft 0), so the node never picks a pool address
                // as the source of its own connections (its BGP session, say); it still
                // answers neighbour solicitations for it.
                let (len, v6_flags) =
                    if own.is_ipv4() { (24, &[][..]) } else { (64, &["nodad", "preferred_lft", "0"][..]) };
                let cidr = format!("{own}/{len}");
                let mut args = vec!["addr", "add", cidr.as_str(), "dev", "eth0"];
                args.extend(v6_flags);
                topo.nodes[i].ip(&args);
            }
        }
        topo.start_agent_on(i, &node_text, &[]);
    }
    let outcome = drive(&topo, &bird, &config, &addresses, start, opts);
    if !opts.verbose {
        print!("{}", logs_summary(&topo, outcome.is_err()));
    }
    outcome?;
    println!("\nlab: every request succeeded");
    Ok(())
}

/// Waits for the routes, drives traffic through every VIP and prints what happened.
fn drive(
    topo: &Topology,
    bird: &Bird,
    config: &xlb::config::Config,
    addresses: &[String],
    start: Instant,
    opts: &Options,
) -> anyhow::Result<()> {
    for address in addresses {
        wait_for_ecmp(topo, address, Duration::from_secs(20))?;
    }
    println!(
        "== BGP: every VIP routed over both nodes {:.1} s after the agents started\n",
        start.elapsed().as_secs_f64()
    );

    println!("== traffic: {} requests per VIP from each of {CLIENTS} clients\n", opts.requests);
    println!(
        "{:<12} {:<10} {:<28} {:>9}  {:>5} {:>5} {:>5}  {:>6} {:>6}   weights",
        "VIP", "mode", "endpoint", "ok", "be0", "be1", "be2", "node0", "node1"
    );
    let mut all_ok = true;
    for vip in &config.vips {
        if globally_limited(vip).is_some() || globally_concurrent(vip).is_some() {
            continue;
        }
        let address = vip.address.to_string();
        let before = node_packets(topo, &vip.name)?;
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut failed = 0;
        for c in 0..CLIENTS {
            let (answers, fails) = match vip.protocol {
                xlb::config::Protocol::Tcp if vip.mode == xlb::config::Mode::L7 => {
                    topo.http_requests_from(c, &address, vip.port, opts.requests)
                }
                xlb::config::Protocol::Tcp => topo.tcp_requests_from(c, &address, vip.port, opts.requests),
                xlb::config::Protocol::Udp => topo.udp_requests_from(c, &address, vip.port, opts.requests),
                xlb::config::Protocol::Icmp => continue,
            };
            failed += fails;
            for (k, v) in answers {
                *seen.entry(k).or_insert(0) += v;
            }
        }
        let after = node_packets(topo, &vip.name)?;
        let through: Vec<u64> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
        let ok: usize = seen.values().sum();
        all_ok &= failed == 0;
        let share =
            |i: usize| format!("{:.0}%", 100.0 * *seen.get(&format!("be{i}")).unwrap_or(&0) as f64 / ok.max(1) as f64);
        let total: u64 = through.iter().sum();
        // L7 requests are proxied by the kernel's stack, not counted by XDP.
        let node_share = |i: usize| {
            if vip.mode == xlb::config::Mode::L7 {
                "-".to_owned()
            } else {
                format!("{:.0}%", 100.0 * through[i] as f64 / total.max(1) as f64)
            }
        };
        let weights: Vec<String> = match &vip.l7 {
            Some(l7) => l7.routes.iter().flat_map(|r| r.backends.iter().map(|b| b.weight.to_string())).collect(),
            None => vip.backends.iter().map(|b| b.weight.to_string()).collect(),
        };
        println!(
            "{:<12} {:<10} {:<28} {:>9}  {:>5} {:>5} {:>5}  {:>6} {:>6}   {}",
            vip.name,
            match vip.hash {
                xlb::config::HashFields::SourceIp => format!("{}*", vip.mode),
                xlb::config::HashFields::FiveTuple => vip.mode.to_string(),
            },
            vip.endpoint(),
            format!("{ok}/{}", ok + failed),
            share(0),
            share(1),
            share(2),
            node_share(0),
            node_share(1),
            weights.join(":")
        );
    }
    println!("(* hash: source-ip — each client sticks to one backend; node shares count packets the node forwarded)");
    for vip in &config.vips {
        if let Some(threshold) = globally_limited(vip) {
            all_ok &= drive_global_limit(topo, vip, threshold)?;
        }
        if let Some(threshold) = globally_concurrent(vip) {
            all_ok &= drive_concurrent_limit(topo, vip, threshold)?;
        }
    }
    for i in 0..NODES {
        if opts.verbose {
            let status = topo.status_of(i).context("reading an agent's status")?;
            println!("\n== node {i} ({}): xlb status --vips\n{}", node_v4(i), status.render());
        } else {
            let out = topo.xlb_on(i, &["status"]);
            anyhow::ensure!(out.status.success(), "xlb status on node {i}: {}", String::from_utf8_lossy(&out.stderr));
            println!("\n== node {i} ({}): xlb status\n{}", node_v4(i), String::from_utf8_lossy(&out.stdout).trim_end());
        }
    }
    let protocols = bird.birdc(&["show", "protocols"]);
    if opts.verbose {
        println!("== router: {}", protocols.trim_end());
    } else {
        let sessions: Vec<&str> = protocols.lines().filter(|l| l.contains(" BGP ")).collect();
        let up = sessions.iter().filter(|l| l.contains("Established")).count();
        println!("\n== router (BIRD): {up} of {} BGP sessions Established", sessions.len());
    }

    if opts.keep {
        print_keep(topo);
        wait_for_signal();
    }
    if !all_ok {
        bail!("some requests failed, or a global limit did not hold (rates within ±10 %, open connections exactly)");
    }
    Ok(())
}

/// The threshold of an l7 VIP whose every route has a global rate limit (their sum), or of an
/// L4 VIP's global new-connection limit.
fn globally_limited(vip: &xlb::config::Vip) -> Option<u32> {
    if let Some(limit) = vip.connection_limit.as_ref().filter(|l| l.scope == xlb::config::Scope::Global) {
        return limit.rate;
    }
    let routes = &vip.l7.as_ref()?.routes;
    let limits: Option<Vec<u32>> = routes
        .iter()
        .map(|r| r.rate_limit.as_ref().filter(|l| l.scope == xlb::config::Scope::Global).map(|l| l.rate))
        .collect();
    limits.map(|l| l.iter().sum())
}

/// Load far above a global limit from both clients for 4 s: the answers per second over both
/// nodes (within ±10 % of the threshold) and each node's share. An L4 VIP's limit counts new
/// connections (refused ones get a RST or nothing), an l7 VIP's requests (refused: 429).
fn drive_global_limit(topo: &Topology, vip: &xlb::config::Vip, threshold: u32) -> anyhow::Result<bool> {
    const DURATION: Duration = Duration::from_secs(4);
    let what = if vip.l7.is_some() { "requests" } else { "new connections" };
    println!(
        "\n== global limit: {} ({}), {threshold} {what}/s over both nodes; {CLIENTS} clients × 4 threads for {} s",
        vip.name,
        vip.endpoint(),
        DURATION.as_secs()
    );
    let address = std::net::SocketAddr::new(vip.address, vip.port);
    let load = if vip.l7.is_some() { http_load } else { tcp_load };
    let outcome = load(&topo.clients, address, 4, DURATION, Duration::from_millis(700));
    let shares: Vec<String> = (0..NODES)
        .map(|i| {
            let view = topo.status_of(i).and_then(|s| s.node.global_limits);
            view.map_or_else(
                || "-".to_owned(),
                |v| {
                    let own = v.limits.iter().filter(|l| l.name.split(['/', '#']).next() == Some(vip.name.as_str()));
                    let shares: Vec<String> = own.map(|l| format!("{:.1}/s", l.share)).collect();
                    format!("{:?} {}", v.mode, shares.join(" "))
                },
            )
        })
        .collect();
    let ratio = outcome.ok_per_second / f64::from(threshold);
    println!(
        "admitted {:.1}/s ({:.2}× the threshold), refused {} of {} attempts; node shares: {}",
        outcome.ok_per_second,
        ratio,
        outcome.limited,
        outcome.attempts,
        shares.join(", ")
    );
    Ok((0.9..=1.1).contains(&ratio) && outcome.other == 0)
}

/// The threshold of an L4 VIP's global concurrent-connections limit.
fn globally_concurrent(vip: &xlb::config::Vip) -> Option<u32> {
    vip.connection_limit.as_ref().filter(|l| l.scope == xlb::config::Scope::Global)?.concurrent
}

/// Holds connections to a VIP with a global concurrent limit from the first client until twice
/// the threshold were asked for: how many each node holds and may hold. Holds when the places
/// over both nodes are all taken and none past them.
fn drive_concurrent_limit(topo: &Topology, vip: &xlb::config::Vip, threshold: u32) -> anyhow::Result<bool> {
    println!(
        "\n== global concurrent limit: {} ({}), {threshold} connections open at once over both nodes",
        vip.name,
        vip.endpoint()
    );
    let address = std::net::SocketAddr::new(vip.address, vip.port);
    let wanted = threshold as usize * 2;
    let held = hold_connections(&topo.clients[0], address, wanted, wanted * 20, Duration::from_secs(20));
    // The nodes count every 100 ms and report every second.
    std::thread::sleep(Duration::from_millis(1200));
    let per_node: Vec<String> = (0..NODES)
        .map(|i| {
            let status = topo.status_of(i);
            let limit = status.as_ref().and_then(|s| s.node.conn_limits.iter().find(|l| l.vip == vip.name));
            limit.and_then(|l| l.concurrent).map_or_else(|| "-".to_owned(), |c| format!("{}/{}", c.open, c.allowed))
        })
        .collect();
    println!(
        "held {} of {wanted} asked for ({} the threshold); open/allowed per node: {}",
        held.len(),
        if held.len() == threshold as usize { "exactly" } else { "NOT" },
        per_node.join(", ")
    );
    Ok(held.len() == threshold as usize)
}

/// Packets each node forwarded for VIP `name` so far.
fn node_packets(topo: &Topology, name: &str) -> anyhow::Result<Vec<u64>> {
    (0..NODES)
        .map(|i| {
            let stats = topo.stats_of(i).context("reading an agent's counters")?;
            Ok(stats.vip(name).map_or(0, |v| v.packets))
        })
        .collect()
}

/// Waits until the router's kernel routes `address` over every node.
fn wait_for_ecmp(topo: &Topology, address: &str, timeout: Duration) -> anyhow::Result<()> {
    let want: BTreeSet<String> =
        (0..NODES).map(|i| if address.contains(':') { node_v6(i) } else { node_v4(i) }).collect();
    let deadline = Instant::now() + timeout;
    loop {
        let have = topo.router_nexthops(address);
        if have == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the router has no ECMP route for {address} over both nodes after {timeout:?}: via {have:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The agents' and decaps' logs in a few lines: their size, warnings and errors (the errors
/// themselves, a few each); after a failure, the last lines of each agent's log.
fn logs_summary(topo: &Topology, failed: bool) -> String {
    let mut out = String::from("\n== logs (run with --verbose to see them as they come)\n");
    let logs = (0..NODES)
        .map(|i| (format!("node {i} agent"), topo.agent_log_path(i)))
        .chain((0..topo.backends.len()).map(|i| (format!("be{i} decap"), topo.decap_log_path(i))));
    for (what, path) in logs {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let errors: Vec<&str> = lines.iter().copied().filter(|l| l.contains(" ERROR ")).collect();
        let warnings = lines.iter().filter(|l| l.contains(" WARN ")).count();
        out.push_str(&format!("{what}: {} lines, {warnings} warnings, {} errors\n", lines.len(), errors.len()));
        for line in errors.iter().take(5) {
            out.push_str(&format!("  {line}\n"));
        }
        if failed && what.ends_with("agent") {
            out.push_str("  last lines:\n");
            for line in &lines[lines.len().saturating_sub(20)..] {
                out.push_str(&format!("  {line}\n"));
            }
        }
    }
    out
}

fn print_keep(topo: &Topology) {
    let xlb = std::env::var("XLB_BIN").unwrap_or_else(|_| "xlb".into());
    println!(
        "The lab is up. In another shell:
  ip netns exec {cl} curl -s http://10.210.100.1:8080/ ; echo     # answers with the backend's name
  ip -n {rt} route show 10.210.100.1                                  # the router's ECMP route over both nodes
  {xlb} status --admin-socket {sock}                                  # node 0: VIPs, backends, BGP peers
  {xlb} drain node --admin-socket {sock}                              # withdraw node 0 (--undo to return)
  ip -n {lb} link show eth0                                           # the attached XDP program
  tail -f {log}                                                       # node 0's agent log (without --verbose)
Press Ctrl-C here to tear it down.",
        cl = topo.client().name,
        rt = topo.router.as_ref().map_or("", |r| r.name.as_str()),
        lb = topo.node().name,
        sock = topo.socket().display(),
        log = topo.agent_log_path(0).display(),
    );
}

/// Blocks until SIGINT or SIGTERM (then the caller's destructors tear the lab down).
fn wait_for_signal() {
    // SAFETY: plain libc signal-mask calls on a local, initialised set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        let mut signal = 0;
        libc::sigwait(&set, &mut signal);
    }
}

/// The address `n` after `address` (the lab's per-node NAT pool addresses).
fn nth_after(address: std::net::IpAddr, n: usize) -> std::net::IpAddr {
    match address {
        std::net::IpAddr::V4(a) => std::net::Ipv4Addr::from(u32::from(a) + n as u32).into(),
        std::net::IpAddr::V6(a) => std::net::Ipv6Addr::from(u128::from(a) + n as u128).into(),
    }
}

fn dedup<T: Ord + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let set: BTreeMap<T, ()> = items.map(|i| (i, ())).collect();
    set.into_keys().collect()
}
