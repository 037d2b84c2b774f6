//! A reconcile pass: which VIPs its steps write, in which order, and their Maglev tables.
//!
//! The VIPs that differ from what is written are found once per pass, not per step (at 10 000
//! VIPs that scan costs more than a step's writes). VIPs losing a serving backend (a health
//! failure, a drain) go first, in steps of their own, so they never wait for a reload's builds.
//! Each step's tables were built while the step before wrote and waited on its swap.

use std::collections::{BTreeMap, VecDeque};

use lb_common::VipKey;

use crate::{
    apply::table_builds::{self, AheadBuild, Built, table_changes},
    state::desired::{DesiredState, DesiredVip},
};

/// One pass toward one desired state, shared by its steps. Begin a new pass whenever desired
/// state is rebuilt.
#[derive(Debug, Default)]
pub struct Pass {
    /// Differing VIPs, each with whether it loses a serving backend (urgent); `None` until the
    /// first step.
    queue: Option<VecDeque<(bool, VipKey)>>,
    /// The next step's tables, being built.
    ahead: Option<AheadBuild>,
}

/// What a step writes: the VIPs (at most the budget), how many are queued after them, and the
/// tables of those whose table changes.
pub(crate) type StepWork<'d> = (Vec<(&'d VipKey, &'d DesiredVip)>, usize, BTreeMap<VipKey, Built>);

impl Pass {
    pub fn new() -> Self {
        Self::default()
    }

    /// The next step's VIPs against what is written (`written`: a VIP as the maps hold it),
    /// with their tables; starts building the tables of the step after it.
    pub(crate) fn next_step<'d, 'w>(
        &mut self,
        written: &dyn Fn(&VipKey) -> Option<&'w DesiredVip>,
        desired: &'d DesiredState,
        budget: usize,
    ) -> StepWork<'d> {
        let written = Written(written);
        let fresh = self.queue.is_none();
        let queue = self.queue.get_or_insert_with(|| written.differing(desired));
        let mut pending = written.take_differing(desired, queue, budget);
        if pending.is_empty() && !fresh {
            // The queue ran dry: whatever still differs (desired state changed under the pass)
            // is found afresh.
            *queue = written.differing(desired);
            pending = written.take_differing(desired, queue, budget);
        }
        let remaining = queue.len();
        let rebuilds: Vec<(&VipKey, &DesiredVip)> =
            pending.iter().copied().filter(|(key, vip)| written.table_changes(key, vip)).collect();
        let ready = self.ahead.take().map(|ahead| ahead.finish_for(&rebuilds)).unwrap_or_default();
        let tables = table_builds::build_tables(&rebuilds, ready);
        // The next step's tables, built while this one writes and waits on its swap.
        let next: Vec<(&VipKey, &DesiredVip)> = queue
            .iter()
            .take(budget)
            .filter_map(|(_, key)| desired.vips.get_key_value(key))
            .filter(|(key, vip)| written.table_changes(key, vip))
            .collect();
        self.ahead = AheadBuild::start(&next);
        (pending, remaining, tables)
    }
}

/// The VIPs as the maps hold them.
struct Written<'f, 'w>(&'f dyn Fn(&VipKey) -> Option<&'w DesiredVip>);

impl Written<'_, '_> {
    /// The desired VIPs that differ from what is written, in the order steps take them: those
    /// losing a serving backend first (marked urgent), then by key.
    fn differing(&self, desired: &DesiredState) -> VecDeque<(bool, VipKey)> {
        let mut differing: Vec<(bool, VipKey)> = desired
            .vips
            .iter()
            .filter(|(key, vip)| self.differs(key, vip))
            .map(|(key, vip)| ((self.0)(key).is_some_and(|old| loses_serving(old, vip)), *key))
            .collect();
        differing.sort_by_key(|&(urgent, key)| (!urgent, key));
        differing.into()
    }

    /// Up to `budget` VIPs off the front of `queue` that still differ. A step of urgent VIPs
    /// takes only those, so that it is short: a health failure does not wait for the Maglev
    /// builds of a reload's VIPs.
    fn take_differing<'d>(
        &self,
        desired: &'d DesiredState,
        queue: &mut VecDeque<(bool, VipKey)>,
        budget: usize,
    ) -> Vec<(&'d VipKey, &'d DesiredVip)> {
        let mut taken = Vec::with_capacity(budget.min(queue.len()));
        let urgent_step = queue.front().is_some_and(|(urgent, _)| *urgent);
        while taken.len() < budget
            && let Some(&(urgent, key)) = queue.front()
            && urgent == urgent_step
        {
            queue.pop_front();
            if let Some((key, vip)) = desired.vips.get_key_value(&key)
                && self.differs(key, vip)
            {
                taken.push((key, vip));
            }
        }
        taken
    }

    fn differs(&self, key: &VipKey, vip: &DesiredVip) -> bool {
        (self.0)(key).is_none_or(|old| old != vip)
    }

    /// Whether writing `vip` needs a new Maglev table (new, or its table inputs changed).
    fn table_changes(&self, key: &VipKey, vip: &DesiredVip) -> bool {
        (self.0)(key).is_none_or(|old| table_changes(old, vip))
    }
}

/// Whether `new` stops sending new flows to a backend that stays configured and that `old`
/// sends them to — a health failure or a drain, which goes before the rest of a pass (a backend
/// a reload removes goes with the reload).
fn loses_serving(old: &DesiredVip, new: &DesiredVip) -> bool {
    old.backends.iter().any(|b| b.weight > 0 && new.backends.iter().any(|n| n.identity == b.identity && n.weight == 0))
}
