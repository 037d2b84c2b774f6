//! Facts about a network interface: MAC and MTU from sysfs, addresses from getifaddrs(3).

use std::{
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use crate::{config::Mac, desired::NodeFacts};

/// The interface's MAC and MTU.
pub fn facts(iface: &str) -> std::io::Result<NodeFacts> {
    let dir = Path::new("/sys/class/net").join(iface);
    let read = |name: &str| {
        std::fs::read_to_string(dir.join(name))
            .map(|s| s.trim().to_owned())
            .map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", dir.join(name).display())))
    };
    let invalid = |what: &str, v: &str| {
        std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{iface}: unreadable {what} `{v}`"))
    };
    let mac_text = read("address")?;
    let mac: Mac = mac_text.parse().map_err(|_| invalid("MAC", &mac_text))?;
    let mtu_text = read("mtu")?;
    let mtu = mtu_text.parse().map_err(|_| invalid("MTU", &mtu_text))?;
    Ok(NodeFacts { iface_mac: mac.0, mtu })
}

/// Every address configured on any interface of this network namespace (the host's own
/// addresses: where tunnels to this host are addressed).
pub fn host_addresses() -> std::io::Result<Vec<(String, IpAddr)>> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs writes a list head we free below with freeifaddrs.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned; it lives until freeifaddrs.
        let entry = unsafe { &*cur };
        cur = entry.ifa_next;
        if entry.ifa_addr.is_null() {
            continue;
        }
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let name = unsafe { CStr::from_ptr(entry.ifa_name) }.to_string_lossy().into_owned();
        // SAFETY: ifa_addr is non-null and points to a sockaddr whose family says its type.
        let addr = unsafe {
            match i32::from((*entry.ifa_addr).sa_family) {
                libc::AF_INET => {
                    let sin = &*(entry.ifa_addr as *const libc::sockaddr_in);
                    Some(IpAddr::V4(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr))))
                }
                libc::AF_INET6 => {
                    let sin6 = &*(entry.ifa_addr as *const libc::sockaddr_in6);
                    Some(IpAddr::V6(Ipv6Addr::from(sin6.sin6_addr.s6_addr)))
                }
                _ => None,
            }
        };
        if let Some(addr) = addr {
            out.push((name, addr));
        }
    }
    // SAFETY: `head` came from getifaddrs and is freed once.
    unsafe { libc::freeifaddrs(head) };
    Ok(out)
}
