//! Helpers for xlb's integration tests: root gating, the XDP test harness, packet builders and
//! network namespaces that clean up after themselves.

pub mod bird;
pub mod chromium;
pub mod http_load;
pub mod model;
mod model_nat;
pub mod netns;
pub mod packets;
pub mod rng;
pub mod scale;
pub mod topology;
pub mod traffic;

use lb_common::{BackendCounters, Stat};
use xlb::{
    apply::dataplane::{Loaded, Maps, TableSizes},
    apply::reconcile::Reconciler,
    apply::testrun::{self, Outcome},
    config::{self, Config},
    state::desired::{DesiredState, NodeFacts},
};

/// Whether a root-only test may run. Without root it skips, loudly, except under CI (which runs
/// as root): there a skipped data-plane test is a failure.
pub fn have_root(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root (BPF_PROG_TEST_RUN, XDP attach, namespaces) and CI is set: CI runs as root, so a skip here is a failure"
    );
    eprintln!("SKIPPED {test}: needs root");
    false
}

/// Returns early from a test that needs root (see [`have_root`]).
#[macro_export]
macro_rules! require_root {
    () => {
        if !$crate::have_root(module_path!()) {
            return;
        }
    };
}

/// VIPs of every mode and family, with several backends: shared by the forwarding fixtures, the
/// differential test and the benchmarks.
pub const FORWARDING_CONFIG: &str = r#"
node:
  next_hop_mac: 02:00:00:00:00:fe
  tunnel_source_v4: 172.16.0.0/24
  tunnel_source_v6: fd00:ffff::/112
vips:
  - name: l2v4
    address: 192.0.2.1
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01", weight: 1 }
      - { address: 10.0.0.2, mac: "02:00:00:00:01:02", weight: 2 }
      - { address: 10.0.0.3, mac: "02:00:00:00:01:03", weight: 3 }
  - name: l2v6
    address: 2001:db8::1
    port: 80
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: "fd00::1", mac: "02:00:00:00:01:01" }
      - { address: "fd00::2", mac: "02:00:00:00:01:02" }
  - name: dnsl2
    address: 192.0.2.1
    port: 53
    protocol: udp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
      - { address: 10.0.0.2, mac: "02:00:00:00:01:02" }
  - name: ipip4
    address: 192.0.2.2
    port: 80
    protocol: tcp
    mode: dsr-ipip
    backends:
      - { address: 10.1.0.1 }
      - { address: 10.1.0.2, mac: "02:00:00:00:02:02" }
  - name: ipip6
    address: 2001:db8::2
    port: 80
    protocol: tcp
    mode: dsr-ipip
    backends:
      - { address: "fd00:1::1" }
      - { address: "fd00:1::2" }
  - name: ip4in6
    address: 192.0.2.3
    port: 80
    protocol: tcp
    mode: dsr-ipip
    backends:
      - { address: "fd00:2::1" }
  - name: dnsipip4
    address: 192.0.2.2
    port: 53
    protocol: udp
    mode: dsr-ipip
    backends:
      - { address: 10.1.0.1 }
  - name: dnsipip6
    address: 2001:db8::2
    port: 53
    protocol: udp
    mode: dsr-ipip
    backends:
      - { address: "fd00:1::1" }
  - name: sticky
    address: 192.0.2.4
    port: 80
    protocol: tcp
    mode: dsr-l2
    hash: source-ip
    backends:
      - { address: 10.0.0.1, mac: "02:00:00:00:01:01" }
      - { address: 10.0.0.2, mac: "02:00:00:00:01:02" }
      - { address: 10.0.0.3, mac: "02:00:00:00:01:03" }
  - name: empty
    address: 192.0.2.5
    port: 80
    protocol: tcp
    mode: dsr-l2
    # Parked: its one backend takes no new flows, so the VIP has none to give.
    backends:
      - { address: 10.0.0.9, mac: "02:00:00:00:01:09", weight: 0 }
  - name: range4
    address: 192.0.2.1
    port: 440-450
    protocol: tcp
    mode: dsr-l2
    backends:
      - { address: 10.0.0.4, mac: "02:00:00:00:01:04" }
  - name: nat4
    address: 192.0.2.6
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: np4
    backends:
      - { address: 10.2.0.1, port: 8080, mac: "02:00:00:00:03:01" }
      - { address: 10.2.0.2, mac: "02:00:00:00:03:02" }
  - name: natudp4
    address: 192.0.2.6
    port: 53
    protocol: udp
    mode: nat
    snat_pool: np4
    backends:
      - { address: 10.2.0.3, port: 5353, mac: "02:00:00:00:03:03" }
  - name: nat6
    address: 2001:db8::6
    port: 80
    protocol: tcp
    mode: nat
    snat_pool: np6
    backends:
      - { address: "fd00:3::1", port: 8080, mac: "02:00:00:00:03:01" }
  - name: dnat4
    address: 192.0.2.7
    port: 80
    protocol: tcp
    mode: nat
    backends:
      - { address: 10.2.0.4, mac: "02:00:00:00:03:04" }
nat_pools:
  # Small, so that the differential run also exhausts them.
  - name: np4
    addresses: [198.18.0.1, 198.18.0.2]
    ports: 30000-30099
  - name: np6
    addresses: ["2001:db8:18::1"]
    ports: 30000-30049
"#;

/// The node the harness pretends to be: the interface the program runs on.
pub const FACTS: NodeFacts = NodeFacts { iface_mac: packets::LB_MAC, mtu: 1500, ifindex: 0, interfaces: Vec::new() };

