//! Bounds-checked header parsing of one frame into a [`Packet`] summary.
//!
//! Every read goes through [`Frame::at`], which checks `offset + size_of::<T>()` against
//! `data_end` in the form the verifier tracks. Offsets derived from packet fields (IHL, TCP data
//! offset) are masked first, so they stay bounded.

use core::mem::{MaybeUninit, size_of};

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, FAMILY_V6, FlowKey, PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, Stat};

use crate::headers::*;

/// The frame being parsed or rewritten. Re-create it after any adjust_head/adjust_tail.
pub struct Frame {
    start: usize,
    end: usize,
}

impl Frame {
    #[inline(always)]
    pub fn new(ctx: &XdpContext) -> Self {
        Self { start: ctx.data(), end: ctx.data_end() }
    }

    #[inline(always)]
    pub fn len(&self) -> usize {
        self.end - self.start
    }

    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }

    /// A pointer to a `T` at `offset`, or `None` if the frame is too short.
    #[inline(always)]
    pub fn at<T>(&self, offset: usize) -> Option<*mut T> {
        let at = self.start + offset;
        if at + size_of::<T>() > self.end {
            return None;
        }
        Some(at as *mut T)
    }
}

/// Where an ICMP error's quoted packet came from.
#[derive(Clone, Copy)]
pub struct Quoted {
    /// The quoted packet's source: a VIP (a backend sent it, with the VIP as source).
    pub saddr: [u32; 4],
    /// The quoted packet's destination: the client.
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    /// Fragmentation-needed / packet-too-big (the only errors direct server return forwards):
    /// 1, else 0. (Not a `bool`: the `Option` around would keep its discriminant in the bool's
    /// spare values, a layout whose BTF the kernel refuses for the scratch map.)
    pub too_big: u8,
    /// Offsets of the quoted IP header and of its transport header in the frame. (Narrow
    /// fields keep `Packet` small: the BPF stack is 512 bytes and large copies become calls.)
    pub ip_at: u16,
    pub l4_at: u16,
}

impl Quoted {
    /// The flow the quoted packet belongs to, as its other end sends: source and destination
    /// swapped (the quote is a packet that went back toward that end).
    #[inline(always)]
    pub fn flow_key(&self, family: u8) -> FlowKey {
        FlowKey {
            saddr: self.daddr,
            daddr: self.saddr,
            sport: self.dport,
            dport: self.sport,
            proto: self.proto,
            family,
            pad: 0,
        }
    }

    /// `ip_at` and `l4_at` bounded for the verifier (a packet kept in map memory loses what the
    /// verifier knew of its fields): an ICMP error's quote starts within the first 256 bytes.
    #[inline(always)]
    pub fn offsets(&self) -> (usize, usize) {
        (usize::from(self.ip_at) & 0xff, usize::from(self.l4_at) & 0xff)
    }
}

/// What the balancer needs to know about a well-formed packet. (Offsets and lengths in narrow
/// fields, read through the methods: this lives on the 512-byte BPF stack.)
#[derive(Clone, Copy)]
pub struct Packet {
    pub family: u8,
    pub proto: u8,
    /// Offset of the Ethernet payload (14, or 18 behind an 802.1Q tag).
    l3: u16,
    /// IPv4 header length (IHL·4); 40 for IPv6.
    ip_header_len: u16,
    /// Length of the IP datagram (header included), as its header says.
    ip_len: u32,
    /// The sender asked not to be fragmented (IPv4 DF; always for IPv6).
    pub dont_fragment: bool,
    /// Traffic class / TOS, copied to outer headers.
    pub tos: u8,
    /// TTL / hop limit.
    pub ttl: u8,
    /// Addresses as on the wire; IPv4 in word 0, others zero.
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    /// Ports in network byte order; 0 for ICMP and protocols without ports.
    pub sport: u16,
    pub dport: u16,
    pub tcp_flags: u8,
    /// For ICMP fragmentation-needed / ICMPv6 packet-too-big: the packet it quotes.
    pub quoted: Option<Quoted>,
}

impl Packet {
    /// The packet's 5-tuple as the flow tables key it.
    #[inline(always)]
    pub fn flow_key(&self) -> FlowKey {
        FlowKey {
            saddr: self.saddr,
            daddr: self.daddr,
            sport: self.sport,
            dport: self.dport,
            proto: self.proto,
            family: self.family,
            pad: 0,
        }
    }

    /// `l3`, bounded for the verifier: a packet kept in map memory loses what the verifier knew
    /// of its fields, and a packet offset must be provably small.
    #[inline(always)]
    pub fn l3(&self) -> usize {
        usize::from(self.l3) & 0x1f
    }

    /// IPv4 header length (IHL·4, at most 60); 40 for IPv6.
    #[inline(always)]
    pub fn ip_header_len(&self) -> usize {
        usize::from(self.ip_header_len) & 0x7c
    }

    /// Length of the IP datagram (header included), as its header says.
    #[inline(always)]
    pub fn ip_len(&self) -> usize {
        self.ip_len as usize
    }
}

