//! Maglev tables: sizes, the slot layout of a table's array map, and the inner maps' flags.

use crate::MAX_BACKENDS;

/// Largest Maglev table a VIP may have.
pub const MAX_MAGLEV_TABLE_SIZE: u32 = 1_048_573;
const _: () = assert!(is_prime(MAX_MAGLEV_TABLE_SIZE), "a Maglev table's size must be prime");

/// Whether `n` is prime: a Maglev table's size must be, so that every backend's permutation
/// visits every slot.
pub const fn is_prime(n: u32) -> bool {
    if n < 2 {
        return false;
    }
    if n.is_multiple_of(2) {
        return n == 2;
    }
    let n = n as u64;
    let mut d = 3;
    while d * d <= n {
        if n.is_multiple_of(d) {
            return false;
        }
        d += 2;
    }
    true
}
/// Table slots per array element. A table holds backend slot numbers as `u32` (`MAX_BACKENDS`
/// does not fit a `u16`), two to an 8-byte element (array maps store every value at an 8-byte
/// stride, so one `u32` per element would waste half): a 16381-slot table takes 64 KiB.
pub const MAGLEV_GROUP: u32 = 2;
/// Two table slots: the value type of a Maglev table's array map.
pub type MaglevGroup = [u32; MAGLEV_GROUP as usize];
/// Elements of the largest table (the inner map template's size).
pub const MAX_MAGLEV_GROUPS: u32 = MAX_MAGLEV_TABLE_SIZE.div_ceil(MAGLEV_GROUP);
/// A table slot that names no backend: the lanes after the last slot, and an emptied table.
pub const MAGLEV_NO_BACKEND: u32 = u32::MAX;
const _: () = assert!(MAX_BACKENDS < MAGLEV_NO_BACKEND, "a backend slot must differ from MAGLEV_NO_BACKEND");

/// The array element and lane of Maglev table slot `index`.
#[inline(always)]
pub const fn maglev_position(index: u32) -> (u32, usize) {
    (index / MAGLEV_GROUP, (index % MAGLEV_GROUP) as usize)
}
/// `BPF_F_INNER_MAP`: lets array maps of different sizes sit in one array of maps.
pub const BPF_F_INNER_MAP: u32 = 1 << 12;
/// `BPF_F_MMAPABLE`: the agent writes a whole Maglev table through one mmap instead of one
/// syscall per slot.
pub const BPF_F_MMAPABLE: u32 = 1 << 10;
/// Flags of every Maglev table (inner maps must match the template's flags exactly).
pub const MAGLEV_TABLE_FLAGS: u32 = BPF_F_INNER_MAP | BPF_F_MMAPABLE;
