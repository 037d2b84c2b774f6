//! xlb's agent as a library, one folder per stage of the one-way data flow:
//!
//! config (YAML → validated `Config`) → state (desired map contents, Maglev) → apply (the one
//! writer of the BPF maps) → the XDP data plane; the same desired state → announce (BGP). The
//! sources (health checks, neighbours, links) feed desired state; serve (admin socket, metrics,
//! status) reads snapshots the agent publishes and never writes. `agent` wires the stages;
//! `l7` is the optional userspace proxy tier. `cli` and `logging` are the binary's edge;
//! `sockopt` sets the socket options socket2 lacks.

pub mod agent;
pub mod announce;
pub mod apply;
pub mod cli;
pub mod config;
#[doc(hidden)]
pub mod fuzzing;
pub mod l7;
pub mod logging;
pub mod serve;
pub mod sockopt;
pub mod sources;
pub mod state;
