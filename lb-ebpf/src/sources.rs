//! Source policy (see `lb_common::SourcePolicy`): allow/deny lists and per-prefix new-flow limits,
//! judged only for packets that found no established flow.

use aya_ebpf::{
    Global,
    btf_maps::{Array, LpmTrie, PerCpuArray, lpm_trie::Key},
    helpers::generated::bpf_ktime_get_coarse_ns,
    macros::btf_map,
};
use lb_common::{
    MAX_SOURCE_RULES, MAX_VIPS, SOURCE_ALLOW_ONLY, SOURCE_BUCKET_COUNT, SOURCE_LISTS_NODE, SOURCE_LISTS_VIP,
    SOURCE_RULE_ALLOW, SOURCE_RULE_DENY, SOURCE_SCOPE_BITS, SOURCE_SCOPE_NODE, SourceBucket, SourceBucketKey,
    SourcePolicy, SourceRuleData, gcra_charge, source_bucket_slots, source_mask, source_scope,
};
use lb_ebpf::parse::Packet;

use crate::lookup::lookup;

/// Each VIP's effective policy, at its id.
#[btf_map]
static XLB_SOURCE_POLICY: Array<SourcePolicy, { MAX_VIPS as usize }> = Array::new();

/// Allow/deny entries: scope (VIP id or node, and family), then the source prefix.
#[btf_map]
static XLB_SOURCE_RULES: LpmTrie<SourceRuleData, u32, { MAX_SOURCE_RULES as usize }> = LpmTrie::new();

/// New-flow buckets per scope and source prefix, each in one of its two slots.
#[btf_map]
static XLB_SOURCE_BUCKETS: Array<SourceBucket, { SOURCE_BUCKET_COUNT as usize }> = Array::new();

/// The packet's source, the lookup keys and a new bucket, off the stack: `judge` runs on top of
/// the balancer's frame, which leaves it 8 bytes. Written field by field so that nothing is
/// built on the stack first.
struct Keys {
    vip_id: u32,
    family: u32,
    opens: u32,
    /// The VIP's policy, copied: only this slot's pointer then lives across helper calls.
    policy: SourcePolicy,
    saddr: [u32; 4],
    rule: Key<SourceRuleData>,
    bucket: SourceBucketKey,
    /// A bucket slot, as a lookup key.
    slot: u32,
    /// The clock, kept here rather than in a register the lookups would make LLVM spill.
    now: u64,
    /// `how & CONN_LIMIT`, and the policy's verdict while the connection limit judges: here
    /// for the same reason.
    conn_limit: u32,
    verdict: u32,
}

#[btf_map]
static XLB_SOURCE_KEYS: PerCpuArray<Keys, 1> = PerCpuArray::new();

/// Index 0, as a lookup key that is not on the stack.
#[unsafe(no_mangle)]
static XLB_SOURCE_ZERO: Global<u32> = Global::new(0);

/// What `judge` found.
pub(crate) const ADMIT: u32 = 0;
pub(crate) const DENIED: u32 = 1;
pub(crate) const NOT_ALLOWED: u32 = 2;
pub(crate) const LIMITED: u32 = 3;
/// Admitted, but both of its prefix's bucket slots were held by prefixes being limited.
pub(crate) const UNTRACKED: u32 = 4;
/// The VIP's connection limit refused the flow: drop it, or answer its SYN with a RST.
pub(crate) const CONN_LIMITED: u32 = 5;
pub(crate) const CONN_RESET: u32 = 6;

/// `judge`'s `how`: the packet would open a flow (counted against its prefix's bucket)...
const OPENS: u32 = 1;
/// ... and against the VIP's connection limit (`conn_limits`), once the source is admitted.
pub(crate) const CONN_LIMIT: u32 = 2;

/// Whether VIP `vip_id` has a policy to judge by: one array read, inlined by the verifier.
#[inline(always)]
pub(crate) fn active(vip_id: u32) -> bool {
    XLB_SOURCE_POLICY.get(vip_id).is_some_and(SourcePolicy::is_active)
}

/// Judges `packet`'s source for VIP `vip_id`: the VIP's allow/deny entries, then the node's (the
/// longest match of the first list that has one decides); allowed sources pass unlimited; a
/// source no entry names is refused under `allow_only`, else counted against its prefix's
/// bucket when `how` has `OPENS` (it would open a flow). An admitted flow then meets the VIP's
/// connection limit when `how` has `CONN_LIMIT`. A separate BPF function whose keys and state
/// live in a per-CPU map, so that it adds (almost) no stack to the balancer's frame.
#[inline(never)]
pub(crate) fn judge(packet: &Packet, vip_id: u32, how: u32) -> u32 {
    let Some(keys) = lookup::<_, u32, Keys>(&XLB_SOURCE_KEYS, core::ptr::from_ref(&XLB_SOURCE_ZERO).cast()) else {
        return ADMIT;
    };
    // SAFETY: this CPU's slot, used by this packet alone (XDP runs to completion).
    let keys = unsafe { &mut *keys };
    keys.vip_id = vip_id;
    keys.family = u32::from(packet.family);
    keys.saddr = packet.saddr;
    keys.opens = how & OPENS;
    keys.conn_limit = how & CONN_LIMIT;
    let Some(policy) = lookup::<_, u32, SourcePolicy>(&XLB_SOURCE_POLICY, &keys.vip_id) else { return ADMIT };
    // SAFETY: a value of the array, valid while the program runs; the agent replaces it whole.
    keys.policy = unsafe { *policy };
    keys.verdict = judge_staged(keys);
    if keys.conn_limit == 0 || (keys.verdict != ADMIT && keys.verdict != UNTRACKED) {
        return keys.verdict;
    }
    match crate::conn_limits::judge(&keys.vip_id) {
        crate::conn_limits::LIMITED => CONN_LIMITED,
        crate::conn_limits::RESET => CONN_RESET,
        _ => keys.verdict,
    }
}

