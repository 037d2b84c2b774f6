//! Live NAT flows attributed to VIPs through the published backend slots: what `xlb conns`
//! lists for a nat VIP, and the open connections a concurrent limit counts.

use std::collections::HashMap;

use lb_common::{FlowKey, NAT_FLAG_CLOSING, NatReverse, NodeConfig, nat_expired};

use crate::apply::{
    conns::{SlotOwner, SlotOwners},
    dataplane::NatTables,
    nat::owns,
};

/// A live NAT flow, as its reverse entry and (if still its own) its forward entry show it.
#[derive(Debug, Clone, Copy)]
pub struct LiveNatFlow {
    /// Who holds its backend slot now.
    pub owner: SlotOwner,
    /// The reverse key: the backend's reply 5-tuple (its destination is the NAT source).
    pub key: FlowKey,
    pub reverse: NatReverse,
    /// The later `last_seen` of both directions, and both directions' flags.
    pub last: u64,
    pub flags: u32,
}

/// Calls `each` with every live NAT flow whose slot's owner `wanted` picks, judged as the sweep
/// does (expiry by both directions; a forward entry of another generation is a flow of the
/// backend the slot had before). A lookup per entry: runs off the data path's threads.
pub fn live_flows(
    tables: &NatTables,
    node: &NodeConfig,
    owners: &SlotOwners,
    now: u64,
    wanted: impl Fn(&SlotOwner) -> bool,
    mut each: impl FnMut(LiveNatFlow),
) {
    for (key, reverse) in tables.reverse_entries() {
        let Some(owner) = owners.slot_owner(reverse.backend).filter(&wanted) else { continue };
        let forward = tables.flow(&reverse.forward_key(key.proto, key.family)).filter(|f| owns(f, &key));
        if forward.is_some_and(|f| f.generation != owner.generation) {
            continue;
        }
        let (last, flags) = forward.map_or((reverse.last_seen, reverse.flags), |f| {
            (reverse.last_seen.max(f.last_seen), reverse.flags | f.flags)
        });
        if !nat_expired(now, last, flags, key.proto, node) {
            each(LiveNatFlow { owner, key, reverse, last, flags });
        }
    }
}

/// NAT flows open per VIP (an index of `owners.vips`) of the VIPs `counted` picks, for their
/// concurrent-connection limits: live and not closing (a FIN or RST seen either way).
pub fn open_per_vip(
    tables: &NatTables,
    node: &NodeConfig,
    owners: &SlotOwners,
    now: u64,
    counted: &dyn Fn(u32) -> bool,
) -> HashMap<u32, u64> {
    let mut open = HashMap::new();
    live_flows(
        tables,
        node,
        owners,
        now,
        |o| counted(o.vip),
        |flow| {
            if flow.flags & NAT_FLAG_CLOSING == 0 {
                *open.entry(flow.owner.vip).or_insert(0) += 1;
            }
        },
    );
    open
}
