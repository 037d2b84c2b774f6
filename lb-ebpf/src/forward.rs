//! Sending a packet on: MAC rewrite (dsr-l2), encapsulation (dsr-ipip), and the ICMP
//! "too big" answer when encapsulation would exceed the MTU.
//!
//! Every function leaves the frame ready for XDP_TX or says which drop to count.

use core::mem::size_of;

use aya_ebpf::{
    helpers::generated::{bpf_xdp_adjust_head, bpf_xdp_adjust_tail},
    programs::XdpContext,
};
use lb_common::{
    Backend, FAMILY_V4, FAMILY_V6, NODE_FLAG_TUNNEL_V4, NODE_FLAG_TUNNEL_V6, NodeConfig, OUTER_TTL, PROTO_ICMP,
    PROTO_ICMPV6, Stat,
};

use crate::{
    headers::*,
    parse::{Frame, Packet},
};

/// The outcome to count for a packet the program sends back out (XDP_TX).
pub type Sent = Stat;

/// dsr-l2: the backend is on this segment; only the MACs change.
#[inline(always)]
pub fn rewrite_macs(ctx: &XdpContext, backend: &Backend, node: &NodeConfig) -> Result<Sent, Stat> {
    let eth: *mut EthHdr = Frame::new(ctx).at(0).ok_or(Stat::TruncatedEth)?;
    // SAFETY: bounds checked by `at`; EthHdr is plain bytes.
    unsafe {
        (*eth).dst = backend.mac;
        (*eth).src = node.iface_mac;
    }
    Ok(Stat::Forwarded)
}

/// dsr-ipip: puts an outer IPv4 or IPv6 header (the backend's family) in front of the IP
/// datagram. `flow_hash` varies the outer source inside the configured prefix (and the IPv6
/// flow label), so the backend's RSS spreads flows over its queues.
#[inline(always)]
pub fn encapsulate(
    ctx: &XdpContext,
    packet: &Packet,
    backend: &Backend,
    node: &NodeConfig,
    flow_hash: u32,
    answer_too_big: bool,
) -> Result<Sent, Stat> {
    let outer_v6 = backend.family == FAMILY_V6;
    let (outer_len, tunnel_flag) = if outer_v6 {
        (size_of::<Ipv6Hdr>(), NODE_FLAG_TUNNEL_V6)
    } else {
        (size_of::<Ipv4Hdr>(), NODE_FLAG_TUNNEL_V4)
    };
    if node.flags & tunnel_flag == 0 {
        return Err(Stat::DropNoTunnelSource);
    }
    if packet.ip_len() + outer_len > node.mtu as usize {
        if !(answer_too_big && packet.dont_fragment) {
            return Err(Stat::DropTooBig);
        }
        return too_big(ctx, packet, node.mtu - outer_len as u32);
    }

    let l2_len = packet.l3();
    let vlan_tci = read_vlan_tci(ctx, l2_len)?;
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(outer_len as i32)) } != 0 {
        return Err(Stat::DropAdjustFailed);
    }
    let frame = Frame::new(ctx);
    write_l2(&frame, l2_len, &backend.mac, &node.iface_mac, vlan_tci, if outer_v6 { ETH_P_IPV6 } else { ETH_P_IPV4 })?;
    if outer_v6 {
        let ip: *mut Ipv6Hdr = frame.at(l2_len).ok_or(Stat::DropAdjustFailed)?;
        let mut saddr = node.tunnel_v6;
        saddr[3] = (saddr[3] & node.tunnel_v6_mask) | (flow_hash & !node.tunnel_v6_mask);
        // SAFETY: bounds checked by `at`; plain integer fields.
        unsafe {
            (*ip).version_tc_flow = ((6 << 28) | (u32::from(packet.tos) << 20) | (flow_hash & 0x000f_ffff)).to_be();
            (*ip).payload_len = (packet.ip_len() as u16).to_be();
            (*ip).next_hdr = if packet.family == FAMILY_V4 { IPPROTO_IPIP } else { IPPROTO_IPV6 };
            (*ip).hop_limit = OUTER_TTL;
            (*ip).saddr = saddr;
            (*ip).daddr = backend.addr;
        }
    } else {
        let ip: *mut Ipv4Hdr = frame.at(l2_len).ok_or(Stat::DropAdjustFailed)?;
        let saddr = (node.tunnel_v4 & node.tunnel_v4_mask) | (flow_hash & !node.tunnel_v4_mask);
        write_ipv4(ip, packet.tos, (packet.ip_len() + outer_len) as u16, IPV4_DF, IPPROTO_IPIP, saddr, backend.addr[0]);
    }
    Ok(Stat::Forwarded)
}

