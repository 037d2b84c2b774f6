//! `xlb plan`: what a reconcile pass to a new desired state would change, without writing.
//!
//! Compares the desired state with what the reconciler last wrote and, for every VIP whose
//! Maglev table would be rebuilt, the share of the table (so of new flows' hashes) that would
//! land on a different backend. Established flows are never moved by a table change; this is
//! what an operator weighs before a reload.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::{
    apply::dataplane::Maps,
    apply::reconcile::{self, AppliedVip, ReconcileError, Reconciler},
    apply::table_builds,
    state::desired::{DesiredState, DesiredVip},
};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub added: Vec<VipPlan>,
    pub removed: Vec<VipPlan>,
    pub updated: Vec<VipPlan>,
    pub unchanged: usize,
    pub node_changed: bool,
    /// VIP addresses whose fragment policy entry would be added, changed or removed.
    pub address_changes: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VipPlan {
    pub name: String,
    pub endpoint: String,
    pub backends_added: Vec<String>,
    pub backends_removed: Vec<String>,
    /// (backend, old weight, new weight) for backends that stay, effective weights.
    pub weights_changed: Vec<(String, u32, u32)>,
    pub table_rebuilt: bool,
    /// Share of table slots whose backend changes (0..=1); `None` when not rebuilt.
    pub remapped: Option<f64>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.added.is_empty()
            && self.removed.is_empty()
            && self.updated.is_empty()
            && !self.node_changed
            && self.address_changes == 0
    }

    pub fn render(&self) -> String {
        let mut out = String::new();
        for v in &self.added {
            out.push_str(&format!("+ {} {}: new VIP, {} backends\n", v.name, v.endpoint, v.backends_added.len()));
        }
        for v in &self.removed {
            out.push_str(&format!(
                "- {} {}: removed with its {} backends\n",
                v.name,
                v.endpoint,
                v.backends_removed.len()
            ));
        }
        for v in &self.updated {
            let mut parts = Vec::new();
            parts.extend(v.backends_added.iter().map(|b| format!("+{b}")));
            parts.extend(v.backends_removed.iter().map(|b| format!("-{b} (its flows re-hash)")));
            parts.extend(v.weights_changed.iter().map(|(b, old, new)| format!("{b} weight {old}→{new}")));
            match v.remapped {
                Some(share) => parts.push(format!(
                    "table rebuilt: {:.1}% of new flows land elsewhere (established flows stay)",
                    share * 100.0
                )),
                None => parts.push("table kept".to_owned()),
            }
            out.push_str(&format!("~ {} {}: {}\n", v.name, v.endpoint, parts.join(", ")));
        }
        out.push_str(&format!("= {} VIPs unchanged\n", self.unchanged));
        if self.node_changed {
            out.push_str("node settings change (MAC, MTU or tunnel sources)\n");
        }
        if self.address_changes > 0 {
            out.push_str(&format!("{} VIP address policy entries change\n", self.address_changes));
        }
        if self.is_empty() {
            out.push_str("nothing to do: the running data plane already matches\n");
        }
        out
    }
}

/// The plan to go from what `reconciler` wrote (tables read from `maps`) to `desired`.
pub fn plan(reconciler: &Reconciler, maps: &Maps, desired: &DesiredState) -> Result<Plan, ReconcileError> {
    let applied = reconciler.applied();
    let mut plan = Plan {
        added: Vec::new(),
        removed: Vec::new(),
        updated: Vec::new(),
        unchanged: 0,
        node_changed: reconciler.node() != Some(desired.node),
        address_changes: 0,
    };
    let addrs = reconciler.addrs();
    let keys: BTreeSet<_> = addrs.keys().chain(desired.addrs.keys()).collect();
    plan.address_changes = keys.into_iter().filter(|k| addrs.get(k) != desired.addrs.get(k)).count();

    for (key, old) in applied {
        if !desired.vips.contains_key(key) {
            let mut v = vip_plan(&old.vip);
            v.backends_removed = old.vip.backends.iter().map(|b| b.identity.clone()).collect();
            plan.removed.push(v);
        }
    }
    for (key, new) in &desired.vips {
        match applied.get(key) {
            None => {
                let mut v = vip_plan(new);
                v.backends_added = new.backends.iter().map(|b| b.identity.clone()).collect();
                plan.added.push(v);
            }
            Some(old) if old.vip == *new => plan.unchanged += 1,
            Some(old) => plan.updated.push(update(old, new, maps)?),
        }
    }
    Ok(plan)
}

