//! BFD (RFC 5880), single hop over UDP (RFC 5881), asynchronous mode, no authentication: one
//! session per BGP peer that has it enabled, so a peer that goes silent is noticed in
//! `multiplier × interval` instead of the hold time.
//!
//! [`Session`] is the protocol (packets in, packets and state changes out, time passed in);
//! [`Hub`] owns the receive sockets on port 3784 and hands each packet to its peer's task;
//! [`run`] is a peer's task (its own transmit socket, timers).

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, SocketAddr},
    os::fd::AsRawFd,
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

/// bfd.SessionState.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    AdminDown = 0,
    Down = 1,
    Init = 2,
    Up = 3,
}

impl State {
    fn from_bits(bits: u8) -> State {
        match bits & 3 {
            0 => State::AdminDown,
            1 => State::Down,
            2 => State::Init,
            _ => State::Up,
        }
    }

    /// As `xlb status` shows it.
    pub fn name(self) -> &'static str {
        match self {
            State::AdminDown => "admin_down",
            State::Down => "down",
            State::Init => "init",
            State::Up => "up",
        }
    }
}

/// Diagnostic codes (RFC 5880 §4.1) the speaker sets.
pub const DIAG_NONE: u8 = 0;
pub const DIAG_DETECTION_TIME_EXPIRED: u8 = 1;
pub const DIAG_NEIGHBOR_DOWN: u8 = 3;
pub const DIAG_ADMIN_DOWN: u8 = 7;

/// A BFD control packet without authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub diag: u8,
    pub state: State,
    pub poll: bool,
    pub fin: bool,
    pub demand: bool,
    pub detect_mult: u8,
    pub my_disc: u32,
    pub your_disc: u32,
    /// Microseconds.
    pub desired_min_tx: u32,
    pub required_min_rx: u32,
    pub required_min_echo_rx: u32,
}

/// Why a received packet is dropped (RFC 5880 §6.8.6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Invalid {
    Short,
    Version(u8),
    Length(u8),
    ZeroMultiplier,
    Multipoint,
    ZeroDiscriminator,
    /// Your Discriminator is zero but the sender says Init or Up.
    NoYourDiscriminator,
    /// Authentication is not configured here.
    Authenticated,
}

impl fmt::Display for Invalid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Invalid::Short => write!(f, "shorter than {PACKET_LEN} bytes"),
            Invalid::Version(v) => write!(f, "version {v}, not 1"),
            Invalid::Length(l) => write!(f, "length field {l} does not match"),
            Invalid::ZeroMultiplier => write!(f, "detect multiplier 0"),
            Invalid::Multipoint => write!(f, "multipoint bit set"),
            Invalid::ZeroDiscriminator => write!(f, "My Discriminator 0"),
            Invalid::NoYourDiscriminator => write!(f, "Your Discriminator 0 outside Down/AdminDown"),
            Invalid::Authenticated => write!(f, "authentication present but not configured"),
        }
    }
}

