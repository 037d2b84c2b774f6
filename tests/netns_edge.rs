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

/// BIRD on the router with one eBGP session per node (AS 65001), each with `statements` added.
fn start_router(topo: &Topology, statements: &str) -> xlb_tests::bird::Bird {
    use xlb_tests::bird::{Bird, Neighbor, config};
    let neighbors: Vec<Neighbor> = (0..topo.nodes.len())
        .map(|i| {
            Neighbor::new(&format!("node{i}"), xlb_tests::topology::ROUTER_V4, &xlb_tests::topology::node_v4(i), 65001)
                .with(statements)
        })
        .collect();
    let dir = Bird::temp_dir();
    let router = topo.router.as_ref().expect("an edge topology");
    Bird::start(router, dir.clone(), &config(xlb_tests::topology::ROUTER_V4, &neighbors, false, &Bird::log_path(&dir)))
}

fn wait_nexthops(topo: &Topology, vip: &str, want: &[usize], what: &str) -> std::time::Duration {
    let want: BTreeSet<String> = want.iter().map(|&i| xlb_tests::topology::node_v4(i)).collect();
    let start = std::time::Instant::now();
    xlb_tests::netns::wait_for(what, std::time::Duration::from_secs(15), || {
        (topo.router_nexthops(vip) == want).then_some(())
    });
    start.elapsed()
}

fn bgp_config(node: usize, health: bool) -> String {
    let check = if health {
        "    health_check: { type: tcp, port: 9100, interval: 200ms, timeout: 100ms, rise: 1, fall: 2 }\n"
    } else {
        ""
    };
    format!(
        "bgp:\n  local_as: 65001\n  router_id: {}\n  hold_time: 9s\n  withdraw_grace: 1s\n  peers:\n    - {{ address: {}, remote_as: 65000 }}\nvips:\n  - name: web\n    address: {VIP4}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n{check}    backends:\n{}{}",
        xlb_tests::topology::node_v4(node),
        xlb_tests::topology::ROUTER_V4,
        backends(false),
        // The same check: an address is withdrawn only when none of its VIPs is up.
        vip("streams", VIP4, 9000, "tcp", "dsr-l2").replace("    backends:\n", &format!("{check}    backends:\n")),
    )
}

