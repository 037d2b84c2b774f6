//! xlb's agent as a library: the stages of the one-way data flow, one module each.
//!
//! config (YAML) → desired (desired state) → reconcile (map writes) → dataplane (BPF maps, XDP)
//! and back out through stats and the admin socket. `testrun` runs the same XDP object under
//! BPF_PROG_TEST_RUN for tests and benchmarks.

mod accept;
pub mod admin;
pub mod agent;
pub mod bgp;
pub mod cli;
pub mod config;
pub mod config_memory;
pub mod dataplane;
pub mod desired;
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod human;
pub mod iface;
pub mod l7;
pub mod logging;
pub mod maglev;
pub mod metrics;
pub mod nat;
pub mod neighbor;
pub mod plan;
pub mod reconcile;
pub mod stats;
pub mod summary;
pub mod testrun;
pub mod vip_state;
