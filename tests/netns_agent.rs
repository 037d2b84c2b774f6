//! The agent end to end in namespaces: health checks against real listeners, drains, runtime
//! weights, status, Prometheus metrics, and reloads under continuous traffic.

use std::{
    io::{Read as _, Write as _},
    time::Duration,
};

use xlb::serve::admin::Status;
use xlb_tests::{
    netns::wait_for,
    require_root,
    topology::{Topology, backend_mac, backend_v4},
};

const VIP: &str = "10.210.100.1";
const METRICS: &str = "127.0.0.1:9842";

fn backends(weights: &[u32]) -> String {
    weights
        .iter()
        .enumerate()
        .map(|(i, w)| {
            format!("      - {{ address: \"{}\", mac: \"{}\", weight: {w} }}\n", backend_v4(i), backend_mac(i))
        })
        .collect()
}

fn vip(name: &str, port: u16, extra: &str, weights: &[u32]) -> String {
    format!(
        "  - name: {name}\n    address: {VIP}\n    port: {port}\n    protocol: tcp\n    mode: dsr-l2\n{extra}    backends:\n{}",
        backends(weights)
    )
}

fn backend_of<'a>(status: &'a Status, vip: &str, backend: usize) -> &'a xlb::serve::stats::BackendStats {
    let v = status.snapshot.vip(vip).unwrap_or_else(|| panic!("VIP {vip} in status"));
    v.backends.iter().find(|b| b.address == backend_v4(backend)).expect("backend in status")
}

/// `GET /metrics` from inside the node namespace.
fn metrics(topo: &Topology) -> String {
    topo.node()
        .run(|| {
            let mut conn = std::net::TcpStream::connect(METRICS).expect("metrics listener");
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            conn.read_to_string(&mut text).unwrap();
            text
        })
        .join()
        .expect("metrics thread")
}