/// Answers the client with ICMP fragmentation-needed (IPv4) or ICMPv6 packet-too-big, quoting
/// the packet, for a path MTU of `mtu`. The frame becomes the answer.
#[inline(always)]
fn too_big(ctx: &XdpContext, packet: &Packet, mtu: u32) -> Result<Sent, Stat> {
    let l2_len = packet.l3();
    let frame = Frame::new(ctx);
    let eth: *const EthHdr = frame.at(0).ok_or(Stat::TruncatedEth)?;
    // SAFETY: bounds checked by `at`.
    let (client_mac, our_mac) = unsafe { ((*eth).src, (*eth).dst) };
    let vlan_tci = read_vlan_tci(ctx, l2_len)?;

    if packet.family == FAMILY_V4 {
        // IPv4 header + ICMP header in front of the quote: the original IP header and the
        // first 8 bytes of its payload (RFC 792).
        let added = size_of::<Ipv4Hdr>() + size_of::<IcmpHdr>();
        let quote_len = (packet.ip_header_len() & 0x3c) + 8;
        resize(ctx, added, l2_len + added + quote_len)?;
        let frame = Frame::new(ctx);
        write_l2(&frame, l2_len, &client_mac, &our_mac, vlan_tci, ETH_P_IPV4)?;
        let ip: *mut Ipv4Hdr = frame.at(l2_len).ok_or(Stat::DropAdjustFailed)?;
        write_ipv4(ip, 0, (added + quote_len) as u16, 0, PROTO_ICMP, packet.daddr[0], packet.saddr[0]);
        let icmp: *mut IcmpHdr = frame.at(l2_len + size_of::<Ipv4Hdr>()).ok_or(Stat::DropAdjustFailed)?;
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*icmp).kind = ICMP_DEST_UNREACH;
            (*icmp).code = ICMP_FRAG_NEEDED;
            (*icmp).check = 0;
            // Unused (16 bits), then the next-hop MTU (RFC 1191).
            (*icmp).rest = (mtu & 0xffff).to_be();
            (*icmp).check = fold(sum_to_end(&frame, l2_len + size_of::<Ipv4Hdr>()));
        }
    } else {
        // IPv6 header + ICMPv6 header, quoting the original IPv6 header and 8 bytes.
        let added = size_of::<Ipv6Hdr>() + size_of::<IcmpHdr>();
        let quote_len = size_of::<Ipv6Hdr>() + 8;
        resize(ctx, added, l2_len + added + quote_len)?;
        let frame = Frame::new(ctx);
        write_l2(&frame, l2_len, &client_mac, &our_mac, vlan_tci, ETH_P_IPV6)?;
        let ip: *mut Ipv6Hdr = frame.at(l2_len).ok_or(Stat::DropAdjustFailed)?;
        let icmp_len = (size_of::<IcmpHdr>() + quote_len) as u32;
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*ip).version_tc_flow = (6u32 << 28).to_be();
            (*ip).payload_len = (icmp_len as u16).to_be();
            (*ip).next_hdr = PROTO_ICMPV6;
            (*ip).hop_limit = OUTER_TTL;
            (*ip).saddr = packet.daddr;
            (*ip).daddr = packet.saddr;
        }
        let icmp: *mut IcmpHdr = frame.at(l2_len + size_of::<Ipv6Hdr>()).ok_or(Stat::DropAdjustFailed)?;
        // Pseudo-header (RFC 8200 §8.1): addresses, upper-layer length, next header.
        let mut sum = sum32(icmp_len.to_be()) + sum32(u32::from(PROTO_ICMPV6).to_be());
        let mut i = 0;
        while i < 4 {
            sum += sum32(packet.saddr[i]) + sum32(packet.daddr[i]);
            i += 1;
        }
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*icmp).kind = ICMPV6_PKT_TOOBIG;
            (*icmp).code = 0;
            (*icmp).check = 0;
            (*icmp).rest = mtu.to_be();
            (*icmp).check = fold(sum + sum_to_end(&frame, l2_len + size_of::<Ipv6Hdr>()));
        }
    }
    Ok(Stat::IcmpTooBigSent)
}

