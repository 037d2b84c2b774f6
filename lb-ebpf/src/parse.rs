//! Bounds-checked header parsing of one frame into a [`Packet`] summary.
//!
//! Every read goes through [`Frame::header`], which checks `offset + size_of::<T>()` against
//! `data_end` in the form the verifier tracks. Offsets derived from packet fields (IHL, TCP data
//! offset) are masked first, so they stay bounded.

use core::mem::size_of;

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Stat};

use crate::headers::*;

/// The frame being parsed.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self {
            start: ctx.data(),
            end: ctx.data_end(),
        }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    /// A pointer to a `T` at `offset`, or `None` if the frame is too short.
    #[inline(always)]
    pub fn header<T>(&self, offset: usize) -> Option<*const T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *const T)
    }
}

/// What the balancer needs to know about a well-formed packet.
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    /// Destination address; IPv4 in word 0, others zero. Network byte order.
    pub daddr: [u32; 4],
    /// Destination port in network byte order; 0 for ICMP.
    pub dport: u16,
}

/// Why a frame is not a [`Packet`]: the counter to bump. Every variant means XDP_PASS.
pub type Verdict = Stat;

/// Parses Ethernet (one optional 802.1Q tag), IPv4/IPv6 and TCP/UDP/ICMP headers.
#[inline(always)]
pub fn parse(frame: &Frame) -> Result<Packet, Verdict> {
    let eth: *const EthHdr = frame.header(0).ok_or(Stat::TruncatedEth)?;
    // SAFETY: `header` checked that the EthHdr lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = size_of::<EthHdr>();
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = frame.header(l3).ok_or(Stat::TruncatedVlan)?;
        // SAFETY: bounds checked by `header`.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(frame, l3),
        ETH_P_IPV6 => parse_ipv6(frame, l3),
        _ => Err(Stat::PassNotIp),
    }
}

#[inline(always)]
fn parse_ipv4(frame: &Frame, l3: usize) -> Result<Packet, Verdict> {
    let ip: *const Ipv4Hdr = frame.header(l3).ok_or(Stat::TruncatedIpv4)?;
    // SAFETY: bounds checked by `header`; all reads below stay inside the 20-byte header.
    let (version_ihl, total_len, frag_off, proto, daddr) = unsafe {
        (
            (*ip).version_ihl,
            u16::from_be((*ip).total_len),
            u16::from_be((*ip).frag_off),
            (*ip).proto,
            (*ip).daddr,
        )
    };
    let ihl = (version_ihl & 0x0F) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(Stat::BadIpv4Header);
    }
    let header_len = ihl * 4;
    if l3 + header_len > frame.len() {
        return Err(Stat::TruncatedIpv4);
    }
    let total_len = total_len as usize;
    if total_len < header_len || l3 + total_len > frame.len() {
        return Err(Stat::BadIpv4Length);
    }
    if frag_off & IPV4_MF_OFFSET_MASK != 0 {
        // Later fragments carry no L4 header; even the first must not be hashed on ports,
        // or its fragments would go elsewhere.
        return Err(Stat::Ipv4Fragment);
    }
    let dport = parse_l4(frame, l3 + header_len, l3 + total_len, proto, PROTO_ICMP)?;
    Ok(Packet {
        family: FAMILY_V4,
        proto,
        daddr: [daddr, 0, 0, 0],
        dport,
    })
}

#[inline(always)]
fn parse_ipv6(frame: &Frame, l3: usize) -> Result<Packet, Verdict> {
    let ip: *const Ipv6Hdr = frame.header(l3).ok_or(Stat::TruncatedIpv6)?;
    // SAFETY: bounds checked by `header`.
    let (version_tc_flow, payload_len, next_hdr, daddr) = unsafe {
        (
            u32::from_be((*ip).version_tc_flow),
            u16::from_be((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).daddr,
        )
    };
    if version_tc_flow >> 28 != 6 {
        return Err(Stat::BadIpv6Header);
    }
    let l4 = l3 + size_of::<Ipv6Hdr>();
    let ip_end = l4 + payload_len as usize;
    if ip_end > frame.len() {
        return Err(Stat::BadIpv6Length);
    }
    if is_ipv6_extension(next_hdr) {
        return Err(Stat::Ipv6ExtHeader);
    }
    let dport = parse_l4(frame, l4, ip_end, next_hdr, PROTO_ICMPV6)?;
    Ok(Packet {
        family: FAMILY_V6,
        proto: next_hdr,
        daddr,
        dport,
    })
}

/// Checks the transport header at `l4` lies within both the frame and the IP datagram ending at
/// `ip_end`, and returns the destination port (0 for ICMP, and for protocols without ports).
#[inline(always)]
fn parse_l4(frame: &Frame, l4: usize, ip_end: usize, proto: u8, icmp: u8) -> Result<u16, Verdict> {
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = frame.header(l4).ok_or(Stat::TruncatedTcp)?;
        // SAFETY: bounds checked by `header`.
        let (dest, doff_res) = unsafe { ((*tcp).dest, (*tcp).doff_res) };
        let header_len = ((doff_res >> 4) as usize) * 4;
        if header_len < size_of::<TcpHdr>() || l4 + header_len > ip_end {
            return Err(Stat::TruncatedTcp);
        }
        Ok(dest)
    } else if proto == PROTO_UDP {
        let udp: *const UdpHdr = frame.header(l4).ok_or(Stat::TruncatedUdp)?;
        if l4 + size_of::<UdpHdr>() > ip_end {
            return Err(Stat::TruncatedUdp);
        }
        // SAFETY: bounds checked by `header`.
        Ok(unsafe { (*udp).dest })
    } else if proto == icmp {
        frame.header::<IcmpHdr>(l4).ok_or(Stat::TruncatedIcmp)?;
        if l4 + size_of::<IcmpHdr>() > ip_end {
            return Err(Stat::TruncatedIcmp);
        }
        Ok(0)
    } else {
        Ok(0)
    }
}
