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
    /// Outcome counters by name (`pass_not_vip`, `vip_hit`, `truncated_tcp`, ...).
    pub counters: Vec<Counter>,
    pub vips: Vec<VipStats>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counter {
    pub name: String,
    pub malformed: bool,
    pub value: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VipStats {
    pub name: String,
    pub endpoint: String,
    pub packets: u64,
    pub bytes: u64,
}

impl Snapshot {
    pub fn read(maps: &Maps, reconciler: &Reconciler) -> Result<Self, DataplaneError> {
        let counters: Vec<Counter> = maps
            .stats()?
            .into_iter()
            .map(|(stat, value)| Counter {
                name: stat.name().to_owned(),
                malformed: stat.is_malformed(),
                value,
            })
            .collect();
        let mut vips = Vec::new();
        for applied in reconciler.applied().values() {
            let c = maps.vip_counters(applied.meta.id)?;
            vips.push(VipStats {
                name: applied.vip.name.clone(),
                endpoint: applied.vip.endpoint.clone(),
                packets: c.packets,
                bytes: c.bytes,
            });
        }
        vips.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(Self {
            rx_packets: counters.iter().map(|c| c.value).sum(),
            counters,
            vips,
        })
    }

    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters
            .iter()
            .find(|c| c.name == name)
            .map(|c| c.value)
    }

    pub fn vip(&self, name: &str) -> Option<&VipStats> {
        self.vips.iter().find(|v| v.name == name)
    }

    /// A human-readable table.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let width = self
            .vips
            .iter()
            .map(|v| v.name.len())
            .max()
            .unwrap_or(0)
            .max(4);
        let ep_width = self
            .vips
            .iter()
            .map(|v| v.endpoint.len())
            .max()
            .unwrap_or(0)
            .max(8);
        out.push_str(&format!(
            "{:<width$}  {:<ep_width$}  {:>12}  {:>14}\n",
            "VIP", "ENDPOINT", "PACKETS", "BYTES"
        ));
        for v in &self.vips {
            out.push_str(&format!(
                "{:<width$}  {:<ep_width$}  {:>12}  {:>14}\n",
                v.name, v.endpoint, v.packets, v.bytes
            ));
        }
        out.push_str(&format!("\n{:<20} {:>12}\n", "rx_packets", self.rx_packets));
        for c in self.counters.iter().filter(|c| c.value > 0 || !c.malformed) {
            let label = if c.malformed {
                format!("{} (malformed)", c.name)
            } else {
                c.name.clone()
            };
            out.push_str(&format!("{label:<20} {:>12}\n", c.value));
        }
        out
    }
}
