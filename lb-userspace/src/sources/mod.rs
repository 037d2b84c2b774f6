//! Facts from outside the configuration that desired state follows: backend health, neighbours'
//! MAC addresses, and the node's interfaces.

pub mod health;
pub mod link;
pub mod neighbor;
pub mod netlink;
