//! A reconcile pass: which VIPs its steps write, in which order, and their Maglev tables.
//!
//! The VIPs that differ from what is written are found once per pass, not per step (at 10 000
//! VIPs that scan costs more than a step's writes). VIPs losing a serving backend (a health
//! failure, a drain) go first, in steps of their own, so they never wait for a reload's builds.
//! Each step's tables were built while the step before wrote and waited on its swap.
//!
//! A pass given a news wait ([`Pass::interruptible`]) does not sit out those builds when news
//! comes (a health check failing while a reload of thousands of VIPs builds its tables): the
//! step writes nothing and returns, its VIPs go back to the queue and the builds go on, so the
//! caller can take the news in and write the VIPs it affects first.

use std::collections::{BTreeMap, VecDeque};

use lb_common::VipKey;

use crate::{
    apply::table_builds::{self, AheadBuild, BuildDone, Built, table_changes},
    state::desired::{DesiredState, DesiredVip},
};

/// Waits until `BuildDone` resolves or news comes that may change desired state, whichever is
/// first; true for news.
pub type NewsWait = Box<dyn FnMut(BuildDone) -> bool>;

/// One pass toward one desired state, shared by its steps. Restart it whenever desired state
/// is rebuilt.
#[derive(Default)]
pub struct Pass {
    /// Differing VIPs, each with whether it loses a serving backend (urgent); `None` until the
    /// first step.
    queue: Option<VecDeque<(bool, VipKey)>>,
    /// The next step's tables, being built.
    ahead: Option<AheadBuild>,
    news: Option<NewsWait>,
}

impl std::fmt::Debug for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pass")
            .field("queued", &self.queue.as_ref().map(VecDeque::len))
            .field("ahead", &self.ahead)
            .field("interruptible", &self.news.is_some())
            .finish()
    }
}

/// What a step writes: the VIPs (at most the budget), how many are queued after them, and the
/// tables of those whose table changes.
pub(crate) type StepWork<'d> = (Vec<(&'d VipKey, &'d DesiredVip)>, usize, BTreeMap<VipKey, Built>);

impl Pass {
    pub fn new() -> Self {
        Self::default()
    }

    /// A pass whose steps stop waiting for tables built ahead when `news` says so.
    pub fn interruptible(news: NewsWait) -> Self {
        Self { news: Some(news), ..Self::default() }
    }

    /// Desired state was rebuilt: what differs is found afresh at the next step. Tables being
    /// built ahead are kept (a step uses one only if its VIP's input still holds).
    pub fn restart(&mut self) {
        self.queue = None;
    }

    /// The next step's VIPs against what is written (`written`: a VIP as the maps hold it),
    /// with their tables; starts building the tables of the step after it. Interrupted by news
    /// while waiting for its tables, the step is empty and its VIPs are queued again.
    pub(crate) fn next_step<'d, 'w>(
        &mut self,
        written: &dyn Fn(&VipKey) -> Option<&'w DesiredVip>,
        desired: &'d DesiredState,
        budget: usize,
    ) -> StepWork<'d> {
        let written = Written(written);
        let fresh = self.queue.is_none();
        let queue = self.queue.get_or_insert_with(|| written.differing(desired));
        let (mut urgent, mut pending) = written.take_differing(desired, queue, budget);
        if pending.is_empty() && !fresh {
            // The queue ran dry: whatever still differs (desired state changed under the pass)
            // is found afresh.
            *queue = written.differing(desired);
            (urgent, pending) = written.take_differing(desired, queue, budget);
        }
        let rebuilds: Vec<(&VipKey, &DesiredVip)> =
            pending.iter().copied().filter(|(key, vip)| written.table_changes(key, vip)).collect();
        // The tables built ahead: waited for when this step needs some of them (unless news
        // comes first), else kept for a later step.
        let ready = match self.ahead.take() {
            Some(ahead) if ahead.builds_any(&rebuilds) => {
                // News first, even over builds already done: a step of urgent VIPs is short.
                let news = self.news.as_mut().is_some_and(|news| news(ahead.done()));
                if news {
                    for (key, _) in pending.iter().rev() {
                        queue.push_front((urgent, **key));
                    }
                    self.ahead = Some(ahead);
                    return (Vec::new(), queue.len(), BTreeMap::new());
                }
                ahead.finish()
            }
            kept => {
                self.ahead = kept;
                Vec::new()
            }
        };
        let remaining = queue.len();
        let tables = table_builds::build_tables(&rebuilds, ready);
        // The next step's tables, built while this one writes and waits on its swap (unless a
        // build already under way is for them).
        let next: Vec<(&VipKey, &DesiredVip)> = queue
            .iter()
            .take(budget)
            .filter_map(|(_, key)| desired.vips.get_key_value(key))
            .filter(|(key, vip)| written.table_changes(key, vip))
            .collect();
        if !self.ahead.as_ref().is_some_and(|ahead| ahead.builds_any(&next)) {
            self.ahead = AheadBuild::start(&next);
        }
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

    /// Up to `budget` VIPs off the front of `queue` that still differ, and whether they are
    /// urgent. A step of urgent VIPs takes only those, so that it is short: a health failure
    /// does not wait for the Maglev builds of a reload's VIPs.
    fn take_differing<'d>(
        &self,
        desired: &'d DesiredState,
        queue: &mut VecDeque<(bool, VipKey)>,
        budget: usize,
    ) -> (bool, Vec<(&'d VipKey, &'d DesiredVip)>) {
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
        (urgent_step, taken)
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
