//! The systemd side: `deploy/xlb@.service` verifies and scores ≤ 3.0 in `systemd-analyze
//! security`, and the agent speaks the notify protocol (READY=1 once the data plane is filled and
//! attached, WATCHDOG=1 while alive, STOPPING=1 on the way out).

use std::{
    os::unix::net::UnixDatagram,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{unique_name, xlb_bin},
    require_root,
    topology::{Topology, backend_mac, backend_v4},
};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/xlb@.service");
/// The most `systemd-analyze security` may rate the unit (0 safest, 10 unsafe).
const MAX_EXPOSURE: f64 = 3.0;

/// Whether `systemd-analyze` is here. Without it the test skips, loudly, except under CI, where
/// a skip is a failure (scripts/setup.sh installs systemd).
fn have_systemd_analyze(test: &str) -> bool {
    if Command::new("systemd-analyze").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(std::env::var_os("CI").is_none(), "{test} needs systemd-analyze and CI is set: install systemd");
    eprintln!("SKIPPED {test}: no systemd-analyze");
    false
}

/// The unit as an instance file (`xlb@eth9.service`) in a directory of its own, its binary
/// path pointed at the xlb under test (verify wants every Exec binary to exist).
fn instance_unit() -> (PathBuf, PathBuf) {
    let text = std::fs::read_to_string(UNIT).expect("read deploy/xlb@.service");
    let dir = std::env::temp_dir().join(unique_name("unit"));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("xlb@eth9.service");
    std::fs::write(&path, text.replace("/usr/local/bin/xlb", xlb_bin().to_str().unwrap())).unwrap();
    (dir, path)
}

fn run(cmd: &mut Command) -> (bool, String, String) {
    let out = cmd.output().expect("run systemd-analyze");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn the_unit_verifies_and_its_exposure_is_at_most_3() {
    if !have_systemd_analyze(module_path!()) {
        return;
    }
    let (dir, unit) = instance_unit();
    let (ok, _, stderr) = run(Command::new("systemd-analyze").arg("verify").arg(&unit));
    assert!(ok && stderr.trim().is_empty(), "systemd-analyze verify: {stderr}");

    let (_, stdout, stderr) = run(Command::new("systemd-analyze").args(["security", "--offline=true"]).arg(&unit));
    let overall = stdout
        .lines()
        .find_map(|line| line.split_once("Overall exposure level for xlb@eth9.service:"))
        .and_then(|(_, rest)| rest.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no overall exposure level in:\n{stdout}\n{stderr}"));
    eprintln!("systemd-analyze security: overall exposure {overall}");
    assert!(overall <= MAX_EXPOSURE, "exposure {overall} > {MAX_EXPOSURE}:\n{stdout}");

    // Only the capabilities xlb uses; every address and path from the instance's config.
    let text = std::fs::read_to_string(UNIT).unwrap();
    let caps = text.lines().find_map(|l| l.strip_prefix("CapabilityBoundingSet=")).expect("a bounding set");
    let caps: Vec<&str> = caps.split_whitespace().collect();
    assert_eq!(caps, ["CAP_BPF", "CAP_PERFMON", "CAP_NET_ADMIN", "CAP_NET_BIND_SERVICE"]);
    let exec = text.lines().find(|l| l.starts_with("ExecStart=")).unwrap();
    assert_eq!(exec, "ExecStart=/usr/local/bin/xlb run --config /etc/xlb/%i.yaml --iface %i");
    for line in ["Type=notify", "WatchdogSec=", "LimitNOFILE=", "StateDirectory=xlb/%i"] {
        assert!(text.lines().any(|l| l.starts_with(line)), "the unit sets {line}");
    }
    std::fs::remove_dir_all(dir).unwrap();
}

/// Receives notifications until `until` says stop or `timeout` passes; returns them in order.
fn receive(socket: &UnixDatagram, timeout: Duration, mut until: impl FnMut(&str) -> bool) -> Vec<String> {
    let deadline = Instant::now() + timeout;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        socket
            .set_read_timeout(Some(deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(1))))
            .unwrap();
        let Ok(n) = socket.recv(&mut buf) else { break };
        let message = String::from_utf8_lossy(&buf[..n]).into_owned();
        let stop = until(&message);
        got.push(message);
        if stop {
            break;
        }
    }
    got
}

fn xdp_attached(topo: &Topology) -> bool {
    String::from_utf8(topo.node().ip(&["link", "show", "eth0"]).stdout).unwrap().contains("xdp")
}

#[test]
fn ready_follows_the_filled_data_plane_and_the_watchdog_is_pinged() {
    require_root!();
    const VIP: &str = "10.210.100.1";
    let mut topo = Topology::new(2, &[VIP]);
    topo.serve(VIP, 8080);
    let socket_path: &Path = &topo.dir.join("notify.sock");
    let socket = UnixDatagram::bind(socket_path).expect("bind the notify socket");
    let mut config = format!(
        "vips:\n  - name: web\n    address: {VIP}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n"
    );
    for i in 0..2 {
        config.push_str(&format!("      - {{ address: \"{}\", mac: \"{}\" }}\n", backend_v4(i), backend_mac(i)));
    }
    let mut cmd = topo.agent_command(0, &config, &[]);
    cmd.env("NOTIFY_SOCKET", socket_path).env("WATCHDOG_USEC", "400000").env_remove("WATCHDOG_PID");
    let agent = topo.spawn(cmd, "xlb run with NOTIFY_SOCKET");

    let before = receive(&socket, Duration::from_secs(30), |m| m.lines().any(|l| l == "READY=1"));
    let ready = before.last().cloned().unwrap_or_default();
    assert!(ready.lines().any(|l| l == "READY=1"), "READY=1 within 30 s: {before:?}");
    // At READY the data plane holds the VIP (the status line counts what the maps hold), XDP
    // is attached and the admin socket answers: checked at once, before anything else.
    assert!(ready.contains("STATUS=1 VIPs on eth0, config generation 1"), "{ready:?}");
    assert!(xdp_attached(&topo), "XDP attached before READY");
    let status = topo.status().expect("the admin socket answers at READY");
    assert_eq!(status.snapshot.vip("web").unwrap().backends.len(), 2);
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 10);
    assert_eq!(failed, 0, "forwarding at READY: {seen:?}");
    // (Watchdog pings may come before READY: they run from before the first fill.)
    assert!(before[..before.len() - 1].iter().all(|m| !m.contains("READY=1")), "{before:?}");
    assert!(before[0].starts_with("STATUS=loading the data plane on eth0"), "{before:?}");

    // WATCHDOG_USEC 400 ms: a ping every 200 ms.
    let pings = receive(&socket, Duration::from_millis(1500), |_| false);
    let count = pings.iter().filter(|m| *m == "WATCHDOG=1").count();
    assert!(count >= 4, "watchdog pings in 1.5 s: {pings:?}");

    // SIGTERM: STOPPING=1 before the agent exits.
    let exited = topo.agent(agent).signal_and_wait(libc::SIGTERM, Duration::from_secs(10));
    assert!(exited.success());
    let after = receive(&socket, Duration::from_millis(500), |_| false);
    assert!(after.iter().any(|m| m.lines().any(|l| l == "STOPPING=1")), "{after:?}");
}
