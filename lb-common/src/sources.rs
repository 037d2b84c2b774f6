//! Source policy: who may open flows to a VIP, and how fast. Allow and deny lists live in one
//! longest-prefix-match trie (`maps::SOURCE_RULES`), each entry scoped to one VIP or to the node;
//! new-flow limits are token buckets (as GCRA: one "theoretical arrival time" per bucket) per
//! source prefix, in an array of buckets each prefix may take one of two of
//! (`maps::SOURCE_BUCKETS`). Only packets that find no established flow are judged, so the
//! established path pays nothing.

use crate::{FAMILY_V6, MAX_VIPS};

/// A VIP's source policy, at its id in `maps::SOURCE_POLICY` (all zero: nothing to judge). The
/// agent writes each VIP's effective policy: its own lists and limit, and the node's.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourcePolicy {
    /// Nanoseconds between two admitted new flows of one source prefix (1e9 / rate); 0: no limit.
    pub interval_ns: u64,
    /// How far ahead of now a prefix's theoretical arrival time may run: `(burst - 1) *
    /// interval_ns`, so that `burst` new flows pass at once.
    pub tolerance_ns: u64,
    /// `SOURCE_*` bits.
    pub flags: u32,
    /// The source prefix one bucket counts: bits of an IPv4 / IPv6 source address.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
    pub pad: u16,
}

/// The VIP has allow/deny entries of its own (scope: its id).
pub const SOURCE_LISTS_VIP: u32 = 1;
/// The node has allow/deny entries (scope `SOURCE_SCOPE_NODE`), consulted after the VIP's.
pub const SOURCE_LISTS_NODE: u32 = 2;
/// Sources that no allow entry names are refused.
pub const SOURCE_ALLOW_ONLY: u32 = 4;
/// The limit is the VIP's own: its buckets are its own (scope: its id); else the node's limit,
/// whose buckets all VIPs share.
pub const SOURCE_LIMIT_VIP: u32 = 8;

impl SourcePolicy {
    /// Whether the program has anything to judge.
    #[inline(always)]
    pub const fn is_active(&self) -> bool {
        self.flags & (SOURCE_LISTS_VIP | SOURCE_LISTS_NODE | SOURCE_ALLOW_ONLY) != 0 || self.interval_ns != 0
    }

    /// The scope whose buckets count this VIP's new flows.
    #[inline(always)]
    pub const fn bucket_scope(&self, vip_id: u32, family: u8) -> u32 {
        if self.flags & SOURCE_LIMIT_VIP != 0 {
            source_scope(vip_id, family)
        } else {
            source_scope(SOURCE_SCOPE_NODE, family)
        }
    }

    /// The bucket prefix length for `family`.
    #[inline(always)]
    pub const fn prefix(&self, family: u8) -> u8 {
        if family == FAMILY_V6 { self.prefix_v6 } else { self.prefix_v4 }
    }
}

/// The scope id of node-wide entries (VIP ids are below `MAX_VIPS`).
pub const SOURCE_SCOPE_NODE: u32 = 0x00ff_ffff;
const _: () = assert!(MAX_VIPS < SOURCE_SCOPE_NODE);

/// A rule's or bucket's scope: the VIP id (or `SOURCE_SCOPE_NODE`) and the address family.
#[inline(always)]
pub const fn source_scope(id: u32, family: u8) -> u32 {
    (id << 8) | family as u32
}

/// The matched part of an allow/deny trie key (`aya`'s LPM `Key` adds the prefix length in
/// front): the scope, then the source address in network order (IPv4 in `addr[0]`). Every
/// entry's prefix covers the whole scope: `SOURCE_SCOPE_BITS` plus the address prefix.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceRuleData {
    pub scope: u32,
    pub addr: [u32; 4],
}

/// Bits of the scope at the front of every trie key.
pub const SOURCE_SCOPE_BITS: u32 = 32;

/// An allow/deny entry's action (the trie's value).
pub const SOURCE_RULE_ALLOW: u32 = 1;
pub const SOURCE_RULE_DENY: u32 = 2;

/// Allow/deny entries over all scopes (the trie's size).
pub const MAX_SOURCE_RULES: u32 = 65_536;
/// Source-prefix buckets (`maps::SOURCE_BUCKETS`, a power of two): a prefix's bucket is one of
/// its two slots (`source_bucket_slots`); a slot whose prefix is not ahead of its schedule may
/// be taken over, so a prefix being limited keeps its bucket whatever else comes.
pub const SOURCE_BUCKET_COUNT: u32 = 65_536;
const _: () = assert!(SOURCE_BUCKET_COUNT.is_power_of_two());

/// Key of a bucket: its scope and the source prefix (address masked to the policy's prefix).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SourceBucketKey {
    pub scope: u32,
    pub addr: [u32; 4],
}

/// A bucket: whose it is, GCRA's theoretical arrival time, and what it admitted and refused
/// (what the agent reports as the sources being limited). Updated without atomics: CPUs racing
/// on one bucket can admit a flow or two more than the limit, and a bucket caught half taken
/// over counts a flow for the wrong prefix; neither lets a flood through.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceBucket {
    pub key: SourceBucketKey,
    pub pad: u32,
    pub tat_ns: u64,
    pub admitted: u64,
    pub limited: u64,
}

/// The two slots a bucket key may hold (they may coincide).
#[inline(always)]
pub const fn source_bucket_slots(key: &SourceBucketKey) -> (u32, u32) {
    let h = crate::flow::fmix(
        key.scope
            ^ key.addr[0]
            ^ key.addr[1].rotate_left(8)
            ^ key.addr[2].rotate_left(16)
            ^ key.addr[3].rotate_left(24),
    );
    let second = crate::flow::fmix(h ^ 0x9e37_79b9);
    (h & (SOURCE_BUCKET_COUNT - 1), second & (SOURCE_BUCKET_COUNT - 1))
}

/// The network-order mask of word `word` (0 to 3) of an address for a prefix of `prefix` bits.
#[inline(always)]
pub fn source_mask(prefix: u32, word: u32) -> u32 {
    let keep = prefix.saturating_sub(32 * word);
    let mask = if keep >= 32 {
        u32::MAX
    } else if keep == 0 {
        0
    } else {
        u32::MAX << (32 - keep)
    };
    mask.to_be()
}

/// Counts a new flow arriving at `now` against a bucket (its arrival time and counts, fields
/// of a source's or a VIP's bucket): whether GCRA admits it.
#[inline(always)]
pub fn gcra_charge(
    tat: &mut u64,
    admitted: &mut u64,
    limited: &mut u64,
    now: u64,
    interval: u64,
    tolerance: u64,
) -> bool {
    match gcra(*tat, now, interval, tolerance) {
        Some(next) => {
            *tat = next;
            *admitted += 1;
            true
        }
        None => {
            *limited += 1;
            false
        }
    }
}

/// GCRA: whether a new flow arriving at `now` passes a bucket whose theoretical arrival time is
/// `tat` (0 for a new bucket), and the time to store if it does.
#[inline(always)]
pub const fn gcra(tat: u64, now: u64, interval: u64, tolerance: u64) -> Option<u64> {
    let start = if tat > now { tat } else { now };
    if start - now > tolerance { None } else { Some(start + interval) }
}
