//! A map lookup whose key is not on the stack (in a map value or a global): for the functions
//! that run on top of the balancer's frame, which leaves them almost no stack.

use aya_ebpf::{cty::c_void, helpers::generated::bpf_map_lookup_elem};

/// The value of `key` in `map`, if it has one.
#[inline(always)]
pub(crate) fn lookup<M, K, V>(map: &M, key: *const K) -> Option<*mut V> {
    // SAFETY: `map` is a map definition of this object and `key` points at a whole key of it
    // (in a map value or a global); the helper returns a value pointer or null.
    let value = unsafe { bpf_map_lookup_elem(core::ptr::from_ref(map).cast_mut().cast::<c_void>(), key.cast()) };
    (!value.is_null()).then_some(value.cast::<V>())
}
