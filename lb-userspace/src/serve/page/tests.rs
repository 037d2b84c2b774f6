//! The status page's data: order, caps and what each VIP and backend shows.

use super::*;
use crate::{
    apply::nat::NatUsage,
    config::{Backend, Config, HashFields, Mode, Protocol, Unhashable, Vip},
    state::desired::{BackendStates, DesiredState, NodeFacts},
};

fn vip(name: &str, host: u8, backends: usize) -> Vip {
    let backend = |i: usize| Backend {
        address: format!("10.0.{}.{}", i / 250, i % 250 + 1).parse().unwrap(),
        port: None,
        interface: None,
        weight: 1,
        mac: Some("02:00:00:00:00:01".parse().unwrap()),
        health_check: None,
    };
    Vip {
        name: name.into(),
        address: format!("192.0.2.{host}").parse().unwrap(),
        port: 80,
        port_last: 80,
        protocol: Protocol::Tcp,
        mode: Mode::DsrL2,
        hash: HashFields::FiveTuple,
        table_size: 7,
        unhashable: Unhashable::Pass,
        snat_pool: None,
        backends: (0..backends).map(backend).collect(),
        health_check: None,
        min_healthy: 1,
        panic_threshold: 0,
        l7: None,
        sources: Default::default(),
        syn_cookies: Default::default(),
        connection_limit: None,
    }
}

