//! A global limit held across nodes: xlb nodes behind an ECMP router share one route's
//! requests/s threshold through a real Redis server (in a backend's namespace), each enforcing
//! its share in its L7 tier. Clients open a connection per request (so ECMP spreads them over
//! the nodes) as fast as they can, well above the threshold.
//!
//! - Two nodes: the 200s the clients get stay within ±10 % of the threshold.
//! - A third node joins and takes traffic: the total does not rise.
//! - A global concurrency limit: waves of slow requests on both nodes at once, never more in
//!   progress over both than the threshold (a local limit would let each node take that many).
//! - Redis stops: every node falls back to threshold ÷ the nodes it learned (`xlb status` says
//!   so) and the total still holds; Redis back: the nodes share through it again.
//! - An L4 VIP's global connection limit (enforced in XDP, refused SYNs answered with a RST):
//!   the connections the backends answer over both nodes stay within ±10 % of the threshold,
//!   each node's bucket at its share; Redis away: each node at threshold ÷ 2, still within.
//! - An L4 VIP's global concurrent-connections limit: held connections over both nodes never
//!   pass the threshold and fill it once the slots follow demand; Redis away: threshold ÷ 2 each.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener},
    sync::{
        Arc, Barrier,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};

use xlb::sources::limits::{LimitMode, LimitsView};
use xlb_tests::{
    http_load::{
        HttpLoadOutcome, get_status, hold_connections, http_load, redis_server as redis_server_command, tcp_load,
    },
    netns::wait_for,
    require_root,
    topology::{Topology, backend_v4, node_v4},
};

const VIP: &str = "10.210.100.6";
const THRESHOLD: u32 = 200;
const BURST: u32 = 20;
/// Load threads per client (closed loop: a request, its answer, the next).
const THREADS: usize = 4;
/// How long each measured phase offers load, and the start of it left out (shares settling).
const PHASE: Duration = Duration::from_secs(4);
const SETTLE: Duration = Duration::from_millis(700);
const TOLERANCE: f64 = 0.10;

fn config(node: usize) -> String {
    format!(
        "global_limits:\n  redis: {redis}:6379\n  node: lb{node}\n  nodes: 2\n  renew_every: 100ms\n\
         vips:\n  - name: web\n    address: {VIP}\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        \
         - name: all\n          rate_limit: {{ requests_per_second: {THRESHOLD}, burst: {BURST}, scope: global }}\n          \
         backends:\n            - {{ address: {b0}, port: 8000 }}\n            - {{ address: {b1}, port: 8000 }}\n",
        redis = backend_v4(2),
        b0 = backend_v4(0),
        b1 = backend_v4(1),
    )
}

/// The router's route to the VIP: ECMP over `nodes`.
fn route_over(topo: &Topology, nodes: usize) {
    route_vip_over(topo, VIP, nodes);
}

fn route_vip_over(topo: &Topology, vip: &str, nodes: usize) {
    let mut args: Vec<String> = ["route", "replace", &format!("{vip}/32")].iter().map(|s| s.to_string()).collect();
    for i in 0..nodes {
        args.extend(["nexthop".into(), "via".into(), node_v4(i)]);
    }
    topo.router.as_ref().expect("edge").ip(&args.iter().map(String::as_str).collect::<Vec<_>>());
}

fn redis_server(topo: &mut Topology) -> usize {
    let cmd = redis_server_command(&topo.backends[2], &backend_v4(2));
    topo.spawn(cmd, "redis-server")
}

fn limits_of(topo: &Topology, node: usize) -> Option<LimitsView> {
    topo.status_of(node).and_then(|s| s.node.global_limits)
}

/// Waits until `nodes` nodes all report `mode` with `live` nodes (when given).
fn wait_mode(topo: &Topology, nodes: usize, mode: LimitMode, live: Option<u32>, what: &str) {
    wait_for(what, Duration::from_secs(10), || {
        (0..nodes)
            .all(|i| limits_of(topo, i).is_some_and(|v| v.mode == mode && live.is_none_or(|n| v.nodes == n)))
            .then_some(())
    });
}

