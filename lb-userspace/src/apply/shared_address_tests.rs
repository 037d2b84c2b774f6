//! One backend address on several ports of a NAT VIP: what the config accepts and refuses, the
//! identities that tell the entries apart, and the slots a rename keeps.

use std::path::Path;

use crate::{
    apply::reconcile::kept_backends,
    config::{self, ConfigError},
    state::desired::{DesiredState, DesiredVip, NodeFacts},
};

fn parse(text: &str) -> Result<config::Config, ConfigError> {
    config::parse(Path::new("ports.yaml"), text)
}

fn vip(mode: &str, backends: &[&str]) -> String {
    let pool = if mode == "nat" { "    snat_pool: p\n" } else { "" };
    let list: String =
        backends.iter().map(|b| format!("      - {{ address: 10.0.0.1, mac: \"02:00:00:00:00:01\"{b} }}\n")).collect();
    format!(
        "vips:\n  - name: web\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: {mode}\n{pool}    backends:\n{list}nat_pools:\n  - {{ name: p, addresses: [198.51.100.1], ports: 30000-30999 }}\n"
    )
}

fn desired(text: &str) -> DesiredVip {
    let facts = NodeFacts { iface_mac: [2, 0, 0, 0, 0, 2], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
    let state = DesiredState::new(&parse(text).expect("valid"), &facts);
    state.vips.into_values().next().expect("one VIP")
}

#[test]
fn a_nat_vip_may_send_to_several_ports_of_one_address() {
    let text = vip("nat", &[", port: 8080", ", port: 9090", ""]);
    let config = parse(&text).expect("two ports of one address, and the VIP's own port, are three backends");
    assert_eq!(config.vips[0].backend_identities(), ["10.0.0.1:8080", "10.0.0.1:9090", "10.0.0.1"]);
    let web = desired(&text);
    let ports: Vec<u16> = web.backends.iter().map(|b| u16::from_be(b.port)).collect();
    assert_eq!(ports, [8080, 9090, 0]);
    assert_eq!(web.serving(), 3, "each entry takes new flows of its own");
    // An address listed once keeps the identity it always had (its Maglev place, slots, drains).
    let once = parse(&vip("nat", &[", port: 8080"])).unwrap();
    assert_eq!(once.vips[0].backend_identities(), ["10.0.0.1"]);
}

#[test]
fn entries_that_would_send_to_the_same_place_are_refused_at_the_second() {
    let cases = [
        (vip("nat", &["", ""]), "without `port` sends to the VIP's port, as an earlier entry"),
        (vip("nat", &[", port: 8080", ", port: 8080"]), "port 8080 is listed twice"),
        // Without `port` an entry keeps the VIP's port, 80: the same place as `port: 80`.
        (vip("nat", &["", ", port: 80"]), "port 80 is listed twice"),
        (vip("dsr-l2", &["", ""]), "direct server return sends to the address itself"),
    ];
    for (text, words) in cases {
        let e = parse(&text).expect_err("refused").to_string();
        assert!(e.contains("vips[0].backends[1].address") && e.contains(words), "{e}");
        // At the second entry's own line.
        let line = 1 + text.lines().enumerate().filter(|(_, l)| l.contains("- { address")).nth(1).unwrap().0;
        assert!(e.contains(&format!("ports.yaml:{line}:")), "{e}");
    }
}

#[test]
fn adding_a_second_port_of_an_address_keeps_the_first_entry_s_slot() {
    let before = desired(&vip("nat", &[", port: 8080"]));
    let after = desired(&vip("nat", &[", port: 8080", ", port: 9090"]));
    assert_eq!(before.backends[0].identity, "10.0.0.1");
    assert_eq!(after.backends[0].identity, "10.0.0.1:8080", "renamed now that the address repeats");
    assert_eq!(kept_backends(&before, &after), [Some(0), None], "the 8080 entry continues; 9090 is new");
    // And back: removing the second entry keeps the first's slot again.
    assert_eq!(kept_backends(&after, &before), [Some(0)]);
    // An address listed once that changes its port is the same backend, rewritten in place.
    let moved = desired(&vip("nat", &[", port: 8081"]));
    assert_eq!(kept_backends(&before, &moved), [Some(0)]);
    // Of two entries, the one whose port changed is a new backend; the other keeps its slot.
    let two = desired(&vip("nat", &[", port: 8080", ", port: 9091"]));
    assert_eq!(kept_backends(&after, &two), [Some(0), None]);
}