#[test]
fn bgp_announces_from_both_nodes_and_withdraws_on_drain_health_and_shutdown() {
    require_root!();
    let mut topo = Topology::edge(2, 1, 3, &[VIP4]);
    topo.serve(VIP4, 8080);
    topo.serve_streams(VIP4, 9000);
    let health = topo.serve_health(9100);
    let bird = start_router(&topo, "");
    let agents: Vec<usize> = (0..2).map(|i| topo.start_agent_on(i, &bgp_config(i, true), &[])).collect();

    let took = wait_nexthops(&topo, VIP4, &[0, 1], "both nodes as nexthops");
    eprintln!("ECMP route with both nodes after {took:?}");
    let (seen, failed) = topo.tcp_requests(VIP4, 8080, 200);
    assert_eq!(failed, 0, "{seen:?}");
    let status = topo.status_of(0).unwrap();
    assert_eq!(status.announced, [VIP4.to_owned()]);
    assert!(
        status.node.peers.iter().all(|p| p.state == "established" && p.prefixes_sent == 1),
        "{:?}",
        status.node.peers
    );

    // Drain node 0 while long streams run through both nodes: withdrawn; new flows all go
    // through node 1; the streams that went through node 0 now reach node 1, which picks the
    // same backend (Maglev, same config), so they finish; undo brings node 0 back.
    let streams = topo.open_streams(VIP4, 9000, 24);
    assert!(streams.progress(3, std::time::Duration::from_secs(10)), "streams started");
    let via0 = topo.stats_of(0).unwrap().vip("streams").unwrap().new_flows;
    assert!(via0 > 0, "some streams run through node 0");
    let out = topo.xlb_on(0, &["drain", "node"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    wait_nexthops(&topo, VIP4, &[1], "node 0 withdrawn by the drain");
    assert!(streams.progress(5, std::time::Duration::from_secs(10)), "streams go on through node 1");
    let ended = streams.finish();
    assert!(ended.iter().all(Result::is_ok), "no stream broke when node 0 was drained: {ended:?}");
    let before = topo.stats_of(0).unwrap().counter("forwarded").unwrap();
    let (seen, failed) = topo.tcp_requests(VIP4, 8080, 100);
    assert_eq!(failed, 0, "{seen:?}");
    assert_eq!(topo.stats_of(0).unwrap().counter("forwarded").unwrap(), before, "no new flows via the drained node");
    assert!(topo.status_of(0).unwrap().node.node_drained);
    assert!(topo.xlb_on(0, &["drain", "node", "--undo"]).status.success());
    wait_nexthops(&topo, VIP4, &[0, 1], "node 0 back after the undrain");

    // One backend fails: within interval x fall (+1 s) new flows avoid it; established
    // streams to the others are untouched.
    let streams = topo.open_streams(VIP4, 9000, 12);
    assert!(streams.progress(3, std::time::Duration::from_secs(10)), "streams started");
    health.set(0, false);
    let failed_at = std::time::Instant::now();
    xlb_tests::netns::wait_for("be0 out on both nodes", std::time::Duration::from_secs(5), || {
        (0..2).all(|i| topo.status_of(i).is_some_and(|s| !s.snapshot.vip("web").unwrap().backends[0].up)).then_some(())
    });
    let took = failed_at.elapsed();
    assert!(took < std::time::Duration::from_millis(200 * 2 + 1000), "be0 taken out after {took:?}");
    let (seen, failed) = topo.tcp_requests(VIP4, 8080, 100);
    assert_eq!((failed, seen.get("be0")), (0, None), "{seen:?}");
    assert!(streams.progress(3, std::time::Duration::from_secs(10)));
    assert!(streams.finish().iter().all(Result::is_ok), "streams to other backends untouched");
    health.set(0, true);

    // Every backend fails its health check: the VIP is down on both nodes and withdrawn; they
    // recover: announced again.
    for i in 0..3 {
        health.set(i, false);
    }
    let took = wait_nexthops(&topo, VIP4, &[], "the VIP withdrawn when no backend is healthy");
    eprintln!("withdrawn {took:?} after the backends failed (interval 200 ms x fall 2)");
    for i in 0..3 {
        health.set(i, true);
    }
    wait_nexthops(&topo, VIP4, &[0, 1], "the VIP announced again");

    // SIGTERM: node 1 withdraws before it exits.
    let status = topo.agent(agents[1]).signal_and_wait(libc::SIGTERM, std::time::Duration::from_secs(10));
    assert!(status.success());
    assert_eq!(topo.router_nexthops(VIP4), BTreeSet::from([xlb_tests::topology::node_v4(0)]), "withdrawn before exit");
    assert!(bird.protocol("node1").contains("Cease") || bird.bgp_state("node1").as_deref() != Some("Established"));
    let (seen, failed) = topo.tcp_requests(VIP4, 8080, 100);
    assert_eq!(failed, 0, "traffic through the remaining node: {seen:?}");
}

#[test]
fn a_killed_agent_restarts_without_the_router_or_the_streams_noticing() {
    require_root!();
    let mut topo = Topology::edge(2, 1, 3, &[VIP4]);
    topo.serve(VIP4, 8080);
    topo.serve_streams(VIP4, 9000);
    // Graceful restart: BIRD keeps a restarting speaker's routes for its restart time.
    let _bird = start_router(&topo, "graceful restart on;");
    let first = topo.start_agent_on(0, &bgp_config(0, false), &[]);
    topo.start_agent_on(1, &bgp_config(1, false), &[]);
    wait_nexthops(&topo, VIP4, &[0, 1], "both nodes as nexthops");
    let streams = topo.open_streams(VIP4, 9000, 24);
    assert!(streams.progress(3, std::time::Duration::from_secs(10)), "streams started");

    // SIGKILL node 0's agent; watch the router's route every 20 ms until the new agent is up.
    topo.agent(first).signal_and_wait(libc::SIGKILL, std::time::Duration::from_secs(5));
    let (mut missing, mut polls) = (0, 0);
    let mut poll = |topo: &Topology| {
        polls += 1;
        missing += usize::from(topo.router_nexthops(VIP4).len() != 2);
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    let watch_until = std::time::Instant::now() + std::time::Duration::from_millis(600);
    while std::time::Instant::now() < watch_until {
        poll(&topo);
    }
    topo.start_agent_on(0, &bgp_config(0, false), &[]);
    for _ in 0..50 {
        poll(&topo);
    }
    assert_eq!(missing, 0, "the route lost node 0 in {missing} of {polls} polls across the restart");
    wait_nexthops(&topo, VIP4, &[0, 1], "node 0 re-established");
    assert!(streams.progress(5, std::time::Duration::from_secs(10)), "streams go on after the restart");
    let ended = streams.finish();
    assert!(ended.iter().all(Result::is_ok), "streams broken by the restart: {ended:?}");
}

#[test]
fn reloads_on_both_nodes_under_load_through_the_router_fail_no_request() {
    require_root!();
    let mut topo = Topology::edge(2, 1, 3, &[VIP4]);
    topo.serve(VIP4, 8080);
    topo.serve(VIP4, 9000);
    let _bird = start_router(&topo, "");
    let agents: Vec<usize> = (0..2).map(|i| topo.start_agent_on(i, &bgp_config(i, false), &["--no-watch"])).collect();
    wait_nexthops(&topo, VIP4, &[0, 1], "both nodes as nexthops");
    let load = topo.tcp_load(VIP4, 8080, 20_000);
    // Both nodes change together, as a config rollout would: weights change, the streams VIP goes
    // and comes back.
    for n in 1..=10u64 {
        for (i, &agent) in agents.iter().enumerate() {
            let mut text = bgp_config(i, false);
            if n % 2 == 1 {
                text = text.replace("weight: 1 }", "weight: 3 }").replace("weight: 3 }\n", "weight: 1 }\n");
                text = text.split("  - name: streams").next().unwrap().to_owned();
            }
            std::fs::write(topo.config_path_of(i), text).unwrap();
            let pid = topo.agent(agent).child.id() as i32;
            // SAFETY: kill with our own child's pid and a valid signal number.
            unsafe { libc::kill(pid, libc::SIGHUP) };
        }
        for i in 0..2 {
            xlb_tests::netns::wait_for("the reload", std::time::Duration::from_secs(5), || {
                topo.status_of(i)
                    .filter(|s| s.node.config_generation == n + 1 && s.node.last_reload.as_ref().is_some_and(|r| r.ok))
            });
        }
    }
    let (seen, failed) = load.finish();
    assert_eq!(failed, 0, "requests failed during reloads through the router: {seen:?}");
    assert!(seen.values().sum::<usize>() > 50, "the load kept running: {seen:?}");
    assert_eq!(topo.router_nexthops(VIP4).len(), 2, "the VIP stayed announced by both nodes");
}

/// NAT and L7 through both nodes: the router spreads clients over the nodes; each node has its
/// own pool address (its replies come back to it) and its own L7 proxy.
#[test]
fn nat_and_l7_vips_through_two_nodes() {
    require_root!();
    const NAT4: &str = "10.210.100.4";
    const L7: &str = "10.210.100.5";
    let mut topo = Topology::edge(2, 2, 3, &[]);
    topo.serve("0.0.0.0", 9000);
    topo.serve_http("0.0.0.0", 8000);
    let backends = |port: u16| -> String {
        (0..3)
            .map(|i| format!("      - {{ address: {}, port: {port}, weight: {} }}\n", backend_v4(i), WEIGHTS[i]))
            .collect()
    };
    for i in 0..2 {
        let pool = format!("10.210.0.{}", 201 + i);
        topo.nodes[i].ip(&["addr", "add", &format!("{pool}/24"), "dev", "eth0"]);
        let config = format!(
            "nat_pools:\n  - {{ name: p, addresses: [{pool}], ports: 20000-29999 }}\nvips:\n  - name: nat-tcp\n    address: {NAT4}\n    port: 80\n    protocol: tcp\n    mode: nat\n    snat_pool: p\n    backends:\n{b}  - name: nat-udp\n    address: {NAT4}\n    port: 80\n    protocol: udp\n    mode: nat\n    snat_pool: p\n    backends:\n{b}  - name: web-l7\n    address: {L7}\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        - name: all\n          backends:\n{h}",
            b = backends(9000),
            h = backends(8000).replace("      - ", "            - "),
        );
        topo.start_agent_on(i, &config, &[]);
    }
    topo.route_vips_statically(&[NAT4, L7]);

    for (what, port, udp) in [("NAT TCP", 80, false), ("NAT UDP", 80, true)] {
        let mut seen = BTreeMap::new();
        for c in 0..2 {
            let (answers, failed) = if udp {
                topo.udp_requests_from(c, NAT4, port, REQUESTS)
            } else {
                topo.tcp_requests_from(c, NAT4, port, REQUESTS)
            };
            assert_eq!(failed, 0, "{what} from client {c}: {answers:?}");
            merge(&mut seen, answers);
        }
        assert_spread(&seen, &WEIGHTS, TOLERANCE, what);
    }
    let per_node: Vec<u64> = (0..2).map(|i| topo.stats_of(i).unwrap().counter("nat_forwarded").unwrap()).collect();
    let total: u64 = per_node.iter().sum();
    for (i, n) in per_node.iter().enumerate() {
        assert!(*n as f64 > 0.2 * total as f64, "node {i} translated {n} of {total}: ECMP spreads over both");
    }

    let mut seen = BTreeMap::new();
    for c in 0..2 {
        let (answers, failed) = topo.http_requests_from(c, L7, 80, REQUESTS);
        assert_eq!(failed, 0, "L7 from client {c}: {answers:?}");
        merge(&mut seen, answers);
    }
    assert_spread(&seen, &WEIGHTS, TOLERANCE, "L7 HTTP");
}
