//! Helpers for xlb's integration tests: root gating, the XDP test harness, packet builders and
//! network namespaces that clean up after themselves.

pub mod netns;
pub mod packets;

use lb_common::{Stat, VipCounters};
use xlb::{
    config,
    dataplane::{Loaded, Maps},
    desired::DesiredState,
    reconcile::Reconciler,
    testrun::{self, Outcome},
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

/// The real balancer object, loaded and verified, with its maps filled by the agent's reconciler
/// from a YAML config.
#[derive(Debug)]
pub struct Balancer {
    pub program: Loaded,
    pub maps: Maps,
    pub reconciler: Reconciler,
}

impl Balancer {
    pub fn with_config(yaml: &str) -> Self {
        let config =
            config::parse(std::path::Path::new("inline.yaml"), yaml).expect("test config is valid");
        let (program, mut maps) = Loaded::balancer().expect("the XDP object loads and verifies");
        let mut reconciler = Reconciler::new();
        reconciler
            .apply(&DesiredState::from_config(&config), &mut maps)
            .expect("maps accept the config");
        Self {
            program,
            maps,
            reconciler,
        }
    }

    pub fn run(&self, packet: &[u8]) -> Outcome {
        testrun::run(self.program.xdp().expect("program"), packet).expect("BPF_PROG_TEST_RUN")
    }

    pub fn stat(&self, stat: Stat) -> u64 {
        self.maps
            .stats()
            .expect("read stats")
            .into_iter()
            .find(|(s, _)| *s == stat)
            .map(|(_, v)| v)
            .unwrap_or_default()
    }

    /// All outcome counters, to compare before and after a run.
    pub fn stats(&self) -> Vec<(Stat, u64)> {
        self.maps.stats().expect("read stats")
    }

    pub fn vip(&self, name: &str) -> VipCounters {
        let applied = self
            .reconciler
            .applied()
            .values()
            .find(|a| a.vip.name == name)
            .unwrap_or_else(|| panic!("no VIP named {name}"));
        self.maps
            .vip_counters(applied.meta.id)
            .expect("read VIP counters")
    }
}
