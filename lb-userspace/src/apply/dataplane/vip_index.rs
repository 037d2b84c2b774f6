//! The VIP index (`VipSlot`): the VIP map's entries again, in an array the XDP program reads
//! in place. The agent is its only writer and keeps which key sits in which slot; it writes the
//! index after the map when a VIP is set and before the map when one is removed, so a packet
//! never finds in the index a VIP the map no longer has. A key without a free slot near its home
//! is simply not indexed: the program then asks the map.

use std::collections::BTreeMap;

use aya::maps::{Array, MapData};
use lb_common::{VIP_INDEX_PROBES, VIP_INDEX_SIZE, VipKey, VipMeta, VipSlot, maps, vip_index_slot};

use super::{DataplaneError, map_err};

pub(super) struct VipIndex {
    map: Array<MapData, VipSlot>,
    /// The key each slot holds.
    keys: Vec<Option<VipKey>>,
}

impl VipIndex {
    /// Takes over the index map, whose slots hold `held`, and makes it hold exactly `vips` (the
    /// VIP map's entries): what a previous agent left there is kept where it is still right,
    /// cleared where it is not.
    pub(super) fn adopt(
        map: Array<MapData, VipSlot>,
        held: &[VipSlot],
        vips: &[(VipKey, VipMeta)],
    ) -> Result<Self, DataplaneError> {
        let wanted: BTreeMap<VipKey, VipMeta> = vips.iter().copied().collect();
        let mut index = Self { map, keys: vec![None; VIP_INDEX_SIZE as usize] };
        for (slot, held) in (0..VIP_INDEX_SIZE).zip(held) {
            if held.check == 0 {
                continue;
            }
            let hash = held.key.index_hash();
            let in_reach = (0..VIP_INDEX_PROBES).any(|probe| vip_index_slot(hash, probe) == slot);
            let right = wanted.get(&held.key).is_some_and(|meta| held.holds(&held.key, hash) == Some(*meta));
            let duplicate = index.position(&held.key).is_some();
            if in_reach && right && !duplicate {
                index.keys[slot as usize] = Some(held.key);
            } else {
                index.write(slot, &VipSlot::default())?;
            }
        }
        for (key, meta) in &wanted {
            if index.position(key).is_none() {
                index.put(key, meta)?;
            }
        }
        Ok(index)
    }

    /// Indexes `key` → `meta` (in its slot if it has one, else in a free slot within reach of its
    /// home; if there is none, the key stays unindexed).
    pub(super) fn put(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), DataplaneError> {
        let hash = key.index_hash();
        let slot = self.position(key).or_else(|| {
            (0..VIP_INDEX_PROBES).map(|probe| vip_index_slot(hash, probe)).find(|&s| self.keys[s as usize].is_none())
        });
        let Some(slot) = slot else {
            tracing::debug!(
                ?key,
                "VIP index: no free slot near the key's home; the data plane looks it up in the VIP map"
            );
            return Ok(());
        };
        self.write(slot, &VipSlot::new(*key, *meta))?;
        self.keys[slot as usize] = Some(*key);
        Ok(())
    }

    pub(super) fn remove(&mut self, key: &VipKey) -> Result<(), DataplaneError> {
        if let Some(slot) = self.position(key) {
            self.write(slot, &VipSlot::default())?;
            self.keys[slot as usize] = None;
        }
        Ok(())
    }

    /// The slots in use, in slot order.
    pub(super) fn entries(&self) -> Result<Vec<(u32, VipSlot)>, DataplaneError> {
        (0..VIP_INDEX_SIZE)
            .filter(|&slot| self.keys[slot as usize].is_some())
            .map(|slot| Ok((slot, self.map.get(&slot, 0).map_err(map_err(maps::VIP_INDEX))?)))
            .collect()
    }

    fn position(&self, key: &VipKey) -> Option<u32> {
        let hash = key.index_hash();
        (0..VIP_INDEX_PROBES).map(|probe| vip_index_slot(hash, probe)).find(|&s| self.keys[s as usize] == Some(*key))
    }

    fn write(&mut self, slot: u32, value: &VipSlot) -> Result<(), DataplaneError> {
        self.map.set(slot, value, 0).map_err(map_err(maps::VIP_INDEX))
    }
}