fn load(topo: &Topology) -> HttpLoadOutcome {
    let vip = format!("{VIP}:80").parse().expect("address");
    http_load(&topo.clients, vip, THREADS, PHASE, SETTLE)
}

fn within(outcome: &HttpLoadOutcome, what: &str) {
    within_of(outcome, THRESHOLD, what);
}

fn within_of(outcome: &HttpLoadOutcome, threshold: u32, what: &str) {
    let rate = outcome.ok_per_second;
    let (low, high) = (f64::from(threshold) * (1.0 - TOLERANCE), f64::from(threshold) * (1.0 + TOLERANCE));
    assert!(
        (low..=high).contains(&rate),
        "{what}: {rate:.1} admitted/s, not within ±10 % of {threshold} ({outcome:?})"
    );
    assert!(outcome.limited > outcome.attempts / 3, "{what}: the load was not far above the threshold: {outcome:?}");
}

#[test]
fn a_global_limit_holds_over_two_then_three_nodes_and_falls_back_without_redis() {
    require_root!();
    let mut topo = Topology::edge(3, 2, 3, &[]);
    topo.serve_http("0.0.0.0", 8000);
    let redis = redis_server(&mut topo);
    for i in 0..2 {
        topo.start_agent_on(i, &config(i), &[]);
    }
    route_over(&topo, 2);
    wait_mode(&topo, 2, LimitMode::Shared, Some(2), "both nodes sharing through Redis");

    let two = load(&topo);
    eprintln!("two nodes: {two:?}");
    within(&two, "two nodes");
    let shares: Vec<f64> = (0..2).map(|i| limits_of(&topo, i).unwrap().limits[0].share).collect();
    let sum: f64 = shares.iter().sum();
    assert!((sum - f64::from(THRESHOLD)).abs() < f64::from(THRESHOLD) * TOLERANCE, "shares {shares:?}");

    // A third node starts and the router spreads over it too.
    topo.start_agent_on(2, &config(2), &[]);
    wait_mode(&topo, 3, LimitMode::Shared, Some(3), "three nodes sharing through Redis");
    route_over(&topo, 3);
    let three = load(&topo);
    eprintln!("three nodes: {three:?}");
    within(&three, "three nodes");
    let admitted_by_third = limits_of(&topo, 2).unwrap().limits[0].admitted;
    assert!(admitted_by_third > u64::from(THRESHOLD) / 3, "the third node took part: {admitted_by_third} admitted");

    // Redis goes away: threshold ÷ 3 each (the count learned from Redis), said in status.
    topo.agent(redis).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    wait_mode(&topo, 3, LimitMode::Fallback, Some(3), "every node in fallback");
    for i in 0..3 {
        let view = limits_of(&topo, i).unwrap();
        let share = view.limits[0].share;
        assert!((share - f64::from(THRESHOLD) / 3.0).abs() < 0.01, "node {i}: share {share} in fallback");
        let status = topo.xlb_on(i, &["status"]);
        let text = String::from_utf8_lossy(&status.stdout);
        assert!(text.contains("global limits: FALLBACK"), "node {i} status:\n{text}");
    }
    let fallback = load(&topo);
    eprintln!("fallback: {fallback:?}");
    within(&fallback, "Redis away");

    let _redis = redis_server(&mut topo);
    wait_mode(&topo, 3, LimitMode::Shared, Some(3), "the nodes back to sharing through Redis");
}

/// Requests of the slow route that may be in progress over all nodes.
const CONCURRENT: u32 = 4;
/// How long the slow backend holds each request.
const SLOW: Duration = Duration::from_millis(400);

/// Requests the slow backend holds now, and the most it held at once since `peak` was reset.
#[derive(Debug, Default)]
struct InProgress {
    now: AtomicUsize,
    peak: AtomicUsize,
}

