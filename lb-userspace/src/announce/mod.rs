//! Stage 4, announce. Takes in the VIP addresses desired state says are up; gives out BGP
//! announcements and withdrawals to the routers (with BFD and TCP MD5).

pub mod bgp;
