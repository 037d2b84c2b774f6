//! Stage 2, desired state. Takes in the `Config` and the sources' facts (health, MACs, drains,
//! interfaces); gives out what every BPF map should hold, and each VIP's Maglev table and state.

pub mod desired;
pub mod maglev;
pub mod sources;
pub mod vip_state;
