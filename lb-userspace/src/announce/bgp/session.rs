//! One BGP-4 session per peer (RFC 4271 §8): connect, exchange OPENs, keepalives and the hold
//! timer, announcements that follow the route set, a NOTIFICATION for every error, and
//! reconnection with exponential backoff.
//!
//! The speaker connects actively and does not listen, so connection collisions (§6.8) cannot
//! happen. It ignores the peer's routes beyond checking that its UPDATEs are well formed.

use std::{
    collections::BTreeSet,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{Arc, Mutex},
    time::Duration,
};

use netgauze_bgp_pkt::{BgpMessage, capabilities::BgpCapability, wire::deserializer::BgpParsingContext};
use netgauze_iana::address_family::AddressType;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
    sync::watch,
    task::JoinHandle,
    time::{Instant, sleep, sleep_until, timeout},
};

use super::{
    Announce, bfd, md5,
    message::{
        self, CEASE, CEASE_ADMIN_SHUTDOWN, CEASE_BFD_DOWN, CEASE_OTHER_CONFIG_CHANGE, CEASE_PEER_DECONFIGURED,
        FAMILIES, FSM_ERROR, HOLD_TIMER_EXPIRED, Notification, OPEN_MESSAGE_ERROR, RouteAttrs, TYPE_NOTIFICATION,
    },
};
use crate::config::{BgpPeer, Community};

/// The hold timer while waiting for the peer's OPEN (RFC 4271 §8: "a large value", 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Bound on writing one message: a peer that stops reading is as dead as one that stops talking.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);
/// First reconnection delay; it doubles up to `connect_retry`.
const FIRST_BACKOFF: Duration = Duration::from_millis(250);
/// Bound on waiting for a replaced session to close before the new one connects.
const REPLACE_WAIT: Duration = Duration::from_secs(5);
/// A session established at least this long resets the backoff; one that fails sooner (a peer
/// that rejects our UPDATEs, say) keeps backing off.
const STABLE: Duration = Duration::from_secs(10);

/// RFC 4271 §8.2.2 states, as `xlb status` shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FsmState {
    #[default]
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

impl FsmState {
    pub fn name(self) -> &'static str {
        match self {
            FsmState::Idle => "idle",
            FsmState::Connect => "connect",
            FsmState::Active => "active",
            FsmState::OpenSent => "open_sent",
            FsmState::OpenConfirm => "open_confirm",
            FsmState::Established => "established",
        }
    }
}

/// What the speaker reads of a session.
#[derive(Debug, Default)]
pub(crate) struct Shared {
    pub state: FsmState,
    pub established_at: Option<std::time::Instant>,
    pub prefixes_sent: usize,
    /// Sessions that ended in an error after the TCP connection was up.
    pub flaps: u64,
    pub last_error: Option<String>,
    /// When `last_error` was recorded (seconds since the Unix epoch).
    pub last_error_at: Option<u64>,
    /// UPDATE messages sent to and received from the peer, over all sessions.
    pub updates_sent: u64,
    pub updates_received: u64,
}

impl Shared {
    pub fn set_error(&mut self, error: String) {
        self.last_error = Some(error);
        self.last_error_at =
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).ok().map(|d| d.as_secs());
    }
}

/// Settings fixed for a session's life: a change replaces the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SessionParams {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub hold_time: u16,
    pub restart_time: u16,
    pub peer: BgpPeer,
}

/// Settings a running session follows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Live {
    pub communities: Vec<Community>,
    pub med: Option<u32>,
    pub local_pref: Option<u32>,
    pub connect_retry: Duration,
    /// Announce nothing (drain, shutdown).
    pub draining: bool,
}

/// Why the speaker ends a session: the Cease subcode it sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stop {
    Shutdown,
    Deconfigured,
    Reconfigured,
}

impl Stop {
    fn notification(self) -> Notification {
        let subcode = match self {
            Stop::Shutdown => CEASE_ADMIN_SHUTDOWN,
            Stop::Deconfigured => CEASE_PEER_DECONFIGURED,
            Stop::Reconfigured => CEASE_OTHER_CONFIG_CHANGE,
        };
        Notification::new(CEASE, subcode, [])
    }
}

