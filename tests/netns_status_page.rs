//! The status page on the metrics listener, in a real browser: a real agent with a VIP fully
//! serving, one with a backend down and one with every backend down, and a BGP session with BFD
//! to BIRD; headless Chromium loads the page and lets it poll in real time while traffic flows.
//! The DOM must show what the agent's own `xlb status --vips --json` says, the counters and a
//! drawn rate chart; a screenshot is kept in target/status-page.png.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use xlb::{serve::stats::VipStats, state::vip_state::VipState};
use xlb_tests::{
    bird::Bird,
    chromium::{self, Browser},
    netns::wait_for,
    require_root,
    topology::{CLIENT_V4, NODE_V4, Topology, backend_mac, backend_v4},
};

const VIP: &str = "10.210.100.1";
const METRICS: &str = "127.0.0.1:9842";

/// A dsr-l2 VIP on `VIP:port` over backends 0..3, with `health` lines (or none).
fn vip(name: &str, port: u16, health: &str) -> String {
    let backends: String = (0..3)
        .map(|i| format!("      - {{ address: \"{}\", mac: \"{}\" }}\n", backend_v4(i), backend_mac(i)))
        .collect();
    format!(
        "  - name: {name}\n    address: {VIP}\n    port: {port}\n    protocol: tcp\n    mode: dsr-l2\n{health}    backends:\n{backends}"
    )
}

/// The page's state of a VIP: what `data-state` must say.
fn state_of(vip: &VipStats) -> &'static str {
    match (vip.up, vip.panic) {
        (false, _) => "down",
        (true, true) => "panic",
        (true, false) => "up",
    }
}

/// BIRD peering with the node, BFD on; it only listens (no kernel routes: the client routes
/// the VIP statically already).
fn bird_config(log: &Path) -> String {
    format!(
        "log \"{}\" all;\nrouter id {CLIENT_V4};\nprotocol device {{ scan time 1; }}\n\
         protocol bfd {{ interface \"*\" {{ min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }}; }}\n\
         protocol bgp xlb {{\n  local {CLIENT_V4} as 65000;\n  neighbor {NODE_V4} as 65010;\n  connect delay time 1;\n  \
         connect retry time 2;\n  hold time 9;\n  keepalive time 3;\n  bfd on;\n  ipv4 {{ import all; export none; }};\n}}\n",
        log.display()
    )
}

fn screenshot_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/status-page.png")
}

