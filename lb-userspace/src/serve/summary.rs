//! `xlb status`: the node at a glance. Built from the published view alone — no counter reads —
//! and as small at 10 000 VIPs as at ten: counts, the configuration's state, the BGP peers, and
//! only the VIPs that are not fully serving (at most [`DEGRADED_LISTED`]). The whole VIP table
//! with its counters is `xlb status --vips` (or `xlb stats`).

use std::collections::BTreeMap;

use lb_common::VipKey;
use serde::{Deserialize, Serialize};

use crate::{
    announce::bgp::PeerStatus,
    apply::dataplane::FlowTableUsage,
    apply::nat::NatUsage,
    apply::reconcile::AppliedVip,
    state::{desired::DesiredBackend, vip_state::VipState},
};

/// Degraded VIPs listed at most; the rest are counted.
pub const DEGRADED_LISTED: usize = 100;
/// Backends not serving listed at most per degraded VIP; the rest are counted.
pub const NOT_SERVING_LISTED: usize = 16;

/// The result of the latest reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// What changed, or why the file was rejected (the old configuration keeps serving).
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

/// What `xlb status` shows of the state file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct StateStatus {
    pub path: String,
    /// The file existed at start.
    pub found: bool,
    /// Backend drains restored at start (after pruning those no longer configured).
    pub restored_drains: usize,
    /// Runtime weights (`xlb weight`) restored at start (after pruning).
    #[serde(default)]
    pub restored_weights: usize,
    /// The node drain was restored at start.
    pub restored_node_drain: bool,
    /// Drains restored from the file but dropped because the config no longer has the backend.
    pub pruned_drains: usize,
    /// Runtime weights restored from the file but dropped with their backend.
    #[serde(default)]
    pub pruned_weights: usize,
    /// Why the last write failed (the overrides in force then are not all on disk).
    pub write_error: Option<String>,
}

impl StateStatus {
    /// One line for `xlb status`.
    pub fn render(&self) -> String {
        let at_start = if !self.found {
            "none at start".to_owned()
        } else {
            let node = if self.restored_node_drain { " and the node drain" } else { "" };
            let weights = match self.restored_weights {
                0 => String::new(),
                n => format!(", {n} runtime weights"),
            };
            let pruned = match self.pruned_drains + self.pruned_weights {
                0 => String::new(),
                n => format!(" ({n} of backends no longer configured dropped)"),
            };
            format!("restored {} backend drains{weights}{node} at start{pruned}", self.restored_drains)
        };
        match &self.write_error {
            None => format!("state file {}: {at_start}\n", self.path),
            Some(e) => format!("state file {}: {at_start}; last write FAILED: {e}\n", self.path),
        }
    }
}

/// The agent's own state, as both `xlb status` and `xlb status --vips` head it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeState {
    pub config_path: String,
    /// Configurations applied since the agent started (1 = the one it started with).
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    /// `xlb drain node` in effect.
    pub node_drained: bool,
    pub peers: Vec<PeerStatus>,
    /// VIPs a pass in progress has still to write.
    #[serde(default)]
    pub pending_vips: usize,
    /// Why the last pass stopped short (it is retried).
    #[serde(default)]
    pub reconcile_error: Option<String>,
    /// The state file: where it is, what was restored from it.
    #[serde(default)]
    pub state: Option<Box<StateStatus>>,
    /// Whether XDP is attached to each interface the agent runs on.
    #[serde(default)]
    pub interfaces: Vec<AttachmentStatus>,
    /// `scope: global` limits: shared through Redis or in fallback, and this node's shares.
    #[serde(default)]
    pub global_limits: Option<crate::sources::limits::LimitsView>,
    /// The VIPs' connection limits on this node.
    #[serde(default)]
    pub conn_limits: Vec<crate::apply::conn_limits::ConnLimitStatus>,
}

/// XDP on one of the agent's interfaces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AttachmentStatus {
    pub iface: String,
    pub attached: bool,
    /// Detached through `xlb detach`: the agent does not re-attach it.
    pub operator_detached: bool,
    /// The link is down (set down, no carrier, deleted): the VIPs served through it are
    /// withdrawn until it is up again.
    #[serde(default)]
    pub link_down: bool,
    /// How XDP runs there, as the kernel reports it: "native", "generic", "offload".
    #[serde(default)]
    pub mode: Option<String>,
    /// Why it is detached.
    pub reason: Option<String>,
    /// Times the agent re-attached it after losing it.
    pub reattached: u64,
    /// Frames XDP sent out of it that its driver dropped (a veth whose peer runs no XDP
    /// program); `None` when the driver does not count them.
    #[serde(default)]
    pub transmit_errors: Option<u64>,
}