fn vip_plan(vip: &DesiredVip) -> VipPlan {
    VipPlan {
        name: vip.name.clone(),
        endpoint: vip.endpoint.clone(),
        backends_added: Vec::new(),
        backends_removed: Vec::new(),
        weights_changed: Vec::new(),
        table_rebuilt: false,
        remapped: None,
    }
}

fn update(old: &AppliedVip, new: &DesiredVip, maps: &Maps) -> Result<VipPlan, ReconcileError> {
    let mut v = vip_plan(new);
    let has = |vip: &DesiredVip, id: &str| vip.backends.iter().find(|b| b.identity == id).map(|b| b.weight);
    v.backends_added =
        new.backends.iter().filter(|b| has(&old.vip, &b.identity).is_none()).map(|b| b.identity.clone()).collect();
    v.backends_removed =
        old.vip.backends.iter().filter(|b| has(new, &b.identity).is_none()).map(|b| b.identity.clone()).collect();
    v.weights_changed = old
        .vip
        .backends
        .iter()
        .filter_map(|b| {
            let weight = has(new, &b.identity)?;
            (weight != b.weight).then(|| (b.identity.clone(), b.weight, weight))
        })
        .collect();
    v.table_rebuilt = table_builds::table_changes(&old.vip, new);
    if v.table_rebuilt {
        let running = running_table(old, maps)?;
        let next = table(new)?;
        v.remapped = Some(remapped(&running, &next));
    }
    Ok(v)
}

/// The VIP's table as the data plane holds it, as backend identities (`None`: no backend).
fn running_table(old: &AppliedVip, maps: &Maps) -> Result<Vec<Option<String>>, ReconcileError> {
    let slots = maps
        .table(old.meta.id)
        .map_err(|source| ReconcileError::Write { endpoint: old.vip.endpoint.clone(), source: Box::new(source) })?;
    Ok(slots
        .into_iter()
        .map(|slot| old.slots.iter().position(|s| *s == slot).map(|i| old.vip.backends[i].identity.clone()))
        .collect())
}

/// The table `vip` would get, as backend identities.
fn table(vip: &DesiredVip) -> Result<Vec<Option<String>>, ReconcileError> {
    let table = reconcile::build_table(vip)?;
    Ok(table.slots.iter().map(|&i| Some(vip.backends[i as usize].identity.clone())).collect())
}

/// Share of flow hashes whose backend differs between two tables. Same size: slot by slot;
/// otherwise over a fixed spread of hashes (a size change moves nearly everything anyway).
fn remapped(old: &[Option<String>], new: &[Option<String>]) -> f64 {
    if old.is_empty() || new.is_empty() {
        return if old.is_empty() && new.is_empty() { 0.0 } else { 1.0 };
    }
    if old.len() == new.len() {
        let moved = old.iter().zip(new).filter(|(a, b)| a != b).count();
        return moved as f64 / old.len() as f64;
    }
    const SAMPLES: u32 = 100_000;
    let moved = (0..SAMPLES)
        .filter(|i| {
            // Spread the samples over the whole 32-bit hash space (Knuth's multiplicative hash).
            let hash = i.wrapping_mul(2_654_435_761) as usize;
            old[hash % old.len()] != new[hash % new.len()]
        })
        .count();
    moved as f64 / f64::from(SAMPLES)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<Option<String>> {
        list.iter().map(|s| (!s.is_empty()).then(|| (*s).to_owned())).collect()
    }

    #[test]
    fn remapped_share_counts_slots_that_change_backend() {
        assert_eq!(remapped(&names(&["a", "b", "a", "b"]), &names(&["a", "b", "a", "b"])), 0.0);
        assert_eq!(remapped(&names(&["a", "b", "a", "b"]), &names(&["a", "c", "a", "b"])), 0.25);
        assert_eq!(remapped(&names(&["a"]), &[]), 1.0);
        let resized = remapped(&names(&["a", "b", "c"]), &names(&["a", "b", "c", "d", "e"]));
        assert!(resized > 0.5, "{resized}");
    }
}
