//! xlb's XDP program: find the VIP of each packet; everything that is not ours passes untouched.
#![no_std]
#![no_main]

mod headers;
mod parse;

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::{HashMap, PerCpuArray},
    programs::XdpContext,
};
use lb_common::{MAX_VIPS, STAT_COUNT, Stat, VipCounters, VipKey, VipMeta};

use crate::parse::{Frame, parse};

#[map]
static XLB_VIPS: HashMap<VipKey, VipMeta> = HashMap::with_max_entries(MAX_VIPS, 0);

#[map]
static XLB_VIP_COUNTERS: PerCpuArray<VipCounters> = PerCpuArray::with_max_entries(MAX_VIPS, 0);

#[map]
static XLB_STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(STAT_COUNT, 0);

#[xdp]
pub fn xlb_balancer(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let packet = match parse(&frame) {
        Ok(packet) => packet,
        Err(stat) => return count(stat, xdp_action::XDP_PASS),
    };
    let key = VipKey {
        addr: packet.daddr,
        port: packet.dport,
        proto: packet.proto,
        family: packet.family,
    };
    // SAFETY: the value is only read (copied) here; the agent replaces entries whole.
    let Some(meta) = (unsafe { XLB_VIPS.get(&key) }) else {
        return count(Stat::PassNotVip, xdp_action::XDP_PASS);
    };
    if let Some(counters) = XLB_VIP_COUNTERS.get_ptr_mut(meta.id) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe {
            (*counters).packets += 1;
            (*counters).bytes += frame.len() as u64;
        }
    }
    // Forwarding lands with the data-plane issue; until then VIP traffic reaches the local stack.
    count(Stat::VipHit, xdp_action::XDP_PASS)
}

#[inline(always)]
fn count(stat: Stat, action: u32) -> u32 {
    if let Some(slot) = XLB_STATS.get_ptr_mut(stat as u32) {
        // SAFETY: per-CPU slot, only this CPU writes it while the program runs.
        unsafe { *slot += 1 };
    }
    action
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
