//! Snapshots of the data plane's counters and each backend's state, as served to `xlb stats`,
//! `xlb status` and `/metrics`.

use serde::{Deserialize, Serialize};

use std::collections::BTreeMap;

use lb_common::{BackendCounters, VipKey};

use crate::{
    apply::conns::{BackendConns, ConnCounts},
    apply::dataplane::{Counters, DataplaneError},
    apply::reconcile::AppliedVip,
    sources::health::HealthMap,
    state::vip_state::VipState,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Packets the program has seen (the sum of the outcome counters).
    pub rx_packets: u64,
    /// Counters by name (`pass_not_vip`, `forwarded`, `truncated_tcp`, `flow_miss`, ...).
    pub counters: Vec<Counter>,
    pub vips: Vec<VipStats>,
    /// How full the connection table is (the agent's: as of its last count).
    #[serde(default)]
    pub flow_table: crate::apply::dataplane::FlowTableUsage,
    /// NAT flows and pool usage, as of the agent's last sweep.
    #[serde(default)]
    pub nat: crate::apply::nat::NatUsage,
    /// The L7 tier's VIPs (served by the agent's proxy, not counted by XDP).
    #[serde(default)]
    pub l7: Vec<crate::l7::L7VipStatus>,
    /// The scan the connection counts come from (`None`: not counted yet, or not countable).
    #[serde(default)]
    pub connections_scan: Option<ConnectionsScan>,
    /// The source prefixes the new-flow limits refused most lately.
    #[serde(default)]
    pub limited_sources: Vec<crate::apply::source_report::LimitedSource>,
}

impl Snapshot {
    /// Marks the automatic-mode VIPs named in `on` as answering with SYN cookies now.
    pub fn mark_syn_cookies_on(&mut self, on: &[String]) {
        for vip in self.vips.iter_mut().filter(|v| v.syn_cookies.as_deref() == Some("auto")) {
            if on.contains(&vip.name) {
                vip.syn_cookies = Some("auto: on".to_owned());
            }
        }
    }
}

/// When the connection counts were taken and what the scan cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnectionsScan {
    /// Since the scan finished.
    pub age_ms: u64,
    /// Time spent reading the table, without the pauses between its chunks.
    pub busy_us: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub name: String,
    pub malformed: bool,
    pub drop: bool,
    /// Outcome counters sum to `rx_packets`; the others count events on the way.
    pub outcome: bool,
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStats {
    pub name: String,
    pub endpoint: String,
    /// `dsr-l2`, `dsr-ipip` or `nat`.
    #[serde(default)]
    pub mode: String,
    /// Enough backends serve it (`min_healthy`): announced.
    pub up: bool,
    /// Backends taking new flows.
    pub serving: usize,
    pub min_healthy: u32,
    /// Backends healthy on their own merit (outside panic, the serving ones).
    #[serde(default)]
    pub healthy: usize,
    /// Too few backends healthy (below `panic_threshold` percent): new flows go to all.
    #[serde(default)]
    pub panic: bool,
    #[serde(default)]
    pub panic_threshold: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Live connections over its backends.
    #[serde(default)]
    pub connections: BackendConns,
    /// `syn_cookies`: `always`, `auto` (below its threshold) or `auto: on` (over it); none when off.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub syn_cookies: Option<String>,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    /// Effective weight: 0 while down or drained.
    pub weight: u32,
    /// The weight it takes while healthy and undrained: the runtime one, if set, else the file's.
    pub configured_weight: u32,
    /// Under a runtime weight (`xlb weight`): the config file's weight it replaces.
    #[serde(default)]
    pub file_weight: Option<u32>,
    /// Passing its health check (always, without one).
    pub up: bool,
    pub drained: bool,
    /// Its MAC is known (configured or resolved); without one it takes no flows.
    pub mac_known: bool,
    /// Why the last health check failed, if it did.
    pub health_error: Option<String>,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Live connections to it, as of the last count (`connections_scan`).
    #[serde(default)]
    pub connections: BackendConns,
}

impl BackendStats {
    /// Its state column in `xlb status --vips` and on the status page: `up`, `DOWN`,
    /// `drained`, `DOWN,drained`, or `NO-MAC` (which outranks the rest: it takes no flows).
    pub fn state_label(&self) -> &'static str {
        match (self.up, self.drained, self.mac_known) {
            (_, _, false) => "NO-MAC",
            (true, false, _) => "up",
            (true, true, _) => "drained",
            (false, false, _) => "DOWN",
            (false, true, _) => "DOWN,drained",
        }
    }
}

