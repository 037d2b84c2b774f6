//! The VIPs' `connection_limit`s into the data plane: a local limit's rate as configured, a
//! global one's at this node's share (`sources::limits`), its burst scaled alike; and each
//! global limit's share learns what its bucket counted (this node's demand). Runs on the
//! limits thread (`agent::conn_limits`), beside the reconciler, which only marks the VIPs
//! (`VIP_FLAG_CONN_LIMIT`): a share moves every renewal, far more often than a pass runs.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry, proto::MetricFamily};
use serde::{Deserialize, Serialize};

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
pub fn limited_vips(config: &Config, applied: &BTreeMap<VipKey, AppliedVip>) -> Vec<LimitedVip> {
    let limits: BTreeMap<&str, &ConnLimit> =
        config.vips.iter().filter_map(|v| v.connection_limit.as_ref().map(|l| (v.name.as_str(), l))).collect();
    applied
        .values()
        .filter(|a| a.meta.flags & VIP_FLAG_CONN_LIMIT != 0)
        .filter_map(|a| {
            let limit = (*limits.get(a.vip.name.as_str())?).clone();
            Some(LimitedVip { id: a.meta.id, name: a.vip.name.clone(), limit })
        })
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

/// What one VIP's connection limit does on this node (`xlb status`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnLimitStatus {
    pub vip: String,
    pub global: bool,
    /// New flows/s this node admits now (a global limit's share).
    pub rate: f64,
    pub reset: bool,
    /// New flows the VIP's bucket admitted and refused (since the limit was set at its id).
    pub admitted: u64,
    pub limited: u64,
}

// Its rate is a share, never NaN: equality is total here.
impl Eq for ConnLimitStatus {}

impl ConnLimitStatus {
    /// The lines `xlb status` shows for `limits`.
    pub fn render(limits: &[ConnLimitStatus]) -> String {
        if limits.is_empty() {
            return String::new();
        }
        let mut out = format!(
            "connection limits:\n  {:<32} {:>7} {:>10} {:>6} {:>12} {:>12}\n",
            "vip", "scope", "new/s", "refuse", "admitted", "limited"
        );
        for l in limits {
            out.push_str(&format!(
                "  {:<32} {:>7} {:>10.1} {:>6} {:>12} {:>12}\n",
                l.vip,
                if l.global { "global" } else { "local" },
                l.rate,
                if l.reset { "rst" } else { "drop" },
                l.admitted,
                l.limited
            ));
        }
        out
    }

    /// `limits` as metric families.
    pub fn gather(limits: &[ConnLimitStatus]) -> Vec<MetricFamily> {
        if limits.is_empty() {
            return Vec::new();
        }
        Self::build(limits).map(|registry| registry.gather()).unwrap_or_default()
    }

    fn build(limits: &[ConnLimitStatus]) -> prometheus::Result<Registry> {
        let registry = Registry::new();
        let labels = &["vip"];
        let rate = GaugeVec::new(
            Opts::new("xlb_conn_limit_rate", "New flows/s the VIP's connection limit admits on this node now."),
            labels,
        )?;
        let admitted = IntCounterVec::new(
            Opts::new("xlb_conn_limit_admitted_total", "New flows the VIP's connection limit admitted on this node."),
            labels,
        )?;
        let limited = IntCounterVec::new(
            Opts::new("xlb_conn_limit_limited_total", "New flows the VIP's connection limit refused on this node."),
            labels,
        )?;
        for l in limits {
            rate.with_label_values(&[l.vip.as_str()]).set(l.rate);
            admitted.with_label_values(&[l.vip.as_str()]).inc_by(l.admitted);
            limited.with_label_values(&[l.vip.as_str()]).inc_by(l.limited);
        }
        registry.register(Box::new(rate))?;
        registry.register(Box::new(admitted))?;
        registry.register(Box::new(limited))?;
        Ok(registry)
    }
}

/// One VIP with a connection limit, as applied: its id, name and limit.
#[derive(Debug)]
pub struct LimitedVip {
    pub id: u32,
    pub name: String,
    pub limit: ConnLimit,
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
    /// its bucket's counts first. With `report`, every VIP's status (its bucket read too).
    pub fn refresh(
        &mut self,
        vips: &[LimitedVip],
        limiter: &GlobalLimiter,
        report: bool,
    ) -> Result<Vec<ConnLimitStatus>, DataplaneError> {
        let mut wanted = BTreeMap::new();
        let mut global = BTreeSet::new();
        let mut statuses = Vec::new();
        for vip in vips {
            let global_limit = vip.limit.scope == Scope::Global;
            let bucket = if global_limit || report { Some(self.maps.bucket(vip.id)?) } else { None };
            let share = match (global_limit, bucket) {
                (true, Some(bucket)) => {
                    global.insert(vip.name.as_str());
                    let share = self.share(&vip.name, &vip.limit, limiter);
                    share.observe_totals(bucket.admitted, bucket.limited);
                    Some(share.rate())
                }
                _ => None,
            };
            if let Some(bucket) = bucket.filter(|_| report) {
                statuses.push(ConnLimitStatus {
                    vip: vip.name.clone(),
                    global: global_limit,
                    rate: share.unwrap_or(f64::from(vip.limit.rate)),
                    reset: vip.limit.on_limit == ConnOnLimit::Reset,
                    admitted: bucket.admitted,
                    limited: bucket.limited,
                });
            }
            wanted.insert(vip.id, limit_value(&vip.limit, share));
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
        Ok(statuses)
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
