//! The source-policy maps: per-VIP policies and the allow/deny trie (the reconciler writes them),
//! and the new-flow buckets (housekeeping reads them for the sources being limited).

use std::os::fd::OwnedFd;

use aya::{
    Ebpf,
    maps::{
        Array, Map, MapData, MapError,
        lpm_trie::{Key, LpmTrie},
    },
};
use lb_common::{MAX_VIPS, SOURCE_BUCKET_COUNT, SourceBucket, SourcePolicy, SourceRuleData, maps};

use super::{DataplaneError, map_err, read_array, take, take_shared};

/// An allow/deny entry's key: its prefix length in bits (scope included) and what it matches.
pub type RuleKey = (u32, SourceRuleData);

/// The reconciler's handles.
pub struct SourceMaps {
    policies: Array<MapData, SourcePolicy>,
    /// The same array, for reading it whole in one batch.
    policies_fd: OwnedFd,
    rules: LpmTrie<MapData, SourceRuleData, u32>,
    buckets: OwnedFd,
}

impl std::fmt::Debug for SourceMaps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceMaps").finish_non_exhaustive()
    }
}

impl SourceMaps {
    /// `None` for builds of the object from before source policies (the bench loads them).
    pub(super) fn take(ebpf: &mut Ebpf) -> Result<Option<Self>, DataplaneError> {
        if [maps::SOURCE_POLICY, maps::SOURCE_RULES, maps::SOURCE_BUCKETS].iter().any(|name| ebpf.map(name).is_none()) {
            return Ok(None);
        }
        let (policies, policies_fd) = take_shared(ebpf, maps::SOURCE_POLICY)?;
        let (_, buckets) = take_shared::<Array<MapData, SourceBucket>>(ebpf, maps::SOURCE_BUCKETS)?;
        Ok(Some(Self { policies, policies_fd, rules: take(ebpf, maps::SOURCE_RULES)?, buckets }))
    }

    pub fn set_policy(&mut self, id: u32, policy: &SourcePolicy) -> Result<(), DataplaneError> {
        self.policies.set(id, policy, 0).map_err(map_err(maps::SOURCE_POLICY))
    }

    /// Every VIP id whose policy is not all zero (what a previous agent left).
    pub fn policies(&self) -> Result<Vec<(u32, SourcePolicy)>, DataplaneError> {
        let values: Vec<SourcePolicy> = read_array(&self.policies_fd, MAX_VIPS, maps::SOURCE_POLICY)?;
        Ok(values
            .into_iter()
            .enumerate()
            .filter(|(_, p)| *p != SourcePolicy::default())
            .map(|(id, p)| (id as u32, p))
            .collect())
    }

    pub fn set_rule(&mut self, key: RuleKey, action: u32) -> Result<(), DataplaneError> {
        self.rules.insert(&Key::new(key.0, key.1), &action, 0).map_err(map_err(maps::SOURCE_RULES))
    }

    pub fn remove_rule(&mut self, key: RuleKey) -> Result<(), DataplaneError> {
        match self.rules.remove(&Key::new(key.0, key.1)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(e) => Err(map_err(maps::SOURCE_RULES)(e)),
        }
    }

    /// The trie's entries (what a previous agent left).
    pub fn rules(&self) -> Result<Vec<(RuleKey, u32)>, DataplaneError> {
        self.rules
            .iter()
            .map(|entry| entry.map(|(key, action)| ((key.prefix_len(), key.data()), action)))
            .collect::<Result<_, _>>()
            .map_err(map_err(maps::SOURCE_RULES))
    }

    /// A handle on the buckets for another thread.
    pub fn buckets(&self) -> Result<SourceBuckets, DataplaneError> {
        let fd = self.buckets.try_clone().map_err(|e| map_err(maps::SOURCE_BUCKETS)(MapError::IoError(e)))?;
        Ok(SourceBuckets(fd))
    }
}

/// The new-flow buckets, read by the housekeeping thread.
#[derive(Debug)]
pub struct SourceBuckets(OwnedFd);

impl SourceBuckets {
    /// Every bucket in use (one batched read of the array: 3 MiB).
    pub fn read(&self) -> Result<Vec<SourceBucket>, DataplaneError> {
        let values: Vec<SourceBucket> = read_array(&self.0, SOURCE_BUCKET_COUNT, maps::SOURCE_BUCKETS)?;
        // A used bucket's scope names its family, so it is never 0.
        Ok(values.into_iter().filter(|b| b.key.scope != 0).collect())
    }

    /// Writes one bucket in slot `slot` (one of its key's two, `source_bucket_slots`, as the data
    /// plane would; benches and tests: a source put over its limit without sending its flows).
    pub fn write(&self, slot: u32, bucket: &SourceBucket) -> Result<(), DataplaneError> {
        let fd = self.0.try_clone().map_err(|e| map_err(maps::SOURCE_BUCKETS)(MapError::IoError(e)))?;
        let data = MapData::from_fd(fd).map_err(map_err(maps::SOURCE_BUCKETS))?;
        let mut map: Array<MapData, SourceBucket> =
            Array::try_from(Map::Array(data)).map_err(map_err(maps::SOURCE_BUCKETS))?;
        map.set(slot, bucket, 0).map_err(map_err(maps::SOURCE_BUCKETS))
    }
}
