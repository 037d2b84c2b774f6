//! Direct access to data-plane state the agent itself never writes, for tests and the bench:
//! whole connection-table sets (to check entry states and to age entries), the NAT reverse
//! table (to fill a pool without sending a flow per source) and the per-slot NAT source state.

use aya::maps::{Array, HashMap, Map, MapData, MapError};
use lb_common::{FlowKey, FlowSet, NatReverse, NatSources, flow_set, maps};

use super::{DataplaneError, Maps, map_err};

impl Maps {
    /// The connection-table set `key` falls in: its index and contents.
    pub fn flow_set_of(&self, key: &FlowKey) -> Result<(u32, FlowSet), DataplaneError> {
        let table = self.flow_table()?;
        let index = flow_set(key.hash(), table.len());
        Ok((index, table.get(&index, 0).map_err(map_err(maps::FLOWS))?))
    }

    /// Every set of the connection table, in order.
    pub fn flow_sets(&self) -> Result<Vec<FlowSet>, DataplaneError> {
        let table = self.flow_table()?;
        (0..table.len()).map(|i| table.get(&i, 0).map_err(map_err(maps::FLOWS))).collect()
    }

    /// Overwrites connection-table set `index` whole.
    pub fn write_flow_set(&mut self, index: u32, set: &FlowSet) -> Result<(), DataplaneError> {
        let mut table: Array<&mut MapData, FlowSet> = Array::try_from(&mut self.flows).map_err(map_err(maps::FLOWS))?;
        table.set(index, set, 0).map_err(map_err(maps::FLOWS))
    }

    /// Inserts NAT reverse-table entries as the data plane's claims would (the forward side is
    /// not written: a flow without one is judged by its reverse entry alone).
    pub fn insert_nat_reverse(&self, entries: &[(FlowKey, NatReverse)]) -> Result<(), DataplaneError> {
        let fd = self.readers.nat_reverse.try_clone().map_err(|e| map_err(maps::NAT_REVERSE)(MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(maps::NAT_REVERSE))?;
        let mut reverse: HashMap<MapData, FlowKey, NatReverse> =
            HashMap::try_from(Map::HashMap(data)).map_err(map_err(maps::NAT_REVERSE))?;
        for (key, value) in entries {
            reverse.insert(key, value, 0).map_err(map_err(maps::NAT_REVERSE))?;
        }
        Ok(())
    }
}

/// A backend slot's NAT source state, from the loaded program's own map.
pub fn nat_sources(program: &super::Loaded, slot: u32) -> Result<NatSources, DataplaneError> {
    let map = program
        .ebpf
        .map(maps::NAT_SOURCES)
        .ok_or_else(|| map_err(maps::NAT_SOURCES)(MapError::InvalidName { name: maps::NAT_SOURCES.to_owned() }))?;
    let array: Array<&MapData, NatSources> = Array::try_from(map).map_err(map_err(maps::NAT_SOURCES))?;
    array.get(&slot, 0).map_err(map_err(maps::NAT_SOURCES))
}

impl Maps {
    /// Sets the SYN cookies' key (tests rebuild the cookies they expect with a known one).
    pub fn set_syn_cookie_secret(&mut self, secret: &lb_common::SynCookieSecret) -> Result<(), DataplaneError> {
        let cookies = self.syn_cookies.as_mut().ok_or_else(|| {
            map_err(maps::SYN_COOKIE_SECRET)(MapError::InvalidName { name: maps::SYN_COOKIE_SECRET.to_owned() })
        })?;
        cookies.set_secret(secret)
    }
}