#[test]
fn health_checks_and_drains_steer_new_flows_and_spare_established_ones() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, 8080);
    topo.serve_streams(VIP, 9000);
    let health = topo.serve_health(9100);
    let check = "    health_check: { type: tcp, port: 9100, interval: 200ms, timeout: 100ms, rise: 2, fall: 2 }\n    min_healthy: 3\n";
    let config = format!("vips:\n{}{}", vip("web", 8080, check, &[1, 1, 1]), vip("streams", 9000, "", &[1, 1, 1]));
    topo.start_agent_with(&config, &["--metrics-listen", METRICS]);
    let status = topo.status().expect("status");
    assert!(status.snapshot.vip("web").unwrap().up, "every backend starts up");

    // be1's health listener closes: after `fall` failed checks it takes no new flows, and with
    // min_healthy 3 the VIP is down (for BGP) while the two others keep serving it.
    health.set(1, false);
    let status =
        wait_for("be1 marked down", Duration::from_secs(10), || topo.status().filter(|s| !backend_of(s, "web", 1).up));
    let be1 = backend_of(&status, "web", 1);
    assert_eq!((be1.weight, be1.configured_weight), (0, 1));
    assert!(be1.health_error.as_deref().is_some_and(|e| e.contains("refused")), "{be1:?}");
    let web = status.snapshot.vip("web").unwrap();
    assert!(!web.up && web.serving == 2, "{web:?}");
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 200);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(seen.get("be1"), None, "a down backend gets no new flows: {seen:?}");
    let text = metrics(&topo);
    for line in [
        format!("xlb_backend_up{{backend=\"{}\",vip=\"web\"}} 0", backend_v4(1)),
        format!("xlb_backend_up{{backend=\"{}\",vip=\"web\"}} 1", backend_v4(0)),
        "xlb_vip_up{vip=\"web\"} 0".to_owned(),
        "xlb_vip_serving_backends{vip=\"web\"} 2".to_owned(),
    ] {
        assert!(text.lines().any(|l| l == line), "metrics lack `{line}`:\n{text}");
    }
    // Every request above opened a flow of its own (a fresh client port), each recorded; the
    // agent counts the table every 2 s.
    let entries = |text: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix("xlb_flow_table_entries "))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("metrics lack xlb_flow_table_entries:\n{text}"))
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(6);
    let mut counted = entries(&text);
    while counted < 200 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
        counted = entries(&metrics(&topo));
    }
    assert!(counted >= 200, "{counted} connection-table entries after 200 connections");
    let size = format!("xlb_flow_table_size {}", lb_common::FLOW_TABLE_SIZE);
    assert!(text.lines().any(|l| l == size), "metrics lack `{size}`:\n{text}");
    let rendered = String::from_utf8(topo.xlb(&["status", "--vips"]).stdout).unwrap();
    assert!(rendered.contains("DOWN") && rendered.contains("refused"), "{rendered}");
    // The summary lists the VIP among those not fully serving, with be1 down.
    let summary = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
    let line = summary.lines().find(|l| l.trim_start().starts_with("web ")).unwrap_or_else(|| panic!("{summary}"));
    assert!(line.contains(&format!("{} down", backend_v4(1))) && line.contains("2/3 taking new flows"), "{summary}");
    assert!(summary.contains("VIPs: ") && summary.contains("connection table: "), "{summary}");
    assert!(rendered.contains("connection table: ") && rendered.contains(" entries in use"), "{rendered}");

    health.set(1, true);
    wait_for("be1 up again", Duration::from_secs(10), || topo.status().filter(|s| backend_of(s, "web", 1).up));
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 200);
    assert_eq!(failed, 0);
    assert!(seen.get("be1").copied().unwrap_or(0) > 20, "be1 takes new flows again: {seen:?}");

    // Drain be1 of `streams` while long streams run: those on be1 finish there, new ones avoid it.
    let streams = topo.open_streams(VIP, 9000, 24);
    assert!(streams.progress(3, Duration::from_secs(10)), "streams started");
    let out = topo.xlb(&["drain", "streams", &backend_v4(1)]);
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    let (seen, failed) = topo.tcp_requests(VIP, 9000, 200);
    assert_eq!(failed, 0);
    assert_eq!(seen.get("be1"), None, "a drained backend gets no new flows: {seen:?}");
    assert!(streams.progress(5, Duration::from_secs(10)), "streams go on while drained");
    let ended = streams.finish();
    assert!(ended.iter().all(Result::is_ok), "{ended:?}");
    assert!(ended.iter().any(|r| r.as_deref() == Ok("be1")), "some streams ran on be1: {ended:?}");
    let status = topo.status().unwrap();
    assert!(backend_of(&status, "streams", 1).drained);
    let out = topo.xlb(&["drain", "streams", "10.9.9.9"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("has no backend"));
    let out = topo.xlb(&["drain", "--undo", "streams", &backend_v4(1)]);
    assert!(out.status.success());
    let (seen, _) = topo.tcp_requests(VIP, 9000, 200);
    assert!(seen.get("be1").copied().unwrap_or(0) > 20, "undrained: {seen:?}");

    // Runtime weights of `streams` be1: 0 takes it out like a drain, 4 gives it 4 of 6 shares,
    // a reload keeps it, `--reset` returns to the config's 1.
    let be1 = backend_v4(1);
    let weight = |args: &[&str]| {
        let out = topo.xlb(&[&["weight"], args].concat());
        assert!(out.status.success(), "weight {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    weight(&["streams", &be1, "0"]);
    let (seen, failed) = topo.tcp_requests(VIP, 9000, 200);
    assert_eq!((failed, seen.get("be1")), (0, None), "weight 0: no new flows: {seen:?}");
    let said = weight(&["streams", &be1, "4"]);
    assert!(said.contains("weight 4 (config 1)"), "{said}");
    let (seen, failed) = topo.tcp_requests(VIP, 9000, 300);
    assert_eq!(failed, 0);
    xlb_tests::topology::assert_spread(&seen, &[1, 4, 1], 0.12, "runtime weight 4");
    let b = backend_of(&topo.status().unwrap(), "streams", 1).clone();
    assert_eq!((b.weight, b.configured_weight, b.file_weight), (4, 4, Some(1)), "{b:?}");
    let rendered = String::from_utf8(topo.xlb(&["status", "--vips"]).stdout).unwrap();
    assert!(rendered.contains("weight 4 (runtime; config 1)"), "{rendered}");
    for (args, error) in [
        (["streams", "10.9.9.9", "2"], "VIP `streams` has no backend `10.9.9.9`; its backends: "),
        (["nope", be1.as_str(), "2"], "no VIP named `nope`; configured: web, streams"),
        (["streams", be1.as_str(), "70000"], "is above 65535"),
    ] {
        let out = topo.xlb(&[&["weight"], &args[..]].concat());
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success() && stderr.contains(error), "weight {args:?}: {stderr}");
    }
    // A plan of a new config shows what changes against the running weights: be1 keeps its 4.
    let next = format!("vips:\n{}{}", vip("web", 8080, check, &[1, 1, 1]), vip("streams", 9000, "", &[1, 1, 2]));
    let plan_file = topo.config_path().with_file_name("next.yaml");
    std::fs::write(&plan_file, &next).unwrap();
    let plan = topo.xlb(&["plan", plan_file.to_str().unwrap()]);
    let plan = String::from_utf8_lossy(&plan.stdout);
    assert!(
        plan.contains(&format!("{} weight 1→2", backend_v4(2))) && !plan.contains(&format!("{be1} weight")),
        "{plan}"
    );
    std::fs::write(topo.config_path(), &next).unwrap();
    let status = wait_for("the reload", Duration::from_secs(10), || {
        topo.status().filter(|s| s.node.config_generation >= 2 && backend_of(s, "streams", 2).configured_weight == 2)
    });
    assert_eq!(backend_of(&status, "streams", 1).weight, 4, "a reload keeps the runtime weight");
    weight(&["streams", &be1, "--reset"]);
    let b = backend_of(&topo.status().unwrap(), "streams", 1).clone();
    assert_eq!((b.weight, b.file_weight), (1, None), "{b:?}");
}

#[test]
fn twenty_reloads_under_traffic_fail_no_request() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, 8080);
    topo.serve(VIP, 8081);
    // Weights change every time (be2 between 3 and 0, which drains it), and a second VIP comes
    // and goes: every reload rebuilds tables while connections are open.
    let config = |n: usize| {
        let weights: &[u32] = if n.is_multiple_of(2) { &[1, 2, 3] } else { &[3, 2, 0] };
        let mut yaml = format!("vips:\n{}", vip("web", 8080, "", weights));
        if n.is_multiple_of(3) {
            yaml.push_str(&vip("extra", 8081, "", &[1, 1, 1]));
        }
        yaml
    };
    let agent = topo.start_agent_with(&config(0), &["--no-watch"]);
    let pid = topo.agent(agent).child.id() as i32;
    let load = topo.tcp_load(VIP, 8080, 50_000);
    for n in 1..=20u64 {
        std::fs::write(topo.config_path(), config(n as usize)).unwrap();
        // SAFETY: kill with our own child's pid and a valid signal number.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        wait_for("the reload", Duration::from_secs(5), || {
            topo.status()
                .filter(|s| s.node.config_generation == n + 1 && s.node.last_reload.as_ref().is_some_and(|r| r.ok))
        });
        std::thread::sleep(Duration::from_millis(50));
    }
    // An invalid file is rejected: the status says why, traffic goes on.
    std::fs::write(topo.config_path(), "vips:\n  - name: web\n    port: 8080\n").unwrap();
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let status = wait_for("the rejected reload", Duration::from_secs(5), || {
        topo.status().filter(|s| s.node.last_reload.as_ref().is_some_and(|r| !r.ok))
    });
    assert_eq!(status.node.config_generation, 21, "a rejected file is no new generation");
    let message = status.node.last_reload.unwrap().message;
    assert!(
        message.contains("xlb.yaml:2:5: vips[0].address: missing; write the address"),
        "the error names file, line and field: {message}"
    );
    std::thread::sleep(Duration::from_millis(300));
    let (seen, failed) = load.finish();
    let total: usize = seen.values().sum();
    assert_eq!(failed, 0, "requests failed during reloads: {seen:?}");
    assert!(total > 100, "the load kept running: {seen:?}");
    assert_eq!(topo.status().unwrap().snapshot.vip("web").unwrap().backends.len(), 3);
}

