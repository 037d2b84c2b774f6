//! The CLI's output paths, without root: a reader that goes away (`xlb status | head`) ends the
//! command cleanly, `--log-format json` covers every command's errors and warnings, and the
//! status shows ages and modes. A fake agent answers on an admin socket of the test's own.

use std::{
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    sync::Arc,
};

use xlb::{
    serve::admin::{self, NodeState, ReloadOutcome, Reply, Request},
    serve::stats::{BackendStats, Snapshot, VipStats},
    serve::summary::Summary,
};
use xlb_tests::netns::{unique_name, xlb_bin};

/// A snapshot of `vips` VIPs with two backends each: ~150 bytes a VIP in `status --vips`.
fn snapshot(vips: usize) -> Snapshot {
    let backend = |i: usize| BackendStats {
        address: format!("10.0.{}.{}", i >> 8, i & 255),
        weight: 1,
        configured_weight: 1,
        file_weight: None,
        up: true,
        drained: false,
        mac_known: true,
        health_error: None,
        packets: 1,
        bytes: 100,
        new_flows: 1,
        connections: Default::default(),
    };
    Snapshot {
        rx_packets: 0,
        counters: Vec::new(),
        vips: (0..vips)
            .map(|i| VipStats {
                name: format!("vip{i}"),
                endpoint: format!("192.0.2.{}:{}/tcp", i % 250, 1000 + i),
                mode: if i % 2 == 0 { "dsr-l2".into() } else { "nat".into() },
                syn_cookies: None,
                up: true,
                serving: 2,
                min_healthy: 1,
                healthy: 2,
                panic: false,
                panic_threshold: 50,
                packets: 2,
                bytes: 200,
                new_flows: 2,
                connections: Default::default(),
                backends: vec![backend(2 * i), backend(2 * i + 1)],
            })
            .collect(),
        flow_table: Default::default(),
        nat: Default::default(),
        l7: Vec::new(),
        connections_scan: None,
        limited_sources: Vec::new(),
    }
}

fn node() -> NodeState {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    NodeState {
        config_path: "/etc/xlb/test.yaml".into(),
        config_generation: 2,
        last_reload: Some(ReloadOutcome { ok: true, message: "1 added".into(), at: now - 125 }),
        node_drained: false,
        peers: Vec::new(),
        pending_vips: 0,
        reconcile_error: None,
        state: None,
        interfaces: Vec::new(),
        global_limits: None,
        conn_limits: Vec::new(),
    }
}

/// A fake agent answering status, summary and stats requests on a socket of its own, until
/// dropped (the runtime it serves on goes with it).
struct FakeAgent {
    socket: PathBuf,
    /// Serves the socket; kept alive with the agent.
    _runtime: tokio::runtime::Runtime,
    server: tokio::task::JoinHandle<()>,
}

impl FakeAgent {
    fn start(vips: usize) -> Self {
        let socket = std::env::temp_dir().join(format!("{}.sock", unique_name("cli")));
        let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let snapshot = Arc::new(snapshot(vips));
        let handle = move |request: Request| {
            let snapshot = Arc::clone(&snapshot);
            Box::pin(async move {
                match request {
                    Request::Status => Reply::Status(admin::Status {
                        node: node(),
                        announced: Vec::new(),
                        snapshot: (*snapshot).clone(),
                    }),
                    Request::Summary => Reply::Summary(Summary::of(
                        node(),
                        &Default::default(),
                        0,
                        Default::default(),
                        Default::default(),
                    )),
                    Request::Stats => Reply::Stats((*snapshot).clone()),
                    other => Reply::Error(format!("the fake agent does not do {other:?}")),
                }
            }) as admin::ReplyFuture
        };
        let server = runtime.block_on(admin::serve(&socket, Arc::new(handle))).expect("serve the fake agent");
        FakeAgent { socket, _runtime: runtime, server }
    }
}

impl Drop for FakeAgent {
    fn drop(&mut self) {
        self.server.abort();
        let _ = std::fs::remove_file(&self.socket);
    }
}

