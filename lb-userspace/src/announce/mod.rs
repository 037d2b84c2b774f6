//! Announcing the VIPs that desired state says are up: the BGP speaker (with BFD and TCP MD5).

pub mod bgp;