/// Everything a peer's task works with.
#[derive(Debug)]
pub(crate) struct PeerCtx {
    pub params: Arc<SessionParams>,
    pub live: watch::Receiver<Live>,
    pub stop: watch::Receiver<Option<Stop>>,
    pub routes: watch::Receiver<Announce>,
    pub bfd: Option<watch::Receiver<bfd::Status>>,
    pub shared: Arc<Mutex<Shared>>,
    /// True while nothing is announced to the peer.
    pub drained: watch::Sender<bool>,
    /// Sets the Restart State bit of graceful restart in OPEN until a session is established.
    pub restarted: bool,
}

impl PeerCtx {
    fn shared(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_state(&self, state: FsmState) {
        let mut shared = self.shared();
        shared.state = state;
        if state == FsmState::Established {
            shared.established_at = Some(std::time::Instant::now());
        } else {
            shared.established_at = None;
        }
    }

    fn stopping(&self) -> bool {
        self.stop.borrow().is_some()
    }
}

/// Exponential backoff with jitter, capped.
#[derive(Debug)]
struct Backoff {
    next: Duration,
}

impl Backoff {
    fn new() -> Self {
        Backoff { next: FIRST_BACKOFF }
    }

    fn reset(&mut self) {
        self.next = FIRST_BACKOFF;
    }

    fn next(&mut self, cap: Duration) -> Duration {
        let base = self.next.min(cap);
        self.next = (self.next * 2).min(cap);
        // 75–100 %: peers restarted together do not reconnect in lockstep.
        let rand = (bfd::random_u64() >> 11) as f64 / (1u64 << 53) as f64;
        base.mul_f64(0.75 + 0.25 * rand)
    }
}

/// The peer's task: connects, runs sessions, and reconnects until told to stop.
pub(crate) async fn run_peer(mut ctx: PeerCtx, previous: Option<JoinHandle<()>>) {
    if let Some(mut previous) = previous
        && timeout(REPLACE_WAIT, &mut previous).await.is_err()
    {
        previous.abort();
    }
    let peer = ctx.params.peer.address;
    let mut backoff = Backoff::new();
    while !ctx.stopping() {
        ctx.set_state(FsmState::Connect);
        let connect_timeout = ctx.live.borrow().connect_retry.max(Duration::from_secs(2));
        let connected = tokio::select! {
            r = connect(&ctx.params.peer, connect_timeout) => r,
            _ = ctx.stop.changed() => break,
        };
        match connected {
            Err(e) => {
                tracing::debug!(%peer, error = %e, "BGP: connect failed");
                ctx.shared().set_error(e);
                ctx.set_state(FsmState::Active);
            }
            Ok((stream, local)) => {
                tracing::debug!(%peer, %local, "BGP: connected");
                let end = run_session(&mut ctx, stream, local).await;
                if let Some(lasted) = end.established_for {
                    ctx.restarted = false;
                    if lasted >= STABLE {
                        backoff.reset();
                    }
                }
                if let Some(error) = end.error {
                    tracing::warn!(%peer, %error, "BGP session ended");
                    let mut shared = ctx.shared();
                    shared.flaps += 1;
                    shared.set_error(error);
                }
                ctx.set_state(FsmState::Idle);
                if end.stopped {
                    break;
                }
            }
        }
        let delay = backoff.next(ctx.live.borrow().connect_retry);
        tokio::select! {
            _ = sleep(delay) => {}
            _ = ctx.stop.changed() => break,
        }
    }
    ctx.set_state(FsmState::Idle);
    ctx.shared().prefixes_sent = 0;
    ctx.drained.send_replace(true);
}

/// Opens the TCP connection (MD5 key and source address first); returns it and its local
/// address, the next hop we announce.
async fn connect(peer: &BgpPeer, limit: Duration) -> Result<(TcpStream, IpAddr), String> {
    let remote = SocketAddr::new(peer.address, peer.port);
    let socket = if peer.address.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }
        .map_err(|e| format!("socket: {e}"))?;
    if let Some(password) = &peer.password {
        md5::set_key(&socket, peer.address, password.as_bytes())
            .map_err(|e| format!("setting the TCP MD5 key (TCP_MD5SIG): {e}"))?;
    }
    if let Some(source) = peer.source_address {
        socket.bind(SocketAddr::new(source, 0)).map_err(|e| format!("binding source address {source}: {e}"))?;
    }
    let stream = match timeout(limit, socket.connect(remote)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(format!("connecting to {remote}: {e}")),
        Err(_) => return Err(format!("connecting to {remote}: no answer within {}s", limit.as_secs())),
    };
    let _ = stream.set_nodelay(true);
    let local = stream.local_addr().map_err(|e| format!("local address: {e}"))?.ip();
    Ok((stream, local))
}

