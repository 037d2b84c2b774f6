//! BFD (RFC 5880), single hop over UDP (RFC 5881), asynchronous mode, no authentication: one
//! session per BGP peer that has it enabled, so a peer that goes silent is noticed in
//! `multiplier × interval` instead of the hold time.
//!
//! [`Session`] is the protocol (packets in, packets and state changes out, time passed in);
//! [`Hub`] owns the receive sockets on port 3784 and hands each packet to its peer's task;
//! [`run`] is a peer's task (its own transmit socket, timers).

mod packet;
mod session;
#[cfg(test)]
mod tests;

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::{
    net::UdpSocket,
    sync::{mpsc, watch},
    task::JoinHandle,
    time::Instant,
};

use crate::config::BfdConfig;

/// RFC 5881: control packets go to this port; their source port is 49152..=65535.
pub const CONTROL_PORT: u16 = 3784;
const SOURCE_PORTS: std::ops::RangeInclusive<u16> = 49152..=65535;
/// Packets are sent and accepted with TTL / hop limit 255 only (RFC 5881 §5, GTSM).
const TTL: u32 = 255;
/// While the session is not up, packets go no faster than one a second (RFC 5880 §6.8.3).
const SLOW_TX: Duration = Duration::from_secs(1);
const PACKET_LEN: usize = 24;

pub use packet::{DIAG_ADMIN_DOWN, DIAG_DETECTION_TIME_EXPIRED, DIAG_NEIGHBOR_DOWN, DIAG_NONE, Packet, State};
pub use session::{Session, Status};

/// Random bits from the kernel.
pub(crate) fn random_u64() -> u64 {
    let mut buf = [0u8; 8];
    // SAFETY: getrandom writes at most `buf.len()` bytes into the valid buffer it is given.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // Not worth failing over: time-based bits still keep discriminators apart.
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        return t.as_nanos() as u64 ^ u64::from(std::process::id()) << 32;
    }
    u64::from_ne_bytes(buf)
}

pub(super) fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

/// Normalizes IPv4-mapped IPv6 sources to IPv4.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(IpAddr::V6(v6)),
        v4 => v4,
    }
}

type Registry = Arc<Mutex<HashMap<IpAddr, mpsc::Sender<Packet>>>>;

/// The receive side shared by a speaker's BFD sessions: UDP 3784 on every address (IPv4 and
/// IPv6), packets dispatched by source address.
#[derive(Debug)]
pub struct Hub {
    registry: Registry,
    task: JoinHandle<()>,
}

impl Hub {
    /// Starts the receive task (inside a tokio runtime).
    pub fn start() -> Hub {
        let registry: Registry = Arc::default();
        let task = tokio::spawn(receive(Arc::clone(&registry)));
        Hub { registry, task }
    }

    /// Packets from `peer` go to the returned receiver from now on.
    pub fn register(&self, peer: IpAddr) -> (mpsc::Sender<Packet>, mpsc::Receiver<Packet>) {
        let (tx, rx) = mpsc::channel(16);
        self.registry.lock().unwrap_or_else(|e| e.into_inner()).insert(canonical(peer), tx.clone());
        (tx, rx)
    }

