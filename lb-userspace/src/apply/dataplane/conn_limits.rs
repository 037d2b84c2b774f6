//! The VIPs' new-connection limits (`lb_common::VipConnLimit`) and their buckets: handles for
//! the limits thread (`apply::conn_limits`), which writes the rates — a global limit's moves
//! with its share every renewal, not a reconciler's pace — and reads what the buckets counted.

use aya::{
    Ebpf,
    maps::{Array, MapData},
};
use lb_common::{VipConnBucket, VipConnLimit, maps};

use super::{DataplaneError, map_err, take};

pub struct ConnLimitMaps {
    limits: Array<MapData, VipConnLimit>,
    buckets: Array<MapData, VipConnBucket>,
}

impl std::fmt::Debug for ConnLimitMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnLimitMaps").finish_non_exhaustive()
    }
}

impl ConnLimitMaps {
    /// `None` for builds of the object from before connection limits (the bench loads them).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Option<Self>, DataplaneError> {
        if [maps::VIP_CONN_LIMITS, maps::VIP_CONN_BUCKETS].iter().any(|name| ebpf.map(name).is_none()) {
            return Ok(None);
        }
        Ok(Some(Self { limits: take(ebpf, maps::VIP_CONN_LIMITS)?, buckets: take(ebpf, maps::VIP_CONN_BUCKETS)? }))
    }

    /// The limit at VIP id `id` (all zero: none).
    pub fn limit(&self, id: u32) -> Result<VipConnLimit, DataplaneError> {
        self.limits.get(&id, 0).map_err(map_err(maps::VIP_CONN_LIMITS))
    }

    pub fn set_limit(&mut self, id: u32, limit: &VipConnLimit) -> Result<(), DataplaneError> {
        self.limits.set(id, limit, 0).map_err(map_err(maps::VIP_CONN_LIMITS))
    }

    /// What VIP `id`'s bucket admitted and refused, and its arrival time.
    pub fn bucket(&self, id: u32) -> Result<VipConnBucket, DataplaneError> {
        self.buckets.get(&id, 0).map_err(map_err(maps::VIP_CONN_BUCKETS))
    }

    /// Empties VIP `id`'s bucket (a limit new at that id starts full, with no counts).
    pub fn clear_bucket(&mut self, id: u32) -> Result<(), DataplaneError> {
        self.buckets.set(id, &VipConnBucket::default(), 0).map_err(map_err(maps::VIP_CONN_BUCKETS))
    }
}
