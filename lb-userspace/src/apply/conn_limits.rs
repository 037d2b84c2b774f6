//! The VIPs' `connection_limit`s into the data plane: a local limit's rate as configured, a
//! global one's at this node's share (`sources::limits`), its burst scaled alike; and each
//! global limit's share learns what its bucket counted (this node's demand). Runs on the
//! limits thread (`agent::conn_limits`), beside the reconciler, which only marks the VIPs
//! (`VIP_FLAG_CONN_LIMIT`): a share moves every renewal, far more often than a pass runs.

use std::collections::{BTreeMap, BTreeSet};

use prometheus::{GaugeVec, IntCounterVec, Opts, Registry, proto::MetricFamily};
use serde::{Deserialize, Serialize};

use lb_common::{CONN_LIMIT_CONCURRENT, CONN_LIMIT_RESET, VIP_FLAG_CONN_LIMIT, VipConnBucket, VipConnLimit, VipKey};

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

/// The data plane's value for `limit`: its rate at `rate_share` new flows/s when the limit is
/// global (else as configured), and with `admit_below` the ceiling of a concurrent limit
/// (`OpenCount::admit_below`).
pub fn limit_value(limit: &ConnLimit, rate_share: Option<f64>, admit_below: Option<u64>) -> VipConnLimit {
    let (interval_ns, tolerance_ns) = match limit.rate {
        Some(configured) => {
            let rate = rate_share.unwrap_or(f64::from(configured)).max(0.001);
            let interval_ns = ((1e9 / rate) as u64).max(1);
            // A share's part of the burst, at least one flow.
            let burst = match rate_share {
                Some(rate) => (f64::from(limit.burst) * rate / f64::from(configured)).round().max(1.0) as u64,
                None => u64::from(limit.burst),
            };
            (interval_ns, burst.saturating_sub(1).saturating_mul(interval_ns))
        }
        None => (0, 0),
    };
    let reset = if limit.on_limit == ConnOnLimit::Reset { CONN_LIMIT_RESET } else { 0 };
    VipConnLimit {
        interval_ns,
        tolerance_ns,
        flags: reset | if admit_below.is_some() { CONN_LIMIT_CONCURRENT } else { 0 },
        // Its low half: see `VipConnLimit::admits`.
        admit_below: admit_below.unwrap_or(0) as u32,
    }
}

/// One count of a VIP's open connections (`conns::open_per_vip`, `nat::open_per_vip`): what
/// its bucket had admitted when the count began, and the connections found open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenCount {
    pub admitted_before: u64,
    pub open: u64,
}

impl OpenCount {
    /// The bucket's `admitted` at which new flows stop, `allowed` being open at most: the
    /// connections free at the count, from where the bucket stood when it began (flows admitted
    /// while it ran may or may not be in it, so all are charged). Between two counts no flow
    /// ends as far as the ceiling knows: open ones never pass `allowed`.
    pub fn admit_below(&self, allowed: u64) -> u64 {
        self.admitted_before + allowed.saturating_sub(self.open)
    }

    /// The most connections that may be open now, the bucket having admitted `admitted_now`.
    pub fn open_at_most(&self, admitted_now: u64) -> u64 {
        self.open + admitted_now.saturating_sub(self.admitted_before)
    }
}

/// What one VIP's connection limit does on this node (`xlb status`, `/metrics`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnLimitStatus {
    pub vip: String,
    pub global: bool,
    /// New flows/s this node admits now (a global limit's share), if the limit has a rate.
    pub rate: Option<f64>,
    pub reset: bool,
    /// New flows the VIP's bucket admitted and refused (since the limit was set at its id).
    pub admitted: u64,
    pub limited: u64,
    /// A concurrent limit: its threshold, the connections this node may hold open (a global
    /// limit's slots), and those open at most (as of the last count, plus the flows admitted
    /// since).
    #[serde(default)]
    pub concurrent: Option<ConcurrentStatus>,
}