/// Grows the front by `added` bytes and cuts the frame to `new_len` bytes.
#[inline(always)]
fn resize(ctx: &XdpContext, added: usize, new_len: usize) -> Result<(), Stat> {
    // SAFETY: ctx.ctx is the live xdp_md of this invocation.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, -(added as i32)) } != 0 {
        return Err(Stat::DropAdjustFailed);
    }
    let len = Frame::new(ctx).len();
    if new_len < len {
        // SAFETY: as above; shrinking by less than the frame's length.
        if unsafe { bpf_xdp_adjust_tail(ctx.ctx, new_len as i32 - len as i32) } != 0 {
            return Err(Stat::DropAdjustFailed);
        }
    }
    Ok(())
}

/// One's-complement sum of the 16-bit words from `from` to the end of the frame (at most 76
/// bytes: an ICMP header and its quote), in memory order.
#[inline(always)]
fn sum_to_end(frame: &Frame, from: usize) -> u32 {
    let mut sum = 0u32;
    let mut i = 0;
    while i < 38 {
        let Some(word) = frame.at::<u16>(from + i * 2) else { break };
        // SAFETY: bounds checked by `at`.
        sum += u32::from(unsafe { *word });
        i += 1;
    }
    sum
}

/// The 802.1Q tag's TCI when the frame has one (`l2_len == 18`).
#[inline(always)]
fn read_vlan_tci(ctx: &XdpContext, l2_len: usize) -> Result<u16, Stat> {
    if l2_len != size_of::<EthHdr>() + size_of::<VlanHdr>() {
        return Ok(0);
    }
    let vlan: *const VlanHdr = Frame::new(ctx).at(size_of::<EthHdr>()).ok_or(Stat::TruncatedVlan)?;
    // SAFETY: bounds checked by `at`.
    Ok(unsafe { (*vlan).tci })
}

/// Writes the Ethernet header (and 802.1Q tag when `l2_len` is 18) at the front.
#[inline(always)]
fn write_l2(
    frame: &Frame,
    l2_len: usize,
    dst: &[u8; 6],
    src: &[u8; 6],
    vlan_tci: u16,
    ether_type: u16,
) -> Result<(), Stat> {
    let eth: *mut EthHdr = frame.at(0).ok_or(Stat::DropAdjustFailed)?;
    // SAFETY: bounds checked by `at`.
    unsafe {
        (*eth).dst = *dst;
        (*eth).src = *src;
    }
    if l2_len == size_of::<EthHdr>() {
        // SAFETY: as above.
        unsafe { (*eth).ether_type = ether_type.to_be() };
    } else {
        let vlan: *mut VlanHdr = frame.at(size_of::<EthHdr>()).ok_or(Stat::DropAdjustFailed)?;
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*eth).ether_type = ETH_P_8021Q.to_be();
            (*vlan).tci = vlan_tci;
            (*vlan).ether_type = ether_type.to_be();
        }
    }
    Ok(())
}

/// Writes a 20-byte IPv4 header with its checksum. Addresses in network order.
#[inline(always)]
fn write_ipv4(ip: *mut Ipv4Hdr, tos: u8, total_len: u16, frag_off: u16, proto: u8, saddr: u32, daddr: u32) {
    // SAFETY: the caller got `ip` from `Frame::at`, so all 20 bytes are inside the frame.
    unsafe {
        (*ip).version_ihl = 0x45;
        (*ip).tos = tos;
        (*ip).total_len = total_len.to_be();
        (*ip).id = 0;
        (*ip).frag_off = frag_off.to_be();
        (*ip).ttl = OUTER_TTL;
        (*ip).proto = proto;
        (*ip).check = 0;
        (*ip).saddr = saddr;
        (*ip).daddr = daddr;
        let words = ip as *const [u16; 10];
        let mut sum = 0u32;
        let mut i = 0;
        while i < 10 {
            sum += u32::from((*words)[i]);
            i += 1;
        }
        (*ip).check = fold(sum);
    }
}
