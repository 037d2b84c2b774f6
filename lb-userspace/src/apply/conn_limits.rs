//! The VIPs' `connection_limit`s into the data plane: a local limit's rate as configured, a
//! global one's at this node's share (`sources::limits`), its burst scaled alike; and each
//! global limit's share learns what its bucket counted (this node's demand). Runs on the
//! limits thread (`agent::conn_limits`), beside the reconciler, which only marks the VIPs
//! (`VIP_FLAG_CONN_LIMIT`): a share moves every renewal, far more often than a pass runs.

use std::collections::{BTreeMap, BTreeSet};

use lb_common::{CONN_LIMIT_RESET, VIP_FLAG_CONN_LIMIT, VipConnBucket, VipConnLimit, VipKey};

use crate::{
    apply::{
        dataplane::{ConnLimitMaps, DataplaneError},
        reconcile::AppliedVip,
    },
    config::{Config, ConnLimit, ConnOnLimit, Scope},
    sources::limits::{GlobalLimiter, ShareHandle, ShareKind},
};

/// Every applied VIP the reconciler marked with a connection limit: its id, name and limit
/// (from `config`, the config those VIPs were applied from).
pub fn limited_vips(config: &Config, applied: &BTreeMap<VipKey, AppliedVip>) -> Vec<(u32, String, ConnLimit)> {
    let limits: BTreeMap<&str, &ConnLimit> =
        config.vips.iter().filter_map(|v| v.connection_limit.as_ref().map(|l| (v.name.as_str(), l))).collect();
    applied
        .values()
        .filter(|a| a.meta.flags & VIP_FLAG_CONN_LIMIT != 0)
        .filter_map(|a| limits.get(a.vip.name.as_str()).map(|l| (a.meta.id, a.vip.name.clone(), (*l).clone())))
        .collect()
}

/// The data plane's value for `limit`, at `share` new flows/s when the limit is global.
pub fn limit_value(limit: &ConnLimit, share: Option<f64>) -> VipConnLimit {
    let rate = share.unwrap_or(f64::from(limit.rate)).max(0.001);
    let interval_ns = ((1e9 / rate) as u64).max(1);
    // A share's part of the burst, at least one flow.
    let burst = match share {
        Some(rate) => (f64::from(limit.burst) * rate / f64::from(limit.rate)).round().max(1.0) as u64,
        None => u64::from(limit.burst),
    };
    VipConnLimit {
        interval_ns,
        tolerance_ns: burst.saturating_sub(1).saturating_mul(interval_ns),
        flags: if limit.on_limit == ConnOnLimit::Reset { CONN_LIMIT_RESET } else { 0 },
        pad: 0,
    }
}

/// One VIP with a connection limit, as applied: its id, name and limit.
#[derive(Debug)]
pub struct LimitedVip<'a> {
    pub id: u32,
    pub name: &'a str,
    pub limit: &'a ConnLimit,
}

/// The limits thread's writer: what it wrote, and the shares of the global limits in use.
#[derive(Debug)]
pub struct ConnLimitWriter {
    maps: ConnLimitMaps,
    written: BTreeMap<u32, VipConnLimit>,
    shares: BTreeMap<String, ShareHandle>,
}

impl ConnLimitWriter {
    pub fn new(maps: ConnLimitMaps) -> Self {
        ConnLimitWriter { maps, written: BTreeMap::new(), shares: BTreeMap::new() }
    }

    /// The share of VIP `name`'s global limit (the Redis key `<prefix>:limit:<name>#connections`).
    fn share(&mut self, name: &str, limit: &ConnLimit, limiter: &GlobalLimiter) -> ShareHandle {
        let key = format!("{name}#connections");
        let share = self
            .shares
            .get(name)
            .filter(|s| s.threshold == limit.rate)
            .cloned()
            .unwrap_or_else(|| limiter.share(&key, limit.rate, ShareKind::Rate));
        self.shares.insert(name.to_owned(), ShareHandle::clone(&share));
        share
    }

    /// What VIP `id`'s bucket admitted and refused.
    pub fn bucket(&self, id: u32) -> Result<VipConnBucket, DataplaneError> {
        self.maps.bucket(id)
    }

    /// Writes every limit that changed and clears those gone; a global limit's share is fed
    /// its bucket's counts first.
    pub fn refresh(&mut self, vips: &[LimitedVip<'_>], limiter: &GlobalLimiter) -> Result<(), DataplaneError> {
        let mut wanted = BTreeMap::new();
        let mut global = BTreeSet::new();
        for vip in vips {
            let share = match vip.limit.scope {
                Scope::Local => None,
                Scope::Global => {
                    global.insert(vip.name);
                    let share = self.share(vip.name, vip.limit, limiter);
                    let bucket = self.maps.bucket(vip.id)?;
                    share.observe_totals(bucket.admitted, bucket.limited);
                    Some(share.rate())
                }
            };
            wanted.insert(vip.id, limit_value(vip.limit, share));
        }
        self.shares.retain(|name, _| global.contains(name.as_str()));
        for (&id, value) in &wanted {
            if self.written.get(&id) == Some(value) {
                continue;
            }
            // A limit new at this id starts with an empty bucket; one a previous agent left
            // running keeps its bucket (a restart lets no burst through).
            if !self.written.contains_key(&id) && self.maps.limit(id)?.interval_ns == 0 {
                self.maps.clear_bucket(id)?;
            }
            self.maps.set_limit(id, value)?;
            self.written.insert(id, *value);
        }
        let gone: Vec<u32> = self.written.keys().filter(|id| !wanted.contains_key(id)).copied().collect();
        for id in gone {
            self.maps.set_limit(id, &VipConnLimit::default())?;
            self.maps.clear_bucket(id)?;
            self.written.remove(&id);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u32, burst: u32, on_limit: ConnOnLimit) -> ConnLimit {
        ConnLimit { rate, burst, scope: Scope::Global, on_limit }
    }

    #[test]
    fn a_local_limit_runs_at_its_rate_and_a_global_one_at_its_share() {
        let local = limit_value(&limit(200, 20, ConnOnLimit::Drop), None);
        assert_eq!((local.interval_ns, local.tolerance_ns, local.flags), (5_000_000, 19 * 5_000_000, 0));
        // A quarter of the threshold: a quarter of the burst too.
        let share = limit_value(&limit(200, 20, ConnOnLimit::Reset), Some(50.0));
        assert_eq!(
            (share.interval_ns, share.tolerance_ns, share.flags),
            (20_000_000, 4 * 20_000_000, CONN_LIMIT_RESET)
        );
        // A tiny share keeps one flow of burst and a finite interval.
        let tiny = limit_value(&limit(200, 20, ConnOnLimit::Drop), Some(0.0));
        assert_eq!((tiny.interval_ns, tiny.tolerance_ns), (1_000_000_000_000, 0));
    }
}