#[test]
fn the_status_page_shows_the_agents_state_and_draws_its_rate() {
    require_root!();
    let Some(browser_bin) = chromium::find(module_path!()) else { return };
    let mut topo = Topology::new(3, &[VIP]);
    topo.serve(VIP, 8080);
    // Health listeners on every backend, be1's closed: a real server on two, none on one.
    let health = topo.serve_health(9100);
    health.set(1, false);
    let check = |port| {
        format!("    health_check: {{ type: tcp, port: {port}, interval: 200ms, timeout: 100ms, rise: 2, fall: 2 }}\n")
    };
    // A BGP peer with BFD: BIRD in the client's namespace, on the node's segment.
    let bird_dir = Bird::temp_dir();
    let bird = Bird::start(&topo.clients[0], bird_dir.clone(), &bird_config(&Bird::log_path(&bird_dir)));
    // `cold` checks a port nothing listens on: every backend down, the VIP withdrawn.
    let config = format!(
        "bgp:\n  local_as: 65010\n  router_id: {NODE_V4}\n  hold_time: 9s\n  withdraw_grace: 200ms\n  peers:\n    \
         - {{ address: {CLIENT_V4}, remote_as: 65000, bfd: {{ enabled: true, min_tx: 100ms, min_rx: 100ms, multiplier: 3 }} }}\n\
         vips:\n{}{}{}",
        vip("web", 8080, &check(9100)),
        vip("api", 8081, ""),
        vip("cold", 8082, &check(9300))
    );
    topo.start_agent_with(&config, &["--metrics-listen", METRICS]);
    wait_for("be1 of web and cold down, the session and BFD up", Duration::from_secs(20), || {
        let status = topo.status()?;
        let web = status.snapshot.vip("web")?;
        let cold = status.snapshot.vip("cold")?;
        let peer = status.node.peers.first()?;
        (!web.backends[1].up && !cold.up && peer.state == "established" && peer.bfd.as_deref() == Some("up"))
            .then_some(())
    });

    let profile = topo.dir.join("browser-profile");
    let log = topo.dir.join("browser.log");
    let node = topo.node().name.clone();
    let mut browser = Browser::start(&["ip", "netns", "exec", &node], &browser_bin, &profile, &log);
    browser.open(&format!("http://{METRICS}/"), 1280, 900);

    // Traffic once the page has its first sample, while it polls (it reads status.json once a
    // second, which the agent renders at most once a second): the chart's rates are the agent's
    // counter steps.
    let started = Instant::now();
    wait_for("the page's first sample", Duration::from_secs(20), || {
        browser.eval("document.body?.dataset.atMs ?? null").as_str().map(str::to_owned)
    });
    let (seen, failed) = topo.tcp_requests(VIP, 8080, 150);
    assert_eq!(failed, 0, "{seen:?}");
    assert!(!seen.contains_key("be1"), "be1 is down: {seen:?}");
    let points = wait_for("the chart to draw 2 rates", Duration::from_secs(20), || {
        let points = browser.eval("Number(document.getElementById('chart')?.dataset.points ?? 0)").as_u64()?;
        (points >= 2).then_some(points)
    });
    eprintln!("the chart drew {points} points {:?} after the page opened", started.elapsed());
    // The highest received rate drawn. The 150 connections above are at least 900 packets
    // after the first sample: unless they took more than 9 s, some second of the chart saw
    // 100 of them.
    let top = browser.eval("Math.max(...points.map(p => p.rx))").as_f64().expect("a number");
    assert!(top >= 100.0, "the chart drew no traffic (highest rate {top} packets/s)");

    let dom = browser.dom();
    let shot = screenshot_path();
    browser.screenshot(&shot);
    eprintln!("screenshot: {}", shot.canonicalize().unwrap_or(shot.clone()).display());
    std::fs::write(topo.dir.join("status-page.html"), &dom).expect("keep the DOM");
    let status = topo.status().expect("status");

    // Every VIP and backend as the agent's own status reply has it.
    for vip in &status.snapshot.vips {
        let row = format!("<tr class=\"vip\" data-vip=\"{}\" data-state=\"{}\">", vip.name, state_of(vip));
        assert!(dom.contains(&row), "the page lacks `{row}`:\n{dom}");
        assert!(dom.contains(&format!("{} {}", vip.name, vip.endpoint)), "no endpoint of {}", vip.name);
        // Its state as `xlb status --vips` prints it: label, then healthy (in panic) or
        // serving backends of all.
        let count = if vip.panic { vip.healthy } else { vip.serving };
        let state = format!(">{} {count}/{}</td>", VipState::label(vip.up, vip.panic), vip.backends.len());
        assert!(dom.contains(&state), "the page lacks `{state}` for {}:\n{dom}", vip.name);
        for b in &vip.backends {
            let row = format!(
                "<tr class=\"backend\" data-vip=\"{}\" data-backend=\"{}\" data-up=\"{}\" data-drained=\"{}\">",
                vip.name, b.address, b.up, b.drained
            );
            assert!(dom.contains(&row), "the page lacks `{row}`:\n{dom}");
        }
    }
    // And that state is the one this test set up, not whatever both happened to agree on.
    let web = status.snapshot.vip("web").expect("web");
    assert!(web.up && !web.backends[1].up && web.backends[0].up && web.backends[2].up, "{web:?}");
    assert!(!status.snapshot.vip("cold").expect("cold").up);
    assert!(dom.contains("connection refused"), "the down backend's health error is shown");
    // Down first, then not fully serving, then the rest.
    let at = |name: &str| dom.find(&format!("data-vip=\"{name}\" data-state")).expect("VIP row");
    assert!(at("cold") < at("web") && at("web") < at("api"), "order cold, web, api");

    // The counters section, with the forwarded packets counted.
    for counter in ["forwarded", "pass_not_vip"] {
        assert!(dom.contains(&format!("data-counter=\"{counter}\"")), "no `{counter}` row");
    }
    // The peer, its session and BFD as the agent has them.
    let peer = status.node.peers.first().expect("the peer");
    let row = format!("<tr class=\"peer\" data-peer=\"{CLIENT_V4}\">");
    let cells = format!(">{}</td><td class=\"ok\">{}</td>", peer.remote_as, peer.state);
    let bfd = format!(">{}</td>", peer.bfd.as_deref().expect("BFD"));
    let (_, peer_row) = dom.split_once(&row).unwrap_or_else(|| panic!("no `{row}`:\n{dom}"));
    let peer_row = &peer_row[..peer_row.find("</tr>").expect("row end")];
    assert!(peer_row.contains(&cells) && peer_row.contains(&bfd), "peer row `{peer_row}` lacks {cells} or {bfd}");
    assert!(bird.bgp_state("xlb").is_some_and(|s| s == "Established"), "{}", bird.log());
    assert!(dom.contains(&format!("{} (generation 1)", topo.config_path().display())), "the config path");
    let forwarded = status.snapshot.counter("forwarded").expect("forwarded");
    assert!(forwarded >= 150, "the agent forwarded {forwarded}");
}
