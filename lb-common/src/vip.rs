//! VIPs: address families and protocols, the VIP map's key and value, the VIP index beside it, the
//! pre-filter's bits and the per-address policy.

use crate::{MAX_VIPS, flow::fmix};

/// Address family tag used in keys.
pub const FAMILY_V4: u8 = 4;
pub const FAMILY_V6: u8 = 6;

/// IP protocol numbers the data plane understands.
pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_ICMPV6: u8 = 58;

/// Key of the VIP map: destination address, destination port and protocol.
///
/// IPv4 addresses sit in `addr[0]` with the other words zero. `addr` and `port` are in network
/// byte order (as on the wire). ICMP/ICMPv6 VIPs use port 0.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VipKey {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub family: u8,
}

impl VipKey {
    pub const fn v4(addr_be: u32, port_be: u16, proto: u8) -> Self {
        Self { addr: [addr_be, 0, 0, 0], port: port_be, proto, family: FAMILY_V4 }
    }

    pub const fn v6(addr_be: [u32; 4], port_be: u16, proto: u8) -> Self {
        Self { addr: addr_be, port: port_be, proto, family: FAMILY_V6 }
    }

    /// The key's hash in the VIP index; its home slot is the low bits.
    #[inline(always)]
    pub const fn index_hash(&self) -> u32 {
        let rest = ((self.port as u32) << 16) | ((self.proto as u32) << 8) | self.family as u32;
        fmix(
            self.addr[0]
                ^ self.addr[1].rotate_left(8)
                ^ self.addr[2].rotate_left(16)
                ^ self.addr[3].rotate_left(24)
                ^ rest,
        )
    }
}

/// Slots of the VIP index: a power of two, at least eight per VIP, so that keys rarely share a home.
pub const VIP_INDEX_SIZE: u32 = (8 * MAX_VIPS).next_power_of_two();
/// Slots a lookup tries from a key's home slot before it asks the VIP map.
pub const VIP_INDEX_PROBES: u32 = 4;
const _: () = assert!(VIP_INDEX_SIZE.is_power_of_two());

/// The VIP index slot `probe` places after `hash`'s home.
#[inline(always)]
pub const fn vip_index_slot(hash: u32, probe: u32) -> u32 {
    hash.wrapping_add(probe) & (VIP_INDEX_SIZE - 1)
}

/// A slot of the VIP index (`XLB_VIP_INDEX`): a copy of one entry of the VIP map (`XLB_VIPS`)
/// that the XDP program reads in place — an array read the verifier inlines — instead of a
/// hash-map lookup, a call into the kernel that cost a new flow ~25–40 ns here. The map stays the
/// truth: a key the index does not hold (no free slot within `VIP_INDEX_PROBES` of its home, or
/// a slot caught half-written, which `check` reveals) is looked up there.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipSlot {
    pub key: VipKey,
    /// `vip_check(key.index_hash(), meta)`; 0 in a free slot (a check is never 0).
    pub check: u32,
    pub meta: VipMeta,
    pub pad: u32,
}

impl VipSlot {
    pub fn new(key: VipKey, meta: VipMeta) -> Self {
        Self { key, check: vip_check(key.index_hash(), &meta), meta, pad: 0 }
    }

    /// The meta this slot holds for `key` (whose `index_hash` is `hash`), if it holds `key` whole.
    #[inline(always)]
    pub fn holds(&self, key: &VipKey, hash: u32) -> Option<VipMeta> {
        // Read once, volatile: in the data plane the agent may rewrite this slot meanwhile, and
        // the meta checked must be the very bytes returned, not a second load of them.
        // SAFETY: a valid, aligned reference to plain data.
        let meta = unsafe { core::ptr::read_volatile(&self.meta) };
        (self.key == *key && self.check == vip_check(hash, &meta)).then_some(meta)
    }
}

/// Binds a VIP index slot's key (by its hash) to every field of its meta: a reader that got
/// fields of two writes finds this does not match.
#[inline(always)]
pub const fn vip_check(hash: u32, meta: &VipMeta) -> u32 {
    (hash
        ^ meta.id.wrapping_mul(0x9e37_79b9)
        ^ meta.flags.wrapping_mul(0x85eb_ca6b)
        ^ meta.table_size.wrapping_mul(0xc2b2_ae35)
        ^ (((meta.port_first as u32) << 16) | meta.port_last as u32).wrapping_mul(0x27d4_eb2f)
        ^ meta.pool.wrapping_mul(0x1656_67b1))
        | 1
}

/// Value of the VIP map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipMeta {
    /// Index into the per-VIP counter array and the Maglev table array; `< MAX_VIPS`, stable
    /// for the life of the VIP.
    pub id: u32,
    /// `VIP_FLAG_*` bits.
    pub flags: u32,
    /// Entries in this VIP's Maglev table (a prime); 0 while the VIP has no backends.
    pub table_size: u32,
    /// The destination ports it serves, host order. A port-range VIP sits under port 0 of its
    /// key (looked up when the exact port has no VIP) and serves `port_first..=port_last`.
    pub port_first: u16,
    pub port_last: u16,
    /// `mode: nat`: the id of its source-address pool, or `NAT_NO_POOL` (DNAT only).
    pub pool: u32,
}

/// Hash only the client address (sticky clients) instead of the 5-tuple.
pub const VIP_FLAG_HASH_SOURCE_ONLY: u32 = 1;
/// `mode: nat`: translate both directions instead of direct server return.
pub const VIP_FLAG_NAT: u32 = 2;

/// Buckets of the pre-filter (`VIP_FILTER`) hold these bits: what kind of address falls there.
/// A VIP address (destination).
pub const FILTER_VIP: u32 = 1;
/// The address of a `mode: nat` VIP (destination): its flows are looked up in the NAT table.
pub const FILTER_NAT_VIP: u32 = 2;
/// A NAT pool address (destination): replies from backends are looked up in the reverse table.
pub const FILTER_NAT_POOL: u32 = 4;
/// A backend of a DNAT-only VIP (source): its replies go to the client's own address.
pub const FILTER_NAT_BACKEND: u32 = 8;

/// Key of the VIP-address map: fragments and extension headers are judged by address alone.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct VipAddrKey {
    pub addr: [u32; 4],
    pub family: u8,
    pub pad: [u8; 3],
}

/// Value of the VIP-address map.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct VipAddrPolicy {
    /// `ADDR_FLAG_*` bits.
    pub flags: u32,
}

/// Drop (rather than pass) IPv4 fragments and IPv6 packets with extension headers sent to the
/// address.
pub const ADDR_FLAG_DROP_UNHASHABLE: u32 = 1;