impl Packet {
    pub fn encode(&self) -> [u8; PACKET_LEN] {
        let mut b = [0u8; PACKET_LEN];
        b[0] = (1 << 5) | (self.diag & 0x1f);
        b[1] = ((self.state as u8) << 6)
            | (u8::from(self.poll) << 5)
            | (u8::from(self.fin) << 4)
            | (u8::from(self.demand) << 1);
        b[2] = self.detect_mult;
        b[3] = PACKET_LEN as u8;
        b[4..8].copy_from_slice(&self.my_disc.to_be_bytes());
        b[8..12].copy_from_slice(&self.your_disc.to_be_bytes());
        b[12..16].copy_from_slice(&self.desired_min_tx.to_be_bytes());
        b[16..20].copy_from_slice(&self.required_min_rx.to_be_bytes());
        b[20..24].copy_from_slice(&self.required_min_echo_rx.to_be_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Packet, Invalid> {
        if b.len() < PACKET_LEN {
            return Err(Invalid::Short);
        }
        let version = b[0] >> 5;
        if version != 1 {
            return Err(Invalid::Version(version));
        }
        let auth = b[1] & 0x04 != 0;
        let len = b[3];
        if usize::from(len) > b.len() || len < if auth { 26 } else { PACKET_LEN as u8 } {
            return Err(Invalid::Length(len));
        }
        if auth {
            return Err(Invalid::Authenticated);
        }
        let word = |i: usize| u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let p = Packet {
            diag: b[0] & 0x1f,
            state: State::from_bits(b[1] >> 6),
            poll: b[1] & 0x20 != 0,
            fin: b[1] & 0x10 != 0,
            demand: b[1] & 0x02 != 0,
            detect_mult: b[2],
            my_disc: word(4),
            your_disc: word(8),
            desired_min_tx: word(12),
            required_min_rx: word(16),
            required_min_echo_rx: word(20),
        };
        if p.detect_mult == 0 {
            return Err(Invalid::ZeroMultiplier);
        }
        if b[1] & 0x01 != 0 {
            return Err(Invalid::Multipoint);
        }
        if p.my_disc == 0 {
            return Err(Invalid::ZeroDiscriminator);
        }
        if p.your_disc == 0 && !matches!(p.state, State::Down | State::AdminDown) {
            return Err(Invalid::NoYourDiscriminator);
        }
        Ok(p)
    }
}

fn micros(d: Duration) -> u32 {
    u32::try_from(d.as_micros()).unwrap_or(u32::MAX)
}

/// What a session reports: its state and the diagnostic of the last change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    pub state: State,
    pub diag: u8,
    /// The peer said AdminDown: it turned BFD off, which is no failure (RFC 5882 §3.2).
    pub peer_admin_down: bool,
}

/// One BFD session's state variables (RFC 5880 §6.8.1) and timers.
#[derive(Debug, Clone)]
pub struct Session {
    config: BfdConfig,
    pub state: State,
    pub diag: u8,
    local_disc: u32,
    remote_disc: u32,
    remote_state: State,
    remote_min_rx: Duration,
    remote_desired_tx: Duration,
    remote_mult: u8,
    /// A Poll Sequence is running (our timers changed; RFC 5880 §6.5).
    polling: bool,
    /// The interval we advertise now: 1 s until Up, then `config.min_tx`.
    desired_tx: Duration,
    next_tx: Instant,
    detect_at: Option<Instant>,
}

impl Session {
    pub fn new(config: BfdConfig, local_disc: u32, now: Instant) -> Session {
        Session {
            config,
            state: State::Down,
            diag: DIAG_NONE,
            local_disc,
            remote_disc: 0,
            remote_state: State::Down,
            // RFC 5880 §6.8.1: initially 1 µs.
            remote_min_rx: Duration::from_micros(1),
            remote_desired_tx: Duration::ZERO,
            remote_mult: 0,
            polling: false,
            desired_tx: config.min_tx.max(SLOW_TX),
            next_tx: now,
            detect_at: None,
        }
    }

    pub fn status(&self) -> Status {
        Status { state: self.state, diag: self.diag, peer_admin_down: self.remote_state == State::AdminDown }
    }

    /// A control packet as the session would send it now.
    pub fn packet(&self, fin: bool) -> Packet {
        Packet {
            diag: self.diag,
            state: self.state,
            poll: self.polling && !fin,
            fin,
            demand: false,
            detect_mult: self.config.multiplier,
            my_disc: self.local_disc,
            your_disc: self.remote_disc,
            desired_min_tx: micros(self.desired_tx),
            required_min_rx: micros(self.config.min_rx),
            required_min_echo_rx: 0,
        }
    }

    /// Detection time: the remote multiplier times the slower of what we accept and what it
    /// sends (RFC 5880 §6.8.4).
    pub fn detection_time(&self) -> Duration {
        self.config.min_rx.max(self.remote_desired_tx) * u32::from(self.remote_mult.max(1))
    }