/// The config's `syn_cookies` of a VIP, when not off (`auto` before housekeeping says whether it
/// is on).
pub fn syn_cookie_mode(vip: &crate::state::desired::DesiredVip) -> Option<&'static str> {
    if vip.flags & lb_common::VIP_FLAG_SYN_COOKIES != 0 {
        Some("always")
    } else if vip.flags & lb_common::VIP_FLAG_SYN_COOKIES_AUTO != 0 {
        Some("auto")
    } else {
        None
    }
}

/// The config's `mode` of a VIP the data plane serves.
pub fn mode(vip: &crate::state::desired::DesiredVip) -> &'static str {
    if vip.flags & lb_common::VIP_FLAG_NAT != 0 {
        "nat"
    } else if vip.backend_flags & lb_common::BACKEND_FLAG_IPIP != 0 {
        "dsr-ipip"
    } else {
        "dsr-l2"
    }
}

impl Snapshot {
    /// The counters as of now for the VIPs `applied` holds: two syscalls whatever the size.
    /// Connections are as of the housekeeping thread's last count (`conns`).
    pub fn read(
        counters: &Counters,
        applied: &BTreeMap<VipKey, AppliedVip>,
        health: &HealthMap,
        conns: &ConnCounts,
    ) -> Result<Self, DataplaneError> {
        let in_use = applied.values().flat_map(|a| a.slots.iter()).max().map_or(0, |&highest| highest + 1);
        let slots = counters.backends(in_use)?;
        let slot = |s: u32| slots.get(s as usize).copied().unwrap_or_default();
        let counters: Vec<Counter> = counters
            .stats()?
            .into_iter()
            .map(|(stat, value)| Counter {
                name: stat.name().to_owned(),
                malformed: stat.is_malformed(),
                drop: stat.is_drop(),
                outcome: stat.is_outcome(),
                value,
            })
            .collect();
        let mut vips = Vec::new();
        for applied in applied.values() {
            let c = applied.slots.iter().fold(applied.retired, |sum: BackendCounters, &s| sum.plus(&slot(s)));
            let mut backends = Vec::new();
            let mut vip_conns = BackendConns::default();
            let generations = applied.generations.iter().copied().chain(std::iter::repeat(0));
            for ((backend, &slot_id), generation) in applied.vip.backends.iter().zip(&applied.slots).zip(generations) {
                let b = slot(slot_id);
                let connections = conns.of(slot_id, generation);
                vip_conns.confirmed += connections.confirmed;
                vip_conns.embryonic += connections.embryonic;
                vip_conns.nat += connections.nat;
                let checked = health.get(&(applied.vip.name.clone(), backend.identity.clone()));
                backends.push(BackendStats {
                    address: backend.identity.clone(),
                    weight: backend.weight,
                    configured_weight: backend.configured_weight,
                    file_weight: backend.file_weight,
                    up: backend.up,
                    drained: backend.drained,
                    mac_known: backend.mac_known,
                    health_error: checked.and_then(|h| h.last_error.clone()),
                    packets: b.packets,
                    bytes: b.bytes,
                    new_flows: b.new_flows,
                    connections,
                });
            }
            vips.push(VipStats {
                name: applied.vip.name.clone(),
                endpoint: applied.vip.endpoint.clone(),
                mode: mode(&applied.vip).to_owned(),
                syn_cookies: syn_cookie_mode(&applied.vip).map(str::to_owned),
                up: applied.vip.is_up(),
                serving: applied.vip.serving(),
                min_healthy: applied.vip.min_healthy,
                healthy: applied.vip.healthy(),
                panic: applied.vip.panic,
                panic_threshold: applied.vip.panic_threshold,
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                connections: vip_conns,
                backends,
            });
        }
        vips.sort_by(|a, b| a.name.cmp(&b.name));
        let rx_packets = counters.iter().filter(|c| c.outcome).map(|c| c.value).sum();
        let connections_scan = conns.finished.map(|at| ConnectionsScan {
            age_ms: at.elapsed().as_millis() as u64,
            busy_us: conns.busy.as_micros() as u64,
        });
        Ok(Self {
            rx_packets,
            counters,
            vips,
            flow_table: Default::default(),
            nat: Default::default(),
            l7: Vec::new(),
            connections_scan,
            limited_sources: Vec::new(),
        })
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.name == name).map(|c| c.value)
    }

    pub fn vip(&self, name: &str) -> Option<&VipStats> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// The VIP table, `ipvsadm -Ln` style: each VIP with its state, then its backends with
    /// weight (configured, and effective when it differs), health and traffic.
    pub fn render_vips(&self) -> String {
        let mut out = format!(
            "{:<40} {:<8} {:>9} {:<10} {:>12} {:>14} {:>10}  {}\n",
            "VIP / backend", "mode", "weight", "state", "packets", "bytes", "new flows", "connections"
        );
        for v in &self.vips {
            let label = VipState::label(v.up, v.panic);
            let state = format!("{label} {}/{}", if v.panic { v.healthy } else { v.serving }, v.backends.len());
            out.push_str(&format!(
                "{:<40} {:<8} {:>9} {:<10} {:>12} {:>14} {:>10}  {}\n",
                format!("{} {}", v.name, v.endpoint),
                v.mode,
                "",
                state,
                v.packets,
                v.bytes,
                v.new_flows,
                v.connections.render()
            ));
            if v.panic {
                out.push_str(&format!(
                    "  panic: {} of {} backends healthy, below {}%: new flows go to all {} (health ignored)\n",
                    v.healthy,
                    v.backends.len(),
                    v.panic_threshold,
                    v.serving
                ));
            }
            for b in &v.backends {
                let weight = if b.weight == b.configured_weight {
                    b.weight.to_string()
                } else {
                    format!("{}→{}", b.configured_weight, b.weight)
                };
                out.push_str(&format!(
                    "  -> {:<36} {:<8} {:>9} {:<10} {:>12} {:>14} {:>10}  {}\n",
                    b.address,
                    "",
                    weight,
                    b.state_label(),
                    b.packets,
                    b.bytes,
                    b.new_flows,
                    b.connections.render()
                ));
                if let Some(file) = b.file_weight {
                    out.push_str(&format!("       weight {} (runtime; config {file})\n", b.configured_weight));
                }
                if let Some(error) = b.health_error.as_ref().filter(|_| !b.up) {
                    out.push_str(&format!("       health check: {error}\n"));
                }
            }
        }
        for v in &self.l7 {
            let serving = v.backends.iter().filter(|b| b.serving).count();
            let state = format!("{} {serving}/{}", if v.up { "up" } else { "DOWN" }, v.backends.len());
            out.push_str(&format!(
                "{:<40} {:<8} {:>9} {:<10} (requests in /metrics)\n",
                format!("{} {}/http", v.name, v.endpoint),
                "l7",
                "",
                state
            ));
            for b in &v.backends {
                let state = if b.serving { "up" } else { "DOWN" };
                out.push_str(&format!(
                    "  -> {:<36} {:<8} {:>9} {:<10} {} in flight\n",
                    b.address, "", "", state, b.in_flight
                ));
            }
        }
        out.push_str(&format!(
            "\nconnection table: {} of {} entries in use\n",
            self.flow_table.entries, self.flow_table.size
        ));
        match &self.connections_scan {
            Some(scan) => out.push_str(&format!(
                "connections: live entries (not idle past the table's rule), counted {:.1}s ago\n",
                scan.age_ms as f64 / 1000.0
            )),
            None => out.push_str("connections: not counted yet\n"),
        }
        out.push_str(&self.nat.render());
        out
    }

    /// The VIP table, then the global counters.
    pub fn render(&self) -> String {
        let mut out = self.render_vips();
        out.push_str(&format!("\n{:<24} {:>12}\n", "rx_packets", self.rx_packets));
        for c in self.counters.iter().filter(|c| c.value > 0 || !(c.malformed || c.drop)) {
            let kind = if c.malformed {
                " (malformed, passed)"
            } else if c.drop {
                " (dropped)"
            } else if !c.outcome {
                " (event)"
            } else {
                ""
            };
            out.push_str(&format!("{:<24} {:>12}{kind}\n", c.name, c.value));
        }
        out
    }
}
