//! Lifecycle safety: one agent per interface (a second one exits before touching anything, and
//! a SIGKILLed one never blocks the next), and drains that survive restarts.

use std::{collections::BTreeSet, path::Path, time::Duration};

use xlb_tests::{
    bird::{Bird, Neighbor},
    netns::{wait_for, xlb_bin},
    require_root,
    topology::{ROUTER_V4, Topology, backend_mac, backend_v4, node_v4},
};

const VIP: &str = "10.210.100.1";
const PORT: u16 = 8080;

fn config(backends: usize) -> String {
    let mut yaml = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: {PORT}\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n"
    );
    for i in 0..backends {
        yaml.push_str(&format!("      - {{ address: \"{}\", mac: \"{}\" }}\n", backend_v4(i), backend_mac(i)));
    }
    yaml
}

/// The id of the XDP program on the node's eth0, if one is attached.
fn xdp_prog_id(topo: &Topology) -> Option<String> {
    let out = String::from_utf8(topo.node().ip(&["-d", "link", "show", "eth0"]).stdout).unwrap();
    let words: Vec<&str> = out.split_whitespace().collect();
    words.windows(3).find(|w| w[0] == "prog/xdp" && w[1] == "id").map(|w| w[2].to_owned())
}

/// The entries of the pinned data plane's directory.
fn pins(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect()
}

#[test]
fn a_second_agent_on_the_interface_exits_naming_the_first_and_changes_nothing() {
    require_root!();
    let mut topo = Topology::new(2, &[VIP]);
    topo.serve(VIP, PORT);
    let first = topo.start_agent(&config(2));
    let first_pid = topo.agent(first).child.id();
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 40);
    assert_eq!((failed, seen.len()), (0, 2), "{seen:?}");
    let prog = xdp_prog_id(&topo).expect("XDP attached");
    let pin_dir = topo.pin_dir_of(0).join("eth0");
    let pinned = pins(&pin_dir);
    let stats = topo.stats().unwrap();

    // Another config (one backend), its own admin socket and state, the same interface.
    let second_config = topo.dir.join("second.yaml");
    std::fs::write(&second_config, config(1)).unwrap();
    let second_socket = topo.dir.join("second.sock");
    let mut cmd = topo.node().command_keep_mounts(xlb_bin().to_str().unwrap());
    cmd.args(["run", "--iface", "eth0", "--config"]).arg(&second_config).arg("--admin-socket").arg(&second_socket);
    cmd.arg("--pin-dir").arg(topo.pin_dir_of(0)).arg("--state-dir").arg(topo.dir.join("second-state"));
    let started = std::time::Instant::now();
    let out = cmd.output().expect("run the second agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the second agent must refuse: {stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused at once, took {:?}", started.elapsed());
    let first_config = std::fs::canonicalize(topo.config_path()).unwrap();
    for needle in [
        format!("pid {first_pid}"),
        format!("config {}", first_config.display()),
        "systemctl stop xlb@eth0".to_owned(),
        format!("kill {first_pid}"),
    ] {
        assert!(stderr.contains(&needle), "the refusal names `{needle}`: {stderr}");
    }
    assert!(!second_socket.exists(), "the second agent listened on nothing");

    // The first goes on as it was: same program, same pins, same VIP, both backends serving.
    assert_eq!(xdp_prog_id(&topo).as_deref(), Some(prog.as_str()), "the XDP program was not replaced");
    assert_eq!(pins(&pin_dir), pinned);
    let status = topo.status().expect("the first agent answers");
    assert_eq!(status.node.config_generation, 1);
    assert_eq!(status.snapshot.vip("web").unwrap().backends.len(), 2);
    assert_eq!(status.snapshot.vips.len(), stats.vips.len());
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 40);
    assert_eq!((failed, seen.len()), (0, 2), "still forwarding to both backends: {seen:?}");

    // `xlb detach` respects the lock too.
    let out = std::process::Command::new(xlb_bin())
        .args(["detach", "--iface", "eth0", "--pin-dir"])
        .arg(topo.pin_dir_of(0))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains(&format!("pid {first_pid}")), "detach refused: {stderr}");
    assert_eq!(xdp_prog_id(&topo).as_deref(), Some(prog.as_str()), "still attached");

    // SIGKILL releases the lock with the process: the next agent starts at once.
    topo.agent(first).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    let next = topo.start_agent(&config(2));
    assert!(topo.status().is_some());
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 40);
    assert_eq!((failed, seen.len()), (0, 2), "{seen:?}");
    // And a clean stop releases it too: detach works then.
    assert!(topo.agent(next).signal_and_wait(libc::SIGTERM, Duration::from_secs(10)).success());
    let out = std::process::Command::new(xlb_bin())
        .args(["detach", "--iface", "eth0", "--pin-dir"])
        .arg(topo.pin_dir_of(0))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(xdp_prog_id(&topo), None);
}

