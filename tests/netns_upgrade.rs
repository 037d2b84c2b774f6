//! Zero-loss restarts at 1 000 VIPs: one new TCP connection per request goes to a NAT VIP and to
//! a DSR VIP the whole time while the agent is killed (SIGKILL), stopped (SIGTERM) and started
//! again. Every start loads a program of its own (a new generation constant, so the verified
//! program differs from the running one) with its own program array and NAT scratch; the switch
//! is one atomic replace of the pinned link. Not one connection may fail, and not one TCP
//! segment may need a retransmission (a dropped SYN would be retried by the client's TCP and
//! hidden from a plain success count).

use std::time::{Duration, Instant};

use xlb_tests::{
    netns::{Netns, wait_for},
    require_root,
    topology::{Topology, backend_mac, backend_v4},
};

const DSR_VIP: &str = "10.210.100.1";
const NAT_VIP: &str = "10.210.100.2";
const POOL: &str = "10.210.0.50";
const SERVER_PORT: u16 = 8080;
const VIPS: usize = 1_000;
/// Requests per load at most (each load ends well before: it is stopped after the restarts).
const MAX_REQUESTS: usize = 200_000;

fn config() -> String {
    let backends = |port: bool| {
        (0..3)
            .map(|i| {
                let port = if port { format!(", port: {SERVER_PORT}") } else { String::new() };
                format!("      - {{ address: \"{}\", mac: \"{}\"{port} }}\n", backend_v4(i), backend_mac(i))
            })
            .collect::<String>()
    };
    let mut yaml = format!(
        "nat_pools:\n  - name: edge\n    addresses: [{POOL}]\n    ports: 20000-59999\nvips:\n  - name: nat\n    address: {NAT_VIP}\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: edge\n    backends:\n{}  - name: dsr\n    address: {DSR_VIP}\n    port: {SERVER_PORT}\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}",
        backends(true),
        backends(false)
    );
    // The rest of the 1 000: what makes a first pass long enough to lose packets in.
    for i in 0..VIPS - 2 {
        yaml.push_str(&format!(
            "  - name: filler{i}\n    address: 10.240.{}.{}\n    port: 443\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}",
            i / 250,
            i % 250 + 1,
            backends(false)
        ));
    }
    yaml
}

/// The client namespace's TCP retransmission counters: (segments retransmitted, SYNs
/// retransmitted).
fn retransmissions(client: &Netns) -> (u64, u64) {
    let counter = |file: &str, prefix: &str, name: &str| {
        client.net_counter(file, prefix, name).unwrap_or_else(|| panic!("no {prefix} {name} in {file}"))
    };
    (counter("/proc/net/snmp", "Tcp:", "RetransSegs"), counter("/proc/net/netstat", "TcpExt:", "TCPSynRetrans"))
}

#[test]
fn restarts_at_1000_vips_lose_no_connection() {
    require_root!();
    let mut topo = Topology::new(3, &[DSR_VIP]);
    topo.client().ip(&["route", "add", &format!("{NAT_VIP}/32"), "via", xlb_tests::topology::NODE_V4]);
    topo.node().ip(&["addr", "add", &format!("{POOL}/24"), "dev", "eth0"]);
    for be in &topo.backends {
        // Connection per request through a NAT meets TIME_WAIT on reused pool ports otherwise.
        be.sysctl(&["net.ipv4.tcp_max_tw_buckets=0"]);
    }
    topo.serve("0.0.0.0", SERVER_PORT);
    let config = config();
    let start = |topo: &mut Topology| {
        let (agent, _) = topo.spawn_agent_logged(0, &config, &[]);
        // The admin socket opens once the first pass is done and the program attached.
        wait_for("the agent's first pass", Duration::from_secs(120), || {
            if let Ok(Some(status)) = topo.agent(agent).child.try_wait() {
                let log = std::fs::read_to_string(topo.agent_log_path(0)).unwrap_or_default();
                panic!("the agent exited ({status}) before its first pass:\n{log}");
            }
            topo.stats()
        });
        agent
    };
    let mut agent = start(&mut topo);
    let (_, failed) = topo.tcp_requests(NAT_VIP, 80, 20);
    assert_eq!(failed, 0, "the NAT VIP answers before any restart");
    let before = retransmissions(topo.client());

    let nat = topo.tcp_load(NAT_VIP, 80, MAX_REQUESTS);
    let dsr = topo.tcp_load(DSR_VIP, SERVER_PORT, MAX_REQUESTS);
    let began = Instant::now();
    for (round, signal) in [libc::SIGKILL, libc::SIGTERM, libc::SIGKILL].into_iter().enumerate() {
        std::thread::sleep(Duration::from_millis(700));
        let status = topo.agent(agent).signal_and_wait(signal, Duration::from_secs(20));
        eprintln!("round {round}: agent ended by signal {signal} ({status})");
        std::thread::sleep(Duration::from_millis(300));
        agent = start(&mut topo);
    }
    std::thread::sleep(Duration::from_millis(700));
    let (nat_seen, nat_failed) = nat.finish();
    let (dsr_seen, dsr_failed) = dsr.finish();
    let ran = began.elapsed();
    let after = retransmissions(topo.client());

    let answered = |seen: &std::collections::BTreeMap<String, usize>| seen.values().sum::<usize>();
    eprintln!(
        "in {ran:?}: NAT {} answered, {nat_failed} failed {nat_seen:?}; DSR {} answered, {dsr_failed} failed {dsr_seen:?}",
        answered(&nat_seen),
        answered(&dsr_seen)
    );
    assert_eq!(nat_failed, 0, "NAT connections failed across the restarts");
    assert_eq!(dsr_failed, 0, "DSR connections failed across the restarts");
    // The loads ran through every restart, not just around them.
    assert!(
        answered(&nat_seen) >= 100 && answered(&dsr_seen) >= 100,
        "too few requests to tell: {nat_seen:?} {dsr_seen:?}"
    );
    assert_eq!(after.1 - before.1, 0, "SYNs retransmitted: some were lost across the restarts");
    assert_eq!(after.0 - before.0, 0, "TCP segments retransmitted across the restarts");

    let stats = topo.stats().expect("the last agent answers");
    assert_eq!(stats.counter("drop_nat_unavailable"), Some(0), "no packet met a NAT program of another load");
    assert_eq!(stats.counter("drop_no_backend"), Some(0));
    // One program array is left: the running load's.
    let arrays: Vec<String> = std::fs::read_dir(topo.pin_dir_of(0).join("eth0"))
        .expect("pin dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(lb_common::maps::PROGS))
        .collect();
    assert_eq!(arrays.len(), 1, "the previous loads' program arrays are retired: {arrays:?}");
}