/// The applied VIPs of `config` with `down` backends down, and a snapshot of them whose
/// backend `i` counted `i` packets.
fn applied_and_snapshot(config: &Config, down: &[(&str, &str)]) -> (BTreeMap<VipKey, AppliedVip>, Snapshot) {
    let states =
        BackendStates { down: down.iter().map(|&(v, b)| (v.to_owned(), b.to_owned())).collect(), ..Default::default() };
    let facts = NodeFacts { iface_mac: [0; 6], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
    let desired = DesiredState::with_states(config, &facts, &states);
    let mut slot = 0;
    let applied: BTreeMap<VipKey, AppliedVip> = desired
        .vips
        .into_iter()
        .map(|(key, vip)| {
            let slots = (slot..slot + vip.backends.len() as u32).collect();
            slot += vip.backends.len() as u32;
            let generations = vec![1; vip.backends.len()];
            (key, AppliedVip { meta: Default::default(), vip, slots, generations, retired: Default::default() })
        })
        .collect();
    let vips = applied
        .values()
        .map(|a| VipStats {
            name: a.vip.name.clone(),
            endpoint: a.vip.endpoint.clone(),
            mode: crate::serve::stats::mode(&a.vip).to_owned(),
            syn_cookies: None,
            up: a.vip.is_up(),
            serving: a.vip.serving(),
            min_healthy: a.vip.min_healthy,
            healthy: a.vip.healthy(),
            panic: a.vip.panic,
            panic_threshold: a.vip.panic_threshold,
            packets: 0,
            bytes: 0,
            new_flows: 0,
            connections: Default::default(),
            backends: a
                .vip
                .backends
                .iter()
                .enumerate()
                .map(|(i, b)| BackendStats {
                    address: b.identity.clone(),
                    weight: b.weight,
                    configured_weight: b.configured_weight,
                    file_weight: b.file_weight,
                    up: b.up,
                    drained: b.drained,
                    mac_known: b.mac_known,
                    health_error: (!b.up).then(|| "connect: connection refused".to_owned()),
                    packets: i as u64,
                    bytes: 0,
                    new_flows: 0,
                    connections: Default::default(),
                })
                .collect(),
        })
        .collect();
    let counters = vec![
        Counter { name: "forwarded".into(), malformed: false, drop: false, outcome: true, value: 10 },
        Counter { name: "drop_no_backend".into(), malformed: false, drop: true, outcome: true, value: 2 },
    ];
    let snapshot = Snapshot {
        rx_packets: 12,
        counters,
        vips,
        flow_table: FlowTableUsage { entries: 3, size: 1024 },
        nat: NatUsage::default(),
        l7: Vec::new(),
        connections_scan: None,
        limited_sources: Vec::new(),
    };
    (applied, snapshot)
}

fn node() -> NodeState {
    NodeState {
        config_path: "/etc/xlb/eth0.yaml".into(),
        config_generation: 4,
        last_reload: None,
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

#[test]
fn vips_not_fully_serving_come_first_with_their_state_reason_and_backends() {
    let config = Config {
        vips: vec![vip("alpha", 1, 2), vip("beta", 2, 2), vip("gamma", 3, 2), vip("delta", 4, 1)],
        ..Default::default()
    };
    let down = [("gamma", "10.0.0.1"), ("gamma", "10.0.0.2"), ("beta", "10.0.0.2")];
    let (applied, mut snapshot) = applied_and_snapshot(&config, &down);
    let l7 = |name: &str, up| crate::l7::L7VipStatus {
        name: name.into(),
        endpoint: "192.0.2.9:80".into(),
        up,
        backends: vec![crate::l7::L7BackendStatus { address: "10.0.9.1:8080".into(), serving: up, in_flight: 2 }],
    };
    snapshot.l7 = vec![l7("proxy-a", true), l7("proxy-b", false)];
    let announce: Announce = ["192.0.2.1".parse().unwrap(), "192.0.2.2".parse().unwrap()].into_iter().collect();
    let page = StatusPage::of(node(), &snapshot, &applied, &announce, 1_700_000_000_123);

    let order: Vec<(&str, &str)> = page.listed.iter().map(|v| (v.name.as_str(), v.state.as_str())).collect();
    assert_eq!(order, [("gamma", "down"), ("beta", "up"), ("alpha", "up"), ("delta", "up")]);
    assert_eq!((page.vips, page.vips_up, page.backends, page.backends_serving), (4, 3, 7, 4));
    assert_eq!((page.unlisted, page.announced, page.rx_packets, page.at_ms), (0, 2, 12, 1_700_000_000_123));
    assert_eq!(page.counters, snapshot.counters);
    let l7_order: Vec<&str> = page.l7.iter().map(|v| v.name.as_str()).collect();
    assert_eq!(l7_order, ["proxy-b", "proxy-a"], "the L7 VIP down first");

    let gamma = &page.listed[0];
    assert!(gamma.reason.contains("no healthy backend: withdrawn"), "{}", gamma.reason);
    assert!(!gamma.announced, "192.0.2.3 is not announced");
    assert_eq!((gamma.label.as_str(), gamma.serving, gamma.healthy), ("DOWN", 0, 0));
    let beta = &page.listed[1];
    assert!(beta.announced);
    // The down backend first, then the config's order; each as `xlb status --vips` shows it.
    let backends: Vec<(&str, &str, bool, u32, u64)> =
        beta.backends.iter().map(|b| (b.address.as_str(), b.state.as_str(), b.up, b.weight, b.packets)).collect();
    assert_eq!(backends, [("10.0.0.2", "DOWN", false, 0, 1), ("10.0.0.1", "up", true, 1, 0)]);
    assert_eq!(beta.backends[0].health_error.as_deref(), Some("connect: connection refused"));
    assert_eq!(beta.backends[0].configured_weight, 1);
}

#[test]
fn the_list_is_bounded_at_any_size() {
    let vips = (0..VIPS_LISTED + 50).map(|i| vip(&format!("v{i:04}"), 1, 1));
    let mut config = Config { vips: vips.collect(), ..Default::default() };
    // Distinct ports on one address; one VIP with more backends than are listed.
    for (i, v) in config.vips.iter_mut().enumerate() {
        v.port = 1000 + i as u16;
        v.port_last = v.port;
    }
    config.vips.push(Vip { port: 80, port_last: 80, ..vip("wide", 2, BACKENDS_LISTED + 9) });
    let (applied, snapshot) = applied_and_snapshot(&config, &[("wide", "10.0.0.40")]);
    let page = StatusPage::of(node(), &snapshot, &applied, &Announce::new(), 0);
    assert_eq!(page.listed.len(), VIPS_LISTED);
    assert_eq!(page.unlisted, 51);
    assert_eq!(page.vips, VIPS_LISTED + 51);
    let wide = &page.listed[0];
    assert_eq!(wide.name, "wide", "a VIP with a backend down outranks the fully serving ones");
    assert_eq!((wide.backends.len(), wide.backends_unlisted), (BACKENDS_LISTED, 9));
    assert_eq!(wide.backends[0].address, "10.0.0.40", "the down backend is listed first");
    // Bounded in bytes too: a few hundred per VIP and backend listed, whatever is unlisted.
    let listed_backends: usize = page.listed.iter().map(|v| v.backends.len()).sum();
    let json = serde_json::to_string(&page).unwrap();
    assert!(json.len() < 400 * VIPS_LISTED + 300 * listed_backends + 10_000, "{} bytes", json.len());
}

#[test]
fn the_page_is_self_contained() {
    for external in ["src=\"http", "href=\"http", "src=\"//", "@import", "url(http", "<link"] {
        assert!(!HTML.contains(external), "the page loads an external asset: {external}");
    }
    assert!(HTML.contains("fetch(\"status.json\""), "the page polls its data");
    assert!(HTML.contains("data-points"), "the chart says how many points it drew");
    // Text from the agent goes in through textContent only, never parsed as HTML.
    assert!(!HTML.contains("innerHTML"));
}