#[test]
fn drains_survive_sigkill_and_sigterm_restarts() {
    require_root!();
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, PORT);
    let mut agent = topo.start_agent(&config(3));
    let (drained, weighted) = (backend_v4(1), backend_v4(2));
    for args in [vec!["drain", "web", drained.as_str()], vec!["drain", "node"], vec!["weight", "web", &weighted, "3"]] {
        let out = topo.xlb(&args);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 60);
    assert_eq!((failed, seen.get("be1")), (0, None), "drained before the restart: {seen:?}");
    let state_file = topo.state_dir_of(0).join("state.json");
    assert!(state_file.exists(), "written at the drain");

    for signal in [libc::SIGKILL, libc::SIGTERM] {
        topo.agent(agent).signal_and_wait(signal, Duration::from_secs(10));
        agent = topo.start_agent(&config(3));
        // The admin socket answers only after the first pass: from here every new flow counts.
        let (seen, failed) = topo.tcp_requests(VIP, PORT, 90);
        assert_eq!(failed, 0, "{seen:?}");
        assert_eq!(seen.get("be1"), None, "no new flows to the drained backend after signal {signal}: {seen:?}");
        assert!(seen.contains_key("be0") && seen.contains_key("be2"), "{seen:?}");
        let status = topo.status().unwrap();
        assert!(status.node.node_drained, "the node drain is restored");
        let state = status.node.state.expect("status shows the state file");
        assert_eq!(state.path, state_file.display().to_string());
        assert!(state.found && state.restored_drains == 1 && state.restored_node_drain, "{state:?}");
        assert_eq!(state.restored_weights, 1, "{state:?}");
        let rendered = String::from_utf8(topo.xlb(&["status"]).stdout).unwrap();
        assert!(
            rendered.contains("restored 1 backend drains, 1 runtime weights and the node drain at start"),
            "xlb status says so: {rendered}"
        );
        let web = status.snapshot.vip("web").unwrap();
        assert!(web.backends.iter().any(|b| b.address == drained && b.drained), "{:?}", web.backends);
        let runtime = web.backends.iter().find(|b| b.address == weighted).map(|b| (b.weight, b.file_weight));
        assert_eq!(runtime, Some((3, Some(1))), "the runtime weight is restored: {:?}", web.backends);
    }

    // Undone, and restarted: the backend takes new flows again.
    assert!(topo.xlb(&["drain", "web", &drained, "--undo"]).status.success());
    assert!(topo.xlb(&["drain", "node", "--undo"]).status.success());
    topo.agent(agent).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    agent = topo.start_agent(&config(3));
    let (seen, failed) = topo.tcp_requests(VIP, PORT, 90);
    assert_eq!(failed, 0, "{seen:?}");
    assert!(seen.get("be1").is_some_and(|n| *n > 5), "undrained for good: {seen:?}");
    assert!(!topo.status().unwrap().node.node_drained);

    // A drain and a runtime weight of a backend the config no longer has are dropped at start,
    // with the file.
    assert!(topo.xlb(&["drain", "web", &backend_v4(2)]).status.success());
    topo.agent(agent).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    agent = topo.start_agent(&config(2));
    let state = topo.status().unwrap().node.state.unwrap();
    let counts = (state.restored_drains, state.pruned_drains, state.restored_weights, state.pruned_weights);
    assert_eq!(counts, (0, 1, 0, 1), "{state:?}");
    let text = std::fs::read_to_string(&state_file).unwrap();
    assert!(!text.contains(&backend_v4(2)), "pruned on disk too: {text}");

    // A corrupt file stops the agent before it touches the data plane, naming the file.
    topo.agent(agent).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    std::fs::write(&state_file, "{\"version\": 1, \"drained\": [").unwrap();
    let out = topo.agent_command(0, &config(2), &[]).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&state_file.display().to_string()) && stderr.contains("move it aside"), "{stderr}");
    assert!(!stderr.contains("data plane filled"), "{stderr}");
}

fn nexthops(topo: &Topology, want: &[String], what: &str) {
    let want: BTreeSet<String> = want.iter().cloned().collect();
    wait_for(what, Duration::from_secs(15), || (topo.router_nexthops(VIP) == want).then_some(()));
}

#[test]
fn a_drained_node_stays_withdrawn_from_bgp_across_a_restart() {
    require_root!();
    let mut topo = Topology::edge(1, 1, 2, &[VIP]);
    topo.serve(VIP, PORT);
    let neighbor = Neighbor::new("node0", ROUTER_V4, &node_v4(0), 65001).timers(9, 3);
    let dir = Bird::temp_dir();
    let router = topo.router.as_ref().unwrap();
    let _bird = Bird::start(
        router,
        dir.clone(),
        &xlb_tests::bird::config(ROUTER_V4, &[neighbor], false, &Bird::log_path(&dir)),
    );
    let config = format!(
        "bgp:\n  local_as: 65001\n  router_id: {}\n  hold_time: 9s\n  withdraw_grace: 200ms\n  peers:\n    - {{ address: {ROUTER_V4}, remote_as: 65000 }}\n{}",
        node_v4(0),
        config(2)
    );
    let agent = topo.start_agent(&config);
    nexthops(&topo, &[node_v4(0)], "announced");
    assert!(topo.xlb(&["drain", "node"]).status.success());
    nexthops(&topo, &[], "withdrawn by the drain");

    topo.agent(agent).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    topo.start_agent(&config);
    wait_for("the session up again", Duration::from_secs(15), || {
        topo.status().filter(|s| s.node.peers.iter().any(|p| p.state == "established")).map(|_| ())
    });
    // Established and settled: still nothing announced.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(topo.router_nexthops(VIP), BTreeSet::new(), "a restored node drain announces nothing");
    let status = topo.status().unwrap();
    assert!(status.node.node_drained && status.announced.is_empty(), "{:?}", status.announced);

    assert!(topo.xlb(&["drain", "node", "--undo"]).status.success());
    nexthops(&topo, &[node_v4(0)], "announced again after the undo");
}
