//! NAT header translation: new addresses and ports, TTL / hop limit down by one, checksums
//! updated incrementally (RFC 1624), new MACs. The flow tables that decide the new values live
//! in the balancer.

use aya_ebpf::{helpers::generated::bpf_csum_diff, programs::XdpContext};
use lb_common::{FAMILY_V4, PROTO_TCP, PROTO_UDP, Stat};

use crate::{
    headers::*,
    parse::{Frame, Packet, Quoted},
};

/// Where a translated packet goes: its new addresses and ports (network order) and the hop that
/// receives the frame.
pub struct Translation {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
}

/// A one's-complement checksum being updated in place: start from the field's value, replace
/// the 16-bit words that change, finish. Words are taken as they sit in memory, like the field.
#[derive(Clone, Copy)]
pub struct Csum(u32);

impl Csum {
    #[inline(always)]
    pub fn of(check: u16) -> Self {
        Self(u32::from(!check))
    }

    #[inline(always)]
    pub fn replace16(&mut self, old: u16, new: u16) {
        self.0 += u32::from(!old) + u32::from(new);
    }

    #[inline(always)]
    pub fn replace32(&mut self, old: u32, new: u32) {
        self.replace16(old as u16, new as u16);
        self.replace16((old >> 16) as u16, (new >> 16) as u16);
    }

    /// Replaces an address: the first word only for IPv4.
    #[inline(always)]
    pub fn replace_addr(&mut self, old: &[u32; 4], new: &[u32; 4], family: u8) {
        self.replace32(old[0], new[0]);
        if family != FAMILY_V4 {
            self.replace32(old[1], new[1]);
            self.replace32(old[2], new[2]);
            self.replace32(old[3], new[3]);
        }
    }

    /// Adds a 32-bit partial sum (as `bpf_csum_diff` returns).
    #[inline(always)]
    pub fn add(&mut self, wsum: u32) {
        self.0 += (wsum & 0xffff) + (wsum >> 16);
    }

    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

/// Rewrites the packet's addresses and ports and sends it one hop on. `Err` names the drop.
///
/// A separate BPF function (returning a plain `u32`, as an `Option` or `Result` would come back
/// through a stack pointer the verifier refuses): inlined into each NAT path, its spills pushed
/// those paths' frames past the 512-byte stack.
#[inline(always)]
pub fn translate(ctx: &XdpContext, packet: &Packet, to: &Translation) -> Result<(), Stat> {
    // The frame, not the context: the callee must get packet pointers, which the verifier
    // tracks, not the context's 32-bit fields.
    from_code(translate_call(&Frame::new(ctx), packet, to))
}

/// How the separately compiled rewrites report: `TRANSLATED`, else the drop's `Stat`.
const TRANSLATED: u32 = u32::MAX;

#[inline(always)]
pub fn to_code(result: Result<(), Stat>) -> u32 {
    result.map_or_else(|stat| stat as u32, |()| TRANSLATED)
}

#[inline(always)]
pub fn from_code(code: u32) -> Result<(), Stat> {
    match code {
        TRANSLATED => Ok(()),
        stat => Err(Stat::ALL.get(stat as usize).copied().unwrap_or(Stat::DropAdjustFailed)),
    }
}

#[inline(never)]
fn translate_call(frame: &Frame, packet: &Packet, to: &Translation) -> u32 {
    to_code(translate_inline(frame, packet, to))
}

/// [`translate`] compiled into the caller: for the hot paths of a frame with room for it.
#[inline(always)]
pub fn translate_inline(frame: &Frame, packet: &Packet, to: &Translation) -> Result<(), Stat> {
    let l3 = packet.l3();
    let l4 = l3 + packet.ip_header_len();
    if packet.family == FAMILY_V4 {
        let ip: *mut Ipv4Hdr = frame.at(l3).ok_or(Stat::TruncatedIpv4)?;
        // SAFETY: bounds checked by `at`; plain integer fields of the packet.
        unsafe {
            let ttl = (*ip).ttl;
            if ttl <= 1 {
                return Err(Stat::DropTtlExceeded);
            }
            // TTL and protocol share one 16-bit word of the checksum.
            let word = |ttl: u8| u16::from_ne_bytes([ttl, packet.proto]);
            let mut check = Csum::of((*ip).check);
            check.replace16(word(ttl), word(ttl - 1));
            check.replace32((*ip).saddr, to.saddr[0]);
            check.replace32((*ip).daddr, to.daddr[0]);
            (*ip).ttl = ttl - 1;
            (*ip).saddr = to.saddr[0];
            (*ip).daddr = to.daddr[0];
            (*ip).check = check.finish();
        }
    } else {
        let ip: *mut Ipv6Hdr = frame.at(l3).ok_or(Stat::TruncatedIpv6)?;
        // SAFETY: as above.
        unsafe {
            let hop_limit = (*ip).hop_limit;
            if hop_limit <= 1 {
                return Err(Stat::DropTtlExceeded);
            }
            (*ip).hop_limit = hop_limit - 1;
            (*ip).saddr = to.saddr;
            (*ip).daddr = to.daddr;
        }
    }
    // The transport checksum covers the addresses (pseudo-header) and the ports.
    let update = |check: u16| {
        let mut sum = Csum::of(check);
        sum.replace_addr(&packet.saddr, &to.saddr, packet.family);
        sum.replace_addr(&packet.daddr, &to.daddr, packet.family);
        sum.replace16(packet.sport, to.sport);
        sum.replace16(packet.dport, to.dport);
        sum.finish()
    };
    if packet.proto == PROTO_TCP {
        let tcp: *mut TcpHdr = frame.at(l4).ok_or(Stat::TruncatedTcp)?;
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*tcp).check = update((*tcp).check);
            (*tcp).source = to.sport;
            (*tcp).dest = to.dport;
        }
    } else if packet.proto == PROTO_UDP {
        let udp: *mut UdpHdr = frame.at(l4).ok_or(Stat::TruncatedUdp)?;
        // SAFETY: bounds checked by `at`.
        unsafe {
            let check = (*udp).check;
            // IPv4 UDP may go without a checksum (0), and then stays without one; a computed 0
            // is sent as all ones (RFC 768).
            if check != 0 || packet.family != FAMILY_V4 {
                let new = update(check);
                (*udp).check = if new == 0 { 0xffff } else { new };
            }
            (*udp).source = to.sport;
            (*udp).dest = to.dport;
        }
    }
    let eth: *mut EthHdr = frame.at(0).ok_or(Stat::TruncatedEth)?;
    // SAFETY: bounds checked by `at`.
    unsafe {
        (*eth).dst = to.dst_mac;
        (*eth).src = to.src_mac;
    }
    Ok(())
}

