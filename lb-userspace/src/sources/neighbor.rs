//! Neighbour (ARP / NDP) resolution over rtnetlink, on plain libc.
//!
//! dsr-l2 backends need their own MAC and dsr-ipip needs the next hop's MAC. Instead of taking
//! them from the YAML, the agent can learn them from the kernel's neighbour table: [`dump`] reads
//! the table (an RTM_GETNEIGH dump), [`solicit`] makes the kernel resolve an address, and
//! [`Resolver`] does both once a second for a set of targets and publishes their MACs on a
//! `watch` channel that changes only when a MAC is learned, changes or is lost.
//!
//! XDP-forwarded traffic never passes through the kernel's neighbour code, so nothing would
//! re-verify an entry once it went stale: the resolver solicits stale targets too, which makes
//! the kernel probe them (unicast, after `delay_first_probe_time`) and either confirm the MAC,
//! learn a new one or fail the entry. That costs one datagram and one probe per target per
//! `base_reachable_time` (30 s by default).

use std::{
    collections::BTreeMap,
    ffi::CString,
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV6, UdpSocket},
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use tokio::{sync::watch, task::AbortHandle, time::MissedTickBehavior};

/// MACs of the targets that have one, by target address.
pub type MacMap = BTreeMap<IpAddr, [u8; 6]>;

/// How often the resolver reads the table, and the least time between two solicitations of one
/// target.
const PERIOD: Duration = Duration::from_secs(1);
/// A pass that solicited a target without an entry is followed by another this soon (without
/// soliciting again), so that a neighbour answering within it is published without waiting for
/// the next period: on a LAN the answer takes well under a millisecond.
const FOLLOW_UP: Duration = Duration::from_millis(100);
/// A target unresolved for longer than this is logged as a warning (once per episode).
const UNRESOLVED_WARN: Duration = Duration::from_secs(5);
/// Longest wait for one reply datagram of a dump: the kernel answers in microseconds.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer for one datagram of a dump. The kernel sizes dump datagrams by the reader's
/// buffer, capped at 32 KiB; a larger datagram would be reported as truncated (MSG_TRUNC).
const RECV_BUF: usize = 64 * 1024;
/// Dumps retried when the kernel says the table changed while it was being dumped.
const DUMP_ATTEMPTS: usize = 3;
/// UDP discard: the port of the datagram that makes the kernel resolve a neighbour.
const DISCARD_PORT: u16 = 9;

pub(crate) const NLMSG_HDRLEN: usize = 16;
/// `struct ndmsg`: family u8, 3 bytes padding, ifindex i32, state u16, flags u8, type u8.
const NDMSG_LEN: usize = 12;
const RTA_HDRLEN: usize = 4;
/// Attribute type bits (the top two are NLA_F_NESTED and NLA_F_NET_BYTEORDER).
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLMSG_DONE: u16 = libc::NLMSG_DONE as u16;
const NLMSG_ERROR: u16 = libc::NLMSG_ERROR as u16;
const NLM_F_DUMP_INTR: u16 = libc::NLM_F_DUMP_INTR as u16;

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