    fn tx_interval(&self) -> Duration {
        self.desired_tx.max(self.remote_min_rx)
    }

    fn set_state(&mut self, state: State, diag: u8, now: Instant) {
        if state == self.state {
            return;
        }
        self.state = state;
        self.diag = diag;
        let desired = if state == State::Up { self.config.min_tx } else { self.config.min_tx.max(SLOW_TX) };
        if desired != self.desired_tx {
            self.desired_tx = desired;
            self.polling = true;
        }
        // Tell the peer at once.
        self.next_tx = now;
    }

    /// Handles a received packet; returns a packet to send at once (the Final answer to a
    /// Poll), if any.
    pub fn receive(&mut self, p: &Packet, now: Instant) -> Option<Packet> {
        if p.your_disc != 0 && p.your_disc != self.local_disc {
            return None;
        }
        self.remote_disc = p.my_disc;
        self.remote_state = p.state;
        self.remote_min_rx = Duration::from_micros(u64::from(p.required_min_rx));
        self.remote_desired_tx = Duration::from_micros(u64::from(p.desired_min_tx));
        self.remote_mult = p.detect_mult;
        if p.fin && self.polling {
            self.polling = false;
        }
        if self.state == State::AdminDown {
            return None;
        }
        self.detect_at = Some(now + self.detection_time());
        match (self.state, p.state) {
            (State::Down, State::AdminDown) => {}
            (_, State::AdminDown) => self.set_state(State::Down, DIAG_NEIGHBOR_DOWN, now),
            (State::Down, State::Down) => self.set_state(State::Init, DIAG_NONE, now),
            (State::Down, State::Init) | (State::Init, State::Init | State::Up) => {
                self.set_state(State::Up, DIAG_NONE, now)
            }
            (State::Up, State::Down) => self.set_state(State::Down, DIAG_NEIGHBOR_DOWN, now),
            _ => {}
        }
        p.poll.then(|| self.packet(true))
    }

    /// Runs the timers up to `now`: the detection timer, then periodic transmission. Returns the
    /// packet to send, if one is due; `rand` (0..1) jitters the next interval.
    pub fn tick(&mut self, now: Instant, rand: f64) -> Option<Packet> {
        if self.detect_at.is_some_and(|at| now >= at) {
            self.detect_at = None;
            self.remote_disc = 0;
            self.remote_state = State::Down;
            if matches!(self.state, State::Init | State::Up) {
                self.set_state(State::Down, DIAG_DETECTION_TIME_EXPIRED, now);
            }
        }
        if now < self.next_tx {
            return None;
        }
        // RFC 5880 §6.8.7: 75–100 % of the interval (75–90 % with a multiplier of 1).
        let top = if self.config.multiplier == 1 { 0.9 } else { 1.0 };
        let factor = 0.75 + (top - 0.75) * rand.clamp(0.0, 1.0);
        self.next_tx = now + self.tx_interval().mul_f64(factor);
        // A peer asking for no packets (Required Min RX 0) gets none.
        (!self.remote_min_rx.is_zero()).then(|| self.packet(false))
    }

    /// The next instant `tick` has work.
    pub fn next_deadline(&self) -> Instant {
        match self.detect_at {
            Some(at) => at.min(self.next_tx),
            None => self.next_tx,
        }
    }

