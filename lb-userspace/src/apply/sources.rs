//! Writes the source policy (`DesiredSources`) into its maps: allow/deny entries scoped by the
//! VIP ids the reconciler gave out, and each VIP's effective policy at its id. Entries are added
//! before policies name them and removed after, so a packet never sees a policy whose entries
//! are half there.

use std::collections::BTreeMap;

use lb_common::{FLOW_WAYS, SOURCE_SCOPE_NODE, SourcePolicy, VipKey};

use super::dataplane::{DataplaneError, Maps, RuleKey};
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

    /// Brings the maps to `desired` for the VIPs written so far (`applied`: key, id and backend
    /// slots of each; a VIP not written yet gets its policy in the step that writes it).
    pub fn sync<'a>(
        &mut self,
        desired: &DesiredSources,
        applied: impl Iterator<Item = (&'a VipKey, u32, &'a [u32])>,
        maps: &mut Maps,
    ) -> Result<(), DataplaneError> {
        let applied: BTreeMap<&VipKey, (u32, &[u32])> = applied.map(|(key, id, slots)| (key, (id, slots))).collect();
        let Some(sources) = maps.sources.as_mut() else { return Ok(()) };
        let mut changed = false;
        let mut rules: BTreeMap<RuleKey, u32> =
            desired.node_rules.iter().map(|rule| (rule.key(SOURCE_SCOPE_NODE), rule.action)).collect();
        let mut policies = BTreeMap::new();
        for (key, (policy, own)) in &desired.vips {
            let Some(&(id, _)) = applied.get(key) else { continue };
            rules.extend(own.iter().map(|rule| (rule.key(id), rule.action)));
            policies.insert(id, *policy);
        }
        for (key, action) in &rules {
            if self.rules.get(key) != Some(action) {
                sources.set_rule(*key, *action)?;
                self.rules.insert(*key, *action);
                changed = true;
            }
        }
        for (id, policy) in &policies {
            if self.policies.get(id) != Some(policy) {
                sources.set_policy(*id, policy)?;
                self.policies.insert(*id, *policy);
                changed = true;
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
            changed = true;
        }
        if changed && desired.has_lists() {
            let removed = end_refused_flows(desired, &applied, maps)?;
            if removed > 0 {
                tracing::info!(removed, "ended the flows of sources the source policy now refuses");
            }
        }
        Ok(())
    }

    /// Allow/deny entries written, over all scopes.
    pub fn rule_count(&self) -> usize {
        self.rules.len()
    }
}

/// Removes the connection-table entries of flows whose source the lists now refuse at their
/// VIP: their next packet then misses the table and is judged (and dropped) like any packet of
/// an unknown flow. Only after a pass changed the policy: a scan of the whole table (mapped;
/// sets holding such a flow are written back whole — an entry another CPU recorded in that set
/// meanwhile is lost and recorded again by its flow's next SYN, or sent by the table).
/// NAT flows of such sources are removed from both NAT tables (their pool ports free again).
/// Returns the entries and NAT flows removed.
fn end_refused_flows(
    desired: &DesiredSources,
    applied: &BTreeMap<&VipKey, (u32, &[u32])>,
    maps: &mut Maps,
) -> Result<usize, DataplaneError> {
    let mut slot_vip: std::collections::HashMap<u32, &VipKey> = std::collections::HashMap::new();
    for (key, (_, slots)) in applied {
        if desired.vips.contains_key(*key) {
            slot_vip.extend(slots.iter().map(|&slot| (slot, *key)));
        }
    }
    if slot_vip.is_empty() {
        return Ok(0);
    }
    let table = maps.flow_table_counter()?;
    let mut removed = 0;
    for index in 0..table.sets() {
        let Some(mut set) = table.read_set(index) else { continue };
        let mut dirty = false;
        for way in 0..FLOW_WAYS {
            let entry = set.entries[way];
            let whole = set.used[way] != 0 && set.holds(way, &entry.key, set.hashes[way]).is_some();
            let refused = whole
                && slot_vip.get(&entry.flow.backend).is_some_and(|vip| {
                    desired.refuses(vip, crate::config::ip_from_words(entry.key.saddr, entry.key.family))
                });
            if refused {
                set.used[way] = 0;
                dirty = true;
                removed += 1;
            }
        }
        if dirty {
            maps.write_flow_set(index, &set)?;
        }
    }
    let mut nat = maps.nat_tables()?;
    for (reverse, entry) in nat.reverse_entries() {
        let refused = slot_vip
            .get(&entry.backend)
            .is_some_and(|vip| desired.refuses(vip, crate::config::ip_from_words(entry.client, reverse.family)));
        if refused {
            let forward = entry.forward_key(reverse.proto, reverse.family);
            let owned = nat.flow(&forward).is_some_and(|f| super::nat::owns(&f, &reverse));
            nat.remove(owned.then_some(&forward), &reverse, entry.flags & lb_common::NAT_FLAG_COOKIE != 0);
            removed += 1;
        }
    }
    Ok(removed)
}