/// A backend on `address:8100` that answers every request after `SLOW`, each on a thread of
/// its own, counting them in `held`; stops when `stop` is set.
fn slow_backend(
    topo: &Topology,
    address: String,
    stop: Arc<AtomicBool>,
    held: Arc<InProgress>,
) -> std::thread::JoinHandle<()> {
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let handle = topo.backends[0].run(move || {
        let listener = TcpListener::bind(format!("{address}:8100")).expect("bind the slow backend");
        listener.set_nonblocking(true).expect("nonblocking");
        let _ = ready_tx.send(());
        while !stop.load(Ordering::Relaxed) {
            match listener.accept() {
                Ok((mut conn, _)) => {
                    let held = Arc::clone(&held);
                    std::thread::spawn(move || {
                        let _ = conn.set_nonblocking(false);
                        let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut buf = [0u8; 2048];
                        if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                            let now = held.now.fetch_add(1, Ordering::SeqCst) + 1;
                            held.peak.fetch_max(now, Ordering::SeqCst);
                            std::thread::sleep(SLOW);
                            held.now.fetch_sub(1, Ordering::SeqCst);
                        }
                        let _ = conn.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n");
                    });
                }
                Err(_) => std::thread::sleep(Duration::from_millis(2)),
            }
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).expect("slow backend started");
    handle
}

fn concurrency_config(node: usize) -> String {
    format!(
        "global_limits:\n  redis: {redis}:6379\n  node: lb{node}\n  nodes: 2\n  renew_every: 100ms\n\
         vips:\n  - name: web\n    address: {VIP}\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        \
         - name: slow\n          concurrency_limit: {{ requests: {CONCURRENT}, scope: global }}\n          \
         backends:\n            - {{ address: {b0}, port: 8100 }}\n",
        redis = backend_v4(2),
        b0 = backend_v4(0),
    )
}

#[test]
fn a_global_concurrency_limit_holds_over_two_nodes() {
    require_root!();
    let mut topo = Topology::edge(2, 2, 3, &[]);
    let stop = Arc::new(AtomicBool::new(false));
    let held = Arc::new(InProgress::default());
    let backend = slow_backend(&topo, backend_v4(0), Arc::clone(&stop), Arc::clone(&held));
    redis_server(&mut topo);
    for i in 0..2 {
        topo.start_agent_on(i, &concurrency_config(i), &[]);
    }
    route_over(&topo, 2);
    wait_mode(&topo, 2, LimitMode::Shared, Some(2), "both nodes sharing through Redis");
    // The first node alone was granted every slot; the second gets its part once the first
    // gave it back (two renewals).
    wait_for("both nodes granted slots", Duration::from_secs(10), || {
        (0..2).all(|i| limits_of(&topo, i).is_some_and(|v| v.limits.iter().all(|l| l.share >= 1.0))).then_some(())
    });

    let vip: SocketAddr = format!("{VIP}:80").parse().expect("address");
    const PER_CLIENT: usize = 8;
    let mut waves = Vec::new();
    for _ in 0..3 {
        // Every request of a wave starts at once and the backend holds each for 400 ms; it
        // counts how many it held at once (a request that starts late, on a loaded machine,
        // may be admitted after another ended: not more in progress).
        held.peak.store(0, Ordering::SeqCst);
        let barrier = Arc::new(Barrier::new(PER_CLIENT * topo.clients.len()));
        let threads: Vec<_> = topo
            .clients
            .iter()
            .flat_map(|client| {
                (0..PER_CLIENT)
                    .map(|_| {
                        let barrier = Arc::clone(&barrier);
                        client.run(move || {
                            barrier.wait();
                            get_status(vip, "/slow", Duration::from_secs(3))
                        })
                    })
                    .collect::<Vec<_>>()
            })
            .collect();
        let statuses: Vec<Option<u16>> = threads.into_iter().map(|t| t.join().expect("request thread")).collect();
        let ok = statuses.iter().filter(|s| **s == Some(200)).count();
        let busy = statuses.iter().filter(|s| **s == Some(503)).count();
        let peak = held.peak.load(Ordering::SeqCst);
        eprintln!("wave: {ok} answered, {busy} refused as busy, of {}; at most {peak} at once", statuses.len());
        assert_eq!(ok + busy, statuses.len(), "every request answered 200 or 503: {statuses:?}");
        waves.push(peak);
        std::thread::sleep(SLOW);
    }
    for (i, peak) in waves.iter().enumerate() {
        assert!(
            (1..=CONCURRENT as usize).contains(peak),
            "wave {i}: {peak} requests in progress at once over both nodes; the global limit is {CONCURRENT} ({waves:?})"
        );
    }
    let refused: u64 = (0..2).map(|i| limits_of(&topo, i).unwrap().limits[0].limited).sum();
    assert!(refused > 0, "the nodes counted their refusals");
    stop.store(true, Ordering::Relaxed);
    let _ = backend.join();
}

/// The L4 VIP with a global connection limit, and its threshold (new connections/s).
const VIP_L4: &str = "10.210.100.8";
const CONN_THRESHOLD: u32 = 100;

fn l4_config(node: usize) -> String {
    format!(
        "global_limits:\n  redis: {redis}:6379\n  node: lb{node}\n  nodes: 2\n  renew_every: 100ms\n\
         vips:\n  - name: tcp\n    address: {VIP_L4}\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    \
         connection_limit: {{ new_per_second: {CONN_THRESHOLD}, burst: 10, scope: global, on_limit: reset }}\n    \
         backends:\n      - {{ address: {b0} }}\n      - {{ address: {b1} }}\n",
        redis = backend_v4(2),
        b0 = backend_v4(0),
        b1 = backend_v4(1),
    )
}

#[test]
fn a_global_connection_limit_holds_in_xdp_over_two_nodes_and_falls_back_without_redis() {
    require_root!();
    let mut topo = Topology::edge(2, 2, 3, &[VIP_L4]);
    topo.serve(VIP_L4, 80);
    let redis = redis_server(&mut topo);
    for i in 0..2 {
        topo.start_agent_on(i, &l4_config(i), &[]);
    }
    route_vip_over(&topo, VIP_L4, 2);
    wait_mode(&topo, 2, LimitMode::Shared, Some(2), "both nodes sharing through Redis");
    let vip: SocketAddr = format!("{VIP_L4}:80").parse().expect("address");

    let shared = tcp_load(&topo.clients, vip, THREADS, PHASE, SETTLE);
    eprintln!("L4, two nodes: {shared:?}");
    within_of(&shared, CONN_THRESHOLD, "L4, two nodes");
    assert!(shared.limited > shared.attempts / 3, "refused with RSTs, far above the threshold: {shared:?}");
    let views: Vec<LimitsView> = (0..2).map(|i| limits_of(&topo, i).expect("limits")).collect();
    let share_sum: f64 = views.iter().map(|v| v.limits[0].share).sum();
    assert!(
        (share_sum - f64::from(CONN_THRESHOLD)).abs() < f64::from(CONN_THRESHOLD) * TOLERANCE,
        "the shares add up to the threshold: {views:?}"
    );
    assert!(views.iter().all(|v| v.limits[0].name == "tcp#connections" && v.limits[0].limited > 0), "{views:?}");
    for i in 0..2 {
        let refused = topo.stats_of(i).expect("stats").counter("conn_limit_reset").expect("counter");
        assert!(refused > 0, "node {i} answered refused SYNs with RSTs");
        let status = String::from_utf8_lossy(&topo.xlb_on(i, &["status"]).stdout).into_owned();
        assert!(
            status.lines().any(|l| l.trim_start().starts_with("tcp ") && l.contains("global") && l.contains("rst")),
            "node {i}: the VIP's connection limit in xlb status:\n{status}"
        );
    }

    topo.agent(redis).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    wait_mode(&topo, 2, LimitMode::Fallback, Some(2), "both nodes in fallback");
    let fallback = tcp_load(&topo.clients, vip, THREADS, PHASE, SETTLE);
    eprintln!("L4, Redis away: {fallback:?}");
    within_of(&fallback, CONN_THRESHOLD, "L4, Redis away");
}

/// The L4 VIP with a global concurrent-connections limit, and its threshold.
const VIP_CONC: &str = "10.210.100.9";
const CONC_PORT: u16 = 9300;
const CONC_THRESHOLD: usize = 10;

fn conc_config(node: usize) -> String {
    format!(
        "global_limits:\n  redis: {redis}:6379\n  node: lb{node}\n  nodes: 2\n  renew_every: 100ms\n\
         vips:\n  - name: held\n    address: {VIP_CONC}\n    port: {CONC_PORT}\n    protocol: tcp\n    mode: dsr-l2\n    \
         connection_limit: {{ concurrent: {CONC_THRESHOLD}, scope: global, on_limit: reset }}\n    \
         backends:\n      - {{ address: {b0} }}\n      - {{ address: {b1} }}\n",
        redis = backend_v4(2),
        b0 = backend_v4(0),
        b1 = backend_v4(1),
    )
}

/// Holds connections to the VIP from the first client, up to `enough` (bounded).
fn hold_up_to(topo: &Topology, enough: usize, attempts: usize) -> Vec<std::net::TcpStream> {
    let vip: SocketAddr = format!("{VIP_CONC}:{CONC_PORT}").parse().expect("address");
    hold_connections(&topo.clients[0], vip, enough, attempts, Duration::from_secs(20))
}

/// Each node's concurrent limit as its status shows it: (open, allowed).
fn conc_status(topo: &Topology) -> Vec<(u64, u64)> {
    (0..2)
        .map(|i| {
            let status = topo.status_of(i).expect("status");
            let limit = status.node.conn_limits.iter().find(|l| l.vip == "held").expect("the limit reported");
            let c = limit.concurrent.expect("a concurrent limit");
            (c.open, c.allowed)
        })
        .collect()
}

#[test]
fn a_global_concurrent_connection_limit_holds_over_two_nodes_and_falls_back_without_redis() {
    require_root!();
    let mut topo = Topology::edge(2, 1, 3, &[VIP_CONC]);
    // (On every address: the health checks reach the backends' own.)
    topo.serve_streams("0.0.0.0", CONC_PORT);
    let redis = redis_server(&mut topo);
    for i in 0..2 {
        topo.start_agent_on(i, &conc_config(i), &[]);
    }
    route_vip_over(&topo, VIP_CONC, 2);
    wait_mode(&topo, 2, LimitMode::Shared, Some(2), "both nodes sharing through Redis");

    // Far more attempts than places: never more held than the threshold over both nodes, and
    // once the grants follow demand, every place taken.
    let held = hold_up_to(&topo, CONC_THRESHOLD + 5, 400);
    assert_eq!(held.len(), CONC_THRESHOLD, "connections held over both nodes");
    let per_node = wait_for("both nodes' counts", Duration::from_secs(5), || {
        let s = conc_status(&topo);
        (s.iter().map(|(open, _)| *open).sum::<u64>() == CONC_THRESHOLD as u64).then_some(s)
    });
    eprintln!("L4 concurrent, two nodes: (open, allowed) per node {per_node:?}");
    // A node may hold more than its grant now (admitted under a larger one, refusing until
    // they close); what each may hold, over both, never passes the threshold.
    let holding: u64 = per_node.iter().map(|(open, allowed)| *open.max(allowed)).sum();
    assert!(holding <= CONC_THRESHOLD as u64, "{per_node:?}");
    assert!(per_node.iter().all(|(open, _)| *open > 0), "ECMP spread the connections: {per_node:?}");
    let more = hold_up_to(&topo, 1, 20);
    assert!(more.is_empty(), "full over both nodes: {} more got in", more.len());

    // Redis away: each node falls back to threshold ÷ 2 places. The held connections close
    // first (a fallback split need not match what each node holds).
    drop(held);
    wait_for("the closed connections counted", Duration::from_secs(5), || {
        conc_status(&topo).iter().all(|(open, _)| *open == 0).then_some(())
    });
    topo.agent(redis).signal_and_wait(libc::SIGKILL, Duration::from_secs(5));
    wait_mode(&topo, 2, LimitMode::Fallback, Some(2), "both nodes in fallback");
    let held = hold_up_to(&topo, CONC_THRESHOLD + 5, 400);
    let per_node = conc_status(&topo);
    eprintln!("L4 concurrent, Redis away: {} held; (open, allowed) per node {per_node:?}", held.len());
    assert_eq!(held.len(), CONC_THRESHOLD, "threshold ÷ 2 on each node");
    assert!(per_node.iter().all(|(_, allowed)| *allowed == CONC_THRESHOLD as u64 / 2), "{per_node:?}");
}
