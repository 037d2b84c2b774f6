//! Serving operators. Takes in the view the agent publishes and the maps' counters; gives out
//! the admin socket's replies and Prometheus metrics. Each server reads; none writes or waits.

mod accept;
pub mod admin;
pub mod conns;
pub mod explain;
pub mod human;
pub mod metrics;
pub mod page;
pub mod stats;
pub mod summary;
