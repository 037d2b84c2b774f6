//! Soliciting a neighbour: one UDP datagram to the discard port makes the kernel resolve (or
//! re-verify) an address.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::AsRawFd as _,
};

use crate::sources::netlink::ifindex;

/// UDP discard: the port of the datagram that makes the kernel resolve a neighbour.
const DISCARD_PORT: u16 = 9;

/// Makes the kernel resolve `addr` on interface `iface` (more exactly: the next hop towards
/// `addr` on it, which for an on-link address is `addr` itself) by sending it one UDP datagram to
/// the discard port from a socket bound to the device. For a link-local IPv6 address the
/// interface is also its scope.
///
/// Why that works: to transmit the datagram the kernel routes it (SO_BINDTODEVICE pins the
/// output device; for IPv4 an address with no route through the device is even assumed on-link)
/// and looks up the next hop in the neighbour table. With no entry it creates one in INCOMPLETE
/// state, parks the datagram on it and sends an ARP request (IPv4) or a neighbour solicitation
/// (IPv6); the reply fills in the MAC and the datagram leaves. A FAILED entry is retried the same
/// way, and a STALE one goes to DELAY and is re-verified by a unicast probe a few seconds later.
/// The datagram itself is harmless: nothing listens on port 9 and `send` does not wait for the
/// resolution (an unresolvable address just has the datagram dropped).
pub fn solicit(iface: &str, addr: IpAddr) -> io::Result<()> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("soliciting {addr} on `{iface}`: {e}"));
    let name = iface.as_bytes();
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("interface `{iface}`: not a valid interface name"),
        ));
    }
    let local: SocketAddr = match addr {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).map_err(context)?;
    socket.set_nonblocking(true).map_err(context)?;
    // SAFETY: setsockopt reads `name.len()` bytes of the interface name from a live slice (the
    // kernel copies at most IFNAMSIZ - 1 bytes and terminates them itself).
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_BINDTODEVICE,
            name.as_ptr().cast(),
            name.len() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(context(io::Error::last_os_error()));
    }
    let target = match addr {
        IpAddr::V6(v6) if v6.is_unicast_link_local() => {
            SocketAddr::V6(SocketAddrV6::new(v6, DISCARD_PORT, 0, ifindex(iface).map_err(context)?))
        }
        _ => SocketAddr::new(addr, DISCARD_PORT),
    };
    match socket.send_to(&[0], target) {
        Ok(_) => Ok(()),
        // A full send buffer: the neighbour is being resolved for earlier datagrams anyway.
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(context(e)),
    }
}
