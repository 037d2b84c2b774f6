//! Per-node limits and default table sizes, and the VIP-address pre-filter's bucket.

/// Most VIPs one data plane serves (the per-node limit). Also the length of the per-VIP counter
/// array and of the Maglev table array.
pub const MAX_VIPS: u32 = 10_000;
/// Most backend slots (one per VIP and backend pair): the per-node limit of backends.
pub const MAX_BACKENDS: u32 = 100_000;
/// Buckets of the VIP-address pre-filter (a power of two).
pub const VIP_FILTER_SIZE: u32 = 4096;

/// The pre-filter bucket of a destination address: set by the agent for every VIP address, so
/// the data plane sends most traffic that is not for a VIP on its way after one array read.
#[inline(always)]
pub fn addr_bucket(addr: &[u32; 4]) -> u32 {
    crate::flow::fmix(addr[0] ^ addr[1] ^ addr[2] ^ addr[3]) & (VIP_FILTER_SIZE - 1)
}

/// Distinct VIP addresses (for the fragment/extension-header policy, which has no port to go by).
pub const MAX_VIP_ADDRS: u32 = MAX_VIPS;
/// Connection-table entries by default (`node.flow_table_size`).
pub const FLOW_TABLE_SIZE: u32 = 1 << 20;
/// Entries of one connection-table set: a flow lives in one of the `FLOW_WAYS` entries of the set
/// its hash names, and a new flow replaces the set's least recently used entry.
pub const FLOW_WAYS: usize = 8;