/// How a session ended.
#[derive(Debug)]
pub(crate) struct End {
    /// Why, unless the speaker itself stopped it.
    pub error: Option<String>,
    /// How long the session was established, if it was.
    pub established_for: Option<Duration>,
    pub stopped: bool,
}

/// What the OPEN exchange settled.
#[derive(Debug, Clone)]
struct Negotiated {
    /// Seconds; 0: no keepalives, no hold timer.
    hold: u16,
    asn4: bool,
    families: Vec<AddressType>,
}

/// Ending a session: the NOTIFICATION to send, and what to report.
#[derive(Debug)]
struct Close {
    notification: Option<Notification>,
    error: Option<String>,
    stopped: bool,
}

impl Close {
    fn error(error: impl Into<String>) -> Close {
        Close { notification: None, error: Some(error.into()), stopped: false }
    }

    fn notify(n: Notification, error: impl Into<String>) -> Close {
        Close { notification: Some(n), error: Some(error.into()), stopped: false }
    }
}

enum Event {
    Read(std::io::Result<usize>),
    Hold,
    Keepalive,
    Routes,
    Live,
    Stop,
    Bfd,
}

struct Session<'a, S> {
    ctx: &'a mut PeerCtx,
    stream: S,
    local: IpAddr,
    buf: Vec<u8>,
    scratch: Vec<u8>,
    state: FsmState,
    parsing: BgpParsingContext,
    negotiated: Option<Negotiated>,
    hold_at: Option<Instant>,
    keepalive_at: Option<Instant>,
    sent: BTreeSet<IpAddr>,
    attrs: Option<RouteAttrs>,
    bfd_up: bool,
    routes_open: bool,
    live_open: bool,
    bfd_open: bool,
    established_at: Option<Instant>,
}

/// Runs one session over a connected stream until it ends.
pub(crate) async fn run_session<S: AsyncRead + AsyncWrite + Unpin>(ctx: &mut PeerCtx, stream: S, local: IpAddr) -> End {
    let bfd_up = ctx.bfd.as_ref().is_some_and(|b| b.borrow().state == bfd::State::Up);
    let bfd_open = ctx.bfd.is_some();
    let session = Session {
        ctx,
        stream,
        local,
        buf: Vec::new(),
        scratch: vec![0; 16384],
        state: FsmState::Connect,
        parsing: message::parsing_context(false),
        negotiated: None,
        hold_at: None,
        keepalive_at: None,
        sent: BTreeSet::new(),
        attrs: None,
        bfd_up,
        routes_open: true,
        live_open: true,
        bfd_open,
        established_at: None,
    };
    session.run().await
}