impl AttachmentStatus {
    /// Its lines for `xlb status`, if it has any (an interface attached all along, with no
    /// transmit failures, has none).
    fn render(&self) -> Option<String> {
        let attachment = self.render_attachment();
        let dropped = self.transmit_errors.filter(|&n| n > 0).map(|n| {
            format!(
                "XDP on {}: {n} frames it sent were dropped by the driver (a veth forwards them only while its peer runs an XDP program)\n",
                self.iface
            )
        });
        match (attachment, dropped) {
            (None, None) => None,
            (a, d) => Some(format!("{}{}", a.unwrap_or_default(), d.unwrap_or_default())),
        }
    }

    fn render_attachment(&self) -> Option<String> {
        let link = self.link_down.then(|| {
            format!(
                "link {}: DOWN (set down, no carrier or deleted): the VIPs served through it are withdrawn\n",
                self.iface
            )
        });
        let xdp = self.render_xdp();
        match (link, xdp) {
            (None, None) => None,
            (l, x) => Some(format!("{}{}", l.unwrap_or_default(), x.unwrap_or_default())),
        }
    }

    fn render_xdp(&self) -> Option<String> {
        match (self.attached, self.operator_detached) {
            (true, _) if self.reattached > 0 => {
                Some(format!("XDP on {}: attached (re-attached {} times)\n", self.iface, self.reattached))
            }
            (true, _) => None,
            (false, true) => Some(format!(
                "XDP on {}: DETACHED by the operator (xlb detach): its VIPs are withdrawn; restart the agent to attach again\n",
                self.iface
            )),
            (false, false) => Some(format!(
                "XDP on {}: DETACHED ({}): its VIPs are withdrawn; the agent re-attaches it\n",
                self.iface,
                self.reason.as_deref().unwrap_or("reason unknown")
            )),
        }
    }
}

impl NodeState {
    /// The heading lines; `announced` says what BGP announces (a list or a count).
    pub fn render(&self, announced: &str) -> String {
        let age = |at| crate::serve::human::age_of(at, crate::serve::human::now_epoch());
        let mut out = format!("config {} (generation {})\n", self.config_path, self.config_generation);
        match &self.last_reload {
            None => out.push_str("last reload: none since start\n"),
            Some(r) if r.ok => out.push_str(&format!("last reload: ok {} — {}\n", age(r.at), r.message)),
            Some(r) => out.push_str(&format!(
                "last reload: REJECTED {} — the previous configuration keeps serving\n  {}\n",
                age(r.at),
                r.message
            )),
        }
        if self.pending_vips > 0 {
            out.push_str(&format!("applying the configuration: {} VIPs to go\n", self.pending_vips));
        }
        if let Some(e) = &self.reconcile_error {
            out.push_str(&format!("map writes FAILING (retried): {e}\n"));
        }
        if let Some(state) = &self.state {
            out.push_str(&state.render());
        }
        for line in self.interfaces.iter().filter_map(AttachmentStatus::render) {
            out.push_str(&line);
        }
        if self.node_drained {
            out.push_str("node DRAINED: every route withdrawn (`xlb drain node --undo` to announce again)\n");
        }
        if let Some(limits) = &self.global_limits {
            out.push_str(&limits.render());
        }
        out.push_str(&crate::apply::conn_limits::ConnLimitStatus::render(&self.conn_limits));
        if !self.peers.is_empty() {
            out.push_str(&format!("announced: {announced}\n"));
            out.push_str(&format!(
                "{:<28} {:>10} {:<13} {:>7} {:>9} {:>6} {:>7}  {}\n",
                "BGP peer", "AS", "state", "for", "prefixes", "flaps", "bfd", "last error"
            ));
            for p in &self.peers {
                out.push_str(&format!(
                    "{:<28} {:>10} {:<13} {:>7} {:>9} {:>6} {:>7}  {}\n",
                    p.address,
                    p.remote_as,
                    p.state,
                    p.established_for_secs.map_or_else(|| "-".to_owned(), crate::serve::human::span),
                    p.prefixes_sent,
                    p.flaps,
                    p.bfd.as_deref().unwrap_or("-"),
                    p.last_error.as_deref().unwrap_or("")
                ));
            }
        }
        out
    }
}