#[inline(always)]
fn judge_staged(keys: &mut Keys) -> u32 {
    let family = keys.family as u8;
    let mut rule = 0;
    if keys.policy.flags & SOURCE_LISTS_VIP != 0 {
        rule = lookup_rule(keys, source_scope(keys.vip_id, family));
    }
    if rule == 0 && keys.policy.flags & SOURCE_LISTS_NODE != 0 {
        rule = lookup_rule(keys, source_scope(SOURCE_SCOPE_NODE, family));
    }
    if rule == SOURCE_RULE_DENY {
        return DENIED;
    }
    if rule == SOURCE_RULE_ALLOW {
        return ADMIT;
    }
    if keys.policy.flags & SOURCE_ALLOW_ONLY != 0 {
        return NOT_ALLOWED;
    }
    if keys.policy.interval_ns == 0 || keys.opens == 0 {
        return ADMIT;
    }
    keys.bucket.scope = keys.policy.bucket_scope(keys.vip_id, family);
    let prefix = u32::from(keys.policy.prefix(family));
    for i in 0..4 {
        if let (Some(word), Some(source)) = (keys.bucket.addr.get_mut(i), keys.saddr.get(i)) {
            *word = *source & source_mask(prefix, i as u32);
        }
    }
    // SAFETY: no arguments; a clock read.
    keys.now = unsafe { bpf_ktime_get_coarse_ns() };
    let (first, second) = source_bucket_slots(&keys.bucket);
    keys.slot = first;
    let Some(a) = lookup::<_, u32, SourceBucket>(&XLB_SOURCE_BUCKETS, &keys.slot) else { return ADMIT };
    // SAFETY: a value of the array, valid while the program runs; other CPUs may update it at
    // the same time (plain stores: see `SourceBucket`).
    let a = unsafe { &mut *a };
    if holds(a, &keys.bucket) {
        return charge(a, &keys.policy, keys.now);
    }
    keys.slot = second;
    let Some(b) = lookup::<_, u32, SourceBucket>(&XLB_SOURCE_BUCKETS, &keys.slot) else { return ADMIT };
    // SAFETY: as above.
    let b = unsafe { &mut *b };
    if holds(b, &keys.bucket) {
        return charge(b, &keys.policy, keys.now);
    }
    // A new prefix takes a slot whose prefix is not ahead of its schedule (a free slot's is 0);
    // when both prefixes are, this flow is admitted untracked (counted).
    let taken = if a.tat_ns <= keys.now {
        a
    } else if b.tat_ns <= keys.now {
        b
    } else {
        return UNTRACKED;
    };
    taken.key = keys.bucket;
    taken.tat_ns = keys.now + keys.policy.interval_ns;
    taken.admitted = 1;
    taken.limited = 0;
    ADMIT
}

/// Whether `bucket` is `key`'s (compared word by word: no `memcmp` in BPF).
#[inline(always)]
fn holds(bucket: &SourceBucket, key: &SourceBucketKey) -> bool {
    bucket.key.scope == key.scope
        && bucket.key.addr[0] == key.addr[0]
        && bucket.key.addr[1] == key.addr[1]
        && bucket.key.addr[2] == key.addr[2]
        && bucket.key.addr[3] == key.addr[3]
}

/// Counts a new flow against its prefix's bucket: admitted while GCRA allows it.
#[inline(always)]
fn charge(bucket: &mut SourceBucket, policy: &SourcePolicy, now: u64) -> u32 {
    let admitted = gcra_charge(
        &mut bucket.tat_ns,
        &mut bucket.admitted,
        &mut bucket.limited,
        now,
        policy.interval_ns,
        policy.tolerance_ns,
    );
    if admitted { ADMIT } else { LIMITED }
}

/// The action of the longest entry of `scope` that holds the source; 0 for none.
#[inline(always)]
fn lookup_rule(keys: &mut Keys, scope: u32) -> u32 {
    keys.rule.prefix_len = SOURCE_SCOPE_BITS + 128;
    keys.rule.data.scope = scope;
    keys.rule.data.addr = keys.saddr;
    XLB_SOURCE_RULES.get(&keys.rule).copied().unwrap_or(0)
}