impl<S: AsyncRead + AsyncWrite + Unpin> Session<'_, S> {
    async fn run(mut self) -> End {
        let result = self.exchange().await;
        let close = match result {
            Ok(()) => Close::error("session ended"),
            Err(close) => close,
        };
        self.close(close).await
    }

    fn set_state(&mut self, state: FsmState) {
        self.state = state;
        self.ctx.set_state(state);
    }

    async fn send(&mut self, message: &BgpMessage) -> Result<(), Close> {
        let bytes = message::encode(message).map_err(|e| Close::error(format!("encoding a message: {e}")))?;
        match timeout(WRITE_TIMEOUT, self.stream.write_all(&bytes)).await {
            Ok(Ok(())) => {
                if matches!(message, BgpMessage::Update(_)) {
                    self.ctx.shared().updates_sent += 1;
                }
                Ok(())
            }
            Ok(Err(e)) => Err(Close::error(format!("sending to the peer: {e}"))),
            Err(_) => Err(Close::error(format!("sending to the peer: blocked for {}s", WRITE_TIMEOUT.as_secs()))),
        }
    }

    async fn close(mut self, close: Close) -> End {
        if let Some(n) = &close.notification {
            let _ = self.send(&n.to_message()).await;
            tracing::debug!(peer = %self.ctx.params.peer.address, notification = %n, "BGP: sent NOTIFICATION");
        }
        let _ = timeout(Duration::from_secs(1), self.stream.shutdown()).await;
        self.sent.clear();
        self.ctx.shared().prefixes_sent = 0;
        self.ctx.drained.send_replace(true);
        End { error: close.error, established_for: self.established_at.map(|t| t.elapsed()), stopped: close.stopped }
    }

    fn reset_hold(&mut self) {
        let hold = match &self.negotiated {
            Some(n) if n.hold == 0 => None,
            Some(n) => Some(Duration::from_secs(u64::from(n.hold))),
            None => Some(OPEN_HOLD.max(Duration::from_secs(u64::from(self.ctx.params.hold_time)))),
        };
        self.hold_at = hold.map(|h| Instant::now() + h);
    }

    async fn exchange(&mut self) -> Result<(), Close> {
        let p = Arc::clone(&self.ctx.params);
        let open = message::open(p.local_as, p.hold_time, p.router_id, p.restart_time, self.ctx.restarted);
        self.send(&open).await?;
        self.set_state(FsmState::OpenSent);
        self.reset_hold();
        loop {
            match self.next_event().await {
                Event::Read(Ok(0)) => return Err(Close::error("the peer closed the connection")),
                Event::Read(Err(e)) => return Err(Close::error(format!("reading from the peer: {e}"))),
                Event::Read(Ok(_)) => {
                    while let Some(frame) = message::next_frame(&mut self.buf).map_err(|n| {
                        Close::notify(n.clone(), format!("bad message header from the peer; sent NOTIFICATION {n}"))
                    })? {
                        self.handle(&frame).await?;
                    }
                }
                Event::Hold => {
                    let hold = self.negotiated.as_ref().map_or(OPEN_HOLD.as_secs(), |n| u64::from(n.hold));
                    return Err(Close::notify(
                        Notification::new(HOLD_TIMER_EXPIRED, 0, []),
                        format!("hold timer expired: nothing from the peer in {hold}s"),
                    ));
                }
                Event::Keepalive => {
                    self.send(&BgpMessage::KeepAlive).await?;
                    self.schedule_keepalive();
                }
                Event::Routes | Event::Live => {
                    if self.state == FsmState::Established {
                        self.sync().await?;
                    }
                }
                Event::Stop => {
                    let stop = self.ctx.stop.borrow_and_update().unwrap_or(Stop::Shutdown);
                    return Err(Close { notification: Some(stop.notification()), error: None, stopped: true });
                }
                Event::Bfd => {
                    let status = self.ctx.bfd.as_mut().map(|b| *b.borrow_and_update());
                    if let Some(status) = status {
                        if status.state == bfd::State::Up {
                            self.bfd_up = true;
                        } else if self.bfd_up && status.state == bfd::State::Down && !status.peer_admin_down {
                            return Err(Close::notify(
                                Notification::new(CEASE, CEASE_BFD_DOWN, []),
                                "BFD: the peer stopped answering (session down)",
                            ));
                        } else if status.peer_admin_down {
                            self.bfd_up = false;
                        }
                    }
                }
            }
        }
    }

    async fn next_event(&mut self) -> Event {
        let far = Instant::now() + Duration::from_secs(86400 * 365);
        let hold_at = self.hold_at.unwrap_or(far);
        let keepalive_at = self.keepalive_at.unwrap_or(far);
        let ctx = &mut *self.ctx;
        let event = tokio::select! {
            r = self.stream.read(&mut self.scratch) => Event::Read(r),
            _ = sleep_until(hold_at), if self.hold_at.is_some() => Event::Hold,
            _ = sleep_until(keepalive_at), if self.keepalive_at.is_some() => Event::Keepalive,
            r = ctx.routes.changed(), if self.routes_open => match r {
                Ok(()) => Event::Routes,
                Err(_) => { self.routes_open = false; Event::Routes }
            },
            r = ctx.live.changed(), if self.live_open => match r {
                Ok(()) => Event::Live,
                Err(_) => { self.live_open = false; Event::Live }
            },
            _ = ctx.stop.changed() => Event::Stop,
            r = async { match ctx.bfd.as_mut() { Some(b) => b.changed().await, None => std::future::pending().await } }, if self.bfd_open => match r {
                Ok(()) => Event::Bfd,
                Err(_) => { self.bfd_open = false; Event::Bfd }
            },
        };
        if let Event::Read(Ok(n)) = &event {
            self.buf.extend_from_slice(&self.scratch[..*n]);
        }
        event
    }

    fn schedule_keepalive(&mut self) {
        self.keepalive_at = match &self.negotiated {
            Some(n) if n.hold > 0 => Some(Instant::now() + Duration::from_secs(u64::from(n.hold)) / 3),
            _ => None,
        };
    }

    async fn handle(&mut self, frame: &[u8]) -> Result<(), Close> {
        if frame[18] == TYPE_NOTIFICATION {
            let n = Notification::from_frame(frame);
            return Err(Close::error(format!("the peer sent NOTIFICATION {n}")));
        }
        let msg = message::parse(frame, &mut self.parsing).map_err(|(n, why)| {
            Close::notify(n.clone(), format!("malformed message from the peer ({why}); sent NOTIFICATION {n}"))
        })?;
        self.reset_hold();
        let unexpected = |subcode: u8, state: &str, msg: &BgpMessage| {
            let n = Notification::new(FSM_ERROR, subcode, []);
            let why = format!("unexpected {:?} in {state}; sent NOTIFICATION {n}", msg.get_type());
            Err(Close::notify(n, why))
        };
        match (self.state, msg) {
            (FsmState::OpenSent, BgpMessage::Open(open)) => {
                let negotiated = self.check_open(&open)?;
                self.parsing.set_asn4(negotiated.asn4);
                self.negotiated = Some(negotiated);
                self.send(&BgpMessage::KeepAlive).await?;
                self.set_state(FsmState::OpenConfirm);
                self.reset_hold();
                self.schedule_keepalive();
                Ok(())
            }
            (FsmState::OpenSent, other) => unexpected(1, "OpenSent", &other),
            (FsmState::OpenConfirm, BgpMessage::KeepAlive) => {
                self.set_state(FsmState::Established);
                self.established_at = Some(Instant::now());
                tracing::info!(peer = %self.ctx.params.peer.address, local = %self.local, "BGP session established");
                self.sync().await?;
                let families = self.negotiated.as_ref().map(|n| n.families.clone()).unwrap_or_default();
                for family in families {
                    self.send(&message::end_of_rib(family)).await?;
                }
                Ok(())
            }
            (FsmState::OpenConfirm, other) => unexpected(2, "OpenConfirm", &other),
            (FsmState::Established, BgpMessage::KeepAlive) => Ok(()),
            (FsmState::Established, BgpMessage::Update(_)) => {
                self.ctx.shared().updates_received += 1;
                Ok(())
            }
            (FsmState::Established, BgpMessage::RouteRefresh(rr)) => {
                // Send the family's routes again (RFC 2918).
                let family = Some(rr.address_type());
                let again: Vec<IpAddr> =
                    self.sent.iter().copied().filter(|a| family == Some(message::family_of(*a))).collect();
                if let Some(attrs) = self.attrs.clone() {
                    self.announce(&again, &attrs).await?;
                }
                Ok(())
            }
            (FsmState::Established, other) => unexpected(3, "Established", &other),
            (_, other) => unexpected(0, "this state", &other),
        }
    }

    fn check_open(&self, open: &netgauze_bgp_pkt::open::BgpOpenMessage) -> Result<Negotiated, Close> {
        let p = &self.ctx.params;
        let peer_as = open.my_asn4();
        if peer_as != p.peer.remote_as {
            let n = Notification::new(OPEN_MESSAGE_ERROR, 2, open.my_as().to_be_bytes());
            return Err(Close::notify(
                n.clone(),
                format!(
                    "the peer is AS {peer_as}, configured remote_as is {}; sent NOTIFICATION {n}",
                    p.peer.remote_as
                ),
            ));
        }
        if p.peer.is_ibgp(p.local_as) && open.bgp_id() == p.router_id {
            let n = Notification::new(OPEN_MESSAGE_ERROR, 3, open.bgp_id().octets());
            return Err(Close::notify(
                n.clone(),
                format!("the peer has our BGP identifier {}; sent NOTIFICATION {n}", p.router_id),
            ));
        }
        let caps = open.capabilities();
        let asn4 = caps.iter().any(|c| matches!(c, BgpCapability::FourOctetAs(_)));
        let offered: Vec<AddressType> = caps
            .iter()
            .filter_map(|c| match c {
                BgpCapability::MultiProtocolExtensions(mp) => Some(mp.address_type()),
                _ => None,
            })
            .collect();
        // Without multiprotocol capabilities, IPv4 unicast is implied (RFC 4760 §8).
        let families = if offered.is_empty() {
            vec![AddressType::Ipv4Unicast]
        } else {
            FAMILIES.iter().copied().filter(|f| offered.contains(f)).collect()
        };
        Ok(Negotiated { hold: p.hold_time.min(open.hold_time()), asn4, families })
    }

    /// What the peer should have from us now.
    fn desired(&self) -> BTreeSet<IpAddr> {
        if self.ctx.live.borrow().draining {
            return BTreeSet::new();
        }
        let families = self.negotiated.as_ref().map(|n| n.families.as_slice()).unwrap_or_default();
        // Next hop self: a route goes out on the session of its own family.
        self.ctx
            .routes
            .borrow()
            .iter()
            .copied()
            .filter(|a| {
                a.is_ipv4() == self.local.is_ipv4()
                    && families.contains(&message::family_of(*a))
                    && !a.is_unspecified()
                    && !a.is_multicast()
                    && *a != IpAddr::V4(Ipv4Addr::BROADCAST)
            })
            .collect()
    }

    fn route_attrs(&self) -> RouteAttrs {
        let p = &self.ctx.params;
        let live = self.ctx.live.borrow();
        let ibgp = p.peer.is_ibgp(p.local_as);
        RouteAttrs {
            as_path: if ibgp { vec![] } else { vec![p.local_as] },
            asn4: self.negotiated.as_ref().is_some_and(|n| n.asn4),
            med: live.med,
            local_pref: ibgp.then(|| live.local_pref.unwrap_or(100)),
            communities: live.communities.clone(),
        }
    }

    /// Brings the peer's view to `desired`: withdrawals, then announcements (all of them again
    /// when the attributes changed).
    async fn sync(&mut self) -> Result<(), Close> {
        self.ctx.routes.borrow_and_update();
        self.ctx.live.borrow_and_update();
        let desired = self.desired();
        let attrs = self.route_attrs();
        let gone: Vec<IpAddr> = self.sent.difference(&desired).copied().collect();
        let new: Vec<IpAddr> = if self.attrs.as_ref() == Some(&attrs) {
            desired.difference(&self.sent).copied().collect()
        } else {
            desired.iter().copied().collect()
        };
        self.withdraw(&gone).await?;
        self.announce(&new, &attrs).await?;
        if !gone.is_empty() || !new.is_empty() {
            tracing::info!(
                peer = %self.ctx.params.peer.address,
                announced = new.len(),
                withdrawn = gone.len(),
                total = desired.len(),
                "BGP: sent UPDATEs"
            );
        }
        self.sent = desired;
        self.attrs = Some(attrs);
        self.ctx.shared().prefixes_sent = self.sent.len();
        self.ctx.drained.send_replace(self.sent.is_empty());
        Ok(())
    }

    async fn announce(&mut self, prefixes: &[IpAddr], attrs: &RouteAttrs) -> Result<(), Close> {
        let v4: Vec<Ipv4Addr> =
            prefixes.iter().filter_map(|a| if let IpAddr::V4(a) = a { Some(*a) } else { None }).collect();
        let v6: Vec<Ipv6Addr> =
            prefixes.iter().filter_map(|a| if let IpAddr::V6(a) = a { Some(*a) } else { None }).collect();
        match self.local {
            IpAddr::V4(next_hop) => {
                for chunk in v4.chunks(message::prefixes_per_update(AddressType::Ipv4Unicast, attrs)) {
                    self.send(&message::announce_v4(chunk, next_hop, attrs)).await?;
                }
            }
            IpAddr::V6(next_hop) => {
                for chunk in v6.chunks(message::prefixes_per_update(AddressType::Ipv6Unicast, attrs)) {
                    self.send(&message::announce_v6(chunk, next_hop, attrs)).await?;
                }
            }
        }
        Ok(())
    }

    async fn withdraw(&mut self, prefixes: &[IpAddr]) -> Result<(), Close> {
        let v4: Vec<Ipv4Addr> =
            prefixes.iter().filter_map(|a| if let IpAddr::V4(a) = a { Some(*a) } else { None }).collect();
        let v6: Vec<Ipv6Addr> =
            prefixes.iter().filter_map(|a| if let IpAddr::V6(a) = a { Some(*a) } else { None }).collect();
        for chunk in v4.chunks(message::withdrawals_per_update(AddressType::Ipv4Unicast)) {
            self.send(&message::withdraw_v4(chunk)).await?;
        }
        for chunk in v6.chunks(message::withdrawals_per_update(AddressType::Ipv6Unicast)) {
            self.send(&message::withdraw_v6(chunk)).await?;
        }
        Ok(())
    }
}
