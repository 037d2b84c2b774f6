//! Shared pieces of xlb's XDP programs: wire headers, parsing, and the rewrites that forward.
#![no_std]
// Debug would pull core::fmt into the eBPF object for types nobody prints.
#![allow(missing_debug_implementations)]

pub mod forward;
pub mod headers;
pub mod parse;
