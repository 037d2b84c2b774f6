//! Lifecycle safety end to end: the agent notices XDP leaving its interface (withdraws, then
//! re-attaches, unless the operator detached through `xlb detach`), keeps its backends' states
//! through its own descriptor exhaustion, and spreads new flows over every backend when too
//! few are healthy (panic threshold).

use std::{
    collections::BTreeSet,
    io::{Read as _, Write as _},
    time::{Duration, Instant},
};

use xlb::serve::admin::{AttachmentStatus, Status};
use xlb_tests::{
    netns::wait_for,
    require_root,
    topology::{FAR_V4, NODE_V4, ROUTER_V4, Topology, backend_mac, backend_v4, node_v4},
};

const VIP: &str = "10.210.100.1";
const METRICS: &str = "127.0.0.1:9842";

fn backends(count: usize) -> String {
    (0..count).map(|i| format!("      - {{ address: \"{}\", mac: \"{}\" }}\n", backend_v4(i), backend_mac(i))).collect()
}

/// `GET /metrics` from inside the node namespace; `None` if it does not answer in time.
fn metrics(topo: &Topology) -> Option<String> {
    http_get(topo, "/metrics")
}

/// `GET path` on the metrics listener from inside the node namespace: the whole reply.
fn http_get(topo: &Topology, path: &str) -> Option<String> {
    let request = format!("GET {path} HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n");
    topo.node()
        .run(move || {
            let mut conn = std::net::TcpStream::connect(METRICS).ok()?;
            conn.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
            conn.write_all(request.as_bytes()).ok()?;
            let mut text = String::new();
            conn.read_to_string(&mut text).ok()?;
            Some(text)
        })
        .join()
        .expect("metrics thread")
}

fn has_line(text: &str, line: &str) -> bool {
    text.lines().any(|l| l == line)
}

fn eth0(status: &Status) -> AttachmentStatus {
    status.node.interfaces.iter().find(|a| a.iface == "eth0").cloned().expect("eth0 in status")
}

/// BIRD on the edge topology's router, peering with node 0.
fn router_bird(topo: &Topology) -> xlb_tests::bird::Bird {
    use xlb_tests::bird::{Bird, Neighbor, config};
    let neighbors = [Neighbor::new("node0", ROUTER_V4, &node_v4(0), 65001)];
    let dir = Bird::temp_dir();
    Bird::start(
        topo.router.as_ref().unwrap(),
        dir.clone(),
        &config(ROUTER_V4, &neighbors, false, &Bird::log_path(&dir)),
    )
}

fn nexthops(topo: &Topology) -> BTreeSet<String> {
    topo.router_nexthops(VIP)
}

