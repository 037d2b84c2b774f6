//! The traffic tool's template: what the generator (`xlb_gen`, run in BPF_PROG_TEST_RUN's
//! live-frames mode) writes over every frame before transmitting it. Benches and flood tests
//! only; the balancer never sees these types.

/// Most header bytes a template holds (Ethernet + IPv4/IPv6 + TCP/UDP fit).
pub const GEN_TEMPLATE_BYTES: usize = 96;

/// Every frame carries the same 5-tuple.
pub const GEN_ONE_FLOW: u32 = 0;
/// `flows` (a power of two) flows, cycled: the source port steps through them.
pub const GEN_CYCLE: u32 = 1;
/// A new flow per frame: the source port and the low 16 bits of the source address count up.
pub const GEN_NEW_PER_FRAME: u32 = 2;
/// One source opening a new flow per frame: only the source port counts up (a one-source flood).
pub const GEN_NEW_PORT_PER_FRAME: u32 = 3;
/// A spoofed source per frame: the source address's low 16 bits scattered, the port counting
/// (a flood from random sources).
pub const GEN_SPOOFED: u32 = 4;

/// The generator's configuration (one entry of `XLB_GEN`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct GenTemplate {
    /// The frame's first bytes, written over each frame before it is sent.
    pub bytes: [u8; GEN_TEMPLATE_BYTES],
    /// One of the `GEN_*` modes.
    pub mode: u32,
    /// `flows - 1` for `GEN_CYCLE`.
    pub flow_mask: u32,
    /// 4 for IPv4, 6 for IPv6 (untagged Ethernet: the IP header at 14, the source port right
    /// after it; an IPv4 header's checksum is recomputed when the source changes).
    pub ip_version: u32,
    pub pad: [u32; 3],
}

impl GenTemplate {
    /// An all-zero template.
    pub const fn zeroed() -> Self {
        GenTemplate { bytes: [0; GEN_TEMPLATE_BYTES], mode: 0, flow_mask: 0, ip_version: 0, pad: [0; 3] }
    }
}
