//! Wire headers, laid out as on the wire.
//!
//! `packed(2)`: headers after a 14-byte Ethernet header are only 2-byte aligned, so 32-bit
//! fields are read as two 16-bit loads rather than through a misaligned reference.
//! Multi-byte fields are in network byte order.

pub const ETH_P_IPV4: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;

#[repr(C, packed(2))]
pub struct EthHdr {
    pub dst: [u8; 6],
    pub src: [u8; 6],
    pub ether_type: u16,
}

#[repr(C, packed(2))]
pub struct VlanHdr {
    pub tci: u16,
    pub ether_type: u16,
}

#[repr(C, packed(2))]
pub struct Ipv4Hdr {
    pub version_ihl: u8,
    pub tos: u8,
    pub total_len: u16,
    pub id: u16,
    pub frag_off: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

/// More-fragments flag and fragment offset bits of `Ipv4Hdr::frag_off` (host order).
pub const IPV4_MF_OFFSET_MASK: u16 = 0x3FFF;

#[repr(C, packed(2))]
pub struct Ipv6Hdr {
    pub version_tc_flow: u32,
    pub payload_len: u16,
    pub next_hdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

/// IPv6 next-header values that are extension headers (RFC 8200 §4, plus AH/ESP/mobility/HIP/
/// shim6/experimental): the transport header is not where a plain parse would look.
#[inline(always)]
pub fn is_ipv6_extension(next_hdr: u8) -> bool {
    matches!(next_hdr, 0 | 43 | 44 | 50 | 51 | 60 | 135 | 139 | 140 | 253 | 254)
}

#[repr(C, packed(2))]
pub struct TcpHdr {
    pub source: u16,
    pub dest: u16,
    pub seq: u32,
    pub ack_seq: u32,
    /// Data offset (high nibble) and reserved bits.
    pub doff_res: u8,
    pub flags: u8,
    pub window: u16,
    pub check: u16,
    pub urg_ptr: u16,
}

#[repr(C, packed(2))]
pub struct UdpHdr {
    pub source: u16,
    pub dest: u16,
    pub len: u16,
    pub check: u16,
}

/// ICMP and ICMPv6 share this 8-byte layout (type, code, checksum, 4 bytes of rest-of-header).
#[repr(C, packed(2))]
pub struct IcmpHdr {
    pub kind: u8,
    pub code: u8,
    pub check: u16,
    pub rest: u32,
}

pub const IPPROTO_IPIP: u8 = 4;
pub const IPPROTO_IPV6: u8 = 41;

/// IPv4 "don't fragment" bit of `frag_off` (host order).
pub const IPV4_DF: u16 = 0x4000;

pub const TCP_FLAG_FIN: u8 = 0x01;
pub const TCP_FLAG_SYN: u8 = 0x02;
pub const TCP_FLAG_RST: u8 = 0x04;
pub const TCP_FLAG_ACK: u8 = 0x10;

pub const ICMP_DEST_UNREACH: u8 = 3;
pub const ICMP_FRAG_NEEDED: u8 = 4;
pub const ICMP_TIME_EXCEEDED: u8 = 11;
pub const ICMP_PARAMETER_PROBLEM: u8 = 12;
pub const ICMPV6_PKT_TOOBIG: u8 = 2;

/// Folds a 32-bit one's-complement sum into the 16-bit checksum field value.
#[inline(always)]
pub fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}

/// One's-complement sum of a 32-bit word as two 16-bit halves (any byte order, applied
/// consistently).
#[inline(always)]
pub fn sum32(word: u32) -> u32 {
    (word & 0xffff) + (word >> 16)
}
