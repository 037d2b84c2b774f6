//! The kernel's neighbour table through rtnetlink: entries as [`Neighbor`], one dump of both
//! families, and the managed entries the resolver asks the kernel to keep resolved.

use std::{io, net::IpAddr};

use futures_util::TryStreamExt as _;
use rtnetlink::{
    Handle,
    packet_route::{
        AddressFamily,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteProtocol,
    },
};

use crate::sources::netlink;

/// The protocol xlb marks the neighbour entries it creates with (NDA_PROTOCOL, shown by
/// `ip neigh` as `proto 201`), so that it removes only its own, even those a previous run made.
pub const PROTOCOL: u8 = 201;

/// One entry of the kernel's neighbour table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Neighbor {
    pub ifindex: u32,
    pub addr: IpAddr,
    /// The link-layer address, when the entry has a 6-byte one (an unresolved entry has none).
    pub mac: Option<[u8; 6]>,
    /// NUD_* bits (see [`is_usable`]).
    pub state: u16,
    /// The kernel keeps it resolved by itself (NTF_EXT_MANAGED).
    pub managed: bool,
    /// Created by xlb (its NDA_PROTOCOL is [`PROTOCOL`]).
    pub ours: bool,
}

impl Neighbor {
    /// An RTM_NEWNEIGH / RTM_DELNEIGH message as an entry. `None` for families other than IPv4
    /// and IPv6, proxy entries and entries without a destination.
    pub fn from_message(message: &NeighbourMessage) -> Option<Neighbor> {
        let header = &message.header;
        if !matches!(header.family, AddressFamily::Inet | AddressFamily::Inet6)
            || header.flags.contains(NeighbourFlags::Proxy)
        {
            return None;
        }
        let (mut addr, mut mac, mut managed, mut ours) = (None, None, false, false);
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => addr = Some(IpAddr::V4(*a)),
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => addr = Some(IpAddr::V6(*a)),
                // Other link layers (no address on a tunnel, 20 bytes on InfiniBand) have no MAC.
                NeighbourAttribute::LinkLayerAddress(lladdr) => mac = <[u8; 6]>::try_from(lladdr.as_slice()).ok(),
                NeighbourAttribute::ExtFlags(flags) => managed = flags.contains(NeighbourExtFlags::Managed),
                NeighbourAttribute::Protocol(protocol) => ours = u8::from(*protocol) == PROTOCOL,
                _ => {}
            }
        }
        Some(Neighbor { ifindex: header.ifindex, addr: addr?, mac, state: u16::from(header.state), managed, ours })
    }

    /// Set by the operator (`ip neigh add … permanent`) or on a device without ARP: never
    /// replaced or removed by xlb.
    pub fn is_static(&self) -> bool {
        self.state & (libc::NUD_PERMANENT | libc::NUD_NOARP) != 0
    }
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

/// The IPv4 and IPv6 neighbour tables of this network namespace, all interfaces.
pub async fn dump(handle: &Handle) -> io::Result<Vec<Neighbor>> {
    let messages: Vec<NeighbourMessage> = handle
        .neighbours()
        .get()
        .execute()
        .try_collect()
        .await
        .map_err(|e| netlink::error("reading the neighbour table (RTM_GETNEIGH)", e))?;
    Ok(messages.iter().filter_map(Neighbor::from_message).collect())
}

/// Why the kernel would not keep an entry resolved.
#[derive(Debug)]
pub enum ManageError {
    /// This kernel has no managed neighbour entries (before Linux 5.16): solicit instead.
    Unsupported(io::Error),
    Failed(io::Error),
}

/// Asks the kernel to keep `addr` on interface `ifindex` resolved by itself (a managed entry:
/// resolved at once, re-verified before it goes stale, never garbage-collected). An existing
/// dynamic entry is turned into a managed one and keeps its MAC meanwhile.
pub async fn manage(handle: &Handle, ifindex: u32, addr: IpAddr) -> Result<(), ManageError> {
    let mut request = handle.neighbours().add(ifindex, addr).replace().state(NeighbourState::None);
    let attributes = &mut request.message_mut().attributes;
    attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    attributes.push(NeighbourAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
    match request.execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(message))
            if matches!(message.raw_code().abs(), libc::EINVAL | libc::EOPNOTSUPP | libc::EPROTONOSUPPORT) =>
        {
            let e = message.to_io();
            Err(ManageError::Unsupported(io::Error::new(e.kind(), format!("managed neighbour entries: {e}"))))
        }
        Err(e) => Err(ManageError::Failed(netlink::error(&format!("making {addr} a managed neighbour"), e))),
    }
}

/// Removes the entry for `addr` on `ifindex` (one of xlb's managed entries whose target left the
/// config). An entry already gone is not an error.
pub async fn release(handle: &Handle, ifindex: u32, addr: IpAddr) -> io::Result<()> {
    let mut message = NeighbourMessage::default();
    message.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    message.header.ifindex = ifindex;
    message.attributes.push(NeighbourAttribute::Destination(match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    match handle.neighbours().del(message).execute().await {
        Ok(()) => Ok(()),
        Err(rtnetlink::Error::NetlinkError(message)) if message.raw_code().abs() == libc::ENOENT => Ok(()),
        Err(e) => Err(netlink::error(&format!("removing the neighbour entry of {addr}"), e)),
    }
}