#[test]
fn the_config_file_is_watched() {
    require_root!();
    let mut topo = Topology::new(1, &[VIP]);
    topo.start_agent(&format!("vips:\n{}", vip("web", 8080, "", &[1])));
    // `xlb plan` against the running agent first: nothing applied.
    let planned = topo.dir.join("plan.yaml");
    std::fs::write(&planned, format!("vips:\n{}", vip("web", 8080, "", &[1, 1]))).unwrap();
    let out = topo.xlb(&["plan", planned.to_str().unwrap()]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "plan: {}", String::from_utf8_lossy(&out.stderr));
    assert!(text.contains(&format!("~ web 10.210.100.1:8080/tcp: +{}", backend_v4(1))), "{text}");
    assert!(text.contains("% of new flows land elsewhere"), "{text}");
    std::fs::write(&planned, "vips: [").unwrap();
    let out = topo.xlb(&["plan", planned.to_str().unwrap()]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("plan.yaml:1"));
    assert_eq!(topo.status().unwrap().node.config_generation, 1, "planning changes nothing");
    std::fs::write(topo.config_path(), format!("vips:\n{}{}", vip("web", 8080, "", &[1]), vip("more", 8081, "", &[1])))
        .unwrap();
    let status = wait_for("the watched file to reload", Duration::from_secs(5), || {
        topo.status().filter(|s| s.node.config_generation == 2)
    });
    assert!(status.snapshot.vip("more").is_some());
}

