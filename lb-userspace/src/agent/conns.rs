//! `xlb conns VIP`: the VIP's live flows, gathered from the mapped connection table on the
//! caller's blocking thread (one such scan at a time), attributed through the published view.

use crate::{
    apply::conns::{self, SlotOwners},
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
            nat: applied.slots.iter().zip(&applied.generations).map(|(&s, &g)| usage.conns.of(s, g).nat).sum(),
            limit,
            flows: Vec::new(),
        };
        if report.mode == "nat" {
            return Ok(report);
        }
        let table = self.flow_table.get().ok_or("the connection table is not mapped for reading")?;
        let clock = usage.clock.ok_or("the kernel's jiffies clock is not known (yet): see the agent's log")?;
        let owners = SlotOwners::of(&view.applied);
        let index = owners.vip_index(key).ok_or("the VIP left the published view")?;
        let _one_at_a_time = lock(&self.conns_scan);
        let now = clock.now().map_err(|e| e.to_string())?;
        let found = conns::vip_flows(table, now, &owners, index, limit as usize);
        report.confirmed = found.confirmed;
        report.embryonic = found.embryonic;
        report.flows = found
            .flows
            .iter()
            .map(|f| ConnEntry {
                client: std::net::SocketAddr::new(ip_from_words(f.key.saddr, f.key.family), u16::from_be(f.key.sport))
                    .to_string(),
                backend: applied
                    .vip
                    .backends
                    .get(f.backend_index as usize)
                    .map_or_else(|| "?".to_owned(), |b| b.identity.clone()),
                state: f.state.name().to_owned(),
                idle_ms: clock.duration(f.age).as_millis() as u64,
            })
            .collect();
        Ok(report)
    }
}