/// A concurrent limit on one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrentStatus {
    pub limit: u32,
    pub allowed: u64,
    pub open: u64,
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
            "connection limits:\n  {:<32} {:>7} {:>10} {:>15} {:>6} {:>12} {:>12}\n",
            "vip", "scope", "new/s", "open/allowed", "refuse", "admitted", "limited"
        );
        for l in limits {
            let rate = l.rate.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}"));
            let open = l.concurrent.map_or_else(|| "-".to_owned(), |c| format!("{}/{}", c.open, c.allowed));
            out.push_str(&format!(
                "  {:<32} {:>7} {:>10} {:>15} {:>6} {:>12} {:>12}\n",
                l.vip,
                if l.global { "global" } else { "local" },
                rate,
                open,
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
        let allowed = GaugeVec::new(
            Opts::new(
                "xlb_conn_limit_open_allowed",
                "Connections the VIP's concurrent limit lets this node hold open now (a global limit's slots).",
            ),
            labels,
        )?;
        let open = GaugeVec::new(
            Opts::new(
                "xlb_conn_limit_open",
                "The VIP's connections open on this node at most: the last count plus the flows admitted since.",
            ),
            labels,
        )?;
        for l in limits {
            let vip = [l.vip.as_str()];
            if let Some(r) = l.rate {
                rate.with_label_values(&vip).set(r);
            }
            if let Some(c) = l.concurrent {
                allowed.with_label_values(&vip).set(c.allowed as f64);
                open.with_label_values(&vip).set(c.open as f64);
            }
            admitted.with_label_values(&vip).inc_by(l.admitted);
            limited.with_label_values(&vip).inc_by(l.limited);
        }
        registry.register(Box::new(rate))?;
        registry.register(Box::new(allowed))?;
        registry.register(Box::new(open))?;
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

    /// The share of VIP `name`'s global limit of `kind` at `threshold` (the Redis key
    /// `<prefix>:limit:<name>#connections`, or `#concurrent`), fed what the VIP's `bucket`
    /// counted (this node's demand) and kept in use (`in_use`).
    fn share(
        &mut self,
        name: &str,
        (threshold, kind): (u32, ShareKind),
        bucket: &VipConnBucket,
        limiter: &GlobalLimiter,
        in_use: &mut BTreeSet<String>,
    ) -> ShareHandle {
        let key = match kind {
            ShareKind::Rate => format!("{name}#connections"),
            ShareKind::Concurrency => format!("{name}#concurrent"),
        };
        let share = self
            .shares
            .get(&key)
            .filter(|s| s.threshold == threshold)
            .cloned()
            .unwrap_or_else(|| limiter.share(&key, threshold, kind));
        share.observe_totals(bucket.admitted, bucket.limited);
        in_use.insert(key.clone());
        self.shares.insert(key, ShareHandle::clone(&share));
        share
    }

    /// What VIP `id`'s bucket admitted and refused.
    pub fn bucket(&self, id: u32) -> Result<VipConnBucket, DataplaneError> {
        self.maps.bucket(id)
    }

    /// Writes every limit that changed and clears those gone; a global limit's shares are fed
    /// its bucket's counts first, a concurrent limit's ceiling comes from its VIP's last count
    /// in `counts` (by VIP id; a limit not counted yet keeps what was written, or waits). With
    /// `report`, every VIP's status (its bucket read too).
    pub fn refresh(
        &mut self,
        vips: &[LimitedVip],
        limiter: &GlobalLimiter,
        counts: &BTreeMap<u32, OpenCount>,
        report: bool,
    ) -> Result<Vec<ConnLimitStatus>, DataplaneError> {
        let mut wanted = BTreeMap::new();
        let mut shares = BTreeSet::new();
        let mut statuses = Vec::new();
        for vip in vips {
            let limit = &vip.limit;
            let global = limit.scope == Scope::Global;
            let count = counts.get(&vip.id);
            let bucket = if global || report || count.is_some() { Some(self.maps.bucket(vip.id)?) } else { None };
            let rate_share = match (limit.rate, bucket) {
                (Some(rate), Some(bucket)) if global => {
                    Some(self.share(&vip.name, (rate, ShareKind::Rate), &bucket, limiter, &mut shares).rate())
                }
                _ => None,
            };
            let concurrent = match (limit.concurrent, count, bucket) {
                (Some(threshold), Some(count), Some(bucket)) => {
                    let open = count.open_at_most(bucket.admitted);
                    let allowed = if global {
                        let kind = (threshold, ShareKind::Concurrency);
                        let share = self.share(&vip.name, kind, &bucket, limiter, &mut shares);
                        share.set_in_flight(open);
                        share.slots() as u64
                    } else {
                        u64::from(threshold)
                    };
                    Some((ConcurrentStatus { limit: threshold, allowed, open }, count))
                }
                _ => None,
            };
            if let Some(bucket) = bucket.filter(|_| report) {
                statuses.push(ConnLimitStatus {
                    vip: vip.name.clone(),
                    global,
                    rate: rate_share.or(limit.rate.map(f64::from)),
                    reset: limit.on_limit == ConnOnLimit::Reset,
                    admitted: bucket.admitted,
                    limited: bucket.limited,
                    concurrent: concurrent.map(|(status, _)| status),
                });
            }
            let admit_below = match concurrent {
                Some((status, count)) => Some((count.admit_below(status.allowed), count.admitted_before)),
                // Not counted yet: what was written stands (a restart: what the previous agent
                // wrote), or no ceiling until the first count.
                None if limit.concurrent.is_some() => self
                    .written
                    .get(&vip.id)
                    .copied()
                    .or_else(|| self.maps.limit(vip.id).ok())
                    .filter(|v| v.flags & CONN_LIMIT_CONCURRENT != 0)
                    .map(|v| (u64::from(v.admit_below), 0)),
                None => None,
            };
            let value = limit_value(limit, rate_share, admit_below.map(|(below, _)| below));
            wanted.insert(vip.id, (value, admit_below.map_or(0, |(_, before)| before)));
        }
        self.shares.retain(|key, _| shares.contains(key));
        for (&id, &(mut value, admitted_before)) in &wanted {
            if self.written.get(&id) == Some(&value) {
                continue;
            }
            // A limit new at this id starts with an empty bucket (its ceiling, counted from the
            // old bucket, moved along); one a previous agent left running keeps its bucket (a
            // restart lets no burst through).
            if !self.written.contains_key(&id) && !self.maps.limit(id)?.is_set() {
                self.maps.clear_bucket(id)?;
                value.admit_below = value.admit_below.wrapping_sub(admitted_before as u32);
            }
            self.maps.set_limit(id, &value)?;
            self.written.insert(id, value);
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
        ConnLimit { rate: Some(rate), burst, concurrent: None, scope: Scope::Global, on_limit }
    }

    #[test]
    fn a_local_limit_runs_at_its_rate_and_a_global_one_at_its_share() {
        let local = limit_value(&limit(200, 20, ConnOnLimit::Drop), None, None);
        assert_eq!((local.interval_ns, local.tolerance_ns, local.flags), (5_000_000, 19 * 5_000_000, 0));
        // A quarter of the threshold: a quarter of the burst too.
        let share = limit_value(&limit(200, 20, ConnOnLimit::Reset), Some(50.0), None);
        assert_eq!(
            (share.interval_ns, share.tolerance_ns, share.flags),
            (20_000_000, 4 * 20_000_000, CONN_LIMIT_RESET)
        );
        // A tiny share keeps one flow of burst and a finite interval.
        let tiny = limit_value(&limit(200, 20, ConnOnLimit::Drop), Some(0.0), None);
        assert_eq!((tiny.interval_ns, tiny.tolerance_ns), (1_000_000_000_000, 0));
    }

    #[test]
    fn a_concurrent_limit_admits_the_free_connections_from_where_its_count_began() {
        let only = ConnLimit {
            rate: None,
            burst: 0,
            concurrent: Some(100),
            scope: Scope::Local,
            on_limit: ConnOnLimit::Reset,
        };
        // 40 open at the count, begun when the bucket had admitted 1 000: 60 more.
        let count = OpenCount { admitted_before: 1000, open: 40 };
        let value = limit_value(&only, None, Some(count.admit_below(100)));
        assert_eq!((value.interval_ns, value.admit_below), (0, 1060));
        assert_eq!(value.flags, CONN_LIMIT_RESET | CONN_LIMIT_CONCURRENT);
        assert!(value.is_set());
        assert!(value.admits(1059) && !value.admits(1060) && !value.admits(1061));
        // The low halves compare across a wrap of the 32-bit ceiling.
        let near =
            limit_value(&only, None, Some(OpenCount { admitted_before: (1 << 32) - 10, open: 90 }.admit_below(100)));
        assert!(near.admits((1 << 32) - 1) && !near.admits(1 << 32));
        // Flows admitted since the count began are charged whether the count saw them or not.
        assert_eq!(count.open_at_most(1025), 65);
        // Over the limit (a share shrank): nothing more until enough close.
        assert_eq!(OpenCount { admitted_before: 7, open: 130 }.admit_below(100), 7);
        // Without a count, no ceiling: the rate alone, or nothing set.
        assert!(!limit_value(&only, None, None).is_set());
    }
}
