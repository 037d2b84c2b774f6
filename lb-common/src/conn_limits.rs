//! A VIP's new-connection limit (L4 `connection_limit`): new flows per second over the whole
//! VIP, whatever their sources, judged for packets that no established flow carries, after the
//! source policy. One GCRA bucket per VIP id, split over two maps so that neither side ever
//! overwrites the other's writes: the agent owns the rate (`maps::VIP_CONN_LIMITS`; a global
//! limit's rate is this node's current share, rewritten as the share moves), the program owns
//! the arrival time and the counts (`maps::VIP_CONN_BUCKETS`, which the agent only reads). Only
//! VIPs whose `VipMeta` has `VIP_FLAG_CONN_LIMIT` look: the rest pay nothing.

/// The limit of one VIP, at its id (all zero: none).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipConnLimit {
    /// Nanoseconds between two admitted new flows (1e9 / rate); 0: no limit.
    pub interval_ns: u64,
    /// How far ahead of now the arrival time may run: `(burst - 1) * interval_ns`.
    pub tolerance_ns: u64,
    /// `CONN_LIMIT_*` bits.
    pub flags: u32,
    pub pad: u32,
}

/// A refused TCP SYN is answered with a RST (else dropped); other packets are always dropped.
pub const CONN_LIMIT_RESET: u32 = 1;

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
