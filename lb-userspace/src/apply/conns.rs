//! Active connections per backend: the connection table's live entries, attributed to (VIP,
//! backend) through the backend slots the reconciler published. An entry is live when it is in
//! use, whole (its check matches), not idle past the table's own rule (`flow_idle`: the age after
//! which the data plane may hand it to a new flow), and its slot still has the generation the
//! entry recorded (else the slot went to another backend since, and the flow re-hashes).

use std::{
    collections::{BTreeMap, BinaryHeap, HashMap},
    time::{Duration, Instant},
};

use lb_common::{
    FLOW_CLOSED, FLOW_CONFIRMED, FLOW_STATE_BITS, FLOW_WAYS, Flow, FlowKey, FlowSet, VipKey, flow_check, flow_idle,
};
use serde::{Deserialize, Serialize};

use crate::{apply::dataplane::FlowTableCounter, apply::reconcile::AppliedVip};

/// Whether a flow's handshake is done: embryonic entries (a SYN, a first datagram) are the ones a
/// new flow may replace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FlowState {
    Embryonic,
    Confirmed,
    /// A TCP flow whose client sent a FIN or a RST (its entry stays until it idles out or a new
    /// flow takes it; with direct server return the server's side is never seen).
    Closed,
}

impl FlowState {
    pub fn name(self) -> &'static str {
        match self {
            FlowState::Embryonic => "embryonic",
            FlowState::Confirmed => "confirmed",
            FlowState::Closed => "closed",
        }
    }
}

/// The state of an entry stamped `used` at jiffies `now`; `None` when free or idle past
/// `FLOW_CONFIRMED_IDLE_JIFFIES` (embryonic entries age by the same rule).
pub fn entry_state(used: u32, now: u32) -> Option<FlowState> {
    if used == 0 || flow_idle(used, now) {
        return None;
    }
    Some(if used & FLOW_CLOSED != 0 {
        FlowState::Closed
    } else if used & FLOW_CONFIRMED != 0 {
        FlowState::Confirmed
    } else {
        FlowState::Embryonic
    })
}

/// Jiffies since an entry stamped `used` last saw a packet (0 if stamped after `now`).
pub fn entry_age(used: u32, now: u32) -> u32 {
    let age = (now & !FLOW_STATE_BITS).wrapping_sub(used & !FLOW_STATE_BITS);
    if (age as i32) < 0 { 0 } else { age }
}

/// A live entry of the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LiveEntry {
    pub key: FlowKey,
    pub flow: Flow,
    pub state: FlowState,
    /// Jiffies since its last packet.
    pub age: u32,
}

/// The live entries of one set at `now`; entries two CPUs wrote at once (check mismatch) are
/// left out, as the data plane would.
pub fn live_entries(set: &FlowSet, now: u32) -> impl Iterator<Item = LiveEntry> + '_ {
    (0..FLOW_WAYS).filter_map(move |way| {
        let used = set.used[way];
        let state = entry_state(used, now)?;
        let entry = &set.entries[way];
        (entry.check == flow_check(set.hashes[way], &entry.flow)).then_some(LiveEntry {
            key: entry.key,
            flow: entry.flow,
            state,
            age: entry_age(used, now),
        })
    })
}

/// Who holds a backend slot: a VIP (index into `SlotOwners::vips`), its backend, and the slot's
/// generation while it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SlotOwner {
    pub vip: u32,
    pub backend: u32,
    pub generation: u32,
}

/// Backend slot → (VIP, backend), from a published view: a vector indexed by slot (slots are
/// handed out lowest first, so it is as long as the highest in use).
#[derive(Debug, Default)]
pub struct SlotOwners {
    by_slot: Vec<Option<SlotOwner>>,
    pub vips: Vec<VipKey>,
}

impl SlotOwners {
    pub fn of(applied: &BTreeMap<VipKey, AppliedVip>) -> Self {
        Self::from_slots(
            applied.iter().map(|(key, vip)| (*key, vip.slots.iter().copied().zip(vip.generations.iter().copied()))),
        )
    }

    /// From each VIP's backends' (slot, generation), in backend order.
    pub fn from_slots<B: Iterator<Item = (u32, u32)>>(vips: impl Iterator<Item = (VipKey, B)>) -> Self {
        let mut this = Self::default();
        for (index, (key, backends)) in vips.enumerate() {
            this.vips.push(key);
            for (backend, (slot, generation)) in backends.enumerate() {
                let slot = slot as usize;
                if slot >= this.by_slot.len() {
                    this.by_slot.resize(slot + 1, None);
                }
                this.by_slot[slot] = Some(SlotOwner { vip: index as u32, backend: backend as u32, generation });
            }
        }
        this
    }

