//! The source policy as the data plane holds it: each VIP's effective `SourcePolicy` and the
//! allow/deny entries of the node and of each VIP (scoped by VIP id once the reconciler knows it).

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{
    SOURCE_ALLOW_ONLY, SOURCE_LIMIT_VIP, SOURCE_LISTS_NODE, SOURCE_LISTS_VIP, SOURCE_RULE_ALLOW, SOURCE_RULE_DENY,
    SOURCE_SCOPE_BITS, SourcePolicy, SourceRuleData, VipKey, source_scope,
};

use crate::config::{self, Config, Mode, Prefix, ip_words, network, vip_key};

/// One allow or deny entry, before it is scoped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SourceRule {
    pub prefix: Prefix,
    /// `SOURCE_RULE_ALLOW` or `SOURCE_RULE_DENY`.
    pub action: u32,
}

impl SourceRule {
    /// The trie key of this entry in scope `id` (a VIP id or `SOURCE_SCOPE_NODE`): prefix length
    /// in bits (scope included) and data.
    pub fn key(&self, id: u32) -> (u32, SourceRuleData) {
        let (addr, family) = ip_words(self.prefix.address);
        (SOURCE_SCOPE_BITS + u32::from(self.prefix.len), SourceRuleData { scope: source_scope(id, family), addr })
    }
}

/// What the source-policy maps should hold.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredSources {
    /// The node's entries (scope `SOURCE_SCOPE_NODE`).
    pub node_rules: Vec<SourceRule>,
    /// VIPs with anything to judge: effective policy and own entries. The rest hold zeroes.
    pub vips: BTreeMap<VipKey, (SourcePolicy, Vec<SourceRule>)>,
}

impl DesiredSources {
    pub fn new(config: &Config) -> Self {
        let node = &config.node.sources;
        let node_rules = rules(node);
        let vips = config
            .vips
            .iter()
            .filter(|vip| vip.mode != Mode::L7)
            .filter_map(|vip| {
                let own = rules(&vip.sources);
                let policy = effective(&vip.sources, node, !own.is_empty(), !node_rules.is_empty());
                policy.is_active().then(|| (vip_key(vip), (policy, own)))
            })
            .collect();
        Self { node_rules, vips }
    }
}

impl DesiredSources {
    /// Whether the data plane would refuse `source` at VIP `key` by its lists (as `judge` does:
    /// the VIP's longest match, else the node's, else `allow_only`). Limits are not lists: a
    /// flow they admitted stays admitted.
    pub fn refuses(&self, key: &VipKey, source: IpAddr) -> bool {
        let Some((policy, own)) = self.vips.get(key) else { return false };
        let longest = |rules: &[SourceRule]| {
            rules.iter().filter(|r| contains(&r.prefix, source)).max_by_key(|r| r.prefix.len).map(|r| r.action)
        };
        let lists = |flag: u32| policy.flags & flag != 0;
        let own = if lists(SOURCE_LISTS_VIP) { longest(own) } else { None };
        let node = if lists(SOURCE_LISTS_NODE) { longest(&self.node_rules) } else { None };
        match own.or(node) {
            Some(action) => action == SOURCE_RULE_DENY,
            None => lists(SOURCE_ALLOW_ONLY),
        }
    }

    /// Whether any VIP has lists (or `allow_only`) that could refuse a source.
    pub fn has_lists(&self) -> bool {
        self.vips.values().any(|(p, _)| p.flags & (SOURCE_LISTS_VIP | SOURCE_LISTS_NODE | SOURCE_ALLOW_ONLY) != 0)
    }
}

/// Whether `prefix` holds `address` (families must agree).
fn contains(prefix: &Prefix, address: IpAddr) -> bool {
    prefix.address.is_ipv4() == address.is_ipv4() && network(&Prefix { address, len: prefix.len }) == network(prefix)
}

fn rules(policy: &config::SourcePolicy) -> Vec<SourceRule> {
    let allow = policy.allow.iter().map(|&prefix| SourceRule { prefix, action: SOURCE_RULE_ALLOW });
    let deny = policy.deny.iter().map(|&prefix| SourceRule { prefix, action: SOURCE_RULE_DENY });
    allow.chain(deny).collect()
}

/// A VIP's policy in the data plane's terms: its limit, else the node's; the lists of both.
fn effective(
    vip: &config::SourcePolicy,
    node: &config::SourcePolicy,
    own_rules: bool,
    node_rules: bool,
) -> SourcePolicy {
    let mut flags = 0;
    if own_rules {
        flags |= SOURCE_LISTS_VIP;
    }
    if node_rules {
        flags |= SOURCE_LISTS_NODE;
    }
    if vip.allow_only || node.allow_only {
        flags |= SOURCE_ALLOW_ONLY;
    }
    if vip.new_flows.is_some() {
        flags |= SOURCE_LIMIT_VIP;
    }
    let mut policy = SourcePolicy { flags, ..SourcePolicy::default() };
    if let Some(limit) = vip.new_flows.or(node.new_flows) {
        policy.interval_ns = (1_000_000_000 / u64::from(limit.rate.max(1))).max(1);
        policy.tolerance_ns = u64::from(limit.burst.saturating_sub(1)) * policy.interval_ns;
        policy.prefix_v4 = limit.prefix_v4;
        policy.prefix_v6 = limit.prefix_v6;
    }
    policy
}