/// Why a frame is not a [`Packet`]: the counter to bump.
pub enum NotParsed {
    /// Count and pass.
    Pass(Stat),
    /// IPv4 fragment or IPv6 extension header: the address's policy decides (pass or drop).
    Unhashable { family: u8, daddr: [u32; 4] },
}

/// Parses Ethernet (one optional 802.1Q tag), IPv4/IPv6 and TCP/UDP/ICMP headers into `out`,
/// which is written whole on success.
///
/// (An out-parameter left uninitialised until then: zeroing the packet first compiled to a call
/// of the byte-by-byte `memset`, most of a forwarded packet's cost; returning it by value
/// doubled its stack space.)
#[inline(always)]
pub fn parse<'p>(frame: &Frame, out: &'p mut MaybeUninit<Packet>) -> Result<&'p Packet, NotParsed> {
    let eth: *const EthHdr = frame.at(0).ok_or(NotParsed::Pass(Stat::TruncatedEth))?;
    // SAFETY: `at` checked that the EthHdr lies inside the frame.
    let mut ether_type = u16::from_be(unsafe { (*eth).ether_type });
    let mut l3 = size_of::<EthHdr>();
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = frame.at(l3).ok_or(NotParsed::Pass(Stat::TruncatedVlan))?;
        // SAFETY: bounds checked by `at`.
        ether_type = u16::from_be(unsafe { (*vlan).ether_type });
        l3 += size_of::<VlanHdr>();
    }
    match ether_type {
        ETH_P_IPV4 => parse_ipv4(frame, l3, out),
        ETH_P_IPV6 => parse_ipv6(frame, l3, out),
        _ => Err(NotParsed::Pass(Stat::PassNotIp)),
    }
}

#[inline(always)]
fn parse_ipv4<'p>(frame: &Frame, l3: usize, out: &'p mut MaybeUninit<Packet>) -> Result<&'p Packet, NotParsed> {
    let ip: *const Ipv4Hdr = frame.at(l3).ok_or(NotParsed::Pass(Stat::TruncatedIpv4))?;
    // SAFETY: bounds checked by `at`; all reads below stay inside the 20-byte header.
    let (version_ihl, tos, total_len, frag_off, ttl, proto, saddr, daddr) = unsafe {
        (
            (*ip).version_ihl,
            (*ip).tos,
            u16::from_be((*ip).total_len),
            u16::from_be((*ip).frag_off),
            (*ip).ttl,
            (*ip).proto,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    let ihl = (version_ihl & 0x0F) as usize;
    if version_ihl >> 4 != 4 || ihl < 5 {
        return Err(NotParsed::Pass(Stat::BadIpv4Header));
    }
    let header_len = ihl * 4;
    if l3 + header_len > frame.len() {
        return Err(NotParsed::Pass(Stat::TruncatedIpv4));
    }
    let total_len = total_len as usize;
    if total_len < header_len || l3 + total_len > frame.len() {
        return Err(NotParsed::Pass(Stat::BadIpv4Length));
    }
    let daddr = [daddr, 0, 0, 0];
    if frag_off & IPV4_MF_OFFSET_MASK != 0 {
        // Later fragments carry no L4 header; even the first must not be hashed on ports,
        // or its fragments would go elsewhere.
        return Err(NotParsed::Unhashable { family: FAMILY_V4, daddr });
    }
    let packet = out.write(Packet {
        family: FAMILY_V4,
        proto,
        l3: l3 as u16,
        ip_len: total_len as u32,
        ip_header_len: header_len as u16,
        dont_fragment: frag_off & IPV4_DF != 0,
        tos,
        ttl,
        saddr: [saddr, 0, 0, 0],
        daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        quoted: None,
    });
    parse_l4(frame, l3 + header_len, l3 + total_len, packet)?;
    Ok(packet)
}

#[inline(always)]
fn parse_ipv6<'p>(frame: &Frame, l3: usize, out: &'p mut MaybeUninit<Packet>) -> Result<&'p Packet, NotParsed> {
    let ip: *const Ipv6Hdr = frame.at(l3).ok_or(NotParsed::Pass(Stat::TruncatedIpv6))?;
    // SAFETY: bounds checked by `at`.
    let (version_tc_flow, payload_len, next_hdr, ttl, saddr, daddr) = unsafe {
        (
            u32::from_be((*ip).version_tc_flow),
            u16::from_be((*ip).payload_len),
            (*ip).next_hdr,
            (*ip).hop_limit,
            (*ip).saddr,
            (*ip).daddr,
        )
    };
    if version_tc_flow >> 28 != 6 {
        return Err(NotParsed::Pass(Stat::BadIpv6Header));
    }
    let l4 = l3 + size_of::<Ipv6Hdr>();
    let ip_end = l4 + payload_len as usize;
    if ip_end > frame.len() {
        return Err(NotParsed::Pass(Stat::BadIpv6Length));
    }
    if is_ipv6_extension(next_hdr) {
        return Err(NotParsed::Unhashable { family: FAMILY_V6, daddr });
    }
    let packet = out.write(Packet {
        family: FAMILY_V6,
        proto: next_hdr,
        l3: l3 as u16,
        ip_len: (size_of::<Ipv6Hdr>() + payload_len as usize) as u32,
        ip_header_len: size_of::<Ipv6Hdr>() as u16,
        dont_fragment: true,
        tos: (version_tc_flow >> 20) as u8,
        ttl,
        saddr,
        daddr,
        sport: 0,
        dport: 0,
        tcp_flags: 0,
        quoted: None,
    });
    parse_l4(frame, l4, ip_end, packet)?;
    Ok(packet)
}

