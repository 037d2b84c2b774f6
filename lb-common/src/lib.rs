//! Plain-data types shared by the XDP program (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Every type is `#[repr(C)]`, has no padding holes the verifier or the kernel could see
//! uninitialised, and keeps multi-byte protocol fields (addresses, ports) in network byte
//! order so the data plane compares them without swapping.
#![no_std]

mod backend;
mod conn_limits;
mod flow;
mod limits;
mod maglev;
mod nat;
mod node;
mod sources;
mod stats;
mod syn_cookies;
mod traffic;
mod vip;

pub use backend::*;
pub use conn_limits::*;
pub use flow::*;
pub use limits::*;
pub use maglev::*;
pub use nat::*;
pub use node::*;
pub use sources::*;
pub use stats::*;
pub use syn_cookies::*;
pub use traffic::*;
pub use vip::*;

/// Names of the maps in the XDP object, so both sides agree.
pub mod maps {
    pub const VIPS: &str = "XLB_VIPS";
    pub const VIP_INDEX: &str = "XLB_VIP_INDEX";
    pub const VIP_ADDRS: &str = "XLB_VIP_ADDRS";
    pub const VIP_FILTER: &str = "XLB_VIP_FILTER";
    pub const BACKENDS: &str = "XLB_BACKENDS";
    pub const BACKEND_COUNTERS: &str = "XLB_BACKEND_COUNTERS";
    pub const MAGLEV: &str = "XLB_MAGLEV";
    pub const FLOWS: &str = "XLB_FLOWS";
    /// The global that tells the program how many sets `FLOWS` has.
    pub const FLOW_SETS: &str = "XLB_FLOW_SETS";
    pub const NODE: &str = "XLB_NODE";
    pub const STATS: &str = "XLB_STATS";
    pub const NAT_POOLS: &str = "XLB_NAT_POOLS";
    pub const NAT_FLOWS: &str = "XLB_NAT_FLOWS";
    pub const NAT_REVERSE: &str = "XLB_NAT_REVERSE";
    /// Per backend slot: whether its pool ran out lately, and released sources (`NatSources`).
    /// One per load of the program, like the scratch maps: only hints, rebuilt by traffic.
    pub const NAT_SOURCES: &str = "XLB_NAT_SOURCES";
    /// The balancer's program array. Not in [`BALANCER`]: it is pinned once per load of the
    /// program, as `XLB_PROGS_<generation>` (see the agent's `Loaded::balancer_pinned`).
    pub const PROGS: &str = "XLB_PROGS";
    /// The read-only global that tells one load of the balancer from another.
    pub const GENERATION: &str = "XLB_GENERATION";
    /// The interfaces the agent runs on (`Iface` by index) and the redirect map over them.
    pub const IFACES: &str = "XLB_IFACES";
    pub const DEVS: &str = "XLB_DEVS";
    /// Source policy: per VIP id (`SourcePolicy`), the allow/deny trie, the new-flow buckets.
    pub const SOURCE_POLICY: &str = "XLB_SOURCE_POLICY";
    pub const SOURCE_RULES: &str = "XLB_SOURCE_RULES";
    pub const SOURCE_BUCKETS: &str = "XLB_SOURCE_BUCKETS";
    /// SYN cookies: the automatic mode's meter per VIP id (`SynCookieMeter`), the MAC's key
    /// (`SynCookieSecret`), and the sequence state of cookie flows (`NatSeq`, sized as the NAT
    /// tables).
    pub const SYN_COOKIES: &str = "XLB_SYN_COOKIES";
    pub const SYN_COOKIE_SECRET: &str = "XLB_SYN_COOKIE_SECRET";
    pub const NAT_SEQ: &str = "XLB_NAT_SEQ";
    /// Per VIP id: its new-connection limit (`VipConnLimit`, the agent's) and bucket
    /// (`VipConnBucket`, the program's).
    pub const VIP_CONN_LIMITS: &str = "XLB_VIP_CONN_LIMITS";
    pub const VIP_CONN_BUCKETS: &str = "XLB_VIP_CONN_BUCKETS";
    /// The balancer object's maps that every load shares through their pins (the program array
    /// and per-packet scratch maps belong to one load).
    pub const BALANCER: [&str; 23] = [
        VIPS,
        VIP_INDEX,
        VIP_ADDRS,
        VIP_FILTER,
        BACKENDS,
        BACKEND_COUNTERS,
        MAGLEV,
        FLOWS,
        NODE,
        STATS,
        NAT_POOLS,
        NAT_FLOWS,
        NAT_REVERSE,
        IFACES,
        DEVS,
        SOURCE_POLICY,
        SOURCE_RULES,
        SOURCE_BUCKETS,
        SYN_COOKIES,
        SYN_COOKIE_SECRET,
        NAT_SEQ,
        VIP_CONN_LIMITS,
        VIP_CONN_BUCKETS,
    ];
    pub const DECAP_ADDRS: &str = "XLB_DECAP_ADDRS";
    pub const DECAP_STATS: &str = "XLB_DECAP_STATS";
    /// The traffic tool's generator template and sink counters (benches and tests).
    pub const GEN: &str = "XLB_GEN";
    pub const GEN_COUNT: &str = "XLB_GEN_COUNT";
    pub const SINK: &str = "XLB_SINK";
}

/// Names of the programs in the XDP objects.
pub mod programs {
    pub const BALANCER: &str = "xlb_balancer";
    /// Tail-called by the balancer for NAT (at `PROG_INDEX_NAT` of `maps::PROGS`).
    pub const NAT: &str = "xlb_nat";
    /// Tail-called on drops while `bpf_log` is on (at `PROG_INDEX_LOG` of `maps::PROGS`).
    pub const LOG: &str = "xlb_log";
    /// Tail-called by the balancer to answer a SYN over a connection limit with a RST (at
    /// `PROG_INDEX_RESET` of `maps::PROGS`).
    pub const RESET: &str = "xlb_reset";
    pub const DECAP: &str = "xlb_decap";
    pub const FLOOR: &str = "xlb_floor";
    /// The traffic tool: a live-frames generator and a counting drop.
    pub const GEN: &str = "xlb_gen";
    pub const SINK: &str = "xlb_sink";
}

#[cfg(feature = "user")]
mod pod;
#[cfg(test)]
mod tests;
