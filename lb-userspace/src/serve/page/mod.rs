//! The live status page on the metrics listener: one self-contained HTML file (`status.html`,
//! inline CSS and JS, no external assets) and the JSON it polls, `/status.json`.
//!
//! The JSON is built from what readers already get — the published view and one counter
//! snapshot, as `xlb status --vips` — and stays bounded at 10 000 VIPs: the VIPs that are not
//! fully serving come first and at most [`VIPS_LISTED`] are listed, each with at most
//! [`BACKENDS_LISTED`] backends (those not serving first); the rest are counted.

use std::collections::{BTreeMap, HashMap};

use lb_common::VipKey;
use serde::{Deserialize, Serialize};

use crate::{
    announce::bgp::Announce,
    apply::dataplane::FlowTableUsage,
    apply::reconcile::AppliedVip,
    config::ip_from_words,
    l7::L7VipStatus,
    serve::stats::{BackendStats, Counter, Snapshot, VipStats},
    serve::summary::{NodeState, not_serving},
    state::{
        desired::DesiredVip,
        vip_state::{self, VipState},
    },
};

#[cfg(test)]
mod tests;

/// The page itself, served as it is: it fetches everything it shows from `/status.json`.
pub const HTML: &str = include_str!("status.html");

/// VIPs listed at most; the rest are counted.
pub const VIPS_LISTED: usize = 200;
/// Backends listed at most per VIP; the rest are counted.
pub const BACKENDS_LISTED: usize = 32;

/// What `/status.json` holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusPage {
    /// When the counters were read, in milliseconds since the Unix epoch: the page divides
    /// counter steps by steps of this, so its rates are the agent's, whatever the browser's
    /// clock does.
    pub at_ms: u64,
    pub node: NodeState,
    /// VIPs the data plane holds, and how many are up, in panic.
    pub vips: usize,
    pub vips_up: usize,
    pub vips_panic: usize,
    /// Backends over all VIPs, and those taking new flows.
    pub backends: usize,
    pub backends_serving: usize,
    /// VIP addresses announced over BGP.
    pub announced: usize,
    pub flow_table: FlowTableUsage,
    pub nat_flows: u64,
    /// Packets XDP has seen (the sum of the outcome counters).
    pub rx_packets: u64,
    /// Every data-plane counter: outcomes (forwarded, passed, dropped by reason) and events.
    pub counters: Vec<Counter>,
    /// VIPs down first, then in panic, then with a backend not serving, then the rest; by name
    /// within each.
    pub listed: Vec<PageVip>,
    /// VIPs beyond those listed.
    pub unlisted: usize,
    /// `mode: l7` VIPs (the agent's proxy serves them, XDP does not count them): down first,
    /// at most [`VIPS_LISTED`], each with at most [`BACKENDS_LISTED`] backends.
    #[serde(default)]
    pub l7: Vec<L7VipStatus>,
    #[serde(default)]
    pub l7_unlisted: usize,
}

/// One VIP on the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageVip {
    pub name: String,
    pub endpoint: String,
    pub mode: String,
    /// `up`, `panic` or `down`.
    pub state: String,
    /// As `xlb status --vips` shows it: `up`, `PANIC`, `DOWN`, or `DOWN,PANIC` (withdrawn, and
    /// its backends below the panic threshold too).
    pub label: String,
    /// Why it is in that state, as the agent logs it.
    pub reason: String,
    /// Its address is announced over BGP (by this VIP or another on the same address).
    pub announced: bool,
    /// Backends taking new flows (in panic, every eligible one), and those healthy.
    pub serving: usize,
    pub healthy: usize,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    /// Backends not serving first, at most [`BACKENDS_LISTED`].
    pub backends: Vec<PageBackend>,
    pub backends_unlisted: usize,
}

/// One backend of a VIP on the page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageBackend {
    pub address: String,
    /// As `xlb status --vips` shows it: `up`, `DOWN`, `drained`, `DOWN,drained`, `NO-MAC`.
    pub state: String,
    /// Passing its health check.
    pub up: bool,
    pub drained: bool,
    /// Effective weight (0 while down or drained), and the one it takes while serving.
    pub weight: u32,
    pub configured_weight: u32,
    /// Under a runtime weight (`xlb weight`): the config file's.
    pub file_weight: Option<u32>,
    pub health_error: Option<String>,
    pub packets: u64,
}

