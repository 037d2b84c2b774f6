//! NAT header translation: new addresses and ports, TTL / hop limit down by one, checksums
//! updated incrementally (RFC 1624), new MACs. The flow tables that decide the new values live
//! in the balancer.

use aya_ebpf::programs::XdpContext;
use lb_common::{FAMILY_V4, PROTO_TCP, PROTO_UDP, Stat};

use crate::{
    headers::*,
    parse::{Frame, Packet},
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

    #[inline(always)]
    pub fn finish(self) -> u16 {
        let mut sum = self.0;
        sum = (sum & 0xffff) + (sum >> 16);
        sum = (sum & 0xffff) + (sum >> 16);
        !(sum as u16)
    }
}

/// Rewrites the packet's addresses and ports and sends it one hop on. `Err` names the drop.
#[inline(always)]
pub fn translate(ctx: &XdpContext, packet: &Packet, to: &Translation) -> Result<(), Stat> {
    let frame = Frame::new(ctx);
    let l3 = packet.l3();
    let l4 = l3 + (packet.ip_header_len & 0x7c);
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