/// `nlmsghdr` + `ndmsg` asking for every neighbour of every family.
fn dump_request(seq: u32) -> [u8; NLMSG_HDRLEN + NDMSG_LEN] {
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
struct Batch {
    /// NLMSG_DONE was seen: the dump is complete.
    done: bool,
    /// A message carried NLM_F_DUMP_INTR.
    interrupted: bool,
}

/// Parses one datagram of a dump answering request `seq`, appending its neighbours to `out`.
/// Messages of other requests are ignored, unparseable neighbour messages skipped; a datagram
/// that cannot be split into messages, or an error the kernel reports, is an error.
fn parse_dump(datagram: &[u8], seq: u32, out: &mut Vec<Neighbor>) -> io::Result<Batch> {
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
fn parse_neighbor(payload: &[u8]) -> Option<Neighbor> {
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

fn align4(len: usize) -> usize {
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

fn malformed(offset: usize, why: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("malformed netlink reply at byte {offset}: {why}"))
}

/// A negative errno from the kernel.
fn kernel_error(errno: i32) -> io::Error {
    let e = io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(libc::EIO));
    io::Error::new(e.kind(), format!("the kernel answered: {e}"))
}

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

/// Addresses to resolve, each with the interface it is on-link on.
pub type Targets = BTreeMap<IpAddr, String>;

/// Keeps the MACs of a set of target addresses, each on its interface, current.
///
/// One background task reads the neighbour table every second (the first time at once, and again
/// at once after [`Resolver::replace`], and 100 ms after soliciting a target that had no entry),
/// publishes the MAC of every target that has a usable
/// entry on its interface, and solicits targets without one (and targets whose entry is stale,
/// so that the kernel re-verifies it) at most once a second each. The table dump and the
/// solicitations are a handful of short syscalls; they run on tokio's blocking pool
/// (`spawn_blocking`) anyway so that a slow dump of a very large table never holds up a runtime
/// worker.
///
/// Targets must be on-link on their interface (dsr-l2 backends, the dsr-ipip gateway): the kernel
/// resolves the next hop towards an address, and the table is keyed by that next hop.
///
/// Dropping the resolver stops the task; receivers keep the last map and see the channel close.
#[derive(Debug)]
pub struct Resolver {
    targets: watch::Sender<Targets>,
    task: AbortHandle,
}

impl Resolver {
    /// Starts resolving `targets`. Must be called within a tokio runtime. The receiver starts
    /// with an empty map and is woken only when the map changes.
    pub fn start(targets: Targets) -> (Resolver, watch::Receiver<MacMap>) {
        let (macs_tx, macs_rx) = watch::channel(MacMap::new());
        let (targets_tx, targets_rx) = watch::channel(targets.clone());
        let mut tracker = Tracker { targets: BTreeMap::new(), macs: macs_tx, last_error: None };
        tracker.set_targets(targets, Instant::now());
        let task = tokio::spawn(run(tracker, targets_rx)).abort_handle();
        (Resolver { targets: targets_tx, task }, macs_rx)
    }

    /// Resolves `targets` from now on (a reload). Removed targets leave the published map at the
    /// next pass, which runs at once; targets kept keep their MAC without a gap.
    pub fn replace(&mut self, targets: Targets) {
        self.targets.send_if_modified(|current| {
            if *current == targets {
                return false;
            }
            *current = targets;
            true
        });
    }
}

impl Drop for Resolver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(mut tracker: Tracker, mut targets: watch::Receiver<Targets>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut follow_up = false;
    loop {
        let now = tokio::select! {
            at = tick.tick() => at,
            () = tokio::time::sleep(FOLLOW_UP), if follow_up => tokio::time::Instant::now(),
            changed = targets.changed() => {
                if changed.is_err() {
                    return; // the Resolver is gone
                }
                let now = tokio::time::Instant::now();
                tracker.set_targets(targets.borrow_and_update().clone(), now.into_std());
                // The next regular pass is a full period after this one: no target is
                // solicited twice within a period.
                tick.reset();
                now
            }
        };
        (tracker, follow_up) = match tokio::task::spawn_blocking(move || {
            let solicited_unresolved = tracker.pass(now.into_std());
            (tracker, solicited_unresolved)
        })
        .await
        {
            Ok(done) => done,
            Err(e) => {
                if e.is_panic() {
                    tracing::error!(error = %e, "neighbour resolver failed; MACs are no longer updated");
                }
                return; // otherwise the runtime is shutting down
            }
        };
    }
}

/// The resolver's state, moved into the blocking pool for each pass.
#[derive(Debug)]
struct Tracker {
    targets: BTreeMap<IpAddr, Target>,
    macs: watch::Sender<MacMap>,
    /// The last error reading the table, logged once until it changes or clears.
    last_error: Option<String>,
}

#[derive(Debug, Default)]
struct Target {
    /// The interface it is on-link on.
    iface: String,
    /// Since when the target has had no usable entry (`None` while it has one).
    unresolved_since: Option<Instant>,
    /// Whether the warning about this unresolved episode was logged.
    warned: bool,
    last_solicit: Option<Instant>,
    /// The last solicitation error, logged once until it changes or clears.
    solicit_error: Option<String>,
}

impl Tracker {
    fn set_targets(&mut self, targets: Targets, now: Instant) {
        // A target that moved to another interface starts over.
        self.targets.retain(|addr, target| targets.get(addr) == Some(&target.iface));
        for (addr, iface) in targets {
            self.targets.entry(addr).or_insert_with(|| Target {
                iface,
                unresolved_since: Some(now),
                ..Target::default()
            });
        }
    }

    /// Reads the table, publishes, solicits. Says whether it solicited a target that had no
    /// usable entry (one whose answer is worth looking for soon).
    fn pass(&mut self, now: Instant) -> bool {
        let observed = self.indexes().and_then(|indexes| Ok((indexes, dump()?)));
        let entries = match observed {
            Ok((indexes, neighbors)) => {
                if let Some(error) = self.last_error.take() {
                    tracing::info!(%error, "neighbour table readable again");
                }
                usable_entries(&neighbors, &indexes)
            }
            Err(e) => {
                // Keep publishing the last MACs: a transient error must not take backends away.
                let error = e.to_string();
                if self.last_error.as_ref() != Some(&error) {
                    tracing::warn!(%error, "cannot read the neighbour table; keeping the last known MACs");
                    self.last_error = Some(error);
                }
                return false;
            }
        };
        self.publish(entries.iter().map(|(addr, (mac, _))| (*addr, *mac)).collect());
        let mut solicited_unresolved = false;
        for (addr, target) in &mut self.targets {
            let iface = target.iface.as_str();
            let (resolved, stale) = match entries.get(addr) {
                Some((_, state)) => {
                    if target.warned
                        && let Some(since) = target.unresolved_since
                    {
                        let after = now.saturating_duration_since(since);
                        tracing::info!(iface, %addr, ?after, "neighbour resolved");
                    }
                    target.unresolved_since = None;
                    target.warned = false;
                    (true, state & libc::NUD_STALE != 0)
                }
                None => {
                    let since = *target.unresolved_since.get_or_insert(now);
                    if !target.warned && now.saturating_duration_since(since) > UNRESOLVED_WARN {
                        tracing::warn!(iface, %addr, after = ?UNRESOLVED_WARN, "neighbour unresolved: no ARP/NDP answer yet; still soliciting");
                        target.warned = true;
                    }
                    (false, false)
                }
            };
            if (resolved && !stale)
                || target.last_solicit.is_some_and(|last| now.saturating_duration_since(last) < PERIOD)
            {
                continue;
            }
            target.last_solicit = Some(now);
            match solicit(iface, *addr) {
                Ok(()) => {
                    target.solicit_error = None;
                    solicited_unresolved |= !resolved;
                }
                Err(e) => {
                    let error = e.to_string();
                    if target.solicit_error.as_ref() != Some(&error) {
                        tracing::warn!(iface, %addr, %error, "cannot solicit neighbour");
                        target.solicit_error = Some(error);
                    }
                }
            }
        }
        solicited_unresolved
    }

    /// Each target's interface index (an interface that is gone fails the whole pass: the last
    /// MACs stay published).
    fn indexes(&self) -> io::Result<BTreeMap<IpAddr, u32>> {
        let mut by_name: BTreeMap<&str, u32> = BTreeMap::new();
        let mut out = BTreeMap::new();
        for (addr, target) in &self.targets {
            let iface = target.iface.as_str();
            let index = match by_name.get(iface) {
                Some(index) => *index,
                None => {
                    let index = ifindex(iface)?;
                    by_name.insert(iface, index);
                    index
                }
            };
            out.insert(*addr, index);
        }
        Ok(out)
    }

    /// Publishes `macs` if it differs from the current map, logging what changed.
    fn publish(&self, macs: MacMap) {
        let iface = |addr: &IpAddr| self.targets.get(addr).map_or("", |t| t.iface.as_str());
        self.macs.send_if_modified(|current| {
            if *current == macs {
                return false;
            }
            for (addr, mac) in &macs {
                match current.get(addr) {
                    None => tracing::info!(iface = iface(addr), %addr, mac = %format_mac(mac), "neighbour MAC learned"),
                    Some(old) if old != mac => {
                        tracing::info!(iface = iface(addr), %addr, old = %format_mac(old), mac = %format_mac(mac), "neighbour MAC changed");
                    }
                    Some(_) => {}
                }
            }
            for (addr, old) in current.iter() {
                if !macs.contains_key(addr) && self.targets.contains_key(addr) {
                    tracing::info!(iface = iface(addr), %addr, old = %format_mac(old), "neighbour MAC lost; soliciting");
                }
            }
            *current = macs;
            true
        });
    }
}

/// MAC and state of each target (address → the index of its interface) with a usable entry on
/// its interface. All-zero MACs (some NOARP devices) are not usable for forwarding.
fn usable_entries(neighbors: &[Neighbor], targets: &BTreeMap<IpAddr, u32>) -> BTreeMap<IpAddr, ([u8; 6], u16)> {
    neighbors
        .iter()
        .filter(|n| targets.get(&n.addr) == Some(&n.ifindex) && is_usable(n.state))
        .filter_map(|n| n.mac.filter(|mac| *mac != [0; 6]).map(|mac| (n.addr, (mac, n.state))))
        .collect()
}

fn format_mac(mac: &[u8; 6]) -> String {
    let [a, b, c, d, e, f] = mac;
    format!("{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{f:02x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEQ: u32 = 7;
    const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

    fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((RTA_HDRLEN + data.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(data);
        out.resize(align4(out.len()), 0);
        out
    }

    fn ndmsg(family: i32, ifindex: i32, state: u16, flags: u8) -> Vec<u8> {
        let mut out = vec![family as u8, 0, 0, 0];
        out.extend_from_slice(&ifindex.to_ne_bytes());
        out.extend_from_slice(&state.to_ne_bytes());
        out.push(flags);
        out.push(1); // ndm_type: RTN_UNICAST
        out
    }

    fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        out.extend_from_slice(&kind.to_ne_bytes());
        out.extend_from_slice(&(flags | libc::NLM_F_MULTI as u16).to_ne_bytes());
        out.extend_from_slice(&seq.to_ne_bytes());
        out.extend_from_slice(&1234u32.to_ne_bytes());
        out.extend_from_slice(payload);
        out.resize(align4(out.len()), 0);
        out
    }

    fn v4_neighbor() -> Vec<u8> {
        let mut payload = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
        payload.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
        payload.extend(attr(libc::NDA_LLADDR, &MAC));
        payload.extend(attr(libc::NDA_PROBES, &0u32.to_ne_bytes()));
        payload
    }

    fn v6_neighbor() -> Vec<u8> {
        let mut payload = ndmsg(libc::AF_INET6, 4, libc::NUD_STALE, 0);
        payload.extend(attr(libc::NDA_DST, &"fd00:213::2".parse::<Ipv6Addr>().unwrap().octets()));
        payload.extend(attr(libc::NDA_LLADDR, &MAC));
        payload
    }

    fn done(seq: u32) -> Vec<u8> {
        message(libc::NLMSG_DONE as u16, 0, seq, &0i32.to_ne_bytes())
    }

    #[test]
    fn parses_v4_and_v6_entries_and_done() {
        let mut datagram = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
        datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, &v6_neighbor()));
        datagram.extend(done(SEQ));
        let mut out = Vec::new();
        let batch = parse_dump(&datagram, SEQ, &mut out).unwrap();
        assert_eq!(batch, Batch { done: true, interrupted: false });
        assert_eq!(
            out,
            [
                Neighbor {
                    ifindex: 3,
                    addr: "10.213.0.2".parse().unwrap(),
                    mac: Some(MAC),
                    state: libc::NUD_REACHABLE
                },
                Neighbor { ifindex: 4, addr: "fd00:213::2".parse().unwrap(), mac: Some(MAC), state: libc::NUD_STALE },
            ]
        );
    }

    #[test]
    fn a_dump_spans_datagrams_until_done() {
        let mut out = Vec::new();
        let first = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
        assert_eq!(parse_dump(&first, SEQ, &mut out).unwrap(), Batch::default(), "not done yet");
        let mut second = message(libc::RTM_NEWNEIGH, libc::NLM_F_DUMP_INTR as u16, SEQ, &v6_neighbor());
        second.extend(done(SEQ));
        assert_eq!(parse_dump(&second, SEQ, &mut out).unwrap(), Batch { done: true, interrupted: true });
        assert_eq!(out.len(), 2);
    }

    #[test]
    fn entries_without_mac_other_families_and_other_requests() {
        // Incomplete: a destination but no link-layer address.
        let mut incomplete = ndmsg(libc::AF_INET, 3, libc::NUD_INCOMPLETE, 0);
        incomplete.extend(attr(libc::NDA_DST, &[10, 213, 0, 99]));
        // A tunnel's empty link-layer address, flagged as nested/byte-order bits (masked off).
        let mut tunnel = ndmsg(libc::AF_INET, 5, libc::NUD_NOARP, 0);
        tunnel.extend(attr(libc::NDA_DST | 0x4000, &[10, 9, 0, 1]));
        tunnel.extend(attr(libc::NDA_LLADDR, &[]));
        // A bridge FDB entry, a proxy entry, an entry without destination: skipped.
        let mut bridge = ndmsg(libc::AF_BRIDGE, 3, libc::NUD_REACHABLE, 0);
        bridge.extend(attr(libc::NDA_LLADDR, &MAC));
        let mut proxy = ndmsg(libc::AF_INET, 3, libc::NUD_NONE, libc::NTF_PROXY);
        proxy.extend(attr(libc::NDA_DST, &[10, 213, 0, 3]));
        let mut no_dst = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
        no_dst.extend(attr(libc::NDA_LLADDR, &MAC));

        let mut datagram = Vec::new();
        for payload in [&incomplete, &tunnel, &bridge, &proxy, &no_dst] {
            datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, payload));
        }
        // Another request's messages (even its DONE) and other message types are ignored.
        datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ + 1, &v4_neighbor()));
        datagram.extend(done(SEQ + 1));
        datagram.extend(message(libc::RTM_NEWLINK, 0, SEQ, &[0; 16]));
        let mut out = Vec::new();
        assert_eq!(parse_dump(&datagram, SEQ, &mut out).unwrap(), Batch::default());
        assert_eq!(
            out,
            [
                Neighbor { ifindex: 3, addr: "10.213.0.99".parse().unwrap(), mac: None, state: libc::NUD_INCOMPLETE },
                Neighbor { ifindex: 5, addr: "10.9.0.1".parse().unwrap(), mac: None, state: libc::NUD_NOARP },
            ]
        );
    }

    #[test]
    fn truncated_neighbor_messages_are_skipped() {
        let full = v4_neighbor();
        // Attributes: DST at 12..20, LLADDR at 20..30 (padded to 32), PROBES at 32..40. Every
        // prefix: a cut ndmsg or a cut attribute body is never a wrong entry and never a panic.
        assert_eq!(full.len(), 40);
        for cut in 0..full.len() {
            let parsed = parse_neighbor(&full[..cut]);
            let body_cut = (24..30).contains(&cut) || (36..40).contains(&cut);
            if cut < 20 || body_cut {
                assert_eq!(parsed, None, "cut at {cut}");
            } else {
                // Cut between attributes or inside a header (trailing padding): what came
                // before is whole.
                let n = parsed.unwrap_or_else(|| panic!("cut at {cut}"));
                assert_eq!(n.addr, "10.213.0.2".parse::<IpAddr>().unwrap());
                assert_eq!(n.mac, (cut >= 30).then_some(MAC), "cut at {cut}");
            }
        }
        assert!(parse_neighbor(&full).is_some());
    }

    #[test]
    fn bad_attribute_lengths_and_wrong_address_sizes_are_skipped() {
        // An attribute shorter than its own header.
        let mut short = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
        short.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
        short.extend_from_slice(&2u16.to_ne_bytes());
        short.extend_from_slice(&libc::NDA_LLADDR.to_ne_bytes());
        assert_eq!(parse_neighbor(&short), None);
        // An attribute longer than the message.
        let mut long = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
        long.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
        long.extend_from_slice(&200u16.to_ne_bytes());
        long.extend_from_slice(&libc::NDA_LLADDR.to_ne_bytes());
        long.extend_from_slice(&MAC);
        assert_eq!(parse_neighbor(&long), None);
        // An IPv6-sized destination in an IPv4 entry.
        let mut mixed = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
        mixed.extend(attr(libc::NDA_DST, &[0; 16]));
        assert_eq!(parse_neighbor(&mixed), None);
        // A negative ifindex.
        let mut negative = ndmsg(libc::AF_INET, -1, libc::NUD_REACHABLE, 0);
        negative.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
        assert_eq!(parse_neighbor(&negative), None);
        // A MAC of another size is no MAC.
        let mut odd_mac = ndmsg(libc::AF_INET6, 3, libc::NUD_REACHABLE, 0);
        odd_mac.extend(attr(libc::NDA_DST, &[0xfd; 16]));
        odd_mac.extend(attr(libc::NDA_LLADDR, &[1, 2, 3, 4, 5, 6, 7, 8]));
        assert_eq!(parse_neighbor(&odd_mac).map(|n| n.mac), Some(None));

        // Inside a dump, such a message is skipped and the next one still parsed.
        let mut datagram = message(libc::RTM_NEWNEIGH, 0, SEQ, &long);
        datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, &v6_neighbor()));
        datagram.extend(done(SEQ));
        let mut out = Vec::new();
        assert!(parse_dump(&datagram, SEQ, &mut out).unwrap().done);
        assert_eq!(out.iter().map(|n| n.addr).collect::<Vec<_>>(), ["fd00:213::2".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn unframeable_datagrams_and_kernel_errors_are_errors() {
        let mut out = Vec::new();
        let whole = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
        for cut in [1, NLMSG_HDRLEN - 1, NLMSG_HDRLEN, whole.len() - 1] {
            let e = parse_dump(&whole[..cut], SEQ, &mut out).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut at {cut}: {e}");
        }
        // nlmsg_len smaller than the header.
        let mut tiny = whole.clone();
        tiny[0..4].copy_from_slice(&4u32.to_ne_bytes());
        assert_eq!(parse_dump(&tiny, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
        assert!(out.is_empty());

        let mut error = (-libc::EPERM).to_ne_bytes().to_vec();
        error.extend_from_slice(&[0; NLMSG_HDRLEN]);
        let e = parse_dump(&message(libc::NLMSG_ERROR as u16, 0, SEQ, &error), SEQ, &mut out).unwrap_err();
        assert_eq!(e.raw_os_error(), None, "wrapped with context");
        assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
        // An ACK (error 0) is not an error; a short NLMSG_ERROR is malformed.
        let ack = message(libc::NLMSG_ERROR as u16, 0, SEQ, &[0; 4 + NLMSG_HDRLEN]);
        assert_eq!(parse_dump(&ack, SEQ, &mut out).unwrap(), Batch::default());
        let short = message(libc::NLMSG_ERROR as u16, 0, SEQ, &[0; 2]);
        assert_eq!(parse_dump(&short, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
        // DONE carrying an error (e.g. the dump was interrupted by a signal in the kernel).
        let failed_done = message(libc::NLMSG_DONE as u16, 0, SEQ, &(-libc::EINTR).to_ne_bytes());
        assert_eq!(parse_dump(&failed_done, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::Interrupted);
        // DONE without payload (old kernels) ends the dump; i32::MIN does not overflow.
        assert!(parse_dump(&message(libc::NLMSG_DONE as u16, 0, SEQ, &[]), SEQ, &mut out).unwrap().done);
        let min = message(libc::NLMSG_ERROR as u16, 0, SEQ, &i32::MIN.to_ne_bytes());
        assert!(parse_dump(&min, SEQ, &mut out).is_err());
    }

    #[test]
    fn usable_states() {
        for state in [
            libc::NUD_REACHABLE,
            libc::NUD_STALE,
            libc::NUD_DELAY,
            libc::NUD_PROBE,
            libc::NUD_PERMANENT,
            libc::NUD_NOARP,
        ] {
            assert!(is_usable(state), "{state:#x}");
        }
        for state in [libc::NUD_NONE, libc::NUD_INCOMPLETE, libc::NUD_FAILED] {
            assert!(!is_usable(state), "{state:#x}");
        }
    }

    #[test]
    fn usable_entries_keep_targets_on_the_interface_with_a_mac() {
        let a: IpAddr = "10.213.0.2".parse().unwrap();
        let b: IpAddr = "10.213.0.3".parse().unwrap();
        let c: IpAddr = "10.213.0.4".parse().unwrap();
        let d: IpAddr = "10.213.0.5".parse().unwrap();
        let e: IpAddr = "10.213.0.6".parse().unwrap();
        let mut targets: BTreeMap<IpAddr, u32> = [a, b, c, d].into_iter().map(|x| (x, 3)).collect();
        targets.insert(e, 4);
        let n = |ifindex, addr, mac, state| Neighbor { ifindex, addr, mac, state };
        let neighbors = [
            n(3, a, Some(MAC), libc::NUD_STALE),
            n(4, b, Some(MAC), libc::NUD_REACHABLE), // another interface
            n(3, b, None, libc::NUD_INCOMPLETE),
            n(3, c, Some(MAC), libc::NUD_FAILED),
            n(3, d, Some([0; 6]), libc::NUD_NOARP),
            n(3, "10.213.0.9".parse().unwrap(), Some(MAC), libc::NUD_REACHABLE), // not a target
            n(3, e, Some(MAC), libc::NUD_REACHABLE),                             // e is a target on interface 4
            n(4, e, Some([2; 6]), libc::NUD_REACHABLE),
        ];
        let usable = usable_entries(&neighbors, &targets);
        assert_eq!(usable, BTreeMap::from([(a, (MAC, libc::NUD_STALE)), (e, ([2; 6], libc::NUD_REACHABLE))]));
    }

    #[test]
    fn the_request_is_a_dump_of_all_families() {
        let request = dump_request(42);
        assert_eq!(u32_at(&request, 0), Some(28));
        assert_eq!(u16_at(&request, 4), Some(libc::RTM_GETNEIGH));
        assert_eq!(u16_at(&request, 6), Some((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16));
        assert_eq!(u32_at(&request, 8), Some(42));
        assert_eq!(request[NLMSG_HDRLEN], libc::AF_UNSPEC as u8);
    }

    #[test]
    fn interface_names_are_checked() {
        for name in ["", "a-name-longer-than-ifnamsiz", "nul\0"] {
            let e = ifindex(name).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
        }
        let e = ifindex("xlb-no-such-if").unwrap_err();
        assert!(e.to_string().contains("xlb-no-such-if"), "{e}");
        assert!(solicit("", "10.213.0.2".parse().unwrap()).is_err());
    }

    #[test]
    fn macs_format_like_ip_link() {
        assert_eq!(format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]), "02:ab:00:01:10:ff");
    }
}