/// Checks the transport header at `l4` lies within both the frame and the IP datagram ending at
/// `ip_end`, and fills in ports and flags.
#[inline(always)]
fn parse_l4(frame: &Frame, l4: usize, ip_end: usize, packet: &mut Packet) -> Result<(), NotParsed> {
    let proto = packet.proto;
    if proto == PROTO_TCP {
        let tcp: *const TcpHdr = frame.at(l4).ok_or(NotParsed::Pass(Stat::TruncatedTcp))?;
        // SAFETY: bounds checked by `at`.
        let (source, dest, doff_res, flags) = unsafe { ((*tcp).source, (*tcp).dest, (*tcp).doff_res, (*tcp).flags) };
        let header_len = ((doff_res >> 4) as usize) * 4;
        if header_len < size_of::<TcpHdr>() || l4 + header_len > ip_end {
            return Err(NotParsed::Pass(Stat::TruncatedTcp));
        }
        packet.sport = source;
        packet.dport = dest;
        packet.tcp_flags = flags;
    } else if proto == PROTO_UDP {
        let udp: *const UdpHdr = frame.at(l4).ok_or(NotParsed::Pass(Stat::TruncatedUdp))?;
        if l4 + size_of::<UdpHdr>() > ip_end {
            return Err(NotParsed::Pass(Stat::TruncatedUdp));
        }
        // SAFETY: bounds checked by `at`.
        (packet.sport, packet.dport) = unsafe { ((*udp).source, (*udp).dest) };
    } else if (packet.family == FAMILY_V4 && proto == PROTO_ICMP)
        || (packet.family == FAMILY_V6 && proto == PROTO_ICMPV6)
    {
        let icmp: *const IcmpHdr = frame.at(l4).ok_or(NotParsed::Pass(Stat::TruncatedIcmp))?;
        if l4 + size_of::<IcmpHdr>() > ip_end {
            return Err(NotParsed::Pass(Stat::TruncatedIcmp));
        }
        // SAFETY: bounds checked by `at`.
        let (kind, code) = unsafe { ((*icmp).kind, (*icmp).code) };
        let (too_big, error) = if packet.family == FAMILY_V4 {
            (
                kind == ICMP_DEST_UNREACH && code == ICMP_FRAG_NEEDED,
                matches!(kind, ICMP_DEST_UNREACH | ICMP_TIME_EXCEEDED | ICMP_PARAMETER_PROBLEM),
            )
        } else {
            // Destination unreachable, packet too big, time exceeded, parameter problem.
            (kind == ICMPV6_PKT_TOOBIG, (1..=4).contains(&kind))
        };
        // A quote that cannot be read is just not about one of our flows. (Only a quote is
        // stored: storing a `None` let LLVM fill the rest of the slot with whatever register was
        // at hand, once a context pointer, which the verifier refuses to spill as a byte.)
        if error && let Some(quoted) = parse_quoted(frame, l4 + size_of::<IcmpHdr>(), packet.family, too_big) {
            packet.quoted = Some(quoted);
        }
    }
    Ok(())
}

/// The IP header and the first 4 bytes of transport header that an ICMP error quotes.
#[inline(always)]
fn parse_quoted(frame: &Frame, at: usize, family: u8, too_big: bool) -> Option<Quoted> {
    let (saddr, daddr, proto, l4) = if family == FAMILY_V4 {
        let ip: *const Ipv4Hdr = frame.at(at)?;
        // SAFETY: bounds checked by `at`.
        let (version_ihl, proto, saddr, daddr) = unsafe { ((*ip).version_ihl, (*ip).proto, (*ip).saddr, (*ip).daddr) };
        let ihl = (version_ihl & 0x0F) as usize;
        if version_ihl >> 4 != 4 || ihl < 5 {
            return None;
        }
        ([saddr, 0, 0, 0], [daddr, 0, 0, 0], proto, at + ihl * 4)
    } else {
        let ip: *const Ipv6Hdr = frame.at(at)?;
        // SAFETY: bounds checked by `at`.
        let (next_hdr, saddr, daddr) = unsafe { ((*ip).next_hdr, (*ip).saddr, (*ip).daddr) };
        (saddr, daddr, next_hdr, at + size_of::<Ipv6Hdr>())
    };
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return None;
    }
    let ports: *const [u16; 2] = frame.at(l4)?;
    // SAFETY: bounds checked by `at`.
    let [sport, dport] = unsafe { *ports };
    Some(Quoted { saddr, daddr, sport, dport, proto, too_big: u8::from(too_big), ip_at: at as u16, l4_at: l4 as u16 })
}
