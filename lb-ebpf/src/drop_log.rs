//! The drop log (`bpf_log`): on a drop, the balancer and the NAT program tail-call `xlb_log`,
//! which logs the reason and the packet through aya-log. The agent puts `xlb_log` into the
//! program array only while logging is on: off, a drop costs one failed tail call (no frame on
//! the 512-byte stack, no map lookup), and packets that pass or are forwarded cost nothing.

use core::mem::MaybeUninit;

use aya_ebpf::{btf_maps::PerCpuArray, helpers::bpf_ktime_get_ns, macros::btf_map, programs::XdpContext};
use lb_common::{FAMILY_V4, Stat};
use lb_ebpf::parse::{Frame, parse};

use crate::{PROG_LOG, XLB_PROGS};

/// Records per CPU per window (2^30 ns, about a second): a flood of bad packets must not become
/// a flood of log records. The ones over are counted and reported with the next record.
const RECORDS_PER_WINDOW: u32 = 10;

/// The reason of the drop this CPU's program is finishing, for `xlb_log`. A plain global: one
/// store on a drop path, no lookup. (Shared by the CPUs: a drop on another CPU between the
/// store and the log program's read could mislabel a record; logging is for rare events.)
#[unsafe(no_mangle)]
static mut XLB_DROP_REASON: u32 = 0;

#[repr(C)]
struct Limit {
    window: u64,
    records: u32,
    suppressed: u32,
}

#[btf_map]
static XLB_LOG_LIMIT: PerCpuArray<Limit, 1> = PerCpuArray::new();

#[inline(always)]
pub(crate) fn note(stat: Stat) {
    // SAFETY: a u32 store; a racing store from another CPU is harmless (see above).
    unsafe { core::ptr::write_volatile(core::ptr::addr_of_mut!(XLB_DROP_REASON), stat as u32) }
}

#[inline(always)]
pub(crate) fn tail_call(ctx: &XdpContext) {
    // SAFETY: a tail call does not return on success; on failure (logging off) the caller
    // goes on with its drop verdict.
    unsafe { XLB_PROGS.tail_call(ctx, PROG_LOG) };
}

/// Logs the drop, unless this CPU is over its rate.
#[inline(always)]
pub(crate) fn record(ctx: &XdpContext) {
    // SAFETY: a u32 load (see `XLB_DROP_REASON`).
    let reason = unsafe { core::ptr::read_volatile(core::ptr::addr_of!(XLB_DROP_REASON)) };
    let Some(limit) = XLB_LOG_LIMIT.get_ptr_mut(0) else { return };
    // SAFETY: this CPU's slot; XDP runs to completion.
    let limit = unsafe { &mut *limit };
    // SAFETY: no arguments; returns the monotonic clock.
    let window = unsafe { bpf_ktime_get_ns() } >> 30;
    if limit.window != window {
        limit.window = window;
        limit.records = 0;
    }
    if limit.records >= RECORDS_PER_WINDOW {
        limit.suppressed += 1;
        return;
    }
    limit.records += 1;
    let suppressed = limit.suppressed;
    limit.suppressed = 0;
    let frame = Frame::new(ctx);
    let mut packet = MaybeUninit::uninit();
    let Ok(packet) = parse(&frame, &mut packet) else {
        aya_log_ebpf::warn!(ctx, "drop reason={} unparsed suppressed={}", reason, suppressed);
        return;
    };
    let (sport, dport) = (u16::from_be(packet.sport), u16::from_be(packet.dport));
    if packet.family == FAMILY_V4 {
        let (saddr, daddr) = (u32::from_be(packet.saddr[0]), u32::from_be(packet.daddr[0]));
        aya_log_ebpf::warn!(
            ctx,
            "drop reason={} proto={} {:i}:{} > {:i}:{} ttl={} suppressed={}",
            reason,
            packet.proto,
            saddr,
            sport,
            daddr,
            dport,
            packet.ttl,
            suppressed
        );
    } else {
        // SAFETY: [u32; 4] and [u8; 16] have the same size; the words hold the wire bytes.
        let (saddr, daddr) = unsafe {
            (
                core::mem::transmute::<[u32; 4], [u8; 16]>(packet.saddr),
                core::mem::transmute::<[u32; 4], [u8; 16]>(packet.daddr),
            )
        };
        aya_log_ebpf::warn!(
            ctx,
            "drop reason={} proto={} [{:i}]:{} > [{:i}]:{} ttl={} suppressed={}",
            reason,
            packet.proto,
            saddr,
            sport,
            daddr,
            dport,
            packet.ttl,
            suppressed
        );
    }
}