/// What `xlb status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    #[serde(flatten)]
    pub node: NodeState,
    /// VIPs the data plane holds, and how many of them are up (announced when BGP runs).
    pub vips: usize,
    pub vips_up: usize,
    /// VIPs in panic: too few healthy backends, so new flows go to all of them.
    pub vips_panic: usize,
    /// Backends over all VIPs (a backend of two VIPs counts twice), and those taking new flows.
    pub backends: usize,
    pub backends_serving: usize,
    /// VIP addresses announced over BGP.
    pub announced: usize,
    pub flow_table: FlowTableUsage,
    pub nat: NatUsage,
    /// VIPs with a backend that takes no new flows, the down ones first, then by name.
    pub degraded: Vec<DegradedVip>,
    /// Degraded VIPs beyond those listed.
    pub degraded_unlisted: usize,
    /// The source prefixes the new-flow limits refused most lately.
    #[serde(default)]
    pub limited_sources: Vec<crate::apply::source_report::LimitedSource>,
    /// VIPs answering SYNs with cookies because new flows come faster than their threshold.
    #[serde(default)]
    pub syn_cookies_on: Vec<String>,
}

/// A VIP not fully serving.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DegradedVip {
    pub name: String,
    pub endpoint: String,
    /// `dsr-l2`, `dsr-ipip` or `nat`.
    #[serde(default)]
    pub mode: String,
    pub up: bool,
    /// In panic: new flows go to every backend, down ones included.
    pub panic: bool,
    pub serving: usize,
    pub backends: usize,
    /// Its backends that take no new flows (at most [`NOT_SERVING_LISTED`]).
    pub not_serving: Vec<NotServing>,
    pub not_serving_unlisted: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotServing {
    pub address: String,
    /// "down" (health checks), "drained", or "no MAC" (not resolved yet).
    pub reason: String,
}

/// Why a backend does not take new flows on its own merit, if it does not. (In panic it may
/// take them all the same.)
pub(crate) fn not_serving(backend: &DesiredBackend) -> Option<&'static str> {
    if backend.configured_weight == 0 {
        // Configured with weight 0: the operator's choice, not a degradation.
        None
    } else if backend.drained {
        Some("drained")
    } else if !backend.up {
        Some("down")
    } else if !backend.mac_known {
        Some("no MAC")
    } else {
        None
    }
}

impl Summary {
    /// The summary of what the maps hold (`applied`), with the node's own state.
    pub fn of(
        node: NodeState,
        applied: &BTreeMap<VipKey, AppliedVip>,
        announced: usize,
        flow_table: FlowTableUsage,
        nat: NatUsage,
    ) -> Summary {
        let (mut vips_up, mut vips_panic, mut backends, mut backends_serving) = (0, 0, 0, 0);
        let mut degraded = Vec::new();
        for vip in applied.values().map(|a| &a.vip) {
            let up = vip.is_up();
            let serving = vip.serving();
            vips_up += usize::from(up);
            vips_panic += usize::from(vip.panic);
            backends += vip.backends.len();
            backends_serving += serving;
            let mut out = vip.backends.iter().filter_map(|b| Some((b, not_serving(b)?))).peekable();
            if out.peek().is_none() {
                continue;
            }
            let listed: Vec<NotServing> = out
                .by_ref()
                .take(NOT_SERVING_LISTED)
                .map(|(b, reason)| NotServing { address: b.identity.clone(), reason: reason.to_owned() })
                .collect();
            degraded.push(DegradedVip {
                name: vip.name.clone(),
                endpoint: vip.endpoint.clone(),
                mode: crate::serve::stats::mode(vip).to_owned(),
                up,
                panic: vip.panic,
                serving,
                backends: vip.backends.len(),
                not_serving: listed,
                not_serving_unlisted: out.count(),
            });
        }
        degraded.sort_by(|a, b| (a.up, &a.name).cmp(&(b.up, &b.name)));
        let degraded_unlisted = degraded.len().saturating_sub(DEGRADED_LISTED);
        degraded.truncate(DEGRADED_LISTED);
        Summary {
            node,
            vips: applied.len(),
            vips_up,
            vips_panic,
            backends,
            backends_serving,
            announced,
            flow_table,
            nat,
            degraded,
            degraded_unlisted,
            limited_sources: Vec::new(),
            syn_cookies_on: Vec::new(),
        }
    }