    /// Forgets `peer` if `tx` is still its registration (a newer session may have replaced it).
    pub fn unregister(&self, peer: IpAddr, tx: &mpsc::Sender<Packet>) {
        let mut registry = self.registry.lock().unwrap_or_else(|e| e.into_inner());
        if registry.get(&canonical(peer)).is_some_and(|t| t.same_channel(tx)) {
            registry.remove(&canonical(peer));
        }
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn bind_receive(v6: bool) -> std::io::Result<UdpSocket> {
    let (domain, any): (Domain, IpAddr) =
        if v6 { (Domain::IPV6, IpAddr::from([0u16; 8])) } else { (Domain::IPV4, IpAddr::from([0u8; 4])) };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if v6 {
        socket.set_only_v6(true)?;
        crate::sockopt::set_int(&socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, TTL as libc::c_int)?;
    } else {
        crate::sockopt::set_int(&socket, libc::IPPROTO_IP, libc::IP_MINTTL, TTL as libc::c_int)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&SocketAddr::new(any, CONTROL_PORT).into())?;
    UdpSocket::from_std(socket.into())
}

async fn receive(registry: Registry) {
    let mut warned = false;
    let (v4, v6) = loop {
        match (bind_receive(false), bind_receive(true)) {
            (Ok(v4), Ok(v6)) => break (v4, v6),
            (Err(e), _) | (_, Err(e)) => {
                // Another process (or a speaker still closing) holds the port: try again.
                if !warned {
                    tracing::warn!(port = CONTROL_PORT, error = %e, "BFD: cannot bind the control port yet; retrying");
                    warned = true;
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    let mut buf4 = [0u8; 128];
    let mut buf6 = [0u8; 128];
    loop {
        let (n, from, buf) = tokio::select! {
            r = v4.recv_from(&mut buf4) => match r { Ok((n, from)) => (n, from, &buf4[..]), Err(_) => continue },
            r = v6.recv_from(&mut buf6) => match r { Ok((n, from)) => (n, from, &buf6[..]), Err(_) => continue },
        };
        let packet = match Packet::decode(&buf[..n]) {
            Ok(p) => p,
            Err(why) => {
                tracing::debug!(%from, %why, "BFD: dropped a control packet");
                continue;
            }
        };
        let tx = registry.lock().unwrap_or_else(|e| e.into_inner()).get(&canonical(from.ip())).cloned();
        if let Some(tx) = tx {
            // A full queue means the session task is behind; dropping a packet is what the
            // network might have done anyway.
            let _ = tx.try_send(packet);
        }
    }
}

fn transmit_socket(peer: IpAddr, source: Option<IpAddr>) -> std::io::Result<UdpSocket> {
    let domain = if peer.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let socket = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP))?;
    if peer.is_ipv4() {
        socket.set_ttl_v4(TTL)?;
    } else {
        socket.set_unicast_hops_v6(TTL)?;
    }
    socket.set_nonblocking(true)?;
    let any = match (source, peer) {
        (Some(s), _) => s,
        (None, IpAddr::V4(_)) => IpAddr::from([0u8; 4]),
        (None, IpAddr::V6(_)) => IpAddr::from([0u16; 8]),
    };
    // A source port from the range, picked at random; a few tries around collisions.
    let span = u64::from(SOURCE_PORTS.end() - SOURCE_PORTS.start()) + 1;
    let mut last = None;
    for _ in 0..16 {
        let port = SOURCE_PORTS.start() + (random_u64() % span) as u16;
        match socket.bind(&SocketAddr::new(any, port).into()) {
            Ok(()) => {
                last = None;
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    if let Some(e) = last {
        return Err(e);
    }
    socket.connect(&SocketAddr::new(peer, CONTROL_PORT).into())?;
    UdpSocket::from_std(socket.into())
}

/// A peer's BFD task: sends from its own socket, receives through the hub's channel, publishes
/// its status, and on `stop` tells the peer it is administratively down.
pub(crate) async fn run(
    peer: IpAddr,
    source: Option<IpAddr>,
    config: BfdConfig,
    mut packets: mpsc::Receiver<Packet>,
    status: watch::Sender<Status>,
    mut stop: watch::Receiver<bool>,
) {
    let socket = loop {
        match transmit_socket(peer, source) {
            Ok(s) => break s,
            Err(e) => {
                tracing::debug!(%peer, error = %e, "BFD: no transmit socket yet");
                tokio::select! {
                    _ = tokio::time::sleep(SLOW_TX) => {}
                    _ = stop.changed() => return,
                }
            }
        }
    };
    // Discriminators are nonzero and unique enough among a node's sessions.
    let disc = loop {
        let d = random_u64() as u32;
        if d != 0 {
            break d;
        }
    };
    let mut session = Session::new(config, disc, Instant::now());
    let publish = |session: &Session| {
        status.send_if_modified(|s| {
            let new = session.status();
            let changed = *s != new;
            if changed {
                tracing::info!(%peer, from = s.state.name(), to = new.state.name(), diag = new.diag, "BFD session state");
            }
            *s = new;
            changed
        });
    };
    loop {
        tokio::select! {
            p = packets.recv() => {
                let Some(p) = p else { break };
                if let Some(reply) = session.receive(&p, Instant::now()) {
                    let _ = socket.send(&reply.encode()).await;
                }
            }
            _ = tokio::time::sleep_until(session.next_deadline()) => {}
            _ = stop.changed() => break,
        }
        if let Some(p) = session.tick(Instant::now(), random_unit()) {
            // Send errors (no route, link down) are what BFD is there to notice.
            let _ = socket.send(&p.encode()).await;
        }
        publish(&session);
    }
    session.admin_down(Instant::now());
    publish(&session);
    // A few AdminDown packets so the peer does not count our going away as a failure.
    for _ in 0..3 {
        let _ = socket.send(&session.packet(false).encode()).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
