//! The one writer of the data plane's maps: desired state in, minimal map writes out.
//!
//! It remembers what it last wrote, so a reload touches only what changed and a VIP keeps its
//! counter slot (and counts) for as long as its key is configured.

use std::collections::BTreeMap;

use lb_common::{MAX_VIPS, VipKey, VipMeta};

use crate::desired::{DesiredState, DesiredVip};

/// Map operations the reconciler needs; implemented by [`crate::dataplane::Maps`].
pub trait VipMaps {
    type Error: std::error::Error + Send + Sync + 'static;
    fn set_vip(&mut self, key: &VipKey, meta: &VipMeta) -> Result<(), Self::Error>;
    fn remove_vip(&mut self, key: &VipKey) -> Result<(), Self::Error>;
    /// Zeroes a counter slot before a new VIP takes it, so it does not inherit counts.
    fn reset_vip_counters(&mut self, id: u32) -> Result<(), Self::Error>;
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("more than {MAX_VIPS} VIPs; remove some from the configuration")]
    TooManyVips,
    #[error("writing VIP {endpoint} to the data plane failed: {source}")]
    Write {
        endpoint: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A VIP as written to the maps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppliedVip {
    pub meta: VipMeta,
    pub vip: DesiredVip,
}

/// What one reconcile pass changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    pub added: Vec<String>,
    pub removed: Vec<String>,
    pub unchanged: usize,
}

#[derive(Debug, Default)]
pub struct Reconciler {
    applied: BTreeMap<VipKey, AppliedVip>,
}

impl Reconciler {
    pub fn new() -> Self {
        Self::default()
    }

    /// What is in the maps now, by key.
    pub fn applied(&self) -> &BTreeMap<VipKey, AppliedVip> {
        &self.applied
    }

    /// Brings the maps to `desired`. On error the maps hold a mix of old and new entries, and
    /// `applied()` says exactly which; the next call converges.
    pub fn apply<M: VipMaps>(
        &mut self,
        desired: &DesiredState,
        maps: &mut M,
    ) -> Result<Changes, ReconcileError> {
        let mut changes = Changes::default();
        let stale: Vec<VipKey> = self
            .applied
            .keys()
            .filter(|k| !desired.vips.contains_key(k))
            .copied()
            .collect();
        for key in stale {
            let endpoint = self.applied[&key].vip.endpoint.clone();
            maps.remove_vip(&key)
                .map_err(|e| write_error(&endpoint, e))?;
            let gone = self.applied.remove(&key).map(|a| a.vip.name);
            changes.removed.extend(gone);
        }
        for (key, vip) in &desired.vips {
            if let Some(applied) = self.applied.get_mut(key) {
                // Same key: same slot and counters; only the agent-side name may change.
                applied.vip = vip.clone();
                changes.unchanged += 1;
                continue;
            }
            let id = self.free_id().ok_or(ReconcileError::TooManyVips)?;
            let meta = VipMeta { id, flags: 0 };
            maps.reset_vip_counters(id)
                .map_err(|e| write_error(&vip.endpoint, e))?;
            maps.set_vip(key, &meta)
                .map_err(|e| write_error(&vip.endpoint, e))?;
            self.applied.insert(
                *key,
                AppliedVip {
                    meta,
                    vip: vip.clone(),
                },
            );
            changes.added.push(vip.name.clone());
        }
        Ok(changes)
    }

    fn free_id(&self) -> Option<u32> {
        let mut used: Vec<u32> = self.applied.values().map(|a| a.meta.id).collect();
        used.sort_unstable();
        // Lowest id not in use.
        let id = used
            .iter()
            .enumerate()
            .find(|(i, id)| **id != *i as u32)
            .map_or(used.len() as u32, |(i, _)| i as u32);
        (id < MAX_VIPS).then_some(id)
    }
}

fn write_error<E: std::error::Error + Send + Sync + 'static>(
    endpoint: &str,
    e: E,
) -> ReconcileError {
    ReconcileError::Write {
        endpoint: endpoint.to_owned(),
        source: Box::new(e),
    }
}
