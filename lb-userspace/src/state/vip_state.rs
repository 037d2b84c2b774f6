//! A VIP's state as operators see it — up, panic or down — with the reason, and the log line
//! for each change. The rules live in `desired` (`DesiredVip::is_up`, the panic threshold);
//! this module only names their outcome.

use std::collections::BTreeMap;

use lb_common::VipKey;

use crate::state::desired::DesiredVip;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VipState {
    /// Announced; new flows go to the healthy backends.
    Up,
    /// Announced, but too few backends are healthy: new flows go to every eligible backend.
    Panic,
    /// Withdrawn (no healthy backend, or fewer than `min_healthy`); whatever still arrives is
    /// forwarded (to every eligible backend if it panics too).
    Down,
}

impl VipState {
    pub fn of(vip: &DesiredVip) -> Self {
        match (vip.is_up(), vip.panic) {
            (false, _) => VipState::Down,
            (true, true) => VipState::Panic,
            (true, false) => VipState::Up,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            VipState::Up => "up",
            VipState::Panic => "panic",
            VipState::Down => "down",
        }
    }

    /// The state column of `xlb status` and of the status summary: `up`, `PANIC`, `DOWN`, or
    /// `DOWN,PANIC` for a withdrawn VIP whose backends are below the panic threshold too.
    pub fn label(up: bool, panic: bool) -> &'static str {
        match (up, panic) {
            (true, false) => "up",
            (true, true) => "PANIC",
            (false, false) => "DOWN",
            (false, true) => "DOWN,PANIC",
        }
    }
}

/// Why `vip` is in the state it is, in one phrase.
pub fn reason(vip: &DesiredVip) -> String {
    let (healthy, eligible, total) = (vip.healthy(), vip.eligible(), vip.backends.len());
    let drained = vip.backends.iter().filter(|b| b.drained).count();
    let mut text = if healthy == eligible {
        format!("{healthy} of {total} backends healthy")
    } else {
        format!("{} of {eligible} backends down", eligible - healthy)
    };
    if drained > 0 {
        text.push_str(&format!(", {drained} drained"));
    }
    if vip.panic {
        text.push_str(&format!(
            ", below the panic threshold {}%: new flows go to all {} (health ignored)",
            vip.panic_threshold,
            vip.serving()
        ));
    }
    if !vip.is_up() {
        text.push_str(&if healthy == 0 {
            "; no healthy backend: withdrawn".to_owned()
        } else {
            format!("; fewer than min_healthy {}: withdrawn", vip.min_healthy)
        });
    }
    text
}

/// The last state of each VIP, to log each change once.
#[derive(Debug, Default)]
pub struct Transitions(BTreeMap<VipKey, VipState>);

impl Transitions {
    /// Logs every VIP whose state changed since the last call (a new VIP only when it is not
    /// up), and forgets VIPs that are gone.
    pub fn observe<'a>(&mut self, vips: impl Iterator<Item = (&'a VipKey, &'a DesiredVip)>) {
        let mut now = BTreeMap::new();
        for (key, vip) in vips {
            let state = VipState::of(vip);
            now.insert(*key, state);
            let before = self.0.get(key).copied();
            if before == Some(state) || (before.is_none() && state == VipState::Up) {
                continue;
            }
            let from = before.map_or("new", VipState::name);
            let reason = reason(vip);
            match state {
                VipState::Up => tracing::info!(vip = %vip.name, from, to = "up", %reason, "VIP state change"),
                VipState::Panic | VipState::Down => {
                    tracing::warn!(vip = %vip.name, from, to = state.name(), %reason, "VIP state change")
                }
            }
        }
        self.0 = now;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        config::{Backend, Config, HashFields, Mode, Protocol, Unhashable, Vip},
        state::desired::{BackendStates, DesiredState, NodeFacts},
    };

    fn config(backends: usize, threshold: u32, min_healthy: u32) -> Config {
        let backend = |i: usize| Backend {
            address: format!("10.0.0.{}", i + 1).parse().unwrap(),
            port: None,
            interface: None,
            weight: 1,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            health_check: None,
        };
        let vip = Vip {
            name: "web".into(),
            address: "192.0.2.1".parse().unwrap(),
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
            min_healthy,
            panic_threshold: threshold,
            l7: None,
            sources: Default::default(),
            syn_cookies: Default::default(),
            connection_limit: None,
        };
        Config { vips: vec![vip], ..Default::default() }
    }

    /// One line per scenario: weights, state and reason.
    fn render(config: &Config, down: &[usize], drained: &[usize]) -> String {
        let at = |i: &usize| ("web".to_owned(), format!("10.0.0.{}", i + 1));
        let states = BackendStates {
            down: down.iter().map(at).collect(),
            drained: drained.iter().map(at).collect(),
            ..Default::default()
        };
        let facts = NodeFacts { iface_mac: [0; 6], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
        let state = DesiredState::with_states(config, &facts, &states);
        let vip = state.vips.values().next().unwrap();
        let weights: Vec<String> = vip.backends.iter().map(|b| b.weight.to_string()).collect();
        format!("[{}] {}: {}", weights.join(" "), VipState::of(vip).name(), reason(vip))
    }

    #[test]
    fn panic_threshold_golden() {
        let half = config(4, 50, 1);
        let off = config(4, 0, 1);
        let two = config(4, 50, 2);
        let cases = [
            render(&half, &[], &[]),
            render(&half, &[0, 1], &[]),
            render(&half, &[0, 1, 2], &[]),
            render(&half, &[0, 1, 2, 3], &[]),
            render(&off, &[0, 1, 2], &[]),
            render(&off, &[0, 1, 2, 3], &[]),
            render(&two, &[0, 1, 2], &[]),
            render(&half, &[0, 2], &[1]),
            render(&half, &[], &[0, 1, 2, 3]),
            render(&config(1, 50, 1), &[0], &[]),
        ];
        let want = [
            "[1 1 1 1] up: 4 of 4 backends healthy",
            "[0 0 1 1] up: 2 of 4 backends down",
            "[1 1 1 1] panic: 3 of 4 backends down, below the panic threshold 50%: new flows go to all 4 (health ignored)",
            "[1 1 1 1] down: 4 of 4 backends down, below the panic threshold 50%: new flows go to all 4 (health ignored); no healthy backend: withdrawn",
            "[0 0 0 1] up: 3 of 4 backends down",
            "[0 0 0 0] down: 4 of 4 backends down; no healthy backend: withdrawn",
            "[1 1 1 1] down: 3 of 4 backends down, below the panic threshold 50%: new flows go to all 4 (health ignored); fewer than min_healthy 2: withdrawn",
            "[1 0 1 1] panic: 2 of 3 backends down, 1 drained, below the panic threshold 50%: new flows go to all 3 (health ignored)",
            "[0 0 0 0] down: 0 of 4 backends healthy, 4 drained; no healthy backend: withdrawn",
            "[1] down: 1 of 1 backends down, below the panic threshold 50%: new flows go to all 1 (health ignored); no healthy backend: withdrawn",
        ];
        assert_eq!(cases.map(|c| c.to_string()), want.map(str::to_owned));
    }

    #[test]
    fn exactly_the_threshold_is_not_panic() {
        use crate::state::desired::below_panic_threshold;
        assert!(!below_panic_threshold(2, 4, 50));
        assert!(below_panic_threshold(1, 4, 50));
        assert!(!below_panic_threshold(0, 0, 50), "nothing eligible: nothing to panic over");
        assert!(!below_panic_threshold(0, 4, 0), "0 disables");
        assert!(below_panic_threshold(99, 100, 100));
    }
}