#[test]
fn backends_without_a_mac_get_theirs_from_the_neighbour_table() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, 8080);
    let backends: String = (0..3).map(|i| format!("      - {{ address: \"{}\" }}\n", backend_v4(i))).collect();
    let config = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n{backends}"
    );
    topo.start_agent(&config);
    let status = wait_for("every backend's MAC resolved", Duration::from_secs(10), || {
        topo.status().filter(|s| s.snapshot.vip("web").is_some_and(|v| v.backends.iter().all(|b| b.mac_known)))
    });
    assert_eq!(status.snapshot.vip("web").unwrap().serving, 3);
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 300);
    assert_eq!(failed, 0, "{seen:?}");
    // dsr-l2 frames reach a backend only with its real MAC: every backend answering proves it.
    assert_eq!(seen.len(), 3, "every backend answers: {seen:?}");

    // Backend 0 takes a new MAC and announces it (gratuitous ARP), as a fail-over pair does. The
    // agent learns it from the kernel's notification and rewrites the backend's entry: within a
    // second every backend answers again (a frame to the old MAC would not reach it). The
    // neighbour table's own timers and the agent's 30 s re-read are far longer than that.
    let b0 = &topo.backends[0];
    let out = b0.command("sysctl").args(["-w", "net.ipv4.conf.eth0.arp_notify=1"]).output().expect("sysctl");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    std::thread::sleep(Duration::from_millis(1200)); // past the neighbour lock time (1 s)
    b0.ip(&["link", "set", "eth0", "address", "02:00:00:aa:bb:01"]);
    std::thread::sleep(Duration::from_secs(1));
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 60);
    assert_eq!((failed, seen.len()), (0, 3), "one second after the MAC change every backend answers: {seen:?}");
}

