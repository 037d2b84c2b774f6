//! Shared pieces of xlb's XDP programs: wire headers, parsing, and the rewrites that forward.
#![no_std]
// Debug would pull core::fmt into the eBPF object for types nobody prints.
#![allow(missing_debug_implementations)]

pub mod forward;
pub mod headers;
pub mod nat;
pub mod parse;

/// What every xlb XDP object needs besides its programs: a panic handler (bounds checks must
/// not panic in eBPF; the verifier rejects a program that could reach this) and the license.
#[macro_export]
macro_rules! xdp_object {
    () => {
        #[cfg(not(test))]
        #[panic_handler]
        fn panic(_info: &core::panic::PanicInfo) -> ! {
            loop {}
        }

        #[unsafe(link_section = "license")]
        #[unsafe(no_mangle)]
        static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
    };
}