#[test]
fn lost_xdp_withdraws_and_reattaches_but_xlb_detach_is_for_good() {
    require_root!();
    let mut topo = Topology::edge(1, 1, 2, &[VIP]);
    topo.serve(VIP, 8080);
    let _bird = router_bird(&topo);
    let config = format!(
        "bgp:\n  local_as: 65001\n  router_id: {NODE_V4}\n  withdraw_grace: 1s\n  peers:\n    - {{ address: {ROUTER_V4}, remote_as: 65000 }}\nvips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}",
        backends(2)
    );
    topo.start_agent_with(&config, &["--metrics-listen", METRICS]);
    let announced = BTreeSet::from([node_v4(0)]);
    wait_for("the VIP announced", Duration::from_secs(15), || (nexthops(&topo) == announced).then_some(()));
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 50);
    assert_eq!(failed, 0, "{seen:?}");
    let pin = topo.pin_dir_of(0).join("eth0").join("link");
    // Renders are reused for a second: give the scrape that long to catch up.
    let metric = |value: u8| {
        let mode = if value == 1 { "native" } else { "none" };
        let line = format!("xlb_xdp_attached{{iface=\"eth0\",mode=\"{mode}\"}} {value}");
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            if metrics(&topo).is_some_and(|text| has_line(&text, &line)) {
                return true;
            }
            if Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    };
    assert!(metric(1));
    // The agent's own probes: alive, and ready (configured, attached).
    let probe = |path: &str| http_get(&topo, path).unwrap_or_default();
    assert!(probe("/healthz").starts_with("HTTP/1.1 200 OK"), "{}", probe("/healthz"));
    let ready = probe("/readyz");
    assert!(ready.starts_with("HTTP/1.1 200 OK") && ready.contains("ready: configuration 1 applied"), "{ready}");

    // `ip link set dev eth0 xdp off` is refused against a link-based attachment: nothing to do.
    let out = std::process::Command::new("ip")
        .args(["-n", &topo.node().name, "link", "set", "dev", "eth0", "xdp", "off"])
        .output()
        .expect("run ip");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("Can't replace active BPF XDP link"), "{stderr}");
    std::thread::sleep(Duration::from_millis(1500));
    let status = topo.status().unwrap();
    assert!(eth0(&status).attached, "{:?}", status.node.interfaces);

    // Detached behind the agent's back, in place (what `bpftool link detach` does), then by
    // removing the pin: each time withdrawn within a check or two, shown, counted; then
    // re-attached and announced again.
    for (round, how) in ["in place", "pin removed"].into_iter().enumerate() {
        if how == "in place" {
            assert!(xlb::apply::dataplane::link_state::detach_in_place(&pin).expect("BPF_LINK_DETACH"));
        } else {
            std::fs::remove_file(&pin).expect("remove the pin");
        }
        let lost = Instant::now();
        let status = wait_for("status showing eth0 detached", Duration::from_secs(3), || {
            topo.status().filter(|s| !eth0(s).attached)
        });
        let took = lost.elapsed();
        let a = eth0(&status);
        assert!(!a.operator_detached && a.reason.is_some(), "{how}: {a:?}");
        assert!(status.announced.is_empty(), "{how}: withdrawn: {:?}", status.announced);
        let rendered = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
        assert!(rendered.contains("XDP on eth0: DETACHED"), "{rendered}");
        assert!(metric(0), "{how}: xlb_xdp_attached 0");
        let not_ready = probe("/readyz");
        assert!(
            not_ready.starts_with("HTTP/1.1 503") && not_ready.contains("XDP is not attached to eth0"),
            "{how}: {not_ready}"
        );
        assert!(probe("/healthz").starts_with("HTTP/1.1 200 OK"), "{how}: still alive");
        wait_for("the router's route withdrawn", Duration::from_secs(3), || nexthops(&topo).is_empty().then_some(()));
        eprintln!("{how}: detected within {took:?}");

        // The watch's table first, the control thread's announcements a moment later.
        wait_for("eth0 re-attached and announced", Duration::from_secs(15), || {
            topo.status().filter(|s| {
                eth0(s).attached && eth0(s).reattached == round as u64 + 1 && s.announced == [VIP.to_owned()]
            })
        });
        wait_for("the VIP announced again", Duration::from_secs(10), || (nexthops(&topo) == announced).then_some(()));
        assert!(metric(1));
        let (seen, failed) = topo.tcp_requests(VIP, 8080, 50);
        assert_eq!(failed, 0, "{how}: traffic after the re-attach: {seen:?}");
    }

    // `xlb detach` tells the agent first: withdrawn before the CLI returns, and for good.
    let out = topo.xlb(&["detach", "--iface", "eth0", "--pin-dir", topo.pin_dir_of(0).to_str().unwrap()]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "xlb detach: {}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("withdrew 1 of 1 announced addresses"), "{stdout}");
    assert!(stdout.contains("eth0: XDP detached"), "{stdout}");
    assert!(nexthops(&topo).is_empty(), "withdrawn (and the grace waited) before the detach");
    std::thread::sleep(Duration::from_secs(5));
    let status = topo.status().unwrap();
    let a = eth0(&status);
    assert!(!a.attached && a.operator_detached, "not re-attached: {a:?}");
    assert!(!pin.exists(), "the agent left the pin alone");
    assert!(status.announced.is_empty() && nexthops(&topo).is_empty());
    assert!(metric(0));
    let rendered = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
    assert!(rendered.contains("XDP on eth0: DETACHED by the operator (xlb detach)"), "{rendered}");
}

