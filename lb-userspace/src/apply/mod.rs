//! Applying desired state: the reconciler (the one writer of the BPF maps), the data plane's
//! typed maps and pins, NAT housekeeping, `xlb plan`'s dry run, and test-run of the XDP object.

pub mod dataplane;
pub mod nat;
pub mod plan;
pub mod reconcile;
pub mod testrun;
