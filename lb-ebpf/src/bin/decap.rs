//! xlb's backend-side decapsulation: strips the outer IPv4/IPv6 header of IPIP, IP6IP6 and
//! IPv4-in-IPv6 packets addressed to this host and passes the inner packet up the stack — for
//! hosts without the ipip/ip6_tunnel modules.
#![no_std]
#![no_main]

use core::mem::size_of;

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{HashMap, PerCpuArray},
    helpers::generated::bpf_xdp_adjust_head,
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{DECAP_STAT_COUNT, DecapStat, FAMILY_V4, FAMILY_V6, MAX_VIP_ADDRS, VipAddrKey};
use lb_ebpf::{
    headers::{ETH_P_8021Q, ETH_P_IPV4, ETH_P_IPV6, EthHdr, IPPROTO_IPIP, IPPROTO_IPV6, Ipv4Hdr, Ipv6Hdr, VlanHdr},
    parse::Frame,
};

/// Outer destinations this host accepts tunnels for (the value is unused).
#[btf_map]
static XLB_DECAP_ADDRS: HashMap<VipAddrKey, u32, { MAX_VIP_ADDRS as usize }> = HashMap::new();

#[btf_map]
static XLB_DECAP_STATS: PerCpuArray<u64, { DECAP_STAT_COUNT as usize }> = PerCpuArray::new();

#[xdp]
pub fn xlb_decap(ctx: XdpContext) -> u32 {
    match decap(&ctx) {
        Ok(()) => count(DecapStat::Decapsulated, xdp_action::XDP_PASS),
        Err(DecapStat::DropMalformed) => count(DecapStat::DropMalformed, xdp_action::XDP_DROP),
        Err(stat) => count(stat, xdp_action::XDP_PASS),
    }
}

#[inline(always)]
fn decap(ctx: &XdpContext) -> Result<(), DecapStat> {
    let frame = Frame::new(ctx);
    let eth: *const EthHdr = frame.at(0).ok_or(DecapStat::Pass)?;
    // SAFETY: bounds checked by `at`.
    let (dst, src, mut ether_type) = unsafe { ((*eth).dst, (*eth).src, u16::from_be((*eth).ether_type)) };
    let mut l3 = size_of::<EthHdr>();
    let mut vlan_tci = 0;
    if ether_type == ETH_P_8021Q {
        let vlan: *const VlanHdr = frame.at(l3).ok_or(DecapStat::Pass)?;
        // SAFETY: bounds checked by `at`.
        (vlan_tci, ether_type) = unsafe { ((*vlan).tci, u16::from_be((*vlan).ether_type)) };
        l3 += size_of::<VlanHdr>();
    }
    let (outer_len, inner_proto) = if ether_type == ETH_P_IPV4 {
        let ip: *const Ipv4Hdr = frame.at(l3).ok_or(DecapStat::Pass)?;
        // SAFETY: bounds checked by `at`.
        let (version_ihl, proto, daddr) = unsafe { ((*ip).version_ihl, (*ip).proto, (*ip).daddr) };
        if version_ihl != 0x45 || (proto != IPPROTO_IPIP && proto != IPPROTO_IPV6) {
            return Err(DecapStat::Pass);
        }
        ours(VipAddrKey { addr: [daddr, 0, 0, 0], family: FAMILY_V4, pad: [0; 3] })?;
        (size_of::<Ipv4Hdr>(), proto)
    } else if ether_type == ETH_P_IPV6 {
        let ip: *const Ipv6Hdr = frame.at(l3).ok_or(DecapStat::Pass)?;
        // SAFETY: bounds checked by `at`.
        let (next_hdr, daddr) = unsafe { ((*ip).next_hdr, (*ip).daddr) };
        if next_hdr != IPPROTO_IPIP && next_hdr != IPPROTO_IPV6 {
            return Err(DecapStat::Pass);
        }
        ours(VipAddrKey { addr: daddr, family: FAMILY_V6, pad: [0; 3] })?;
        (size_of::<Ipv6Hdr>(), next_hdr)
    } else {
        return Err(DecapStat::Pass);
    };
    let (inner_len, inner_type) = if inner_proto == IPPROTO_IPIP {
        (size_of::<Ipv4Hdr>(), ETH_P_IPV4)
    } else {
        (size_of::<Ipv6Hdr>(), ETH_P_IPV6)
    };
    if frame.at::<u8>(l3 + outer_len + inner_len - 1).is_none() {
        return Err(DecapStat::DropMalformed);
    }
    // The new L2 header goes right before the inner packet; then the front moves up to it.
    let new_eth: *mut EthHdr = frame.at(outer_len).ok_or(DecapStat::DropMalformed)?;
    // SAFETY: bounds checked by `at`; it overlaps only the outer header being dropped.
    unsafe {
        (*new_eth).dst = dst;
        (*new_eth).src = src;
    }
    if l3 == size_of::<EthHdr>() {
        // SAFETY: as above.
        unsafe { (*new_eth).ether_type = inner_type.to_be() };
    } else {
        let vlan: *mut VlanHdr = frame.at(outer_len + size_of::<EthHdr>()).ok_or(DecapStat::DropMalformed)?;
        // SAFETY: bounds checked by `at`.
        unsafe {
            (*new_eth).ether_type = ETH_P_8021Q.to_be();
            (*vlan).tci = vlan_tci;
            (*vlan).ether_type = inner_type.to_be();
        }
    }
    // SAFETY: ctx.ctx is the live xdp_md; the frame is longer than `outer_len`.
    if unsafe { bpf_xdp_adjust_head(ctx.ctx, outer_len as i32) } != 0 {
        return Err(DecapStat::DropMalformed);
    }
    Ok(())
}

#[inline(always)]
fn ours(key: VipAddrKey) -> Result<(), DecapStat> {
    // SAFETY: only presence is checked.
    unsafe { XLB_DECAP_ADDRS.get(&key) }.map(|_| ()).ok_or(DecapStat::Pass)
}

#[inline(always)]
fn count(stat: DecapStat, action: u32) -> u32 {
    if let Some(slot) = XLB_DECAP_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    action
}

lb_ebpf::xdp_object!();