/// The new addresses and ports of an ICMP error's quoted packet.
pub struct QuoteTranslation {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
}

/// Rewrites the packet an ICMP error quotes (its IP addresses and ports, and the IPv4 header
/// checksum of the quote) and updates the ICMP checksum for that and, for ICMPv6, for the new
/// outer addresses `to` (its pseudo-header). The outer header is left to [`translate`].
#[inline(always)]
pub fn translate_quote(
    ctx: &XdpContext,
    packet: &Packet,
    inner: &QuoteTranslation,
    to: &Translation,
) -> Result<(), Stat> {
    // A separate BPF function, like `translate`; the quote is `packet.quoted`.
    from_code(translate_quote_call(&Frame::new(ctx), packet, inner, to))
}

/// (At most five arguments, and LLVM may split the frame into two: the quote comes from
/// `packet`.)
#[inline(never)]
fn translate_quote_call(frame: &Frame, packet: &Packet, inner: &QuoteTranslation, to: &Translation) -> u32 {
    let Some(quote) = packet.quoted.as_ref() else { return Stat::TruncatedIcmp as u32 };
    to_code(translate_quote_inline(frame, packet, quote, inner, to))
}

#[inline(always)]
fn translate_quote_inline(
    frame: &Frame,
    packet: &Packet,
    quote: &Quoted,
    inner: &QuoteTranslation,
    to: &Translation,
) -> Result<(), Stat> {
    let l3 = packet.l3();
    let icmp_at = l3 + if packet.family == FAMILY_V4 { packet.ip_header_len() & 0x3c } else { 40 };
    let icmp: *mut IcmpHdr = frame.at(icmp_at).ok_or(Stat::TruncatedIcmp)?;
    let (ip_at, l4_at) = quote.offsets();
    let ports: *mut [u16; 2] = frame.at(l4_at).ok_or(Stat::TruncatedIcmp)?;
    // SAFETY: bounds checked by `at`; plain integer fields of the packet.
    unsafe {
        let mut sum = Csum::of((*icmp).check);
        if packet.family == FAMILY_V4 {
            let ip: *mut Ipv4Hdr = frame.at(ip_at).ok_or(Stat::TruncatedIcmp)?;
            let mut ip_sum = Csum::of((*ip).check);
            ip_sum.replace32((*ip).saddr, inner.saddr[0]);
            ip_sum.replace32((*ip).daddr, inner.daddr[0]);
            let check = ip_sum.finish();
            sum.replace32((*ip).saddr, inner.saddr[0]);
            sum.replace32((*ip).daddr, inner.daddr[0]);
            sum.replace16((*ip).check, check);
            (*ip).saddr = inner.saddr[0];
            (*ip).daddr = inner.daddr[0];
            (*ip).check = check;
        } else {
            let ip: *mut Ipv6Hdr = frame.at(ip_at).ok_or(Stat::TruncatedIcmp)?;
            // The kernel sums the address changes (bpf_csum_diff): done inline, the 32 words
            // would be spilled to the stack.
            let mut wsum = 0u32;
            wsum = csum_diff(core::ptr::addr_of_mut!((*ip).saddr).cast(), &inner.saddr, wsum);
            wsum = csum_diff(core::ptr::addr_of_mut!((*ip).daddr).cast(), &inner.daddr, wsum);
            // ICMPv6 sums the outer addresses too (RFC 4443 §2.3).
            wsum = csum_diff(packet.saddr.as_ptr().cast_mut(), &to.saddr, wsum);
            wsum = csum_diff(packet.daddr.as_ptr().cast_mut(), &to.daddr, wsum);
            sum.add(wsum);
            (*ip).saddr = inner.saddr;
            (*ip).daddr = inner.daddr;
        }
        let [sport, dport] = *ports;
        sum.replace16(sport, inner.sport);
        sum.replace16(dport, inner.dport);
        *ports = [inner.sport, inner.dport];
        (*icmp).check = sum.finish();
    }
    Ok(())
}

/// `seed` plus the one's-complement difference from the 16 bytes at `old` to `new`.
///
/// # Safety
/// `old` must point to 16 readable bytes (packet or map memory).
#[inline(always)]
unsafe fn csum_diff(old: *mut u32, new: &[u32; 4], seed: u32) -> u32 {
    // SAFETY: both buffers hold 16 bytes (the caller's promise, and the array); the helper only
    // reads them.
    unsafe { bpf_csum_diff(old, 16, new.as_ptr().cast_mut(), 16, seed) as u32 }
}