/// Where a VIP goes in the list: the ones an operator must look at first.
fn rank(vip: &DesiredVip) -> u8 {
    match VipState::of(vip) {
        VipState::Down => 0,
        VipState::Panic => 1,
        VipState::Up if vip.backends.iter().any(|b| not_serving(b).is_some()) => 2,
        VipState::Up => 3,
    }
}

impl StatusPage {
    /// The page's data: `snapshot` read for `applied` (the same published view), `node` the
    /// agent's own state, `announce` what BGP announces, `at_ms` when the counters were read.
    pub fn of(
        node: NodeState,
        snapshot: &Snapshot,
        applied: &BTreeMap<VipKey, AppliedVip>,
        announce: &Announce,
        at_ms: u64,
    ) -> StatusPage {
        let stats: HashMap<&str, &VipStats> = snapshot.vips.iter().map(|v| (v.name.as_str(), v)).collect();
        let mut order: Vec<(u8, &str, &VipKey, &DesiredVip)> =
            applied.iter().map(|(key, a)| (rank(&a.vip), a.vip.name.as_str(), key, &a.vip)).collect();
        order.sort_unstable_by(|a, b| (a.0, a.1).cmp(&(b.0, b.1)));
        let listed = order
            .iter()
            .take(VIPS_LISTED)
            .filter_map(|&(_, name, key, vip)| {
                let announced = announce.contains(&ip_from_words(key.addr, key.family));
                Some(PageVip::of(vip, stats.get(name)?, announced))
            })
            .collect();
        let mut l7: Vec<&L7VipStatus> = snapshot.l7.iter().collect();
        l7.sort_by(|a, b| (a.up, &a.name).cmp(&(b.up, &b.name)));
        let l7_listed = l7
            .iter()
            .take(VIPS_LISTED)
            .map(|v| L7VipStatus {
                name: v.name.clone(),
                endpoint: v.endpoint.clone(),
                up: v.up,
                backends: v.backends.iter().take(BACKENDS_LISTED).cloned().collect(),
            })
            .collect();
        let vips = snapshot.vips.iter();
        StatusPage {
            at_ms,
            node,
            vips: snapshot.vips.len(),
            vips_up: vips.clone().filter(|v| v.up).count(),
            vips_panic: vips.clone().filter(|v| v.panic).count(),
            backends: vips.clone().map(|v| v.backends.len()).sum(),
            backends_serving: vips.map(|v| v.serving).sum(),
            announced: announce.len(),
            flow_table: snapshot.flow_table,
            nat_flows: snapshot.nat.flows,
            rx_packets: snapshot.rx_packets,
            counters: snapshot.counters.clone(),
            listed,
            unlisted: order.len().saturating_sub(VIPS_LISTED),
            l7: l7_listed,
            l7_unlisted: l7.len().saturating_sub(VIPS_LISTED),
        }
    }
}

impl PageVip {
    /// `stats` is `vip`'s line of the same snapshot: its backends in `vip.backends`' order.
    fn of(vip: &DesiredVip, stats: &VipStats, announced: bool) -> PageVip {
        let mut backends: Vec<(bool, &BackendStats)> =
            vip.backends.iter().zip(&stats.backends).map(|(b, s)| (not_serving(b).is_none(), s)).collect();
        // Stable: within each group, the config's order.
        backends.sort_by_key(|&(serving, _)| serving);
        let backends_unlisted = backends.len().saturating_sub(BACKENDS_LISTED);
        PageVip {
            name: stats.name.clone(),
            endpoint: stats.endpoint.clone(),
            mode: stats.mode.clone(),
            state: VipState::of(vip).name().to_owned(),
            label: VipState::label(stats.up, stats.panic).to_owned(),
            reason: vip_state::reason(vip),
            announced,
            serving: stats.serving,
            healthy: stats.healthy,
            packets: stats.packets,
            bytes: stats.bytes,
            new_flows: stats.new_flows,
            backends: backends.into_iter().take(BACKENDS_LISTED).map(|(_, b)| PageBackend::of(b)).collect(),
            backends_unlisted,
        }
    }
}

impl PageBackend {
    fn of(b: &BackendStats) -> PageBackend {
        PageBackend {
            address: b.address.clone(),
            state: b.state_label().to_owned(),
            up: b.up,
            drained: b.drained,
            weight: b.weight,
            configured_weight: b.configured_weight,
            file_weight: b.file_weight,
            health_error: b.health_error.clone(),
            packets: b.packets,
        }
    }
}
