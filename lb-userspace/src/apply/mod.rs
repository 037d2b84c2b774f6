//! Stage 3, apply. Takes in desired state; gives out BPF map writes, in steps (the reconciler is
//! the maps' one writer), with typed maps and pins, NAT housekeeping, `xlb plan`'s dry run and
//! test-run of the XDP object.

pub mod conn_limits;
pub mod conns;
pub mod dataplane;
pub mod explain;
pub mod nat;
pub mod nat_flows;
pub mod pass;
pub mod plan;
pub mod reconcile;
pub mod source_report;
pub mod sources;
pub mod syn_cookies;
pub mod table_builds;
pub mod testrun;

#[cfg(test)]
mod shared_address_tests;
