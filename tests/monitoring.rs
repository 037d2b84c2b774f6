//! `deploy/prometheus/xlb-alerts.yml` passes `promtool check rules` and its unit tests
//! (`xlb-alerts.test.yml`), and every metric and label value the rules and the Grafana
//! dashboard (`deploy/grafana/xlb.json`) name is one the agent exports.

use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    process::Command,
};

use lb_common::Stat;
use xlb::{
    announce::bgp::PeerStatus,
    apply::nat::{NatUsage, PoolUsage},
    serve::admin::{AttachmentStatus, ReloadOutcome},
    serve::metrics::{self, AgentInfo},
    serve::stats::{BackendStats, Counter, Snapshot, VipStats},
};

fn deploy(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy").join(path)
}

fn read(path: &str) -> String {
    std::fs::read_to_string(deploy(path)).unwrap_or_else(|e| panic!("reading deploy/{path}: {e}"))
}

/// Whether promtool is here. Without it the test skips, loudly, except under CI, where a skip
/// is a failure (scripts/setup.sh installs Debian's `prometheus`, which has promtool).
fn have_promtool(test: &str) -> bool {
    if Command::new("promtool").arg("--version").output().is_ok_and(|o| o.status.success()) {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs promtool and CI is set: run scripts/setup.sh (Debian package `prometheus`)"
    );
    eprintln!("SKIPPED {test}: no promtool (Debian package `prometheus`)");
    false
}

