//! `cargo xtask lab`: the lab. Builds the edge of config/lab.yaml in namespaces (client, this
//! xlb node, three backends with real servers and `xlb decap`), drives TCP and UDP through every
//! VIP, prints what got through and where, and the agent's counters; then tears it all down
//! (or, with --keep, waits for Ctrl-C and prints how to poke at it).

use std::{collections::BTreeMap, path::PathBuf};

use anyhow::{Context as _, bail};
use xlb_tests::topology::Topology;

#[derive(clap::Args)]
pub struct Options {
    /// Requests per VIP (TCP connections or UDP exchanges).
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Leave the lab running until Ctrl-C, printing how to reach it.
    #[arg(long)]
    keep: bool,
    /// The configuration to run (its addresses must match the lab's segment).
    #[arg(long, default_value = "config/lab.yaml")]
    config: PathBuf,
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
    let addresses: Vec<String> = dedup(config.vips.iter().map(|v| v.address.to_string()));
    let vip_refs: Vec<&str> = addresses.iter().map(String::as_str).collect();

    println!("== building the lab: client, xlb node, 3 backends on one segment; VIPs {}", addresses.join(" "));
    let mut topo = Topology::new(3, &vip_refs);
    topo.decap_on_backends();
    topo.start_agent(&text);
    for (address, port) in dedup(config.vips.iter().map(|v| (v.address.to_string(), v.port))) {
        topo.serve(&address, port);
    }

    println!("== traffic: {} requests per VIP\n", opts.requests);
    println!(
        "{:<12} {:<9} {:<24} {:>9}  {:>6} {:>6} {:>6}   weights",
        "VIP", "mode", "endpoint", "ok", "be0", "be1", "be2"
    );
    let mut all_ok = true;
    for vip in &config.vips {
        let address = vip.address.to_string();
        let (seen, failed) = match vip.protocol {
            xlb::config::Protocol::Tcp => topo.tcp_requests(&address, vip.port, opts.requests),
            xlb::config::Protocol::Udp => topo.udp_requests(&address, vip.port, opts.requests),
            xlb::config::Protocol::Icmp => continue,
        };
        let ok: usize = seen.values().sum();
        all_ok &= failed == 0;
        let share =
            |i: usize| format!("{:.0}%", 100.0 * *seen.get(&format!("be{i}")).unwrap_or(&0) as f64 / ok.max(1) as f64);
        let weights: Vec<String> = vip.backends.iter().map(|b| b.weight.to_string()).collect();
        println!(
            "{:<12} {:<9} {:<24} {:>9}  {:>6} {:>6} {:>6}   {}",
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
            weights.join(":")
        );
    }
    println!("(* hash: source-ip — one client, so one backend)");
    let stats = topo.stats().context("reading the agent's counters")?;
    println!("\n== xlb stats (the XDP program's counters on the node)\n{}", stats.render());

    if opts.keep {
        print_keep(&topo);
        wait_for_signal();
    }
    if !all_ok {
        bail!("some requests failed");
    }
    println!("lab: every request succeeded");
    Ok(())
}

fn print_keep(topo: &Topology) {
    let xlb = std::env::var("XLB_BIN").unwrap_or_else(|_| "xlb".into());
    println!(
        "The lab is up. In another shell:
  ip netns exec {cl} curl -s http://10.210.100.1:8080/ ; echo     # answers with the backend's name
  {xlb} stats --admin-socket {sock}
  ip -n {lb} link show eth0                                            # the attached XDP program
  ip netns exec {be0} ip -s link show eth0                            # a backend (xlb decap attached)
Press Ctrl-C here to tear it down.",
        cl = topo.client().name,
        lb = topo.node().name,
        be0 = topo.backends[0].name,
        sock = topo.socket().display(),
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

fn dedup<T: Ord + Clone>(items: impl Iterator<Item = T>) -> Vec<T> {
    let set: BTreeMap<T, ()> = items.map(|i| (i, ())).collect();
    set.into_keys().collect()
}
