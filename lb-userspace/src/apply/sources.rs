//! Writes the source policy (`DesiredSources`) into its maps: allow/deny entries scoped by the
//! VIP ids the reconciler gave out, and each VIP's effective policy at its id. Entries are added
//! before policies name them and removed after, so a packet never sees a policy whose entries
//! are half there.

use std::collections::BTreeMap;

use lb_common::{SOURCE_SCOPE_NODE, SourcePolicy, VipKey};

use super::dataplane::{DataplaneError, Maps, RuleKey};
use super::reconcile::AppliedVip;
use crate::state::sources::DesiredSources;

/// What the source-policy maps hold, as written.
#[derive(Debug, Default)]
pub struct SourceSync {
    rules: BTreeMap<RuleKey, u32>,
    /// VIP id → policy, for ids whose policy is not all zero.
    policies: BTreeMap<u32, SourcePolicy>,
}

impl SourceSync {
    /// What a previous agent left in pinned maps.
    pub fn adopt(maps: &Maps) -> Result<Self, DataplaneError> {
        let Some(sources) = &maps.sources else { return Ok(Self::default()) };
        Ok(Self { rules: sources.rules()?.into_iter().collect(), policies: sources.policies()?.into_iter().collect() })
    }

    /// Brings the maps to `desired` for the VIPs in `applied` (a VIP not written yet gets its
    /// policy in the step that writes it).
    pub fn sync(
        &mut self,
        desired: &DesiredSources,
        applied: &BTreeMap<VipKey, AppliedVip>,
        maps: &mut Maps,
    ) -> Result<(), DataplaneError> {
        let Some(sources) = maps.sources.as_mut() else { return Ok(()) };
        let mut rules: BTreeMap<RuleKey, u32> =
            desired.node_rules.iter().map(|rule| (rule.key(SOURCE_SCOPE_NODE), rule.action)).collect();
        let mut policies = BTreeMap::new();
        for (key, (policy, own)) in &desired.vips {
            let Some(vip) = applied.get(key) else { continue };
            let id = vip.meta.id;
            rules.extend(own.iter().map(|rule| (rule.key(id), rule.action)));
            policies.insert(id, *policy);
        }
        for (key, action) in &rules {
            if self.rules.get(key) != Some(action) {
                sources.set_rule(*key, *action)?;
                self.rules.insert(*key, *action);
            }
        }
        for (id, policy) in &policies {
            if self.policies.get(id) != Some(policy) {
                sources.set_policy(*id, policy)?;
                self.policies.insert(*id, *policy);
            }
        }
        let gone: Vec<u32> = self.policies.keys().filter(|id| !policies.contains_key(id)).copied().collect();
        for id in gone {
            sources.set_policy(id, &SourcePolicy::default())?;
            self.policies.remove(&id);
        }
        let gone: Vec<RuleKey> = self.rules.keys().filter(|k| !rules.contains_key(k)).copied().collect();
        for key in gone {
            sources.remove_rule(key)?;
            self.rules.remove(&key);
        }
        Ok(())
    }

    /// Allow/deny entries written, over all scopes.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}