#[test]
fn explain_names_the_backend_a_real_flow_reached_and_changes_nothing() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, 5353);
    let config = format!(
        "vips:\n  - name: dns\n    address: {VIP}\n    port: 5353\n    protocol: udp\n    mode: dsr-l2\n    backends:\n{}",
        backends(&[1, 1, 1])
    );
    topo.start_agent(&config);
    let explain = |sport: u16| {
        let client = format!("{}:{sport}", xlb_tests::topology::CLIENT_V4);
        let out = topo.xlb(&["explain", "udp", &client, &format!("{VIP}:5353"), "--json"]);
        assert!(out.status.success(), "explain: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<xlb::apply::explain::Explanation>(&out.stdout).expect("explain JSON")
    };
    for sport in [40001u16, 40002, 40003, 40004] {
        // Before the flow: the Maglev table's choice, and nothing recorded.
        let before = explain(sport);
        assert_eq!(before.known, None);
        let predicted = before.backend.clone().expect("a backend");
        // Traffic counters only: the connection counts follow the real flows on their own.
        let traffic = || {
            let stats = topo.stats().expect("stats");
            stats.vips[0].backends.iter().map(|b| (b.packets, b.bytes, b.new_flows)).collect::<Vec<_>>()
        };
        let before_traffic = traffic();
        let seen = explain(sport);
        assert_eq!(traffic(), before_traffic, "explaining moves no counter");
        assert_eq!(seen.known, None, "explaining records no flow");
        // The real datagram goes where explain said; afterwards explain finds its entry.
        let answered = topo.udp_from_port(0, VIP, 5353, sport).expect("an answer");
        let index: usize = answered.trim_start_matches("be").parse().unwrap();
        assert_eq!(predicted, backend_v4(index), "explain predicted the backend that answered");
        let after = explain(sport);
        let known = after.known.expect("the flow is in the connection table");
        assert_eq!((known.table.as_str(), known.backend.as_str()), ("connection table", predicted.as_str()));
    }
    let text = topo.xlb(&["explain", "tcp", "10.210.0.1:1", "10.9.9.9:80"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("no VIP serves") && text.contains("pass_not_vip"), "{text}");
    let bad = topo.xlb(&["explain", "udp", "10.210.0.1:1", &format!("{VIP}:5353"), "--packet", "syn"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("leave out --packet"), "{bad:?}");
}

/// Opens `count` TCP connections to `vip:port` from the client and learns from each which
/// backend answered (`serve_streams` answers a line with its name); they stay open until the
/// returned sender is dropped (or 60 s pass). Returns each one's client address and backend.
fn hold_connections(
    topo: &Topology,
    vip: &str,
    port: u16,
    count: usize,
) -> (Vec<(String, String)>, std::sync::mpsc::Sender<()>, std::thread::JoinHandle<()>) {
    let addr = std::net::SocketAddr::new(vip.parse().unwrap(), port);
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = std::sync::mpsc::channel::<()>();
    let holder = topo.client().run(move || {
        let mut held = Vec::new();
        let mut opened = Vec::new();
        for _ in 0..count {
            let conn = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(4)).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
            let mut reader = std::io::BufReader::new(conn.try_clone().unwrap());
            (&conn).write_all(b"x\n").unwrap();
            let mut name = String::new();
            std::io::BufRead::read_line(&mut reader, &mut name).expect("the backend's name");
            let backend: usize = name.trim().strip_prefix("be").and_then(|n| n.parse().ok()).expect("beN");
            opened.push((conn.local_addr().unwrap().to_string(), backend_v4(backend)));
            held.push(conn);
        }
        opened_tx.send(opened).unwrap();
        // Until told (or the test failed and dropped the sender), bounded.
        let _ = stop_rx.recv_timeout(Duration::from_secs(60));
        drop(held);
    });
    let opened = opened_rx.recv_timeout(Duration::from_secs(30)).expect("connections opened");
    (opened, stop_tx, holder)
}

#[test]
fn active_connections_are_counted_per_backend_and_listed() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve_streams(VIP, 9200);
    topo.start_agent_with(&format!("vips:\n{}", vip("held", 9200, "", &[1, 1, 1])), &["--metrics-listen", METRICS]);
    let (opened, stop, holder) = hold_connections(&topo, VIP, 9200, 6);
    let mut expected: std::collections::BTreeMap<String, u64> = (0..3).map(|i| (backend_v4(i), 0)).collect();
    for (_, backend) in &opened {
        *expected.entry(backend.clone()).or_default() += 1;
    }
    assert!(expected.values().filter(|&&n| n > 0).count() >= 2, "Maglev spread 6 connections: {opened:?}");

    // The agent counts every 2 s; status shows each backend's share as it really got it.
    let counted = |status: &Status| -> std::collections::BTreeMap<String, u64> {
        let v = status.snapshot.vip("held").expect("VIP held");
        v.backends.iter().map(|b| (b.address.clone(), b.connections.confirmed)).collect()
    };
    let status = wait_for("6 connections counted", Duration::from_secs(10), || {
        topo.status().filter(|s| counted(s).values().sum::<u64>() == 6)
    });
    assert_eq!(counted(&status), expected, "{opened:?}");
    let held = status.snapshot.vip("held").unwrap();
    assert_eq!((held.connections.confirmed, held.connections.embryonic, held.connections.nat), (6, 0, 0));
    let scan = status.snapshot.connections_scan;
    assert!(scan.is_some_and(|s| s.age_ms < 10_000), "{scan:?}");
    eprintln!("the agent's last count of its {}-entry table: {scan:?}", status.snapshot.flow_table.size);
    let rendered = String::from_utf8(topo.xlb(&["status", "--vips"]).stdout).unwrap();
    assert!(rendered.contains("connections") && rendered.contains("counted "), "{rendered}");

    // `xlb conns` lists the very clients, each with the backend it reached.
    let out = topo.xlb(&["conns", "held", "--json"]);
    assert!(out.status.success(), "conns: {}", String::from_utf8_lossy(&out.stderr));
    let report: xlb::serve::conns::ConnsReport = serde_json::from_slice(&out.stdout).expect("conns JSON");
    assert_eq!((report.confirmed, report.embryonic, report.flows.len()), (6, 0, 6), "{report:?}");
    let mut listed: Vec<(String, String)> =
        report.flows.iter().map(|f| (f.client.clone(), f.backend.clone())).collect();
    let mut opened_sorted = opened.clone();
    listed.sort();
    opened_sorted.sort();
    assert_eq!(listed, opened_sorted);
    assert!(report.flows.iter().all(|f| f.state == "confirmed" && f.idle_ms < 60_000), "{report:?}");
    let out = topo.xlb(&["conns", "held", "--limit", "2"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("6 connections (6 confirmed, 0 embryonic, 0 closed)"), "{text}");
    assert_eq!(
        text.lines().filter(|l| opened.iter().any(|(client, _)| l.starts_with(client.as_str()))).count(),
        2,
        "{text}"
    );
    assert!(text.contains("4 more not shown"), "{text}");
    let out = topo.xlb(&["conns", "nope"]);
    let error = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && error.contains("no VIP named `nope`") && error.contains("held"), "{error}");

    let text = metrics(&topo);
    for (backend, count) in &expected {
        let line = format!("xlb_backend_connections{{backend=\"{backend}\",state=\"confirmed\",vip=\"held\"}} {count}");
        assert!(text.lines().any(|l| l == line), "metrics lack `{line}`:\n{text}");
    }
    assert!(text.lines().any(|l| l.starts_with("xlb_connections_count_age_seconds ")), "{text}");
    drop(stop);
    holder.join().expect("connection holder");
}
