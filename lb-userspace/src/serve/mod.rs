//! Serving the agent's state to operators: the admin socket, Prometheus metrics, and the
//! snapshots and summaries they render. Each reads what the agent published; none writes.

mod accept;
pub mod admin;
pub mod human;
pub mod metrics;
pub mod stats;
pub mod summary;