#[test]
fn panic_threshold_sends_new_flows_to_every_backend() {
    require_root!();
    let mut topo = Topology::new(4, &[VIP]);
    topo.serve(VIP, 8080);
    topo.serve(VIP, 8081);
    let health = topo.serve_health(9100);
    let check = "    health_check: { type: tcp, port: 9100, interval: 200ms, timeout: 100ms, rise: 2, fall: 2 }\n";
    let vip = |name: &str, port: u16, extra: &str| {
        format!(
            "  - name: {name}\n    address: {VIP}\n    port: {port}\n    protocol: tcp\n    mode: dsr-l2\n{check}{extra}    backends:\n{}",
            backends(4)
        )
    };
    let config = format!("vips:\n{}{}", vip("web", 8080, ""), vip("strict", 8081, "    panic_threshold: 0\n"));
    let (_, _) = topo.spawn_agent_logged(0, &config, &["--metrics-listen", METRICS]);
    wait_for("the agent's admin socket", Duration::from_secs(10), || topo.stats());

    // Three of four fail their checks: `web` (default threshold 50%) panics and sends new flows
    // to all four; `strict` (threshold 0) only to the one left.
    for i in 1..4 {
        health.set(i, false);
    }
    let status = wait_for("three backends down", Duration::from_secs(10), || {
        topo.status().filter(|s| {
            s.snapshot.vip("strict").is_some_and(|v| v.serving == 1)
                && s.snapshot.vip("web").is_some_and(|v| v.healthy == 1)
        })
    });
    let web = status.snapshot.vip("web").unwrap();
    assert!(web.panic && web.up && web.healthy == 1 && web.serving == 4, "{web:?}");
    let strict = status.snapshot.vip("strict").unwrap();
    assert!(!strict.panic && strict.up && strict.serving == 1, "{strict:?}");
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 200);
    assert_eq!(failed, 0, "{seen:?}");
    for i in 0..4 {
        let got = seen.get(&format!("be{i}")).copied().unwrap_or(0);
        assert!(got > 20, "in panic be{i} takes new flows too: {seen:?}");
    }
    let (seen, failed) = topo.tcp_requests(VIP, 8081, 100);
    assert_eq!((failed, seen.get("be0").copied()), (0, Some(100)), "threshold 0: only the healthy one: {seen:?}");
    let text = metrics(&topo).expect("metrics");
    for line in ["xlb_vip_panic{vip=\"web\"} 1", "xlb_vip_panic{vip=\"strict\"} 0", "xlb_vip_up{vip=\"web\"} 1"] {
        assert!(has_line(&text, line), "metrics lack `{line}`:\n{text}");
    }
    let rendered = String::from_utf8(topo.xlb(&["status", "--vips"]).stdout).unwrap();
    assert!(rendered.contains("PANIC 1/4") && rendered.contains("below 50%"), "{rendered}");
    let summary = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
    assert!(summary.contains("(1 in PANIC)") && summary.contains(" PANIC "), "{summary}");
    let log = std::fs::read_to_string(topo.agent_log_path(0)).unwrap();
    assert!(
        log.lines().any(|l| l.contains("VIP state change")
            && l.contains("web")
            && l.contains("to=\"panic\"")
            && l.contains("3 of 4 backends down, below the panic threshold 50%")),
        "{log}"
    );

    // All four down: withdrawn (no healthy backend), still forwarding to all.
    health.set(0, false);
    let status = wait_for("all down", Duration::from_secs(10), || {
        // Both VIPs at the address (their checks run apart): only then is it withdrawn.
        topo.status().filter(|s| s.snapshot.vips.iter().all(|v| v.healthy == 0) && s.announced.is_empty())
    });
    let web = status.snapshot.vip("web").unwrap();
    assert!(web.panic && !web.up && web.serving == 4, "{web:?}");
    assert!(status.announced.is_empty(), "{:?}", status.announced);

    for i in 0..4 {
        health.set(i, true);
    }
    let status = wait_for("recovered", Duration::from_secs(10), || {
        topo.status().filter(|s| s.snapshot.vip("web").is_some_and(|v| v.healthy == 4))
    });
    assert!(!status.snapshot.vip("web").unwrap().panic);
    let log = std::fs::read_to_string(topo.agent_log_path(0)).unwrap();
    assert!(log.lines().any(|l| l.contains("VIP state change") && l.contains("to=\"up\"")), "{log}");
}