    /// The owner of a flow's slot, if the flow is of its current generation.
    pub fn owner(&self, flow: &Flow) -> Option<SlotOwner> {
        self.by_slot.get(flow.backend as usize).copied().flatten().filter(|o| o.generation == flow.generation)
    }

    /// The owner of `slot` whatever the generation (NAT reverse entries record none).
    pub fn slot_owner(&self, slot: u32) -> Option<SlotOwner> {
        self.by_slot.get(slot as usize).copied().flatten()
    }

    /// The index of `key` in `vips`.
    pub fn vip_index(&self, key: &VipKey) -> Option<u32> {
        self.vips.iter().position(|k| k == key).map(|i| i as u32)
    }
}

/// Live connections of one backend.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendConns {
    /// Connection-table entries past their handshake, not closed.
    pub confirmed: u64,
    /// Entries whose client closed (FIN or RST), until they idle out.
    #[serde(default)]
    pub closed: u64,
    /// Entries of flows whose handshake has not finished (SYNs, one-datagram UDP flows).
    pub embryonic: u64,
    /// NAT flows (nat VIPs keep their flows in the NAT tables instead).
    pub nat: u64,
}

impl BackendConns {
    /// Open connections: closed entries are not.
    pub fn total(&self) -> u64 {
        self.confirmed + self.embryonic + self.nat
    }

    /// `xlb status --vips`' column: established connections (table entries and NAT flows), and
    /// the embryonic ones apart when there are any.
    pub fn render(&self) -> String {
        let established = self.confirmed + self.nat;
        if self.embryonic == 0 {
            established.to_string()
        } else {
            format!("{established} +{} embryonic", self.embryonic)
        }
    }
}

/// One scan's counts, by backend slot and generation.
#[derive(Debug, Clone, Default)]
pub struct ConnCounts {
    by_slot: HashMap<(u32, u32), BackendConns>,
    /// Entries in use, live or not (the table's occupancy).
    pub occupied: u64,
    /// When the scan finished and how long it took (paced: mostly sleep).
    pub finished: Option<Instant>,
    pub took: Duration,
    /// CPU time of the scan's chunks alone, without the pauses.
    pub busy: Duration,
}

impl ConnCounts {
    /// The counts of backend slot `slot` while it has `generation`.
    pub fn of(&self, slot: u32, generation: u32) -> BackendConns {
        self.by_slot.get(&(slot, generation)).copied().unwrap_or_default()
    }

    /// Counts the live entries of `set` whose slot has an owner.
    pub fn add_set(&mut self, set: &FlowSet, now: u32, owners: &SlotOwners) {
        self.occupied += set.used.iter().filter(|&&u| u != 0).count() as u64;
        for entry in live_entries(set, now) {
            if owners.owner(&entry.flow).is_none() {
                continue;
            }
            let counts = self.by_slot.entry((entry.flow.backend, entry.flow.generation)).or_default();
            match entry.state {
                FlowState::Confirmed => counts.confirmed += 1,
                FlowState::Embryonic => counts.embryonic += 1,
                FlowState::Closed => counts.closed += 1,
            }
        }
    }

    /// Adds NAT flows per (slot, generation), as the NAT sweep counted them.
    pub fn add_nat(&mut self, nat: &BTreeMap<(u32, u32), u64>) {
        for (&slot, &flows) in nat {
            self.by_slot.entry(slot).or_default().nat += flows;
        }
    }
}

/// Sets one chunk of a scan reads before it pauses.
const CHUNK_SETS: u32 = 8192;
/// A paced scan sleeps this many times as long as each chunk took: at most a quarter of a CPU.
const PAUSE_FACTOR: u32 = 3;

/// Counts the whole table at `now`. `paced`: in chunks with pauses, so a 4M-entry table does not
/// hold a CPU for the whole scan.
pub fn count_table(table: &FlowTableCounter, now: u32, owners: &SlotOwners, paced: bool) -> ConnCounts {
    let started = Instant::now();
    let mut counts = ConnCounts::default();
    let mut busy = Duration::ZERO;
    for_each_set(table, paced, &mut busy, |set| counts.add_set(set, now, owners));
    counts.busy = busy;
    counts.took = started.elapsed();
    counts.finished = Some(Instant::now());
    counts
}

fn for_each_set(table: &FlowTableCounter, paced: bool, busy: &mut Duration, mut each: impl FnMut(&FlowSet)) {
    let sets = table.sets();
    let mut first = 0;
    while first < sets {
        let chunk = Instant::now();
        let last = first.saturating_add(CHUNK_SETS).min(sets);
        for index in first..last {
            if let Some(set) = table.read_set(index) {
                each(&set);
            }
        }
        let took = chunk.elapsed();
        *busy += took;
        first = last;
        if paced && first < sets {
            std::thread::sleep((took * PAUSE_FACTOR).min(Duration::from_millis(100)));
        }
    }
}

