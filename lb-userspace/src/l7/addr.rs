//! Makes an l7 VIP's address local, so that the kernel delivers its packets (which XDP passes
//! as not-ours) to the proxy's listener: RTM_NEWADDR of a host address (/32, /128) on `lo`,
//! RTM_DELADDR when the VIP goes or the agent exits. Only addresses this agent added are
//! removed; one that was already there (configured by the operator) is left alone.

use std::{io, net::IpAddr};

use rtnetlink::{
    packet_core::{NLM_F_CREATE, NLM_F_EXCL},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        address::{AddressAttribute, AddressHeaderFlags, AddressMessage, AddressScope},
    },
};

use crate::sources::netlink;

/// An address on `lo` for as long as this lives.
#[derive(Debug)]
pub struct LocalAddress {
    pub address: IpAddr,
    /// Whether this agent added it (and so removes it).
    added: bool,
    ifindex: u32,
}

impl LocalAddress {
    pub fn add(address: IpAddr) -> io::Result<Self> {
        let ifindex = netlink::ifindex("lo")?;
        let added = match netlink::request_ack(
            RouteNetlinkMessage::NewAddress(message(ifindex, address)),
            NLM_F_CREATE | NLM_F_EXCL,
        ) {
            Ok(()) => true,
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => false,
            Err(e) => {
                return Err(io::Error::new(e.kind(), format!("adding {address} to lo (RTM_NEWADDR): {e}")));
            }
        };
        if added {
            tracing::info!(%address, "l7 VIP address added to lo");
        }
        Ok(LocalAddress { address, added, ifindex })
    }

    /// Whether this agent added it.
    pub fn is_ours(&self) -> bool {
        self.added
    }
}

impl Drop for LocalAddress {
    fn drop(&mut self) {
        if !self.added {
            return;
        }
        match netlink::request_ack(RouteNetlinkMessage::DelAddress(message(self.ifindex, self.address)), 0) {
            Ok(()) => tracing::info!(address = %self.address, "l7 VIP address removed from lo"),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => tracing::warn!(address = %self.address, error = %e, "removing the l7 VIP address from lo failed"),
        }
    }
}

/// A host address (/32, /128) on `ifindex`, without duplicate address detection for IPv6.
fn message(ifindex: u32, address: IpAddr) -> AddressMessage {
    let mut message = AddressMessage::default();
    message.header.family = match address {
        IpAddr::V4(_) => AddressFamily::Inet,
        IpAddr::V6(_) => AddressFamily::Inet6,
    };
    message.header.prefix_len = if address.is_ipv4() { 32 } else { 128 };
    message.header.flags = AddressHeaderFlags::Nodad;
    message.header.scope = AddressScope::Universe;
    message.header.index = ifindex;
    message.attributes = vec![AddressAttribute::Local(address), AddressAttribute::Address(address)];
    message
}

#[cfg(test)]
mod tests {
    use rtnetlink::packet_core::{Emitable as _, NetlinkMessage};

    use super::*;

    #[test]
    fn messages_carry_a_host_prefix_and_both_attributes() {
        let m = message(1, "192.0.2.10".parse().unwrap());
        assert_eq!((m.header.prefix_len, m.header.index), (32, 1));
        let mut wire = NetlinkMessage::from(RouteNetlinkMessage::NewAddress(m));
        wire.finalize();
        let mut buf = vec![0; wire.buffer_len()];
        wire.serialize(&mut buf);
        // ifaddrmsg after the 16-byte header: family, prefix length, flags (no DAD), scope.
        assert_eq!(&buf[16..20], &[libc::AF_INET as u8, 32, libc::IFA_F_NODAD as u8, 0]);
        assert_eq!(buf.windows(4).filter(|w| *w == [192, 0, 2, 10]).count(), 2, "IFA_LOCAL and IFA_ADDRESS");
        let m = message(1, "2001:db8::1".parse().unwrap());
        assert_eq!(m.header.prefix_len, 128);
        let _ = m.buffer_len();
    }
}