fn promtool(args: &[&str]) {
    let out = Command::new("promtool").args(args).current_dir(deploy("prometheus")).output().expect("run promtool");
    assert!(
        out.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    if !have_promtool(module_path!()) {
        return;
    }
    promtool(&["check", "rules", "xlb-alerts.yml"]);
    promtool(&["test", "rules", "xlb-alerts.test.yml"]);
}

/// The exposition of an agent with one of everything: every data-plane counter, a VIP with a
/// backend, a NAT pool, a BGP peer, an interface, a reload and an L7 route.
fn exposition() -> String {
    let counters = Stat::ALL
        .iter()
        .map(|s| Counter {
            name: s.name().to_owned(),
            malformed: s.is_malformed(),
            drop: s.is_drop(),
            outcome: s.is_outcome(),
            value: 1,
        })
        .collect();
    let backend = BackendStats {
        address: "10.0.0.1".into(),
        weight: 1,
        configured_weight: 1,
        file_weight: None,
        up: true,
        drained: false,
        mac_known: true,
        health_error: None,
        packets: 1,
        bytes: 1,
        new_flows: 1,
        connections: Default::default(),
    };
    let snapshot = Snapshot {
        rx_packets: 1,
        counters,
        vips: vec![VipStats {
            name: "web".into(),
            endpoint: "192.0.2.1:80/tcp".into(),
            mode: "nat".into(),
            syn_cookies: Some("auto: on".into()),
            up: true,
            serving: 1,
            min_healthy: 1,
            healthy: 1,
            panic: false,
            panic_threshold: 50,
            packets: 1,
            bytes: 1,
            new_flows: 1,
            connections: Default::default(),
            backends: vec![backend],
        }],
        flow_table: Default::default(),
        nat: NatUsage {
            flows: 1,
            swept: 1,
            pools: vec![PoolUsage { pool: "edge".into(), address: "198.51.100.1".into(), flows: 1, ports: 10 }],
            per_backend: Default::default(),
        },
        l7: Vec::new(),
        connections_scan: None,
        limited_sources: Vec::new(),
    };
    let l7 = xlb::l7::metrics::Metrics::new().expect("the L7 registry");
    l7.route("www", "api").answered(200, 0.01);
    let route = l7.route("www", "api");
    route.connect_errors.inc();
    route.retries.inc();
    route.rate_limited.inc();
    let agent = AgentInfo {
        config_generation: 1,
        last_reload: Some(ReloadOutcome { ok: true, message: "ok".into(), at: 1 }),
        peers: vec![PeerStatus {
            address: "10.0.0.254".parse().unwrap(),
            remote_as: 65000,
            state: "established".into(),
            established_for_secs: Some(1),
            prefixes_sent: 1,
            flaps: 0,
            last_error: Some("hold timer expired".into()),
            last_error_at: Some(1_764_800_000),
            updates_sent: 3,
            updates_received: 1,
            bfd: None,
        }],
        attachments: vec![AttachmentStatus {
            iface: "eth0".into(),
            attached: true,
            operator_detached: false,
            link_down: false,
            mode: Some("native".into()),
            reason: None,
            reattached: 0,
            transmit_errors: Some(0),
        }],
        health_errors: Default::default(),
        health: [(
            ("web".to_owned(), "10.0.0.1".to_owned()),
            xlb::sources::health::BackendHealth {
                up: true,
                last_error: None,
                checks: 4,
                failures: 1,
                latency: xlb::sources::health::Latency {
                    counts: [0, 3, 5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                    sum_micros: 2_504_000,
                },
            },
        )]
        .into_iter()
        .collect(),
        l7: l7.gather(),
    };
    metrics::render(&snapshot, &agent)
}

/// Metric names in the exposition, with each label's values: {name} and {(label, value)}.
fn exported() -> (BTreeSet<String>, BTreeSet<(String, String)>) {
    let text = exposition();
    let mut names = BTreeSet::new();
    let mut labels = BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.is_empty()) {
        let end = line.find(['{', ' ']).unwrap_or(line.len());
        names.insert(line[..end].to_owned());
        if let Some(inside) = line[end..].strip_prefix('{').and_then(|rest| rest.split_once('}')).map(|(l, _)| l) {
            for pair in inside.split(',') {
                if let Some((label, value)) = pair.split_once('=') {
                    labels.insert((label.to_owned(), value.trim_matches('"').to_owned()));
                }
            }
        }
    }
    (names, labels)
}

/// Every `xlb_…` word of `text`.
fn metric_names(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let mut rest = text;
    while let Some(at) = rest.find("xlb_") {
        let word: String =
            rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
        // `xlb_` inside a longer word (`wt_xlb_`) is not a metric.
        let before = rest[..at].chars().next_back();
        if !before.is_some_and(|c| c.is_ascii_alphanumeric() || c == '_') {
            found.insert(word.clone());
        }
        rest = &rest[at + word.len().max(4)..];
    }
    found
}

/// Every `label="value"` matcher of `text` for the labels the data plane fills from counter
/// names (`reason`, `outcome`, `event`).
fn counter_matchers(text: &str) -> BTreeSet<(String, String)> {
    let mut found = BTreeSet::new();
    for label in ["reason", "outcome", "event"] {
        for quote in ["=\"", "=\\\""] {
            let needle = format!("{label}{quote}");
            let mut rest = text;
            while let Some(at) = rest.find(&needle) {
                let value: String = rest[at + needle.len()..]
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
                    .collect();
                found.insert((label.to_owned(), value));
                rest = &rest[at + needle.len()..];
            }
        }
    }
    found
}

#[test]
fn rules_and_dashboard_name_only_metrics_the_agent_exports() {
    let (names, labels) = exported();
    // The exposition is the real one: the families the README documents are there.
    for name in [
        "xlb_vip_up",
        "xlb_backend_up",
        "xlb_drops_total",
        "xlb_bgp_session_up",
        "xlb_xdp_attached",
        "xlb_syn_cookies_active",
    ] {
        assert!(names.contains(name), "{name} not exported: {names:?}");
    }
    for file in ["prometheus/xlb-alerts.yml", "prometheus/xlb-alerts.test.yml", "grafana/xlb.json"] {
        let text = read(file);
        let used = metric_names(&text);
        assert!(used.len() >= 5, "{file} names metrics: {used:?}");
        let unknown: Vec<&String> = used.iter().filter(|n| !names.contains(*n)).collect();
        assert!(unknown.is_empty(), "deploy/{file} names metrics the agent does not export: {unknown:?}");
        let unknown: Vec<_> = counter_matchers(&text).into_iter().filter(|m| !labels.contains(m)).collect();
        assert!(unknown.is_empty(), "deploy/{file} matches counter names the agent does not export: {unknown:?}");
    }
}

#[test]
fn the_dashboard_is_grafana_json_with_a_query_per_panel() {
    let dashboard: serde_json::Value = serde_json::from_str(&read("grafana/xlb.json")).expect("JSON");
    assert_eq!(dashboard["uid"], "xlb-overview");
    let panels = dashboard["panels"].as_array().expect("panels");
    let mut ids = BTreeSet::new();
    for panel in panels {
        assert!(ids.insert(panel["id"].as_u64().expect("an id")), "duplicate panel id: {panel}");
        assert!(panel["title"].as_str().is_some_and(|t| !t.is_empty()), "{panel}");
        if panel["type"] == "row" {
            continue;
        }
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{}", panel["title"]);
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            assert!(expr.contains("xlb_"), "{}: {expr}", panel["title"]);
            assert_eq!(target["datasource"]["uid"], "${datasource}", "{}", panel["title"]);
        }
    }
    assert!(panels.len() >= 20, "{} panels", panels.len());
}

#[test]
fn the_exposition_passes_promtool_check_metrics() {
    if !have_promtool(module_path!()) {
        return;
    }
    let text = exposition();
    for family in ["process_resident_memory_bytes", "process_open_fds", "xlb_build_info", "xlb_health_checks_total"] {
        assert!(text.contains(&format!("# TYPE {family} ")), "the exposition lacks {family}:\n{text}");
    }
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run promtool");
    {
        use std::io::Write as _;
        child.stdin.take().expect("stdin").write_all(text.as_bytes()).expect("write the exposition");
    }
    let out = child.wait_with_output().expect("promtool");
    assert!(
        out.status.success(),
        "promtool check metrics:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
