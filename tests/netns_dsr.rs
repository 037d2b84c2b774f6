//! End to end through veth namespaces: client → xlb node (XDP) → three backends running real
//! TCP and UDP servers, for dsr-l2 and dsr-ipip (with `xlb decap` on the backends), IPv4 and
//! IPv6. Every request must succeed and the spread must follow the weights.

use std::time::Duration;

use xlb_tests::{
    require_root,
    topology::{Topology, assert_spread, backend_mac, backend_v4, backend_v6},
};

const REQUESTS: usize = 600;
const WEIGHTS: [u32; 3] = [1, 2, 3];
/// Absolute tolerance on each backend's share. Binomial σ at 600 requests is ≤ 0.021, and a run
/// makes 24 such checks: 0.07 (3.4σ) failed about one run in 60; 0.09 (4.4σ) about one in
/// 3000, while a wrong weight (shares 1/6, 2/6, 3/6 apart by ≥ 0.17) still fails.
const TOLERANCE: f64 = 0.09;

fn backends(v6: bool, with_mac: bool) -> String {
    (0..3)
        .map(|i| {
            let address = if v6 { backend_v6(i) } else { backend_v4(i) };
            let mac = if with_mac { format!(", mac: \"{}\"", backend_mac(i)) } else { String::new() };
            format!("      - {{ address: \"{address}\", weight: {}{mac} }}\n", WEIGHTS[i])
        })
        .collect()
}

fn vip(name: &str, address: &str, port: u16, protocol: &str, mode: &str, backends: &str) -> String {
    format!(
        "  - name: {name}\n    address: {address}\n    port: {port}\n    protocol: {protocol}\n    mode: {mode}\n    backends:\n{backends}"
    )
}

/// Drives TCP and UDP at a VIP and checks success and spread; returns the TCP answers.
fn drive(topo: &Topology, vip: &str, what: &str) {
    let (tcp, failed) = topo.tcp_requests(vip, 8080, REQUESTS);
    assert_eq!(failed, 0, "{what}: TCP requests failed; answers {tcp:?}");
    assert_spread(&tcp, &WEIGHTS, TOLERANCE, &format!("{what} TCP"));
    let (udp, failed) = topo.udp_requests(vip, 5353, REQUESTS);
    assert_eq!(failed, 0, "{what}: UDP requests failed; answers {udp:?}");
    assert_spread(&udp, &WEIGHTS, TOLERANCE, &format!("{what} UDP"));
}

#[test]
fn dsr_l2_tcp_and_udp_over_ipv4_and_ipv6() {
    require_root!();
    let (vip4, vip6) = ("10.210.100.1", "fd00:210:100::1");
    let mut topo = Topology::new(3, &[vip4, vip6]);
    let config = format!(
        "vips:\n{}{}{}{}",
        vip("web4", vip4, 8080, "tcp", "dsr-l2", &backends(false, true)),
        vip("dns4", vip4, 5353, "udp", "dsr-l2", &backends(false, true)),
        vip("web6", vip6, 8080, "tcp", "dsr-l2", &backends(true, true)),
        vip("dns6", vip6, 5353, "udp", "dsr-l2", &backends(true, true)),
    );
    let agent = topo.start_agent_with(&config, &["--detach-on-exit"]);
    topo.serve(vip4, 8080);
    topo.serve(vip4, 5353);
    topo.serve(vip6, 8080);
    topo.serve(vip6, 5353);
    drive(&topo, vip4, "dsr-l2 IPv4");
    drive(&topo, vip6, "dsr-l2 IPv6");

    // The agent counted every new flow (TCP SYNs, UDP first packets) per VIP and backend.
    let stats = topo.stats().expect("stats");
    for name in ["web4", "dns4", "web6", "dns6"] {
        let v = stats.vip(name).expect("VIP in stats");
        // One new flow per request, unless the client reused a source port (same 5-tuple).
        assert!(
            (REQUESTS as u64 * 95 / 100..=REQUESTS as u64).contains(&v.new_flows),
            "{name}: {} new flows",
            v.new_flows
        );
        assert_eq!(v.backends.iter().map(|b| b.new_flows).sum::<u64>(), v.new_flows, "{name}");
    }
    assert_eq!(stats.counters.iter().filter(|c| c.malformed || c.drop).map(|c| c.value).sum::<u64>(), 0, "no drops");

    // Reload: an invalid file keeps the running config; a valid one drops the removed VIP.
    std::fs::write(topo.config_path(), "vips:\n  - name: broken\n    address: not-an-ip\n").unwrap();
    let pid = topo.agent(agent).child.id() as i32;
    // SAFETY: kill with our own child's pid and a valid signal number.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(topo.stats().expect("still serving").vips.len(), 4, "the old config keeps serving");
    let (_, failed) = topo.tcp_requests(vip4, 8080, 20);
    assert_eq!(failed, 0, "traffic flows after a rejected reload");
    let without_dns6 = config.split("  - name: dns6").next().unwrap().to_owned();
    std::fs::write(topo.config_path(), without_dns6).unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    xlb_tests::netns::wait_for("the reload to drop dns6", Duration::from_secs(5), || {
        topo.stats().filter(|s| s.vips.len() == 3)
    });

    let status = topo.agent(agent).signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(status.success(), "xlb exits cleanly on SIGTERM: {status}");
    let link = String::from_utf8(topo.node().ip(&["link", "show", "eth0"]).stdout).unwrap();
    assert!(!link.contains("xdp"), "XDP detached on SIGTERM: {link}");
    assert!(!topo.socket().exists(), "admin socket removed on exit");
}

#[test]
fn dsr_ipip_with_decap_on_the_backends() {
    require_root!();
    let (vip4, vip6, vip4in6) = ("10.210.100.2", "fd00:210:100::2", "10.210.100.3");
    let mut topo = Topology::new(3, &[vip4, vip6, vip4in6]);
    let config = format!(
        "node:\n  tunnel_source_v4: 10.210.200.0/24\n  tunnel_source_v6: fd00:210:200::/112\nvips:\n{}{}{}{}{}{}",
        vip("web4", vip4, 8080, "tcp", "dsr-ipip", &backends(false, true)),
        vip("dns4", vip4, 5353, "udp", "dsr-ipip", &backends(false, true)),
        vip("web6", vip6, 8080, "tcp", "dsr-ipip", &backends(true, true)),
        vip("dns6", vip6, 5353, "udp", "dsr-ipip", &backends(true, true)),
        vip("web4in6", vip4in6, 8080, "tcp", "dsr-ipip", &backends(true, true)),
        vip("dns4in6", vip4in6, 5353, "udp", "dsr-ipip", &backends(true, true)),
    );
    topo.decap_on_backends();
    topo.start_agent(&config);
    for vip in [vip4, vip6, vip4in6] {
        topo.serve(vip, 8080);
        topo.serve(vip, 5353);
    }
    drive(&topo, vip4, "IPIP");
    drive(&topo, vip6, "IP6IP6");
    drive(&topo, vip4in6, "IPv4-in-IPv6");
    let stats = topo.stats().expect("stats");
    assert!(stats.counter("forwarded").unwrap() >= 6 * REQUESTS as u64 * 2);
    assert_eq!(stats.counters.iter().filter(|c| c.malformed || c.drop).map(|c| c.value).sum::<u64>(), 0, "no drops");
}
