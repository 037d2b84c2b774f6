//! Facts about a network interface: MAC and MTU by ioctl, addresses from getifaddrs(3).

use std::{
    ffi::CStr,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd as _, FromRawFd as _},
};

use crate::state::desired::NodeFacts;

/// The interface's MAC and MTU, asked of the kernel for this network namespace (sysfs may show
/// another namespace's view, e.g. in a process that entered the namespace with setns).
pub fn facts(iface: &str) -> std::io::Result<NodeFacts> {
    let request = |op: libc::Ioctl| -> std::io::Result<libc::ifreq> {
        // SAFETY: SIOCGIFHWADDR / SIOCGIFMTU read the name and write only into the ifreq.
        unsafe { interface_ioctl(iface, op, |_| {}) }.map_err(|e| match e.raw_os_error() {
            // The kernel's errors say nothing of which interface.
            Some(_) => std::io::Error::new(e.kind(), format!("interface `{iface}`: {e}")),
            None => e,
        })
    };
    let hw = request(libc::SIOCGIFHWADDR)?;
    // SAFETY: SIOCGIFHWADDR filled the hwaddr member of the union.
    let data = unsafe { hw.ifr_ifru.ifru_hwaddr.sa_data };
    let mut mac = [0u8; 6];
    for (dst, src) in mac.iter_mut().zip(data) {
        *dst = src as u8;
    }
    let mtu = request(libc::SIOCGIFMTU)?;
    // SAFETY: SIOCGIFMTU filled the mtu member of the union.
    let mtu = unsafe { mtu.ifr_ifru.ifru_mtu };
    let mtu = u32::try_from(mtu).map_err(|_| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, format!("interface `{iface}`: negative MTU"))
    })?;
    let ifindex = crate::sources::netlink::ifindex(iface)?;
    let interfaces = vec![(iface.to_owned(), lb_common::Iface { ifindex, mac, pad: 0 })];
    Ok(NodeFacts { iface_mac: mac, mtu, ifindex, interfaces })
}

/// Runs the interface ioctl `op` on `iface` with an `ifreq` that holds its name and what `fill`
/// puts in; returns the `ifreq` as the kernel left it (errors are the kernel's, unwrapped).
///
/// # Safety
/// `op` must read the name and whatever `fill` sets, and write only into the `ifreq` or into
/// buffers `fill` pointed it at that are sized for `op`.
pub(crate) unsafe fn interface_ioctl(
    iface: &str,
    op: libc::Ioctl,
    fill: impl FnOnce(&mut libc::ifreq),
) -> std::io::Result<libc::ifreq> {
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("interface `{iface}`: not a valid interface name"),
        ));
    }
    // SAFETY: plain socket(2); the fd is owned (and closed) by `socket` below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let socket = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: ifreq is plain data; all zeroes is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(name) {
        *dst = *src as libc::c_char;
    }
    fill(&mut req);
    // SAFETY: the name is NUL-terminated (shorter than IFNAMSIZ in a zeroed array); what `op`
    // reads and writes beyond it is the caller's promise.
    if unsafe { libc::ioctl(socket.as_raw_fd(), op, &mut req) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(req)
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