    /// Administratively down: the peer is told not to count this as a failure.
    pub fn admin_down(&mut self, now: Instant) {
        self.set_state(State::AdminDown, DIAG_ADMIN_DOWN, now);
        self.detect_at = None;
    }
}

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

fn random_unit() -> f64 {
    (random_u64() >> 11) as f64 / (1u64 << 53) as f64
}

fn set_int_opt(socket: &Socket, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> std::io::Result<()> {
    // SAFETY: setsockopt on an open socket with a pointer to a live c_int and its size.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    if rc == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
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
        set_int_opt(&socket, libc::IPPROTO_IPV6, libc::IPV6_MINHOPCOUNT, TTL as libc::c_int)?;
    } else {
        set_int_opt(&socket, libc::IPPROTO_IP, libc::IP_MINTTL, TTL as libc::c_int)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> BfdConfig {
        BfdConfig {
            enabled: true,
            min_tx: Duration::from_millis(100),
            min_rx: Duration::from_millis(100),
            multiplier: 3,
        }
    }

    /// A packet BIRD 2.0.12 sent to a speaker here (`bfd on`, 100 ms × 3): Down, no
    /// diagnostic, multiplier 3, Your Discriminator 0, desired TX 1 s (the slow rate while
    /// down), required RX 100 ms.
    const BIRD_DOWN: [u8; 24] = [
        0x20, 0x40, 0x03, 0x18, 0x67, 0x95, 0x1b, 0x4c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x01,
        0x86, 0xa0, 0x00, 0x00, 0x00, 0x00,
    ];

    #[test]
    fn packets_round_trip() {
        let p = Packet::decode(&BIRD_DOWN).unwrap();
        assert_eq!(
            p,
            Packet {
                diag: 0,
                state: State::Down,
                poll: false,
                fin: false,
                demand: false,
                detect_mult: 3,
                my_disc: 0x6795_1b4c,
                your_disc: 0,
                desired_min_tx: 1_000_000,
                required_min_rx: 100_000,
                required_min_echo_rx: 0,
            }
        );
        assert_eq!(p.encode(), BIRD_DOWN);
        let up = Packet { state: State::Up, poll: true, your_disc: 7, diag: 3, ..p };
        assert_eq!(Packet::decode(&up.encode()), Ok(up));
    }

    #[test]
    fn invalid_packets_are_dropped() {
        let good = BIRD_DOWN;
        let with = |i: usize, v: u8| {
            let mut b = good;
            b[i] = v;
            b
        };
        assert_eq!(Packet::decode(&good[..23]), Err(Invalid::Short));
        assert_eq!(Packet::decode(&with(0, 0x40)), Err(Invalid::Version(2)));
        assert_eq!(Packet::decode(&with(3, 30)), Err(Invalid::Length(30)));
        assert_eq!(Packet::decode(&with(3, 20)), Err(Invalid::Length(20)));
        assert_eq!(Packet::decode(&with(2, 0)), Err(Invalid::ZeroMultiplier));
        assert_eq!(Packet::decode(&with(1, 0x41)), Err(Invalid::Multipoint));
        assert_eq!(Packet::decode(&with(1, 0xc0)), Err(Invalid::NoYourDiscriminator));
        let mut auth = [0u8; 28];
        auth[..24].copy_from_slice(&with(1, 0x44));
        auth[3] = 28;
        assert_eq!(Packet::decode(&auth), Err(Invalid::Authenticated));
        let mut zero = good;
        zero[4..8].copy_from_slice(&[0; 4]);
        assert_eq!(Packet::decode(&zero), Err(Invalid::ZeroDiscriminator));
    }

    fn peer(state: State, my: u32, your: u32) -> Packet {
        Packet {
            diag: 0,
            state,
            poll: false,
            fin: false,
            demand: false,
            detect_mult: 3,
            my_disc: my,
            your_disc: your,
            desired_min_tx: 100_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    }

    #[test]
    fn three_way_handshake_then_detection_timeout() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), 42, t0);
        // Down and slow (1 s) until up.
        let first = s.tick(t0, 0.0).unwrap();
        assert_eq!((first.state, first.desired_min_tx, first.your_disc), (State::Down, 1_000_000, 0));
        assert!(s.tick(t0 + Duration::from_millis(10), 0.0).is_none(), "not before the interval");
        // Peer Down → Init; peer Init → Up.
        assert_eq!(s.receive(&peer(State::Down, 9, 0), t0), None);
        assert_eq!(s.state, State::Init);
        let p = s.tick(t0, 0.5).unwrap();
        assert_eq!((p.state, p.your_disc), (State::Init, 9), "sent at once on a state change");
        s.receive(&peer(State::Up, 9, 42), t0);
        assert_eq!(s.state, State::Up);
        // Up: the fast rate, announced with a Poll until the peer answers Final.
        let p = s.tick(t0, 0.0).unwrap();
        assert_eq!((p.state, p.poll, p.desired_min_tx), (State::Up, true, 100_000));
        assert!(s.next_deadline() <= t0 + Duration::from_millis(100));
        s.receive(&Packet { fin: true, ..peer(State::Up, 9, 42) }, t0);
        assert!(!s.tick(t0 + Duration::from_millis(100), 0.0).unwrap().poll);
        // A Poll from the peer is answered with Final at once.
        let reply = s.receive(&Packet { poll: true, ..peer(State::Up, 9, 42) }, t0 + Duration::from_millis(100));
        assert!(reply.is_some_and(|r| r.fin && !r.poll));
        // Silence for 3 × 100 ms: down, detection time expired.
        assert_eq!(s.detection_time(), Duration::from_millis(300));
        assert!(s.tick(t0 + Duration::from_millis(399), 0.0).is_none_or(|p| p.state == State::Up));
        assert_eq!(s.state, State::Up);
        let p = s.tick(t0 + Duration::from_millis(400), 0.0).unwrap();
        assert_eq!((s.state, s.diag, p.state, p.your_disc), (State::Down, DIAG_DETECTION_TIME_EXPIRED, State::Down, 0));
        assert_eq!(p.desired_min_tx, 1_000_000, "back to the slow rate");
    }

