//! The sources. Take in the world outside the file (probes to backends, the kernel's neighbour
//! table, interfaces); give out facts desired state follows: health, MAC addresses, links.

pub mod ethtool;
pub mod health;
pub mod jiffies;
pub mod limits;
pub mod link;
pub mod link_events;
pub mod neighbor;
pub mod netlink;
