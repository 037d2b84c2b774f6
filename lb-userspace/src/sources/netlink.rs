//! rtnetlink primitives on plain libc: a NETLINK_ROUTE socket, interface indexes, and reading
//! message headers and attributes (the neighbour table, link state and the L7 tier use them).

use std::{
    ffi::CString,
    io,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    time::Duration,
};

/// Longest wait for one reply datagram of a dump: the kernel answers in microseconds.
pub(crate) const RECV_TIMEOUT: Duration = Duration::from_secs(2);

pub(crate) const NLMSG_HDRLEN: usize = 16;
pub(crate) const RTA_HDRLEN: usize = 4;
/// Attribute type bits (the top two are NLA_F_NESTED and NLA_F_NET_BYTEORDER).
pub(crate) const NLA_TYPE_MASK: u16 = 0x3fff;
pub(crate) const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
pub(crate) const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
pub(crate) const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;

/// The index of interface `name` in this network namespace.
pub fn ifindex(name: &str) -> io::Result<u32> {
    let invalid =
        || io::Error::new(io::ErrorKind::InvalidInput, format!("interface `{name}`: not a valid interface name"));
    if name.is_empty() || name.len() >= libc::IFNAMSIZ {
        return Err(invalid());
    }
    let c_name = CString::new(name).map_err(|_| invalid())?;
    // SAFETY: `c_name` is a NUL-terminated string that lives across the call.
    let index = unsafe { libc::if_nametoindex(c_name.as_ptr()) };
    if index == 0 {
        let e = io::Error::last_os_error();
        return Err(io::Error::new(e.kind(), format!("interface `{name}`: {e}")));
    }
    Ok(index)
}

/// A NETLINK_ROUTE socket with a receive timeout (also the L7 tier's, for its VIP addresses).
pub(crate) fn route_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the descriptor is owned by the OwnedFd below.
    let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, libc::NETLINK_ROUTE) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval { tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t, tv_usec: 0 };
    // SAFETY: setsockopt reads a timeval of the given size from a live local.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&raw const timeout).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(socket)
}

pub(crate) fn align4(len: usize) -> usize {
    len.saturating_add(3) & !3
}

pub(crate) fn u16_at(buf: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buf.get(at..at.checked_add(2)?)?.try_into().ok()?))
}

pub(crate) fn u32_at(buf: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buf.get(at..at.checked_add(4)?)?.try_into().ok()?))
}

pub(crate) fn i32_at(buf: &[u8], at: usize) -> Option<i32> {
    u32_at(buf, at).map(|v| v as i32)
}

pub(crate) fn malformed(offset: usize, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed netlink reply at byte {offset}: {why}"))
}

/// A negative errno from the kernel.
pub(crate) fn kernel_error(errno: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(libc::EIO));
    io::Error::new(e.kind(), format!("the kernel answered: {e}"))
}
