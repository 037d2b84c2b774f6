//! The sources being limited: what the new-flow buckets refused since the last look, the top
//! few by rate. Read by the housekeeping thread from its own handle on the buckets.

use std::collections::HashMap;
use std::time::Instant;

use lb_common::{FAMILY_V4, FAMILY_V6, SOURCE_SCOPE_NODE, SourceBucket, SourceBucketKey};
use serde::{Deserialize, Serialize};

use crate::config::ip_from_words;

/// Sources listed at most.
pub const LIMITED_LISTED: usize = 10;

/// A source prefix whose new flows were refused lately.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitedSource {
    /// `node` (the node's limit, over all VIPs) or the VIP's name.
    pub scope: String,
    /// The source prefix, e.g. `203.0.113.0/24`.
    pub prefix: String,
    /// New flows refused and admitted per second since the last look (rounded).
    pub refused_per_second: u64,
    pub admitted_per_second: u64,
    /// Refused since the bucket was made (it lives while the source keeps coming).
    pub refused_total: u64,
}

/// Turns successive reads of the buckets into rates.
#[derive(Debug, Default)]
pub struct SourceReport {
    last: HashMap<SourceBucketKey, SourceBucket>,
    at: Option<Instant>,
}

impl SourceReport {
    /// The top `LIMITED_LISTED` prefixes by refusals since the previous call (none on the
    /// first); `describe` names a scope id (`SOURCE_SCOPE_NODE` or a VIP id) and gives its bucket
    /// prefix length for a family.
    pub fn update(
        &mut self,
        buckets: Vec<SourceBucket>,
        now: Instant,
        describe: impl Fn(u32, u8) -> (String, u8),
    ) -> Vec<LimitedSource> {
        let seconds = self.at.map(|at| now.duration_since(at).as_secs_f64()).filter(|s| *s > 0.0);
        let mut refused: Vec<(u64, u64, &SourceBucketKey, &SourceBucket)> = Vec::new();
        if seconds.is_some() {
            for bucket in &buckets {
                let key = &bucket.key;
                let before = self.last.get(key).copied().unwrap_or_default();
                let count = bucket.limited.saturating_sub(before.limited);
                if count > 0 {
                    refused.push((count, bucket.admitted.saturating_sub(before.admitted), key, bucket));
                }
            }
        }
        // The top few first: naming a scope looks through the VIPs.
        refused.sort_by(|a, b| b.0.cmp(&a.0).then_with(|| a.2.cmp(b.2)));
        refused.truncate(LIMITED_LISTED);
        let seconds = seconds.unwrap_or(1.0);
        let out = refused
            .into_iter()
            .map(|(count, admitted, key, bucket)| {
                let (id, family) = (key.scope >> 8, (key.scope & 0xff) as u8);
                let (scope, len) = describe(id, family);
                let address = ip_from_words(key.addr, if family == FAMILY_V6 { FAMILY_V6 } else { FAMILY_V4 });
                LimitedSource {
                    scope,
                    prefix: format!("{address}/{len}"),
                    refused_per_second: (count as f64 / seconds).round() as u64,
                    admitted_per_second: (admitted as f64 / seconds).round() as u64,
                    refused_total: bucket.limited,
                }
            })
            .collect();
        self.last = buckets.into_iter().map(|b| (b.key, b)).collect();
        self.at = Some(now);
        out
    }
}

/// How a scope is named and how long its bucket prefixes are, from the configuration: `node`
/// and the node's limit, or the VIP (by its id in `applied`) and its own limit.
pub fn describe_scope(
    config: &crate::config::Config,
    applied: &std::collections::BTreeMap<lb_common::VipKey, super::reconcile::AppliedVip>,
    id: u32,
    family: u8,
) -> (String, u8) {
    let prefix = |limit: Option<crate::config::NewFlowLimit>| {
        limit.map_or(0, |l| if family == FAMILY_V6 { l.prefix_v6 } else { l.prefix_v4 })
    };
    if id == SOURCE_SCOPE_NODE {
        return ("node".to_owned(), prefix(config.node.sources.new_flows));
    }
    let name = applied.values().find(|a| a.meta.id == id).map(|a| a.vip.name.clone());
    let limit = name.as_ref().and_then(|n| config.vips.iter().find(|v| &v.name == n)).and_then(|v| v.sources.new_flows);
    (name.unwrap_or_else(|| format!("vip #{id}")), prefix(limit))
}