/// Connection-table size for harness instances (tests load many objects in parallel).
pub const TEST_FLOW_TABLE_SIZE: u32 = 65536;
/// NAT table size for harness instances.
pub const TEST_NAT_TABLE_SIZE: u32 = 16384;

/// The real balancer object, loaded and verified, with its maps filled by the agent's reconciler
/// from a YAML config.
#[derive(Debug)]
pub struct Balancer {
    pub program: Loaded,
    pub maps: Maps,
    pub reconciler: Reconciler,
    pub config: Config,
}

impl Balancer {
    pub fn with_config(yaml: &str) -> Self {
        Self::with_flow_table(yaml, TEST_FLOW_TABLE_SIZE)
    }

    pub fn with_flow_table(yaml: &str, flow_table_size: u32) -> Self {
        Self::with_sizes(yaml, TableSizes { flows: flow_table_size, nat: TEST_NAT_TABLE_SIZE })
    }

    pub fn with_sizes(yaml: &str, sizes: TableSizes) -> Self {
        Self::from_object(yaml, sizes, xlb::apply::dataplane::BALANCER_OBJECT)
    }

    /// A balancer from another build of the XDP object (an ELF file's bytes).
    pub fn from_object(yaml: &str, sizes: TableSizes, object: &[u8]) -> Self {
        Self::build(yaml, sizes, object, &FACTS)
    }

    /// A balancer on the interfaces `facts` describes (they must exist in the caller's network
    /// namespace: the redirect map takes only real interfaces).
    pub fn with_facts(yaml: &str, facts: &NodeFacts) -> Self {
        Self::build(
            yaml,
            TableSizes { flows: TEST_FLOW_TABLE_SIZE, nat: TEST_NAT_TABLE_SIZE },
            xlb::apply::dataplane::BALANCER_OBJECT,
            facts,
        )
    }

    fn build(yaml: &str, sizes: TableSizes, object: &[u8], facts: &NodeFacts) -> Self {
        let config = parse_config(yaml);
        let (program, mut maps) = Loaded::balancer_from(object, sizes).expect("the XDP object loads and verifies");
        let mut reconciler = Reconciler::new();
        reconciler.apply(&DesiredState::new(&config, facts), &mut maps).expect("maps accept the config");
        Self { program, maps, reconciler, config }
    }

    /// Reconciles to a new config, as a reload would.
    pub fn reload(&mut self, yaml: &str) -> xlb::apply::reconcile::Changes {
        self.config = parse_config(yaml);
        self.reconciler.apply(&DesiredState::new(&self.config, &FACTS), &mut self.maps).expect("reload applies")
    }

    pub fn run(&self, packet: &[u8]) -> Outcome {
        self.run_on(packet, 0)
    }

    /// `run` as if the frame came in on interface `ifindex`.
    pub fn run_on(&self, packet: &[u8], ifindex: u32) -> Outcome {
        testrun::run_on(self.program.xdp().expect("program"), packet, ifindex).expect("BPF_PROG_TEST_RUN")
    }

    pub fn stat(&self, stat: Stat) -> u64 {
        self.maps.stats().expect("read stats").into_iter().find(|(s, _)| *s == stat).map(|(_, v)| v).unwrap_or_default()
    }

    /// All outcome counters, to compare before and after a run.
    pub fn stats(&self) -> Vec<(Stat, u64)> {
        self.maps.stats().expect("read stats")
    }

    /// A VIP's totals (the sum over its backends, as `xlb stats` shows them).
    pub fn vip(&self, name: &str) -> BackendCounters {
        let applied = self.applied(name);
        self.maps.vip_traffic(&applied.slots, applied.retired).expect("read VIP counters")
    }

    /// Counters of backend `address` of VIP `name`.
    pub fn backend(&self, name: &str, address: &str) -> BackendCounters {
        let applied = self.applied(name);
        let i = applied
            .vip
            .backends
            .iter()
            .position(|b| b.identity == address)
            .unwrap_or_else(|| panic!("{name} has no backend {address}"));
        self.maps.backend_counters(applied.slots[i]).expect("read backend counters")
    }

    /// Runs `frame`: refused with `stat` (dropped, bytes untouched, that outcome counter +1 and
    /// no other) or, with `None`, sent on (XDP_TX).
    pub fn expect_verdict(&self, frame: &[u8], refused: Option<Stat>, case: &str) {
        let before = self.stats();
        let out = self.run(frame);
        match refused {
            Some(stat) => {
                assert_eq!(out.action, testrun::XdpAction::Drop, "{case}: verdict");
                assert_eq!(out.packet, frame, "{case}: a refused frame is not touched");
                for ((s, b), (_, a)) in before.iter().zip(self.stats()) {
                    if s.is_outcome() {
                        assert_eq!(a, if *s == stat { b + 1 } else { *b }, "{case}: counter {}", s.name());
                    }
                }
            }
            None => assert_eq!(out.action, testrun::XdpAction::Tx, "{case}: verdict (sent on)"),
        }
    }

    pub fn applied(&self, name: &str) -> &xlb::apply::reconcile::AppliedVip {
        self.reconciler.applied().values().find(|a| a.vip.name == name).unwrap_or_else(|| panic!("no VIP named {name}"))
    }
}

pub fn parse_config(yaml: &str) -> Config {
    config::parse(std::path::Path::new("inline.yaml"), yaml).unwrap_or_else(|e| panic!("test config is invalid: {e}"))
}