/// Connections open per VIP (an index of `owners.vips`) of the VIPs `counted` picks, for their
/// concurrent-connection limits: confirmed entries whose client has not closed, and embryonic
/// ones younger than `young` jiffies (a handshake under way turns into a connection without
/// passing the limit again; older ones are stale SYNs, which a flood leaves by the thousand).
/// Unpaced: the limits thread needs it whole and soon, and times it.
pub fn open_per_vip(
    table: &FlowTableCounter,
    now: u32,
    owners: &SlotOwners,
    young: u32,
    counted: &dyn Fn(u32) -> bool,
) -> HashMap<u32, u64> {
    let mut open = HashMap::new();
    let mut busy = Duration::ZERO;
    for_each_set(table, false, &mut busy, |set| add_open(&mut open, set, now, owners, young, counted));
    open
}

/// [`open_per_vip`] for one set.
pub(crate) fn add_open(
    open: &mut HashMap<u32, u64>,
    set: &FlowSet,
    now: u32,
    owners: &SlotOwners,
    young: u32,
    counted: &dyn Fn(u32) -> bool,
) {
    for entry in live_entries(set, now) {
        let counts = match entry.state {
            FlowState::Confirmed => true,
            FlowState::Embryonic => entry.age < young,
            FlowState::Closed => false,
        };
        if let Some(owner) = owners.owner(&entry.flow).filter(|o| counts && counted(o.vip)) {
            *open.entry(owner.vip).or_insert(0) += 1;
        }
    }
}

/// One flow of a VIP, as `xlb conns` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipFlow {
    /// Jiffies since its last packet.
    pub age: u32,
    pub key: FlowKey,
    /// Index into the VIP's backends (as published with the slots).
    pub backend_index: u32,
    pub state: FlowState,
}

/// `FlowKey` has no order of its own; flows of equal age are ordered by client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FlowKeyOrd(FlowKey);

impl PartialOrd for FlowKeyOrd {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for FlowKeyOrd {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.0.saddr, self.0.sport).cmp(&(other.0.saddr, other.0.sport))
    }
}

/// A VIP's flows in the table at `now`: the totals, and the `limit` most recently active.
#[derive(Debug, Clone, Default)]
pub struct VipFlows {
    pub confirmed: u64,
    pub embryonic: u64,
    pub closed: u64,
    /// Youngest first; at most `limit`.
    pub flows: Vec<VipFlow>,
}

/// Gathers a VIP's live flows: those whose slot `owners` gives to VIP `vip` (an index of
/// `owners.vips`). A whole scan, unpaced: someone waits for it.
pub fn vip_flows(table: &FlowTableCounter, now: u32, owners: &SlotOwners, vip: u32, limit: usize) -> VipFlows {
    let mut busy = Duration::ZERO;
    let mut found = VipFlowsBuilder::new(limit);
    for_each_set(table, false, &mut busy, |set| found.add_set(set, now, owners, vip));
    found.finish()
}

/// Keeps the totals and the youngest `limit` flows of one VIP while sets are added.
#[derive(Debug)]
pub struct VipFlowsBuilder {
    limit: usize,
    totals: VipFlows,
    /// A max-heap by age: its top is the oldest kept, the one a younger flow pushes out.
    youngest: BinaryHeap<(u32, FlowKeyOrd, u32, FlowState)>,
}

impl VipFlowsBuilder {
    pub fn new(limit: usize) -> Self {
        Self { limit, totals: VipFlows::default(), youngest: BinaryHeap::new() }
    }

    pub fn add_set(&mut self, set: &FlowSet, now: u32, owners: &SlotOwners, vip: u32) {
        for entry in live_entries(set, now) {
            let Some(owner) = owners.owner(&entry.flow).filter(|o| o.vip == vip) else { continue };
            match entry.state {
                FlowState::Confirmed => self.totals.confirmed += 1,
                FlowState::Embryonic => self.totals.embryonic += 1,
                FlowState::Closed => self.totals.closed += 1,
            }
            if self.limit == 0 {
                continue;
            }
            let item = (entry.age, FlowKeyOrd(entry.key), owner.backend, entry.state);
            if self.youngest.len() < self.limit {
                self.youngest.push(item);
            } else if self.youngest.peek().is_some_and(|oldest| item < *oldest) {
                self.youngest.pop();
                self.youngest.push(item);
            }
        }
    }

    pub fn finish(self) -> VipFlows {
        // Ascending: youngest first, ties by client.
        let flows = self
            .youngest
            .into_sorted_vec()
            .into_iter()
            .map(|(age, key, backend_index, state)| VipFlow { age, key: key.0, backend_index, state })
            .collect();
        VipFlows { flows, ..self.totals }
    }
}

#[cfg(test)]
mod tests;