/// Runs xlb with `args`, its standard output a pipe whose reading end is already closed (as
/// when `head` has exited).
fn into_closed_pipe(args: &[&str]) -> Output {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    Command::new(xlb_bin()).args(args).stdout(writer).stderr(Stdio::piped()).output().expect("run xlb")
}

fn assert_clean_exit(args: &[&str], out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked") && !stderr.contains("RUST_BACKTRACE"), "xlb {args:?} panicked: {stderr}");
    assert_eq!(out.status.code(), Some(0), "xlb {args:?} into a closed pipe: {:?}, stderr: {stderr}", out.status);
    assert!(stderr.is_empty(), "xlb {args:?} says nothing about the closed pipe: {stderr}");
}

#[test]
fn a_closed_stdout_ends_every_command_cleanly() {
    let agent = FakeAgent::start(2000);
    let socket = agent.socket.to_str().unwrap();
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.yaml");
    let example = example.to_str().unwrap();
    let commands: [&[&str]; 8] = [
        &["status", "--vips", "--admin-socket", socket],
        &["status", "--admin-socket", socket],
        &["status", "--json", "--admin-socket", socket],
        &["stats", "--admin-socket", socket],
        &["stats", "--json", "--admin-socket", socket],
        &["check", example],
        &["--help"],
        &["--version"],
    ];
    for args in commands {
        assert_clean_exit(args, &into_closed_pipe(args));
    }
}

#[test]
fn errors_still_fail_with_stdout_closed() {
    let args = ["status", "--admin-socket", "/nonexistent/xlb.sock"];
    let out = into_closed_pipe(&args);
    assert_eq!(out.status.code(), Some(1));
    // The cause said once, though the error and its source both carry it.
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr, "xlb: admin socket /nonexistent/xlb.sock: No such file or directory (os error 2)\n");
}

#[test]
fn status_shows_ages_and_modes() {
    let agent = FakeAgent::start(3);
    let out = Command::new(xlb_bin())
        .args(["status", "--vips", "--admin-socket"])
        .arg(&agent.socket)
        .output()
        .expect("run xlb status");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("last reload: ok 2m5s ago — 1 added"), "{text}");
    let header = text.lines().find(|l| l.starts_with("VIP / backend")).expect("a header");
    assert_eq!(header.split_whitespace().nth(3), Some("mode"), "{text}");
    let vip1 = text.lines().find(|l| l.starts_with("vip1 ")).expect("vip1's line");
    assert_eq!(vip1.split_whitespace().nth(2), Some("nat"), "{text}");
}

fn json_lines(stderr: &[u8]) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stderr)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON log line ({e}): {l}")))
        .collect()
}

#[test]
fn check_logs_json_with_log_format_json() {
    let path = std::env::temp_dir().join(format!("{}.yaml", unique_name("json")));
    std::fs::write(&path, "vips:\n  - name: a\n    address: 192.0.2.1\n    port: 80\n    protocol: sctp\n").unwrap();
    let out = Command::new(xlb_bin()).args(["--log-format", "json", "check"]).arg(&path).output().unwrap();
    assert!(!out.status.success());
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "ERROR", "{lines:?}");
    let message = lines[0]["fields"]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{}:5:", path.display())) && message.contains("sctp"), "{message}");

    // A warning (the BPF maps over 2 GiB) is a JSON line too; the result stays on stdout.
    let mut text = String::from("vips:\n");
    for i in 0..10_000 {
        text.push_str(&format!(
            "  - {{ name: v{i}, address: 198.18.{}.{}, port: 80, protocol: tcp, mode: dsr-l2, maglev_table_size: 65537, backends: [{{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\" }}] }}\n",
            i >> 8,
            i & 255
        ));
    }
    std::fs::write(&path, text).unwrap();
    let out = Command::new(xlb_bin()).args(["check", "--log-format", "json"]).arg(&path).output().unwrap();
    let _ = std::fs::remove_file(&path);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = json_lines(&out.stderr);
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["level"], "WARN", "{lines:?}");
    assert!(lines[0]["fields"]["message"].as_str().unwrap().starts_with("the BPF maps would take ~"), "{lines:?}");
    assert!(String::from_utf8_lossy(&out.stdout).contains(": ok, 10000 VIPs"));
}
