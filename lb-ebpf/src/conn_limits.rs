//! A VIP's connection limit (see `lb_common::VipConnLimit`): one GCRA bucket per VIP, and a
//! ceiling on what it admits for a concurrent-connections limit, judged for packets that would
//! open a flow, after the source policy (and within its BPF function, `sources::judge`).

use aya_ebpf::{btf_maps::Array, helpers::generated::bpf_ktime_get_coarse_ns, macros::btf_map};
use lb_common::{CONN_LIMIT_RESET, MAX_VIPS, VipConnBucket, VipConnLimit, gcra_charge};

use crate::lookup::lookup;

/// The rate, by VIP id (written by the agent).
#[btf_map]
static XLB_VIP_CONN_LIMITS: Array<VipConnLimit, { MAX_VIPS as usize }> = Array::new();

/// The arrival time and counts, by VIP id (written here, read by the agent).
#[btf_map]
static XLB_VIP_CONN_BUCKETS: Array<VipConnBucket, { MAX_VIPS as usize }> = Array::new();

/// What `judge` found.
pub(crate) const ADMIT: u32 = 0;
pub(crate) const LIMITED: u32 = 1;
/// Limited, and the VIP answers a refused SYN with a RST.
pub(crate) const RESET: u32 = 2;

/// What a forwarding path returns when a SYN is to be answered with a RST: the NAT program
/// writes it (`syn_cookies::refuse_syn`), its frame must not nest under the balancer's.
pub(crate) const RESET_WANTED: u32 = u32::MAX - 2;

/// Counts a new flow to the VIP whose id `vip_id` points at (a key off the stack: this runs
/// inside the source policy's `judge`) against the VIP's bucket.
#[inline(always)]
pub(crate) fn judge(vip_id: *const u32) -> u32 {
    let Some(limit) = lookup::<_, u32, VipConnLimit>(&XLB_VIP_CONN_LIMITS, vip_id) else { return ADMIT };
    // SAFETY: a value of the array, valid while the program runs; the agent replaces it whole.
    let limit = unsafe { &*limit };
    if !limit.is_set() {
        return ADMIT;
    }
    let Some(bucket) = lookup::<_, u32, VipConnBucket>(&XLB_VIP_CONN_BUCKETS, vip_id) else { return ADMIT };
    // SAFETY: a value of the array, valid while the program runs; other CPUs may update it at
    // the same time (plain stores: see `VipConnBucket`).
    let bucket = unsafe { &mut *bucket };
    let admitted = if !limit.admits(bucket.admitted) {
        // As many connections open as the limit allows (as of the agent's last count).
        bucket.limited += 1;
        false
    } else if limit.interval_ns == 0 {
        bucket.admitted += 1;
        true
    } else {
        // SAFETY: no arguments; a clock read.
        let now = unsafe { bpf_ktime_get_coarse_ns() };
        gcra_charge(
            &mut bucket.tat_ns,
            &mut bucket.admitted,
            &mut bucket.limited,
            now,
            limit.interval_ns,
            limit.tolerance_ns,
        )
    };
    if admitted {
        ADMIT
    } else if limit.flags & CONN_LIMIT_RESET != 0 {
        RESET
    } else {
        LIMITED
    }
}
