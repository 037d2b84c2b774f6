//! `xlb conns VIP`: the VIP's live flows, gathered from the mapped connection table (NAT VIPs:
//! the NAT tables) on the caller's blocking thread, one such scan at a time, attributed through
//! the published view.

use std::net::SocketAddr;

use lb_common::NodeConfig;

use crate::{
    apply::conns::{self, SlotOwners},
    apply::dataplane::NatTables,
    apply::reconcile::AppliedVip,
    apply::{nat, nat_flows},
    config::{Mode, ip_from_words},
    serve::admin::Reply,
    serve::conns::{ConnEntry, ConnsReport, MAX_LIMIT},
    serve::stats::mode,
};

use super::view::{Shared, lock};

impl Shared {
    /// The reply to `xlb conns`: an error naming the VIPs there are when `vip` is not one.
    pub fn conns(&self, vip: &str, limit: u32) -> Reply {
        match self.vip_conns(vip, limit.min(MAX_LIMIT)) {
            Ok(report) => Reply::Conns(report),
            Err(message) => Reply::Error(message),
        }
    }

    fn vip_conns(&self, name: &str, limit: u32) -> Result<ConnsReport, String> {
        let view = self.view.load();
        let Some((key, applied)) = view.applied.iter().find(|(_, a)| a.vip.name == name) else {
            if view.config.vips.iter().any(|v| v.name == name && v.mode == Mode::L7) {
                return Err(format!(
                    "VIP `{name}` is mode: l7: its connections are the proxy's, not in the connection table"
                ));
            }
            let mut names: Vec<&str> = view.applied.values().map(|a| a.vip.name.as_str()).collect();
            names.sort_unstable();
            return Err(format!("no VIP named `{name}`; served: {}", crate::serve::human::brief_list(&names, 20)));
        };
        let usage = lock(&self.usage).clone();
        let mut report = ConnsReport {
            vip: name.to_owned(),
            endpoint: applied.vip.endpoint.clone(),
            mode: mode(&applied.vip).to_owned(),
            confirmed: 0,
            embryonic: 0,
            closed: 0,
            nat: 0,
            limit,
            flows: Vec::new(),
        };
        let owners = SlotOwners::of(&view.applied);
        let index = owners.vip_index(key).ok_or("the VIP left the published view")?;
        let _one_at_a_time = lock(&self.conns_scan);
        if report.mode == "nat" {
            let node = view.node.ok_or("the data plane has no node settings yet")?;
            let tables = self.nat_reader.get().ok_or("the NAT tables are not open for reading")?;
            let (live, flows) = nat_flows(&lock(tables), &node, &owners, index, limit as usize);
            report.nat = live;
            report.flows = flows
                .into_iter()
                .map(|f| ConnEntry {
                    client: f.client.to_string(),
                    backend: backend_name(applied, f.backend_index),
                    state: "nat".to_owned(),
                    nat_source: Some(f.source.to_string()),
                    idle_ms: f.idle_ns / 1_000_000,
                })
                .collect();
            return Ok(report);
        }
        let table = self.flow_table.get().ok_or("the connection table is not mapped for reading")?;
        let clock = usage.clock.ok_or("the kernel's jiffies clock is not known (yet): see the agent's log")?;
        let now = clock.now().map_err(|e| e.to_string())?;
        let found = conns::vip_flows(table, now, &owners, index, limit as usize);
        report.confirmed = found.confirmed;
        report.embryonic = found.embryonic;
        report.closed = found.closed;
        report.flows = found
            .flows
            .iter()
            .map(|f| ConnEntry {
                client: std::net::SocketAddr::new(ip_from_words(f.key.saddr, f.key.family), u16::from_be(f.key.sport))
                    .to_string(),
                backend: backend_name(applied, f.backend_index),
                state: f.state.name().to_owned(),
                nat_source: None,
                idle_ms: clock.duration(f.age).as_millis() as u64,
            })
            .collect();
        Ok(report)
    }
}

fn backend_name(applied: &AppliedVip, index: u32) -> String {
    applied.vip.backends.get(index as usize).map_or_else(|| "?".to_owned(), |b| b.identity.clone())
}

/// A live NAT flow of the VIP.
struct NatListed {
    idle_ns: u64,
    client: SocketAddr,
    backend_index: u32,
    source: SocketAddr,
}

/// The live NAT flows of VIP `vip` (an index of `owners.vips`): how many, and the `limit` most
/// recently active.
fn nat_flows(
    tables: &NatTables,
    node: &NodeConfig,
    owners: &SlotOwners,
    vip: u32,
    limit: usize,
) -> (u64, Vec<NatListed>) {
    let now = nat::monotonic_ns();
    let mut live = Vec::new();
    nat_flows::live_flows(
        tables,
        node,
        owners,
        now,
        |o| o.vip == vip,
        |flow| {
            let (key, reverse) = (flow.key, flow.reverse);
            live.push(NatListed {
                idle_ns: now.saturating_sub(flow.last),
                client: SocketAddr::new(ip_from_words(reverse.client, key.family), u16::from_be(reverse.client_port)),
                backend_index: flow.owner.backend,
                source: SocketAddr::new(ip_from_words(key.daddr, key.family), u16::from_be(key.dport)),
            });
        },
    );
    let total = live.len() as u64;
    live.sort_by_key(|f| (f.idle_ns, f.client));
    live.truncate(limit);
    (total, live)
}
