//! The backend-side decapsulation program's maps: the addresses it accepts tunnels for, and its
//! counters.

use aya::maps::{HashMap, MapData, PerCpuArray};
use lb_common::{DecapStat, VipAddrKey, maps};

use super::{DataplaneError, map_err, sum_slot};

/// Typed handles on the decapsulation program's maps.
pub struct DecapMaps {
    pub(super) addrs: HashMap<MapData, VipAddrKey, u32>,
    pub(super) stats: PerCpuArray<MapData, u64>,
}

impl std::fmt::Debug for DecapMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DecapMaps").finish_non_exhaustive()
    }
}

impl DecapMaps {
    /// Accept tunnels addressed to `addr`.
    pub fn add_address(&mut self, addr: std::net::IpAddr) -> Result<(), DataplaneError> {
        let (addr, family) = crate::config::ip_words(addr);
        self.addrs.insert(&VipAddrKey { addr, family, pad: [0; 3] }, &1, 0).map_err(map_err(maps::DECAP_ADDRS))
    }

    pub fn stats(&self) -> Result<Vec<(DecapStat, u64)>, DataplaneError> {
        [DecapStat::Pass, DecapStat::Decapsulated, DecapStat::DropMalformed]
            .into_iter()
            .map(|s| Ok((s, sum_slot(&self.stats, s as u32, maps::DECAP_STATS, |a, b| a + b)?)))
            .collect()
    }
}
