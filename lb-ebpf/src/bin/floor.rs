//! The empty XDP program: the harness floor that benchmarks subtract.
#![no_std]
#![no_main]

use aya_ebpf::{bindings::xdp_action, macros::xdp, programs::XdpContext};

#[xdp]
pub fn xlb_floor(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}

lb_ebpf::xdp_object!();
