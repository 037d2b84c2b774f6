//! The edge as an operator runs it: clients → a router spreading VIP traffic over two xlb nodes
//! by ECMP (L4 hash) → backends on the segment, with real TCP and UDP servers.

use std::collections::{BTreeMap, BTreeSet};

use xlb_tests::{
    require_root,
    topology::{Topology, assert_spread, backend_v4, backend_v6},
};

const VIP4: &str = "10.210.100.1";
const VIP6: &str = "fd00:210:100::1";
const WEIGHTS: [u32; 3] = [1, 2, 3];
const REQUESTS: usize = 300;
/// Two clients × 300 requests: binomial σ ≤ 0.021 per share; 0.09 is 4.4σ.
const TOLERANCE: f64 = 0.09;

fn backends(v6: bool) -> String {
    (0..3)
        .map(|i| {
            let address = if v6 { backend_v6(i) } else { backend_v4(i) };
            format!("      - {{ address: \"{address}\", weight: {} }}\n", WEIGHTS[i])
        })
        .collect()
}

fn vip(name: &str, address: &str, port: u16, protocol: &str, mode: &str) -> String {
    format!(
        "  - name: {name}\n    address: {address}\n    port: {port}\n    protocol: {protocol}\n    mode: {mode}\n    backends:\n{}",
        backends(address.contains(':'))
    )
}

/// Every mode × family × protocol: one VIP each (dsr-l2 on port 8080, dsr-ipip on 9080, TCP
/// and UDP alike).
fn config() -> String {
    let mut yaml =
        String::from("node:\n  tunnel_source_v4: 10.210.0.0/24\n  tunnel_source_v6: fd00:210::/112\nvips:\n");
    for (family, address) in [("4", VIP4), ("6", VIP6)] {
        for (mode, port) in [("dsr-l2", 8080), ("dsr-ipip", 9080)] {
            let short = if mode == "dsr-l2" { "l2" } else { "ipip" };
            yaml.push_str(&vip(&format!("{short}-tcp{family}"), address, port, "tcp", mode));
            yaml.push_str(&vip(&format!("{short}-udp{family}"), address, port, "udp", mode));
        }
    }
    yaml
}

fn merge(into: &mut BTreeMap<String, usize>, from: BTreeMap<String, usize>) {
    for (k, v) in from {
        *into.entry(k).or_insert(0) += v;
    }
}

#[test]
fn two_nodes_behind_an_ecmp_router_serve_every_mode_and_agree_on_backends() {
    require_root!();
    let mut topo = Topology::edge(2, 2, 3, &[VIP4, VIP6]);
    for vip in [VIP4, VIP6] {
        for port in [8080, 9080] {
            topo.serve(vip, port);
        }
    }
    topo.decap_on_backends();
    let config = config();
    topo.start_agent_on(0, &config, &[]);
    topo.start_agent_on(1, &config, &[]);
    topo.route_vips_statically(&[VIP4, VIP6]);

    for vip in [VIP4, VIP6] {
        for (mode, port) in [("dsr-l2", 8080), ("dsr-ipip", 9080)] {
            let what = format!("{mode} {vip}");
            let (mut tcp, mut udp) = (BTreeMap::new(), BTreeMap::new());
            for c in 0..2 {
                let (seen, failed) = topo.tcp_requests_from(c, vip, port, REQUESTS);
                assert_eq!(failed, 0, "{what} TCP from client {c}: {seen:?}");
                merge(&mut tcp, seen);
                let (seen, failed) = topo.udp_requests_from(c, vip, port, REQUESTS);
                assert_eq!(failed, 0, "{what} UDP from client {c}: {seen:?}");
                merge(&mut udp, seen);
            }
            assert_spread(&tcp, &WEIGHTS, TOLERANCE, &format!("{what} TCP"));
            assert_spread(&udp, &WEIGHTS, TOLERANCE, &format!("{what} UDP"));
        }
    }

    // The router spread the flows over both nodes.
    let per_node: Vec<u64> = (0..2).map(|i| topo.stats_of(i).unwrap().counter("forwarded").unwrap()).collect();
    let total: u64 = per_node.iter().sum();
    for (i, n) in per_node.iter().enumerate() {
        assert!(*n as f64 > 0.2 * total as f64, "node {i} forwarded {n} of {total}: ECMP spreads over both");
    }

    // Consistency: a flow goes to the same backend whichever node the router picks (Maglev is
    // deterministic and both nodes hold the same configuration). Pin the route to one node,
    // then the other, and replay the same 5-tuples.
    let router = topo.router.as_ref().unwrap();
    let backend_by_node = |node: usize| -> Vec<String> {
        let via = xlb_tests::topology::node_v4(node);
        router.ip(&["route", "replace", &format!("{VIP4}/32"), "via", &via]);
        (0..50).map(|i| topo.udp_from_port(0, VIP4, 8080, 42000 + i).expect("answer")).collect()
    };
    let via0 = backend_by_node(0);
    let via1 = backend_by_node(1);
    assert_eq!(via0, via1, "the same flows reach the same backends through either node");
    assert!(via0.iter().collect::<BTreeSet<_>>().len() > 1, "the flows spread: {via0:?}");
}
