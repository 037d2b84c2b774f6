//! The kernel's neighbour table: one RTM_GETNEIGH dump of both families, and parsing its
//! RTM_NEWNEIGH messages into [`Neighbor`] entries.

use std::{
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::sources::netlink::{
    NLA_TYPE_MASK, NLM_F_DUMP_INTR, NLMSG_DONE, NLMSG_ERROR, NLMSG_HDRLEN, RECV_TIMEOUT, RTA_HDRLEN, align4, i32_at,
    kernel_error, malformed, route_socket, u16_at, u32_at,
};

/// Receive buffer for one datagram of a dump. The kernel sizes dump datagrams by the reader's
/// buffer, capped at 32 KiB; a larger datagram would be reported as truncated (MSG_TRUNC).
pub(super) const RECV_BUF: usize = 64 * 1024;
/// Dumps retried when the kernel says the table changed while it was being dumped.
pub(super) const DUMP_ATTEMPTS: usize = 3;
/// `struct ndmsg`: family u8, 3 bytes padding, ifindex i32, state u16, flags u8, type u8.
pub(super) const NDMSG_LEN: usize = 12;

/// One entry of the kernel's neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The link-layer address, when the entry has a 6-byte one (an unresolved entry has none).
    pub mac: Option<[u8; 6]>,
    /// NUD_* bits (see [`is_usable`]).
    pub state: u16,
}

/// Whether an entry in `state` holds a MAC that may be used: reachable, stale (not verified
/// lately, still the best guess; the kernel re-verifies it on use), being re-verified (delay,
/// probe), static (permanent) or on a device without ARP (noarp). Not incomplete (being
/// resolved), failed or none.
pub fn is_usable(state: u16) -> bool {
    const USABLE: u16 = libc::NUD_REACHABLE
        | libc::NUD_STALE
        | libc::NUD_DELAY
        | libc::NUD_PROBE
        | libc::NUD_PERMANENT
        | libc::NUD_NOARP;
    state & USABLE != 0
}

/// The IPv4 and IPv6 neighbour tables of this network namespace, all interfaces. Entries that
/// cannot be parsed (another family, a malformed attribute) are skipped.
pub fn dump() -> io::Result<Vec<Neighbor>> {
    let context = |e: io::Error| io::Error::new(e.kind(), format!("reading the neighbour table (RTM_GETNEIGH): {e}"));
    let mut attempt = 1;
    loop {
        let (neighbors, interrupted) = dump_once().map_err(context)?;
        // The table changed during the dump: some entry may be missing or duplicated. Retry a
        // few times; a table that never stays still still gets a best-effort answer.
        if !interrupted || attempt == DUMP_ATTEMPTS {
            return Ok(neighbors);
        }
        attempt += 1;
    }
}

/// One dump; also says whether the kernel flagged it interrupted (NLM_F_DUMP_INTR).
fn dump_once() -> io::Result<(Vec<Neighbor>, bool)> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let socket = route_socket()?;
    let request = dump_request(seq);
    // SAFETY: send reads `request.len()` bytes from a live buffer. An unconnected netlink
    // socket sends to the kernel (port id 0) and is bound automatically.
    let sent = unsafe { libc::send(socket.as_raw_fd(), request.as_ptr().cast(), request.len(), 0) };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = vec![0u8; RECV_BUF];
    let mut neighbors = Vec::new();
    let mut interrupted = false;
    loop {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which lives across the call;
        // with MSG_TRUNC it returns the datagram's full length, so truncation is detectable.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), libc::MSG_TRUNC) };
        if n < 0 {
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("the kernel did not finish the dump within {RECV_TIMEOUT:?}"),
                    ));
                }
                _ => return Err(e),
            }
        }
        let n = usize::try_from(n).unwrap_or(0);
        let datagram = buf.get(..n).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidData, format!("a {n}-byte reply does not fit in {RECV_BUF} bytes"))
        })?;
        let batch = parse_dump(datagram, seq, &mut neighbors)?;
        interrupted |= batch.interrupted;
        if batch.done {
            return Ok((neighbors, interrupted));
        }
    }
}

/// `nlmsghdr` + `ndmsg` asking for every neighbour of every family.
pub(super) fn dump_request(seq: u32) -> [u8; NLMSG_HDRLEN + NDMSG_LEN] {
    let mut request = [0u8; NLMSG_HDRLEN + NDMSG_LEN];
    request[0..4].copy_from_slice(&((NLMSG_HDRLEN + NDMSG_LEN) as u32).to_ne_bytes());
    request[4..6].copy_from_slice(&libc::RTM_GETNEIGH.to_ne_bytes());
    request[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16).to_ne_bytes());
    request[8..12].copy_from_slice(&seq.to_ne_bytes());
    // nlmsg_pid 0 (the kernel fills it in); ndm_family AF_UNSPEC (0): both tables; the rest of
    // ndmsg zero (no filter).
    request
}

