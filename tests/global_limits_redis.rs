//! The global limits' exchange script (`xlb::sources::limits::redis`) against a real Redis
//! server on loopback: three simulated nodes exchange in random order while their demands
//! change and their requests start and end as their slots allow.
//!
//! - What may be in progress over all nodes (each node's slots, or more while requests
//!   admitted under a larger grant still run) never exceeds the concurrency threshold, at any
//!   step.
//! - Once demands hold still and the requests drain, every slot is handed out, every node with
//!   demand has one, and a busier node never has fewer than a quieter one.
//! - A rate limit's exchange reports every live node's demand.

use std::{
    net::TcpListener,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use xlb::sources::limits::redis::{Offer, connect, exchange};

/// A redis-server on a free loopback port, stopped when dropped.
struct RedisServer {
    child: Child,
    address: String,
}

impl RedisServer {
    fn start() -> Self {
        let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server (scripts/setup.sh installs it)");
        let address = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(&address).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not listen on {address}");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, address }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A deterministic pseudo-random sequence (xorshift64*).
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n.max(1)
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Node {
    slots: u32,
    in_flight: u32,
    demand: f64,
}

impl Node {
    fn holding(&self) -> u32 {
        self.slots.max(self.in_flight)
    }
}

const THRESHOLD: u32 = 7;
const STALE: Duration = Duration::from_secs(60);
const TIMEOUT: Duration = Duration::from_secs(5);

#[tokio::test(flavor = "current_thread")]
async fn concurrency_grants_never_add_up_above_the_threshold_and_settle_on_demand() {
    let redis = RedisServer::start();
    let mut connection = connect(&redis.address, TIMEOUT).await.expect("connected to redis-server");
    let key = vec!["test:limit:web/slow#concurrency".to_string()];
    let names = ["lb0", "lb1", "lb2"];
    let mut nodes = [Node::default(); 3];
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
    let mut exchanges = 0;
    // Phases of demand (requests/s per node); the last has an idle node.
    let phases: [[f64; 3]; 5] =
        [[10.0, 10.0, 10.0], [500.0, 20.0, 5.0], [0.0, 300.0, 300.0], [50.0, 50.0, 900.0], [800.0, 100.0, 0.0]];
    for demands in phases {
        for (node, demand) in nodes.iter_mut().zip(demands) {
            node.demand = demand;
        }
        // Requests start and end at random, within what each node may admit.
        for _ in 0..200 {
            let i = rng.below(3) as usize;
            let node = &mut nodes[i];
            node.in_flight = if node.in_flight > node.slots {
                rng.below(u64::from(node.in_flight) + 1) as u32
            } else {
                rng.below(u64::from(node.slots) + 1) as u32
            };
            let offer = Offer { demand: node.demand, slots: Some((node.holding(), THRESHOLD)) };
            let answer = exchange(&mut connection, &key, names[i], &[offer], STALE, TIMEOUT).await.expect("exchange");
            node.slots = answer[0].slots.expect("a concurrency limit is granted slots");
            exchanges += 1;
            let possible: u32 = nodes.iter().map(Node::holding).sum();
            assert!(
                possible <= THRESHOLD,
                "after exchange {exchanges}: {possible} may be in progress over the nodes, threshold {THRESHOLD}: {nodes:?}"
            );
        }
        // Requests drain; a few rounds in turn.
        for node in &mut nodes {
            node.in_flight = 0;
        }
        for _ in 0..3 {
            for i in 0..3 {
                let offer = Offer { demand: nodes[i].demand, slots: Some((nodes[i].holding(), THRESHOLD)) };
                let answer =
                    exchange(&mut connection, &key, names[i], &[offer], STALE, TIMEOUT).await.expect("exchange");
                nodes[i].slots = answer[0].slots.expect("slots");
            }
        }
        let slots: Vec<u32> = nodes.iter().map(|n| n.slots).collect();
        assert_eq!(slots.iter().sum::<u32>(), THRESHOLD, "every slot handed out for demands {demands:?}: {slots:?}");
        assert!(slots.iter().all(|s| *s >= 1), "each node keeps a slot while the threshold allows: {slots:?}");
        for a in 0..3 {
            for b in 0..3 {
                assert!(
                    demands[a] <= demands[b] || slots[a] >= slots[b],
                    "{} is busier than {} yet has fewer slots, for demands {demands:?}: {slots:?}",
                    names[a],
                    names[b]
                );
            }
        }
        eprintln!("demands {demands:?} → slots {slots:?}");
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_rate_exchange_reports_every_live_node() {
    let redis = RedisServer::start();
    let mut connection = connect(&redis.address, TIMEOUT).await.expect("connected to redis-server");
    let key = vec!["test:limit:web/all".to_string()];
    for (node, demand) in [("lb0", 120.5), ("lb1", 30.0)] {
        let answer = exchange(&mut connection, &key, node, &[Offer { demand, slots: None }], STALE, TIMEOUT)
            .await
            .expect("exchange");
        assert_eq!(answer[0].slots, None, "a rate limit has no slots");
    }
    let answer = exchange(&mut connection, &key, "lb0", &[Offer { demand: 100.0, slots: None }], STALE, TIMEOUT)
        .await
        .expect("exchange");
    let mut live = answer[0].live.clone();
    live.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(live, vec![("lb0".to_string(), 100.0), ("lb1".to_string(), 30.0)]);
}
