//! Makes an l7 VIP's address local, so that the kernel delivers its packets (which XDP passes
//! as not-ours) to the proxy's listener: RTM_NEWADDR of a host address (/32, /128) on `lo`,
//! RTM_DELADDR when the VIP goes or the agent exits. Only addresses this agent added are
//! removed; one that was already there (configured by the operator) is left alone.

use std::{
    io,
    net::IpAddr,
    os::fd::AsRawFd as _,
    sync::atomic::{AtomicU32, Ordering},
};

use crate::sources::netlink::{NLMSG_HDRLEN, i32_at, u16_at, u32_at};

const IFADDRMSG_LEN: usize = 8;

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
        let ifindex = crate::sources::netlink::ifindex("lo")?;
        let added = match request(libc::RTM_NEWADDR, libc::NLM_F_CREATE | libc::NLM_F_EXCL, ifindex, address) {
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
        match request(libc::RTM_DELADDR, 0, self.ifindex, self.address) {
            Ok(()) => tracing::info!(address = %self.address, "l7 VIP address removed from lo"),
            Err(e) if e.raw_os_error() == Some(libc::EADDRNOTAVAIL) => {}
            Err(e) => tracing::warn!(address = %self.address, error = %e, "removing the l7 VIP address from lo failed"),
        }
    }
}

/// `nlmsghdr` + `ifaddrmsg` + IFA_LOCAL + IFA_ADDRESS for a host address on `ifindex`.
fn message(kind: u16, flags: i32, seq: u32, ifindex: u32, address: IpAddr) -> Vec<u8> {
    let (family, prefix, octets): (u8, u8, Vec<u8>) = match address {
        IpAddr::V4(a) => (libc::AF_INET as u8, 32, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, 128, a.octets().to_vec()),
    };
    let mut out = Vec::with_capacity(NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * (4 + octets.len()));
    out.extend_from_slice(&[0u8; NLMSG_HDRLEN]);
    // ifaddrmsg: family, prefixlen, flags (no DAD for IPv6), scope universe, index.
    out.extend_from_slice(&[family, prefix, libc::IFA_F_NODAD as u8, 0]);
    out.extend_from_slice(&ifindex.to_ne_bytes());
    for attr in [libc::IFA_LOCAL, libc::IFA_ADDRESS] {
        out.extend_from_slice(&((4 + octets.len()) as u16).to_ne_bytes());
        out.extend_from_slice(&attr.to_ne_bytes());
        out.extend_from_slice(&octets);
    }
    let len = out.len() as u32;
    out[0..4].copy_from_slice(&len.to_ne_bytes());
    out[4..6].copy_from_slice(&kind.to_ne_bytes());
    out[6..8].copy_from_slice(&((libc::NLM_F_REQUEST | libc::NLM_F_ACK | flags) as u16).to_ne_bytes());
    out[8..12].copy_from_slice(&seq.to_ne_bytes());
    out
}

/// The errno of an NLMSG_ERROR acknowledging `seq` (0: success); `None` for anything else.
fn ack_errno(reply: &[u8], seq: u32) -> Option<i32> {
    if u16_at(reply, 4)? != libc::NLMSG_ERROR as u16 || u32_at(reply, 8)? != seq {
        return None;
    }
    i32_at(reply, NLMSG_HDRLEN)
}

fn request(kind: u16, flags: i32, ifindex: u32, address: IpAddr) -> io::Result<()> {
    static SEQ: AtomicU32 = AtomicU32::new(1);
    let seq = SEQ.fetch_add(1, Ordering::Relaxed);
    let socket = crate::sources::netlink::route_socket()?;
    let msg = message(kind, flags, seq, ifindex, address);
    // SAFETY: send reads `msg.len()` bytes from a live buffer; an unconnected netlink socket
    // sends to the kernel.
    if unsafe { libc::send(socket.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let mut buf = [0u8; 1024];
    // Bounded: every recv waits at most the socket's receive timeout, and a few stray datagrams at most.
    for _ in 0..8 {
        // SAFETY: recv writes at most `buf.len()` bytes into `buf`, which lives across the call.
        let n = unsafe { libc::recv(socket.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        let reply = &buf[..usize::try_from(n).unwrap_or(0).min(buf.len())];
        match ack_errno(reply, seq) {
            Some(0) => return Ok(()),
            Some(errno) => return Err(io::Error::from_raw_os_error(errno.checked_neg().unwrap_or(libc::EIO))),
            None => continue,
        }
    }
    Err(io::Error::new(io::ErrorKind::TimedOut, "no acknowledgement from the kernel"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_carry_a_host_prefix_and_both_attributes() {
        let m = message(libc::RTM_NEWADDR, libc::NLM_F_CREATE, 7, 1, "192.0.2.10".parse().unwrap());
        assert_eq!(m.len(), NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * 8);
        assert_eq!(u32::from_ne_bytes(m[0..4].try_into().unwrap()) as usize, m.len());
        assert_eq!(&m[16..20], &[libc::AF_INET as u8, 32, libc::IFA_F_NODAD as u8, 0]);
        assert_eq!(&m[28..32], &[192, 0, 2, 10]);
        let m = message(libc::RTM_DELADDR, 0, 7, 1, "2001:db8::1".parse().unwrap());
        assert_eq!(m.len(), NLMSG_HDRLEN + IFADDRMSG_LEN + 2 * 20);
        assert_eq!(m[17], 128);
    }

    #[test]
    fn acks_are_matched_by_sequence() {
        let mut ack = vec![0u8; 36];
        ack[4..6].copy_from_slice(&(libc::NLMSG_ERROR as u16).to_ne_bytes());
        ack[8..12].copy_from_slice(&9u32.to_ne_bytes());
        ack[16..20].copy_from_slice(&(-libc::EEXIST).to_ne_bytes());
        assert_eq!(ack_errno(&ack, 9), Some(-libc::EEXIST));
        assert_eq!(ack_errno(&ack, 8), None);
        assert_eq!(ack_errno(&ack[..10], 9), None, "short replies are not acks");
    }
}
