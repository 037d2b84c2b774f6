//! Desired state: what the data plane should contain, derived from the configuration and the
//! sources' facts, and the Maglev tables that spread new flows.

pub mod desired;
pub mod maglev;
pub mod vip_state;
