//! A VIP's connection limit (L4 `connection_limit`): new flows per second over the whole VIP,
//! whatever their sources, and open connections at once, judged for packets that no established
//! flow carries, after the source policy. One GCRA bucket per VIP id, split over two maps so
//! that neither side ever overwrites the other's writes: the agent owns the rate and the
//! ceiling (`maps::VIP_CONN_LIMITS`; a global limit's rate is this node's current share,
//! rewritten as the share moves), the program owns the arrival time and the counts
//! (`maps::VIP_CONN_BUCKETS`, which the agent only reads). Only VIPs whose `VipMeta` has
//! `VIP_FLAG_CONN_LIMIT` look: the rest pay nothing.

/// The limit of one VIP, at its id (all zero: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipConnLimit {
    /// Nanoseconds between two admitted new flows (1e9 / rate); 0: no rate limit.
    pub interval_ns: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
    /// `CONN_LIMIT_*` bits.
    pub flags: u32,
    /// With `CONN_LIMIT_CONCURRENT`: new flows are refused once the bucket's `admitted` count
    /// reaches this (its low 32 bits, compared by [`VipConnLimit::admits`]: the two are never
    /// 2^31 apart). The agent recounts the VIP's open flows often and sets it to what the bucket
    /// had admitted when the count began plus the connections still free, so however many flows
    /// open between two counts, the open ones never pass the limit. (In what was padding: a
    /// pinned map of the previous layout is adopted as it is.)
    pub admit_below: u32,
}

impl VipConnLimit {
    /// Whether it limits anything (an all-zero value is no limit).
    #[inline(always)]
    pub const fn is_set(&self) -> bool {
        self.interval_ns != 0 || self.flags & CONN_LIMIT_CONCURRENT != 0
    }

    /// Whether a bucket that has admitted `admitted` flows is below the concurrent ceiling
    /// (true without one).
    #[inline(always)]
    pub const fn admits(&self, admitted: u64) -> bool {
        self.flags & CONN_LIMIT_CONCURRENT == 0 || (self.admit_below.wrapping_sub(admitted as u32) as i32) > 0
    }
}

/// A refused TCP SYN is answered with a RST (else dropped); other packets are always dropped.
pub const CONN_LIMIT_RESET: u32 = 1;
/// The VIP has a concurrent-connections limit: `VipConnLimit::admit_below` holds.
pub const CONN_LIMIT_CONCURRENT: u32 = 2;

/// The bucket of one VIP: GCRA's theoretical arrival time and what it admitted and refused.
/// Plain stores, as `SourceBucket`: CPUs racing on it can admit a flow or two more.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipConnBucket {
    pub tat_ns: u64,
    pub admitted: u64,
    pub limited: u64,
}

/// `VipMeta::flags`: the VIP has a `connection_limit` (its entry in `maps::VIP_CONN_LIMITS`).
pub const VIP_FLAG_CONN_LIMIT: u32 = 16;
const _: () = assert!(
    VIP_FLAG_CONN_LIMIT
        & (crate::VIP_FLAG_HASH_SOURCE_ONLY
            | crate::VIP_FLAG_NAT
            | crate::VIP_FLAG_SYN_COOKIES
            | crate::VIP_FLAG_SYN_COOKIES_AUTO)
        == 0
);