/// What one datagram of a dump said besides its neighbours.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Batch {
    /// NLMSG_DONE was seen: the dump is complete.
    pub(super) done: bool,
    /// A message carried NLM_F_DUMP_INTR.
    pub(super) interrupted: bool,
}

/// Parses one datagram of a dump answering request `seq`, appending its neighbours to `out`.
/// Messages of other requests are ignored, unparseable neighbour messages skipped; a datagram
/// that cannot be split into messages, or an error the kernel reports, is an error.
pub(super) fn parse_dump(datagram: &[u8], seq: u32, out: &mut Vec<Neighbor>) -> io::Result<Batch> {
    let mut batch = Batch::default();
    let mut offset = 0;
    while offset < datagram.len() {
        let rest = &datagram[offset..];
        let (Some(len), Some(kind), Some(flags), Some(msg_seq)) =
            (u32_at(rest, 0), u16_at(rest, 4), u16_at(rest, 6), u32_at(rest, 8))
        else {
            return Err(malformed(offset, "a message header is cut short"));
        };
        let len = len as usize;
        if len < NLMSG_HDRLEN || len > rest.len() {
            return Err(malformed(offset, &format!("a message claims {len} bytes of {} left", rest.len())));
        }
        let payload = &rest[NLMSG_HDRLEN..len];
        offset += align4(len);
        if msg_seq != seq {
            continue;
        }
        if flags & NLM_F_DUMP_INTR != 0 {
            batch.interrupted = true;
        }
        match kind {
            NLMSG_DONE => {
                // Since Linux 4.x the payload is the dump's final error code (0 on success).
                if let Some(errno) = i32_at(payload, 0)
                    && errno < 0
                {
                    return Err(kernel_error(errno));
                }
                batch.done = true;
                return Ok(batch);
            }
            NLMSG_ERROR => {
                // struct nlmsgerr: the (negative) error code, then the offending request's header.
                let errno = i32_at(payload, 0).ok_or_else(|| malformed(offset, "NLMSG_ERROR without an error code"))?;
                if errno != 0 {
                    return Err(kernel_error(errno));
                }
            }
            libc::RTM_NEWNEIGH => out.extend(parse_neighbor(payload)),
            _ => {}
        }
    }
    Ok(batch)
}

/// One RTM_NEWNEIGH payload: `ndmsg` then attributes. `None` for families other than IPv4 and
/// IPv6, proxy entries, entries without a destination, and anything malformed (a short header,
/// an attribute whose length is impossible, a destination of the wrong size) — a message that
/// cannot be parsed whole is not trusted in part.
pub(super) fn parse_neighbor(payload: &[u8]) -> Option<Neighbor> {
    let family = i32::from(*payload.first()?);
    let ifindex = u32::try_from(i32_at(payload, 4)?).ok()?;
    let state = u16_at(payload, 8)?;
    let flags = *payload.get(10)?;
    if (family != libc::AF_INET && family != libc::AF_INET6) || flags & libc::NTF_PROXY != 0 {
        return None;
    }
    let mut dst = None;
    let mut mac = None;
    // NLMSG_ALIGN(sizeof(struct ndmsg)) == 12: the attributes follow directly.
    let mut attrs = payload.get(NDMSG_LEN..)?;
    // Fewer bytes than an attribute header at the end are padding (the kernel tolerates them too).
    while attrs.len() >= RTA_HDRLEN {
        let len = usize::from(u16_at(attrs, 0)?);
        let kind = u16_at(attrs, 2)? & NLA_TYPE_MASK;
        if len < RTA_HDRLEN || len > attrs.len() {
            return None;
        }
        let data = &attrs[RTA_HDRLEN..len];
        match kind {
            libc::NDA_DST => {
                dst = Some(match (family, data.len()) {
                    (libc::AF_INET, 4) => IpAddr::V4(Ipv4Addr::from(<[u8; 4]>::try_from(data).ok()?)),
                    (libc::AF_INET6, 16) => IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(data).ok()?)),
                    _ => return None,
                });
            }
            // Other link layers (no address on a tunnel, 20 bytes on InfiniBand) have no MAC.
            libc::NDA_LLADDR => mac = <[u8; 6]>::try_from(data).ok(),
            _ => {}
        }
        attrs = attrs.get(align4(len)..).unwrap_or_default();
    }
    Some(Neighbor { ifindex, addr: dst?, mac, state })
}