    pub fn render(&self) -> String {
        let mut out = self.node.render(&format!("{} VIP addresses", self.announced));
        out.push_str(&format!(
            "VIPs: {} up of {}{}; backends: {} taking new flows of {}\n",
            self.vips_up,
            self.vips,
            if self.vips_panic > 0 { format!(" ({} in PANIC)", self.vips_panic) } else { String::new() },
            self.backends_serving,
            self.backends
        ));
        out.push_str(&format!(
            "connection table: {} of {} entries; NAT flows: {}\n",
            self.flow_table.entries, self.flow_table.size, self.nat.flows
        ));
        if !self.limited_sources.is_empty() {
            out.push_str("sources over their new-flow limit (refused/s, admitted/s, refused in all):\n");
            for s in &self.limited_sources {
                out.push_str(&format!(
                    "  {:<24} {:<24} {:>10} {:>10} {:>12}\n",
                    s.prefix, s.scope, s.refused_per_second, s.admitted_per_second, s.refused_total
                ));
            }
        }
        if !self.syn_cookies_on.is_empty() {
            out.push_str(&format!(
                "SYN cookies on (new flows over the threshold): {}\n",
                self.syn_cookies_on.join(", ")
            ));
        }
        if self.degraded.is_empty() {
            out.push_str("every backend of every VIP takes new flows\n");
            return out;
        }
        out.push_str("\nnot fully serving:\n");
        for vip in &self.degraded {
            let state = VipState::label(vip.up, vip.panic);
            let mut line = format!(
                "  {:<24} {:<24} {:<8} {:<4} {}/{} taking new flows; ",
                vip.name, vip.endpoint, vip.mode, state, vip.serving, vip.backends
            );
            let listed: Vec<String> = vip.not_serving.iter().map(|b| format!("{} {}", b.address, b.reason)).collect();
            line.push_str(&listed.join(", "));
            if vip.not_serving_unlisted > 0 {
                line.push_str(&format!(" and {} more", vip.not_serving_unlisted));
            }
            out.push_str(&line);
            out.push('\n');
        }
        if self.degraded_unlisted > 0 {
            out.push_str(&format!("  … and {} more VIPs (`xlb status --vips` lists all)\n", self.degraded_unlisted));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(last_reload: Option<ReloadOutcome>) -> NodeState {
        NodeState {
            config_path: "/etc/xlb/eth0.yaml".into(),
            config_generation: 2,
            last_reload,
            node_drained: false,
            peers: Vec::new(),
            pending_vips: 0,
            reconcile_error: None,
            state: None,
            interfaces: Vec::new(),
            global_limits: None,
            conn_limits: Vec::new(),
        }
    }

    #[test]
    fn the_last_reload_shows_its_age_not_epoch_seconds() {
        let at = crate::serve::human::now_epoch() - 3700;
        let ok = ReloadOutcome { ok: true, message: "1 added".into(), at };
        let text = node(Some(ok)).render("nothing");
        assert!(text.contains("last reload: ok 1h1m ago — 1 added\n"), "{text}");
        assert!(!text.contains(&at.to_string()), "{text}");
        let mut with_peer = node(None);
        with_peer.peers.push(crate::announce::bgp::PeerStatus {
            address: "10.0.0.254".parse().unwrap(),
            remote_as: 65000,
            state: "established".into(),
            established_for_secs: Some(3 * 3600 + 4 * 60 + 5),
            prefixes_sent: 2,
            flaps: 0,
            last_error: None,
            last_error_at: None,
            updates_sent: 0,
            updates_received: 0,
            bfd: None,
        });
        let text = with_peer.render("1 VIP addresses");
        let peer = text.lines().find(|l| l.starts_with("10.0.0.254")).unwrap();
        assert_eq!(peer.split_whitespace().collect::<Vec<_>>()[..4], ["10.0.0.254", "65000", "established", "3h4m"]);
        let rejected = ReloadOutcome { ok: false, message: "bad".into(), at };
        let text = node(Some(rejected)).render("nothing");
        assert!(text.contains("last reload: REJECTED 1h1m ago — the previous configuration keeps serving"), "{text}");
    }

    #[test]
    fn a_degraded_vip_shows_its_mode() {
        let summary = Summary {
            node: node(None),
            vips: 1,
            vips_up: 0,
            vips_panic: 0,
            backends: 1,
            backends_serving: 0,
            announced: 0,
            flow_table: FlowTableUsage::default(),
            nat: NatUsage::default(),
            degraded: vec![DegradedVip {
                name: "web".into(),
                endpoint: "192.0.2.1:80/tcp".into(),
                mode: "nat".into(),
                up: false,
                panic: false,
                serving: 0,
                backends: 1,
                not_serving: vec![NotServing { address: "10.0.0.1".into(), reason: "down".into() }],
                not_serving_unlisted: 0,
            }],
            degraded_unlisted: 0,
            limited_sources: Vec::new(),
            syn_cookies_on: Vec::new(),
        };
        let text = summary.render();
        let line = text.lines().find(|l| l.contains("web")).unwrap();
        assert_eq!(
            line.split_whitespace().collect::<Vec<_>>()[..4],
            ["web", "192.0.2.1:80/tcp", "nat", "DOWN"],
            "{text}"
        );
    }
}