    #[test]
    fn peer_signals_and_foreign_discriminators() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), 42, t0);
        s.receive(&peer(State::Init, 9, 42), t0);
        assert_eq!(s.state, State::Up, "Down + peer Init → Up");
        // A packet for another session is ignored.
        s.receive(&peer(State::Down, 9, 43), t0);
        assert_eq!(s.state, State::Up);
        s.receive(&peer(State::Down, 9, 42), t0);
        assert_eq!((s.state, s.diag), (State::Down, DIAG_NEIGHBOR_DOWN));
        s.receive(&peer(State::Down, 9, 42), t0);
        s.receive(&peer(State::Up, 9, 42), t0);
        assert_eq!(s.state, State::Up);
        s.receive(&peer(State::AdminDown, 9, 42), t0);
        assert_eq!((s.state, s.diag), (State::Down, DIAG_NEIGHBOR_DOWN));
        // Init does not go up on the peer's Down.
        let mut s = Session::new(config(), 42, t0);
        s.receive(&peer(State::Down, 9, 0), t0);
        s.receive(&peer(State::Down, 9, 42), t0);
        assert_eq!(s.state, State::Init);
        s.admin_down(t0);
        s.receive(&peer(State::Up, 9, 42), t0);
        assert_eq!(s.packet(false).state, State::AdminDown);
    }

    #[test]
    fn transmit_interval_follows_the_slower_side_with_jitter() {
        let t0 = Instant::now();
        let mut s = Session::new(config(), 42, t0);
        s.receive(&peer(State::Init, 9, 42), t0);
        // The peer accepts no faster than 250 ms.
        s.receive(&Packet { required_min_rx: 250_000, ..peer(State::Up, 9, 42) }, t0);
        s.tick(t0, 1.0).unwrap();
        assert_eq!(s.next_deadline(), t0 + Duration::from_millis(250));
        let at = t0 + Duration::from_millis(250);
        s.receive(&Packet { required_min_rx: 250_000, ..peer(State::Up, 9, 42) }, at);
        s.tick(at, 0.0).unwrap();
        assert_eq!(s.next_deadline(), at + Duration::from_micros(187_500), "75 % at the low end");
        // Required Min RX 0: the peer wants no packets.
        s.receive(&Packet { required_min_rx: 0, ..peer(State::Up, 9, 42) }, at);
        assert!(s.tick(at + Duration::from_secs(1), 0.0).is_none());
    }
}
