//! The data plane's clock.

use aya_ebpf::{
    btf_maps::PerCpuArray,
    helpers::generated::{bpf_jiffies64, bpf_ktime_get_coarse_ns},
    macros::btf_map,
};

/// CLOCK_MONOTONIC_COARSE: a tick's resolution is plenty for idle timeouts of seconds. Read
/// through a per-CPU cache keyed by the jiffies counter: the coarse clock only moves on a tick,
/// and its helper costs ~45 ns here (a third of a NAT packet) while reading jiffies is cheap,
/// so the clock is read once per tick per CPU — the same value it would have returned.
#[inline(always)]
pub(crate) fn now() -> u64 {
    // SAFETY: no arguments, no preconditions.
    let jiffies = unsafe { bpf_jiffies64() };
    let Some(cache) = XLB_CLOCK.get_ptr_mut(0) else {
        // SAFETY: as above.
        return unsafe { bpf_ktime_get_coarse_ns() };
    };
    // SAFETY: this CPU's slot; only this CPU touches it while the program runs.
    unsafe {
        if (*cache).jiffies != jiffies || (*cache).ns == 0 {
            (*cache).ns = bpf_ktime_get_coarse_ns();
            (*cache).jiffies = jiffies;
        }
        (*cache).ns
    }
}

/// The coarse clock as last read on this CPU, and the jiffies counter then (see `now`).
#[repr(C)]
pub struct Clock {
    jiffies: u64,
    ns: u64,
}

#[btf_map]
static XLB_CLOCK: PerCpuArray<Clock, 1> = PerCpuArray::new();
