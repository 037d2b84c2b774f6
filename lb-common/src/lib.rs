//! Plain-data types shared by the XDP program (`lb-ebpf`) and the agent (`lb-userspace`).
//!
//! Every type is `#[repr(C)]`, has no padding holes the verifier or the kernel could see
//! uninitialised, and keeps multi-byte protocol fields (addresses, ports) in network byte
//! order so the data plane compares them without swapping.
#![no_std]

/// Most VIPs one data plane serves. Also the length of the per-VIP counter array.
pub const MAX_VIPS: u32 = 1024;

/// Address family tag used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the data plane understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Key of the VIP map: destination address, destination port and protocol.
///
/// IPv4 addresses sit in `addr[0]` with the other words zero. `addr` and `port` are in network
/// byte order (as on the wire). ICMP/ICMPv6 VIPs use port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl VipKey {
    pub const fn v4(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self {
            addr: [addr_be, 0, 0, 0],
            port: port_be,
            proto,
            family: FAMILY_V4,
        }
    }

    pub const fn v6(addr_be: [u32; 4], port_be: u16, proto: u8) -> Self {
        Self {
            addr: addr_be,
            port: port_be,
            proto,
            family: FAMILY_V6,
        }
    }
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into the per-VIP counter array; `< MAX_VIPS`, stable for the life of the VIP.
    pub id: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
}

/// Per-VIP traffic counters (one slot per CPU in a per-CPU array; the agent sums them).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipCounters {
    pub packets: u64,
    pub bytes: u64,
}

/// Global per-CPU counters, indexed by `Stat as u32` in the `STATS` array.
///
/// Every packet the program sees lands in exactly one of them, so their sum is the number of
/// packets received.
///
/// Adding a reason: append it before `Count` and give it a name in [`Stat::name`]; the agent
/// and the metrics pick it up from there.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stat {
    /// Well-formed packet that is not for a VIP: passed untouched.
    PassNotVip = 0,
    /// Not IPv4/IPv6 (ARP, LLDP, ...): passed untouched.
    PassNotIp,
    /// Packet for a VIP.
    VipHit,
    /// IPv4 fragment (first or later): L4 ports are not reliable, so it is never hashed.
    Ipv4Fragment,
    /// IPv6 packet whose next header is an extension header, so L4 was not parsed.
    Ipv6ExtHeader,
    /// Malformed: shorter than an Ethernet header.
    TruncatedEth,
    /// Malformed: 802.1Q tag cut short.
    TruncatedVlan,
    /// Malformed: shorter than an IPv4 header, or than its IHL says.
    TruncatedIpv4,
    /// Malformed: IPv4 IHL below 5 or version not 4.
    BadIpv4Header,
    /// Malformed: IPv4 total length shorter than the header or longer than the frame.
    BadIpv4Length,
    /// Malformed: shorter than an IPv6 header.
    TruncatedIpv6,
    /// Malformed: IPv6 version field not 6.
    BadIpv6Header,
    /// Malformed: IPv6 payload length longer than the frame.
    BadIpv6Length,
    /// Malformed: TCP header cut short, or data offset below 5.
    TruncatedTcp,
    /// Malformed: UDP header cut short.
    TruncatedUdp,
    /// Malformed: ICMP/ICMPv6 header cut short.
    TruncatedIcmp,
    Count,
}

pub const STAT_COUNT: u32 = Stat::Count as u32;

impl Stat {
    pub const ALL: [Stat; STAT_COUNT as usize] = [
        Stat::PassNotVip,
        Stat::PassNotIp,
        Stat::VipHit,
        Stat::Ipv4Fragment,
        Stat::Ipv6ExtHeader,
        Stat::TruncatedEth,
        Stat::TruncatedVlan,
        Stat::TruncatedIpv4,
        Stat::BadIpv4Header,
        Stat::BadIpv4Length,
        Stat::TruncatedIpv6,
        Stat::BadIpv6Header,
        Stat::BadIpv6Length,
        Stat::TruncatedTcp,
        Stat::TruncatedUdp,
        Stat::TruncatedIcmp,
    ];

    /// Stable snake_case name, used in `xlb stats` and as the metrics label.
    pub const fn name(self) -> &'static str {
        match self {
            Stat::PassNotVip => "pass_not_vip",
            Stat::PassNotIp => "pass_not_ip",
            Stat::VipHit => "vip_hit",
            Stat::Ipv4Fragment => "ipv4_fragment",
            Stat::Ipv6ExtHeader => "ipv6_ext_header",
            Stat::TruncatedEth => "truncated_eth",
            Stat::TruncatedVlan => "truncated_vlan",
            Stat::TruncatedIpv4 => "truncated_ipv4",
            Stat::BadIpv4Header => "bad_ipv4_header",
            Stat::BadIpv4Length => "bad_ipv4_length",
            Stat::TruncatedIpv6 => "truncated_ipv6",
            Stat::BadIpv6Header => "bad_ipv6_header",
            Stat::BadIpv6Length => "bad_ipv6_length",
            Stat::TruncatedTcp => "truncated_tcp",
            Stat::TruncatedUdp => "truncated_udp",
            Stat::TruncatedIcmp => "truncated_icmp",
            Stat::Count => "count",
        }
    }

    /// Whether this counter records a malformed packet.
    pub const fn is_malformed(self) -> bool {
        matches!(
            self,
            Stat::TruncatedEth
                | Stat::TruncatedVlan
                | Stat::TruncatedIpv4
                | Stat::BadIpv4Header
                | Stat::BadIpv4Length
                | Stat::TruncatedIpv6
                | Stat::BadIpv6Header
                | Stat::BadIpv6Length
                | Stat::TruncatedTcp
                | Stat::TruncatedUdp
                | Stat::TruncatedIcmp
        )
    }
}

/// Names of the maps in the XDP object, so both sides agree.
pub mod maps {
    pub const VIPS: &str = "XLB_VIPS";
    pub const VIP_COUNTERS: &str = "XLB_VIP_COUNTERS";
    pub const STATS: &str = "XLB_STATS";
}

/// Names of the programs in the XDP objects.
pub mod programs {
    pub const BALANCER: &str = "xlb_balancer";
    pub const FLOOR: &str = "xlb_floor";
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are #[repr(C)] plain data of integer fields, valid for any bit pattern, with
    // no padding (VipKey: 16 + 2 + 1 + 1 bytes; the others are all u32/u64 pairs).
    unsafe impl aya::Pod for super::VipKey {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::VipMeta {}
    // SAFETY: see above.
    unsafe impl aya::Pod for super::VipCounters {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_table_is_complete_and_ordered() {
        for (i, s) in Stat::ALL.iter().enumerate() {
            assert_eq!(*s as usize, i, "{} out of order", s.name());
        }
    }

    #[test]
    fn key_has_no_padding() {
        assert_eq!(core::mem::size_of::<VipKey>(), 20);
        assert_eq!(core::mem::size_of::<VipMeta>(), 8);
        assert_eq!(core::mem::size_of::<VipCounters>(), 16);
    }
}
