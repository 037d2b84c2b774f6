//! rtnetlink through the rust-netlink crates (`rtnetlink`, `netlink-packet-route`): interface
//! indexes, a connection subscribed to the kernel's notifications for the neighbour resolver and
//! the link watch, and one synchronous request/acknowledgement for the L7 tier's addresses.

use std::{
    ffi::CString,
    io,
    sync::atomic::{AtomicU32, Ordering},
    time::Duration,
};

use futures_util::Stream;
use rtnetlink::{
    MulticastGroup,
    packet_core::{NLM_F_ACK, NLM_F_REQUEST, NetlinkMessage, NetlinkPayload},
    packet_route::RouteNetlinkMessage,
    sys::{AsyncSocket as _, Socket, SocketAddr, protocols::NETLINK_ROUTE},
};

pub use rtnetlink::Handle;

/// Longest wait for the kernel's acknowledgement of a synchronous request: it answers in
/// microseconds.
const ACK_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer of a subscribed socket. Notifications the kernel cannot queue are lost (the
/// reader sees an overrun and reads the tables again); a burst of neighbour changes on a large
/// fleet fits in this.
const NOTIFICATION_BUFFER: usize = 4 << 20;

/// What the kernel sends a subscribed connection unasked: notifications, and an
/// `NetlinkPayload::Overrun` when some were lost.
pub trait Notifications: Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Unpin + Send {}
impl<S: Stream<Item = (NetlinkMessage<RouteNetlinkMessage>, SocketAddr)> + Unpin + Send> Notifications for S {}

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

/// A NETLINK_ROUTE connection driven on the current tokio runtime (it stops when the handle and
/// the receiver are gone), subscribed to `groups`. Requests go through the handle; the kernel's
/// notifications of those groups arrive on the receiver.
pub fn subscribe(groups: &[MulticastGroup]) -> io::Result<(Handle, impl Notifications + use<>)> {
    let (mut connection, handle, notifications) = rtnetlink::new_multicast_connection(groups)?;
    let socket = connection.socket_mut().socket_mut();
    if let Err(e) = socket.set_rx_buf_sz(NOTIFICATION_BUFFER) {
        tracing::debug!(error = %e, "cannot enlarge the netlink receive buffer; keeping the default");
    }
    tokio::spawn(connection);
    Ok((handle, notifications))
}

/// An rtnetlink error as an `io::Error` saying what was being done (the kernel's errno kept, so
/// that callers can tell EEXIST or EINVAL apart).
pub fn error(what: &str, e: rtnetlink::Error) -> io::Error {
    match e {
        rtnetlink::Error::NetlinkError(message) => {
            let e = message.to_io();
            io::Error::new(e.kind(), format!("{what}: the kernel answered: {e}"))
        }
        other => io::Error::other(format!("{what}: {other}")),
    }
}

/// Sends `message` with `flags` (besides request and ack) and waits for the kernel's
/// acknowledgement on a socket of its own; blocking, bounded by `ACK_TIMEOUT`. For the rare
/// requests made outside the runtime (the L7 tier's VIP addresses).
pub fn request_ack(message: RouteNetlinkMessage, flags: u16) -> io::Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let mut socket = Socket::new(NETLINK_ROUTE)?;
    socket.bind_auto()?;
    socket2::SockRef::from(&socket).set_read_timeout(Some(ACK_TIMEOUT))?;
    let mut request = NetlinkMessage::from(message);
    request.header.flags = NLM_F_REQUEST | NLM_F_ACK | flags;
    request.header.sequence_number = seq;
    request.finalize();
    let mut buf = vec![0u8; request.buffer_len()];
    request.serialize(&mut buf);
    socket.send_to(&buf, &SocketAddr::new(0, 0), 0)?;
    // Bounded: each receive waits at most ACK_TIMEOUT, and a few stray datagrams at most.
    for _ in 0..8 {
        let (reply, _) = socket.recv_from_full().map_err(|e| match e.kind() {
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no acknowledgement from the kernel within {ACK_TIMEOUT:?}"),
            ),
            _ => e,
        })?;
        let Ok(reply) = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&reply) else { continue };
        if reply.header.sequence_number != seq {
            continue;
        }
        if let NetlinkPayload::Error(e) = reply.payload {
            return match e.code {
                None => Ok(()),
                Some(_) => Err(e.to_io()),
            };
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no acknowledgement from the kernel"))
}
