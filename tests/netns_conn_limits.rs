//! Concurrent connection limits end to end (`connection_limit.concurrent`): one xlb node in
//! front of real TCP servers, a dsr-l2 VIP and a nat VIP each limited to `LIMIT` open
//! connections with RSTs. Held connections fill the limit; one more is refused at once; when
//! clients close some, as many new ones get in (within the limits thread's recount), and no
//! more.

use std::{
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::wait_for,
    require_root,
    topology::{Streams, Topology, backends_yaml},
};

const L2: &str = "10.210.100.1";
const NAT: &str = "10.210.100.3";
const POOL: &str = "10.210.0.201";
const LIMIT: usize = 5;

fn config() -> String {
    let backends = |extra: &str| backends_yaml(3, extra);
    format!(
        "nat_pools:\n  - name: pool\n    addresses: [{POOL}]\n    ports: 20000-59999\nvips:\n\
         - name: l2\n    address: {L2}\n    port: 8080\n    protocol: tcp\n    mode: dsr-l2\n    \
         connection_limit: {{ concurrent: {LIMIT}, on_limit: reset }}\n    backends:\n{}\
         - name: nat\n    address: {NAT}\n    port: 8080\n    protocol: tcp\n    mode: nat\n    snat_pool: pool\n    \
         connection_limit: {{ concurrent: {LIMIT}, on_limit: reset }}\n    backends:\n{}",
        backends(""),
        backends(", port: 8080"),
    )
    .replace("\n- name", "\n  - name")
}

/// One connection attempt from the client: whether it was accepted (a refused one fails at
/// once with the RST: "connection refused").
fn attempt(topo: &Topology, vip: &str) -> Result<(), std::io::ErrorKind> {
    let addr = SocketAddr::new(vip.parse().expect("VIP"), 8080);
    let started = Instant::now();
    let outcome = topo.clients[0]
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(3)).map(drop).map_err(|e| e.kind()))
        .join()
        .expect("client thread");
    if outcome.is_err() {
        assert!(started.elapsed() < Duration::from_secs(2), "refused at once by the RST, not by a timeout");
    }
    outcome
}

/// Held connections exchanging.
fn hold(topo: &Topology, vip: &str, count: usize, what: &str) -> Streams {
    let streams = topo.open_streams(vip, 8080, count);
    let exchanged = streams.progress(2, Duration::from_secs(10));
    if !exchanged {
        let status = String::from_utf8_lossy(&topo.xlb(&["status"]).stdout).into_owned();
        panic!("{vip}: {what} exchange: {:?}\n{status}", streams.finish());
    }
    streams
}

#[test]
fn a_concurrent_limit_holds_open_connections_and_lets_in_as_many_as_closed() {
    require_root!();
    let mut topo = Topology::new(3, &[L2, NAT]);
    topo.node().ip(&["addr", "add", &format!("{POOL}/24"), "dev", "eth0"]);
    topo.serve_streams("0.0.0.0", 8080);
    topo.start_agent(&config());

    for (name, vip) in [("l2", L2), ("nat", NAT)] {
        let kept = hold(&topo, vip, LIMIT - 2, "the first connections");
        let closing = hold(&topo, vip, 2, "two more, to the limit");
        // The limits thread counts every 100 ms or so; until it sees them, the ceiling alone
        // (set from the count before they opened) refuses the next.
        assert_eq!(attempt(&topo, vip), Err(std::io::ErrorKind::ConnectionRefused), "{name}: one over the limit");
        let status = wait_for("the count in xlb status", Duration::from_secs(5), || {
            let text = String::from_utf8_lossy(&topo.xlb(&["status"]).stdout).into_owned();
            text.lines()
                .any(|l| l.contains(&format!(" {name} ")) && l.contains(&format!("{LIMIT}/{LIMIT}")))
                .then_some(text)
        });
        assert!(status.contains("open/allowed"), "{status}");
        // Two clients close: their FINs mark their entries (NAT: their flows closing), and the
        // next count frees two places, not three.
        for r in closing.finish() {
            assert!(r.is_ok(), "{name}: a closing stream had failed: {r:?}");
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        while attempt(&topo, vip).is_err() {
            if Instant::now() > deadline {
                let conns = String::from_utf8_lossy(&topo.xlb(&["conns", name]).stdout).into_owned();
                let status = String::from_utf8_lossy(&topo.xlb(&["status"]).stdout).into_owned();
                panic!("{name}: no place freed after two clients closed within 5 s\n{conns}\n{status}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        // The one just accepted closed again at once; its place comes back at the next count.
        std::thread::sleep(Duration::from_millis(500));
        let again = hold(&topo, vip, 2, "two new connections in the freed places");
        std::thread::sleep(Duration::from_millis(500));
        assert_eq!(attempt(&topo, vip), Err(std::io::ErrorKind::ConnectionRefused), "{name}: full again");
        assert!(kept.progress(2, Duration::from_secs(5)), "{name}: the held connections never noticed");
        for r in kept.finish().into_iter().chain(again.finish()) {
            assert!(r.is_ok(), "{name}: {r:?}");
        }
    }
    let stats = topo.stats().expect("stats");
    assert!(stats.counter("conn_limit_reset").unwrap_or(0) >= 4, "refusals answered with RSTs and counted");
}
