//! Counter snapshots read from the data plane, as served to `xlb stats`.

use serde::{Deserialize, Serialize};

use crate::{
    dataplane::{DataplaneError, Maps},
    reconcile::Reconciler,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Packets the program has seen (the sum of the outcome counters).
    pub rx_packets: u64,
    /// Counters by name (`pass_not_vip`, `forwarded`, `truncated_tcp`, `flow_miss`, ...).
    pub counters: Vec<Counter>,
    pub vips: Vec<VipStats>,
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
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
    pub backends: Vec<BackendStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendStats {
    pub address: String,
    pub weight: u32,
    pub packets: u64,
    pub bytes: u64,
    pub new_flows: u64,
}

impl Snapshot {
    pub fn read(maps: &Maps, reconciler: &Reconciler) -> Result<Self, DataplaneError> {
        let counters: Vec<Counter> = maps
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
        for applied in reconciler.applied().values() {
            let c = maps.vip_traffic(applied)?;
            let mut backends = Vec::new();
            for (backend, &slot) in applied.vip.backends.iter().zip(&applied.slots) {
                let b = maps.backend_counters(slot)?;
                backends.push(BackendStats {
                    address: backend.identity.clone(),
                    weight: backend.weight,
                    packets: b.packets,
                    bytes: b.bytes,
                    new_flows: b.new_flows,
                });
            }
            vips.push(VipStats {
                name: applied.vip.name.clone(),
                endpoint: applied.vip.endpoint.clone(),
                packets: c.packets,
                bytes: c.bytes,
                new_flows: c.new_flows,
                backends,
            });
        }
        vips.sort_by(|a, b| a.name.cmp(&b.name));
        let rx_packets = counters.iter().filter(|c| c.outcome).map(|c| c.value).sum();
        Ok(Self { rx_packets, counters, vips })
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|c| c.name == name).map(|c| c.value)
    }

    pub fn vip(&self, name: &str) -> Option<&VipStats> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// A human-readable table, `ipvsadm -Ln` style: each VIP, then its backends.
    pub fn render(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<34} {:>7} {:>12} {:>14} {:>10}\n",
            "VIP / backend", "weight", "packets", "bytes", "new flows"
        ));
        for v in &self.vips {
            out.push_str(&format!(
                "{:<34} {:>7} {:>12} {:>14} {:>10}\n",
                format!("{} {}", v.name, v.endpoint),
                "",
                v.packets,
                v.bytes,
                v.new_flows
            ));
            for b in &v.backends {
                out.push_str(&format!(
                    "  -> {:<30} {:>7} {:>12} {:>14} {:>10}\n",
                    b.address, b.weight, b.packets, b.bytes, b.new_flows
                ));
            }
        }
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