/// utime + stime of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    // After the command name's closing parenthesis: state is field 3; utime, stime 14 and 15.
    let rest = &stat[stat.rfind(')').expect("comm") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap()
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

#[test]
fn out_of_descriptors_the_agent_keeps_its_backends_and_recovers() {
    require_root!();
    let mut topo = Topology::new(2, &[VIP]);
    let _health = topo.serve_health(9100);
    let check = "    health_check: { type: tcp, port: 9100, interval: 100ms, timeout: 80ms, rise: 1, fall: 1 }\n";
    let config = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n{check}    backends:\n{}",
        backends(2)
    );
    let agent = topo.start_agent_with(&config, &["--metrics-listen", METRICS]);
    let pid = topo.agent(agent).child.id();
    wait_for("health checks running", Duration::from_secs(5), || {
        metrics(&topo).filter(|t| has_line(t, "xlb_health_check_local_errors_total 0"))
    });
    // A few descriptors to spare beyond what it holds now.
    let limit = open_fds(pid) as u64 + 6;
    let rlimit = libc::rlimit { rlim_cur: limit, rlim_max: limit };
    // SAFETY: a valid pid of our child, a valid resource, a live struct; no old limit asked for.
    let set = unsafe { libc::prlimit(pid as i32, libc::RLIMIT_NOFILE, &rlimit, std::ptr::null_mut()) };
    assert_eq!(set, 0, "prlimit: {}", std::io::Error::last_os_error());

    // Flood both listeners with connections that stay open: the agent's descriptors run out.
    let socket = topo.socket();
    let admin: Vec<std::os::unix::net::UnixStream> =
        (0..60).filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok()).collect();
    let scrapers = topo
        .node()
        .run(|| (0..100).filter_map(|_| std::net::TcpStream::connect(METRICS).ok()).collect::<Vec<_>>())
        .join()
        .unwrap();
    eprintln!("holding {} admin and {} metrics connections; limit {limit}", admin.len(), scrapers.len());
    std::thread::sleep(Duration::from_millis(500));
    assert!(open_fds(pid) as u64 >= limit - 2, "{} of {limit} descriptors in use", open_fds(pid));
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let before = cpu_ticks(pid);
    std::thread::sleep(Duration::from_secs(2));
    let cpu = (cpu_ticks(pid) - before) as f64 / ticks_per_second;
    eprintln!("agent CPU over 2 s of exhaustion: {cpu:.2} s");
    assert!(cpu < 0.5, "the agent spins while out of descriptors: {cpu:.2} s of CPU in 2 s");

    drop(admin);
    drop(scrapers);
    let status = wait_for("the agent answering again", Duration::from_secs(15), || topo.status());
    let web = status.snapshot.vip("web").unwrap();
    assert!(web.up && web.backends.iter().all(|b| b.up), "no backend taken down by our own errors: {web:?}");
    assert_eq!(status.announced, [VIP.to_owned()], "nothing withdrawn");
    let text = wait_for("metrics again", Duration::from_secs(10), || metrics(&topo));
    let local = text
        .lines()
        .find_map(|l| l.strip_prefix("xlb_health_check_local_errors_total "))
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or_else(|| panic!("no local health-check error count:\n{text}"));
    assert!(local > 0, "the checks did meet the exhaustion:\n{text}");
    assert!(
        text.lines()
            .any(|l| l.starts_with("xlb_health_checks_total{") && l.contains("result=\"failed\"") && l.ends_with(" 0")),
        "{text}"
    );
    assert!(has_line(&text, "xlb_xdp_attached{iface=\"eth0\",mode=\"native\"} 1"), "the watch kept its state:\n{text}");
}

#[test]
fn frames_a_veth_drops_for_want_of_xdp_on_its_peer_are_counted_and_shown() {
    require_root!();
    let mut topo = Topology::new(2, &[VIP]);
    topo.serve(VIP, 8080);
    let config = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}",
        backends(2)
    );
    topo.start_agent_with(&config, &["--metrics-listen", METRICS]);
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 20);
    assert_eq!(failed, 0, "{seen:?}");
    let before = eth0(&topo.status().expect("status")).transmit_errors;
    assert_eq!(before, Some(0), "a veth counts its XDP transmit failures, and with XDP on the peer there are none");

    // The peer loses its XDP program: what the node sends with XDP_TX is dropped by the driver,
    // though the program counts it forwarded.
    topo.detach_switch_xdp();
    let (_, failed) = topo.tcp_requests(VIP, 8080, 2);
    assert_eq!(failed, 2, "no request gets through a veth whose peer runs no XDP");
    let dropped = wait_for("status to show the dropped frames", Duration::from_secs(5), || {
        eth0(&topo.status()?).transmit_errors.filter(|&n| n > 0)
    });
    let shown = topo.xlb(&["status"]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains(&format!("XDP on eth0: {dropped} frames it sent were dropped by the driver")), "{text}");
    wait_for("the metric", Duration::from_secs(5), || {
        metrics(&topo)?
            .lines()
            .find_map(|l| l.strip_prefix("xlb_xdp_transmit_errors_total{iface=\"eth0\"} "))
            .and_then(|v| v.parse::<u64>().ok())
            .filter(|&n| n > 0)
    });
}

