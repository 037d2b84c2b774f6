//! The traffic tool of benches and flood tests: `xlb_gen` writes a header template over each
//! frame and transmits it (run by BPF_PROG_TEST_RUN in live-frames mode, millions of frames a
//! second out of one interface), and `xlb_sink` counts what arrives and drops it.
//!
//! Live-frames mode reuses its pages without restoring them, and a load balancer in the path
//! rewrites headers in place, so the generator writes the whole template every time.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, PerCpuArray},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use lb_common::{GEN_CYCLE, GEN_NEW_PER_FRAME, GEN_NEW_PORT_PER_FRAME, GEN_SPOOFED, GEN_TEMPLATE_BYTES, GenTemplate};
use lb_ebpf::parse::Frame;

/// Where the IP header starts: templates are untagged Ethernet.
const L3: usize = 14;

#[btf_map]
static XLB_GEN: Array<GenTemplate, 1> = Array::new();

/// Frames generated on this CPU (what varies the flows).
#[btf_map]
static XLB_GEN_COUNT: PerCpuArray<u64, 1> = PerCpuArray::new();

/// Frames and bytes that reached the sink.
#[btf_map]
static XLB_SINK: PerCpuArray<[u64; 2], 1> = PerCpuArray::new();

#[xdp]
pub fn xlb_gen(ctx: XdpContext) -> u32 {
    let frame = Frame::new(&ctx);
    let (Some(template), Some(count)) = (XLB_GEN.get(0), XLB_GEN_COUNT.get_ptr_mut(0)) else {
        return xdp_action::XDP_ABORTED;
    };
    let Some(head) = frame.at::<[u8; GEN_TEMPLATE_BYTES]>(0) else {
        return xdp_action::XDP_ABORTED;
    };
    // SAFETY: `head` is in bounds (checked by `at`); the per-CPU counter is this CPU's own.
    let n = unsafe {
        core::ptr::write_unaligned(head, template.bytes);
        let n = *count;
        *count = n.wrapping_add(1);
        n
    };
    let (sport, source_step) = match template.mode {
        GEN_CYCLE => (n as u32 & template.flow_mask, 0),
        GEN_NEW_PER_FRAME => (n as u32 & 0xffff, (n >> 16) as u32 & 0xffff),
        GEN_NEW_PORT_PER_FRAME => (n as u32 & 0xffff, 0),
        // Knuth's multiplicative hash spreads consecutive counts over the 16 bits.
        GEN_SPOOFED => (n as u32 & 0xffff, (n as u32).wrapping_mul(2_654_435_761) >> 16),
        _ => return xdp_action::XDP_TX,
    };
    // Untagged Ethernet: constant offsets keep the verifier's packet bounds simple.
    let v6 = template.ip_version == 6;
    let port = if v6 { frame.at::<[u8; 2]>(L3 + 40) } else { frame.at::<[u8; 2]>(L3 + 20) };
    let Some(port) = port else { return xdp_action::XDP_ABORTED };
    // SAFETY: in bounds (checked by `at`).
    unsafe {
        let base = u16::from_be_bytes(core::ptr::read_unaligned(port));
        core::ptr::write_unaligned(port, base.wrapping_add(sport as u16).to_be_bytes());
    }
    if template.mode == GEN_NEW_PER_FRAME || template.mode == GEN_SPOOFED {
        // The source address's low 16 bits: bytes 14-15 of the IPv4 header, 22-23 of IPv6's.
        let low = if v6 { frame.at::<[u8; 2]>(L3 + 22) } else { frame.at::<[u8; 2]>(L3 + 14) };
        let Some(low) = low else { return xdp_action::XDP_ABORTED };
        // SAFETY: in bounds (checked by `at`).
        unsafe { core::ptr::write_unaligned(low, (source_step as u16).to_be_bytes()) };
        if !v6 && !ipv4_checksum(&frame) {
            return xdp_action::XDP_ABORTED;
        }
    }
    xdp_action::XDP_TX
}

/// Recomputes the checksum of the 20-byte IPv4 header.
#[inline(always)]
fn ipv4_checksum(frame: &Frame) -> bool {
    let Some(header) = frame.at::<[u8; 20]>(L3) else { return false };
    // SAFETY: in bounds (checked by `at`).
    let mut bytes = unsafe { core::ptr::read_unaligned(header) };
    bytes[10] = 0;
    bytes[11] = 0;
    let mut sum = 0u32;
    let mut i = 0;
    while i < 20 {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    let checksum = !(sum as u16);
    let Some(field) = frame.at::<[u8; 2]>(L3 + 10) else { return false };
    // SAFETY: in bounds (checked by `at`).
    unsafe { core::ptr::write_unaligned(field, checksum.to_be_bytes()) };
    true
}

#[xdp]
pub fn xlb_sink(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(counts) = XLB_SINK.get_ptr_mut(0) {
        // SAFETY: this CPU's own entry.
        unsafe {
            (*counts)[0] += 1;
            (*counts)[1] += len;
        }
    }
    xdp_action::XDP_DROP
}

lb_ebpf::xdp_object!();