/// The VIP served through the node's second interface in the link test.
const FAR_VIP: &str = "10.210.100.2";

fn iface(status: &Status, name: &str) -> AttachmentStatus {
    status.node.interfaces.iter().find(|a| a.iface == name).cloned().unwrap_or_else(|| panic!("{name} in status"))
}

#[test]
fn a_link_going_down_withdraws_the_vips_served_through_it() {
    require_root!();
    let mut topo = Topology::edge(1, 1, 1, &[VIP]);
    let far = topo.add_far_backend();
    topo.node().ip(&["addr", "add", "10.230.0.100/24", "dev", "eth1"]);
    // Any address: the far backend has no VIP on its loopback.
    topo.serve("0.0.0.0", 8080);
    topo.serve("0.0.0.0", 8081);
    let _bird = router_bird(&topo);
    // `web` is served through eth0 only; `far` sends its packets out of eth1 (NAT to a backend
    // on that link), so it depends on eth1's link too.
    let config = format!(
        "bgp:\n  local_as: 65001\n  router_id: {NODE_V4}\n  withdraw_grace: 1s\n  peers:\n    - {{ address: {ROUTER_V4}, remote_as: 65000 }}\nnat_pools:\n  - name: far4\n    addresses: [10.230.0.100]\n    ports: 20000-29999\nvips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{}  - name: far\n    address: {FAR_VIP}\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: far4\n    backends:\n      - {{ address: \"{FAR_V4}\", port: 8081, interface: eth1 }}\n",
        backends(1)
    );
    topo.start_agent_with(&config, &["--iface", "eth1", "--metrics-listen", METRICS]);
    let announced = BTreeSet::from([node_v4(0)]);
    for vip in [VIP, FAR_VIP] {
        wait_for(&format!("{vip} announced"), Duration::from_secs(15), || {
            (topo.router_nexthops(vip) == announced).then_some(())
        });
    }
    let (seen, failed) = topo.tcp_requests(FAR_VIP, 80, 20);
    assert_eq!((failed, seen.get(&format!("be{far}"))), (0, Some(&20)), "{seen:?}");

    for round in 0..2 {
        topo.node().ip(&["link", "set", "dev", "eth1", "down"]);
        let down = Instant::now();
        let status = wait_for("status showing eth1's link down", Duration::from_secs(3), || {
            topo.status().filter(|s| iface(s, "eth1").link_down && !s.announced.contains(&FAR_VIP.to_owned()))
        });
        let took = down.elapsed();
        assert!(iface(&status, "eth1").attached, "XDP stays attached on a link that is down");
        assert_eq!(status.announced, [VIP.to_owned()], "only the VIP served through eth1 is withdrawn");
        let rendered = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
        assert!(rendered.contains("link eth1: DOWN"), "{rendered}");
        wait_for("the router's route to the far VIP withdrawn", Duration::from_secs(5), || {
            topo.router_nexthops(FAR_VIP).is_empty().then_some(())
        });
        assert_eq!(topo.router_nexthops(VIP), announced, "the other VIP stays announced");
        eprintln!("round {round}: link down seen and its VIP withdrawn within {took:?}");

        topo.node().ip(&["link", "set", "dev", "eth1", "up"]);
        wait_for("status showing eth1 up and the far VIP announced", Duration::from_secs(5), || {
            topo.status().filter(|s| !iface(s, "eth1").link_down && s.announced.contains(&FAR_VIP.to_owned()))
        });
        wait_for("the far VIP announced again", Duration::from_secs(10), || {
            (topo.router_nexthops(FAR_VIP) == announced).then_some(())
        });
        // The link's neighbours were flushed with it: traffic resumes once they are resolved again.
        let (seen, failed) = wait_for("traffic through eth1 again", Duration::from_secs(10), || {
            let (seen, failed) = topo.tcp_requests(FAR_VIP, 80, 20);
            (failed == 0).then_some((seen, failed))
        });
        assert_eq!((failed, seen.get(&format!("be{far}"))), (0, Some(&20)), "{seen:?}");
    }
}
