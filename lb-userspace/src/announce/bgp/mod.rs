//! The BGP speaker: announces the node's VIPs as host routes to its routers, so they spread
//! clients over the xlb nodes by ECMP.
//!
//! One task per configured peer runs a BGP-4 session (RFC 4271) with 4-octet AS numbers
//! (RFC 6793), multiprotocol IPv4 and IPv6 unicast (RFC 4760), route refresh (RFC 2918) and
//! graceful restart (RFC 4724, restarting-speaker side: forwarding state preserved, End-of-RIB
//! after the initial announcement); optionally BFD (RFC 5880/5881) and a TCP MD5 signature
//! (RFC 2385). Messages are encoded and decoded by netgauze; the session logic is here.
//!
//! Each VIP is announced as a /32 or /128 with next hop self (the session's local address) on
//! the sessions of its own family: IPv4 VIPs over IPv4 sessions (classic NLRI), IPv6 VIPs over
//! IPv6 sessions (MP_REACH_NLRI). A VIP of the other family than a session's is not sent on it.
//!
//! On the router: graceful restart keeps our routes while the agent restarts (the data plane
//! keeps forwarding) only if the router has it on (BIRD: `graceful restart on;`). With BFD, a
//! restarting agent's BFD goes quiet as well, and a router that ends the session on BFD down
//! pulls the routes anyway: tell it to restart gracefully instead (BIRD: `bfd graceful;`).
//! The speaker connects actively and does not listen on port 179.

pub(crate) mod bfd;
mod md5;
pub(crate) mod message;
pub(crate) mod session;

use std::{
    collections::BTreeSet,
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use tokio::{sync::watch, task::JoinHandle};

use self::session::{Live, PeerCtx, SessionParams, Shared, Stop};
pub use self::{bfd::State as BfdState, session::FsmState};
pub use crate::config::{BfdConfig, BgpConfig, BgpPeer, Community};

/// What to announce: host routes for these VIP addresses (v4 → /32, v6 → /128).
pub type Announce = BTreeSet<IpAddr>;

/// Bound on waiting for sessions to write their withdrawals, and for tasks to end.
const SHUTDOWN_STEP: Duration = Duration::from_secs(3);

/// One peer's state for `xlb status` and metrics.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct PeerStatus {
    pub address: IpAddr,
    pub remote_as: u32,
    /// "idle" | "connect" | "active" | "open_sent" | "open_confirm" | "established"
    pub state: String,
    pub established_for_secs: Option<u64>,
    /// Routes the peer has from us now.
    pub prefixes_sent: usize,
    /// Sessions that ended in an error after the TCP connection was up.
    pub flaps: u64,
    pub last_error: Option<String>,
    /// When the last error happened (seconds since the Unix epoch).
    #[serde(default)]
    pub last_error_at: Option<u64>,
    /// UPDATE messages sent to and received from the peer, over all sessions.
    #[serde(default)]
    pub updates_sent: u64,
    #[serde(default)]
    pub updates_received: u64,
    /// "up" | "down" | "init" | "admin_down" when BFD is enabled for the peer.
    pub bfd: Option<String>,
}

#[derive(Debug)]
struct BfdHandle {
    status: watch::Receiver<bfd::Status>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    registration: tokio::sync::mpsc::Sender<bfd::Packet>,
}

#[derive(Debug)]
struct PeerHandle {
    params: Arc<SessionParams>,
    live: watch::Sender<Live>,
    stop: watch::Sender<Option<Stop>>,
    shared: Arc<Mutex<Shared>>,
    drained: watch::Receiver<bool>,
    task: JoinHandle<()>,
    bfd: Option<BfdHandle>,
}

/// The BGP speaker: one session task per peer.
#[derive(Debug)]
pub struct Speaker {
    config: BgpConfig,
    routes: watch::Receiver<Announce>,
    peers: Vec<PeerHandle>,
    hub: Option<bfd::Hub>,
}

fn session_params(config: &BgpConfig, peer: &BgpPeer) -> SessionParams {
    SessionParams {
        local_as: config.local_as,
        router_id: config.router_id,
        hold_time: u16::try_from(config.hold_time.as_secs()).unwrap_or(u16::MAX),
        restart_time: u16::try_from(config.graceful_restart_time.as_secs()).unwrap_or(4095).min(4095),
        peer: peer.clone(),
    }
}

fn live_settings(config: &BgpConfig, draining: bool) -> Live {
    Live {
        communities: config.communities.clone(),
        med: config.med,
        local_pref: config.local_pref,
        connect_retry: config.connect_retry,
        draining,
    }
}

impl Speaker {
    /// Starts one session task per peer (inside a tokio runtime). Sessions announce whatever
    /// `routes` holds and follow its changes (UPDATEs with only the difference).
    ///
    /// Sessions started here advertise the graceful-restart Restart State bit until they are
    /// first established: the agent may be coming back from a restart.
    pub fn start(config: BgpConfig, routes: watch::Receiver<Announce>) -> Speaker {
        let mut speaker = Speaker { config: config.clone(), routes, peers: Vec::new(), hub: None };
        for peer in &config.peers {
            let handle = speaker.spawn_peer(peer, None, true);
            speaker.peers.push(handle);
        }
        speaker
    }

    /// The configuration in force.
    pub fn config(&self) -> &BgpConfig {
        &self.config
    }

    fn spawn_peer(&mut self, peer: &BgpPeer, previous: Option<PeerHandle>, restarted: bool) -> PeerHandle {
        let params = Arc::new(session_params(&self.config, peer));
        let (live_tx, live_rx) = watch::channel(live_settings(&self.config, false));
        let (stop_tx, stop_rx) = watch::channel(None);
        let (drained_tx, drained_rx) = watch::channel(true);
        let shared = Arc::new(Mutex::new(Shared::default()));
        let (previous_task, previous_bfd) = match previous {
            Some(old) => {
                let (task, bfd) = Self::stop_peer(old, Stop::Reconfigured, self.hub.as_ref());
                (Some(task), bfd)
            }
            None => (None, None),
        };
        let bfd = peer.bfd.enabled.then(|| {
            let hub = self.hub.get_or_insert_with(bfd::Hub::start);
            let (registration, packets) = hub.register(peer.address);
            let (status_tx, status_rx) =
                watch::channel(bfd::Status { state: bfd::State::Down, diag: bfd::DIAG_NONE, peer_admin_down: false });
            let (stop_tx, stop_rx) = watch::channel(false);
            let (address, source, config) = (peer.address, peer.source_address, peer.bfd);
            let task = tokio::spawn(async move {
                if let Some(mut old) = previous_bfd
                    && tokio::time::timeout(Duration::from_secs(1), &mut old).await.is_err()
                {
                    old.abort();
                }
                bfd::run(address, source, config, packets, status_tx, stop_rx).await
            });
            BfdHandle { status: status_rx, stop: stop_tx, task, registration }
        });
        let ctx = PeerCtx {
            params: Arc::clone(&params),
            live: live_rx,
            stop: stop_rx,
            routes: self.routes.clone(),
            bfd: bfd.as_ref().map(|b| b.status.clone()),
            shared: Arc::clone(&shared),
            drained: drained_tx,
            restarted: restarted && self.config.graceful_restart_time > Duration::ZERO,
        };
        let task = tokio::spawn(session::run_peer(ctx, previous_task));
        PeerHandle { params, live: live_tx, stop: stop_tx, shared, drained: drained_rx, task, bfd }
    }

    /// Tells a peer's tasks to end (the session with a Cease NOTIFICATION); returns their
    /// handles.
    fn stop_peer(handle: PeerHandle, why: Stop, hub: Option<&bfd::Hub>) -> (JoinHandle<()>, Option<JoinHandle<()>>) {
        handle.stop.send_replace(Some(why));
        let bfd = handle.bfd.map(|b| {
            b.stop.send_replace(true);
            if let Some(hub) = hub {
                hub.unregister(handle.params.peer.address, &b.registration);
            }
            b.task
        });
        (handle.task, bfd)
    }

    /// Reload: peers added/removed/changed; unchanged peers keep their session.
    ///
    /// A peer is unchanged when its own settings and the session-wide ones (AS, router id, hold
    /// time, restart time) are; communities, MED, local preference and connect_retry apply to
    /// running sessions (announcements are sent again with the new attributes).
    pub fn replace(&mut self, config: BgpConfig) {
        self.config = config.clone();
        let mut old: Vec<PeerHandle> = std::mem::take(&mut self.peers);
        for peer in &config.peers {
            let params = session_params(&config, peer);
            let existing = old.iter().position(|h| h.params.peer.address == peer.address).map(|i| old.remove(i));
            let handle = match existing {
                Some(h) if *h.params == params => {
                    h.live.send_if_modified(|live| {
                        let new = live_settings(&config, live.draining);
                        let changed = *live != new;
                        *live = new;
                        changed
                    });
                    h
                }
                Some(h) => {
                    tracing::info!(peer = %peer.address, "BGP: peer settings changed; replacing its session");
                    self.spawn_peer(peer, Some(h), false)
                }
                None => {
                    tracing::info!(peer = %peer.address, "BGP: new peer");
                    self.spawn_peer(peer, None, false)
                }
            };
            self.peers.push(handle);
        }
        for gone in old {
            tracing::info!(peer = %gone.params.peer.address, "BGP: peer removed");
            // The tasks end by themselves after the NOTIFICATION.
            let _ = Self::stop_peer(gone, Stop::Deconfigured, self.hub.as_ref());
        }
    }

    /// Per-peer status for `xlb status` and metrics.
    pub fn status(&self) -> Vec<PeerStatus> {
        self.peers
            .iter()
            .map(|h| {
                let shared = h.shared.lock().unwrap_or_else(|e| e.into_inner());
                PeerStatus {
                    address: h.params.peer.address,
                    remote_as: h.params.peer.remote_as,
                    state: shared.state.name().to_owned(),
                    established_for_secs: shared.established_at.map(|t| t.elapsed().as_secs()),
                    prefixes_sent: shared.prefixes_sent,
                    flaps: shared.flaps,
                    last_error: shared.last_error.clone(),
                    last_error_at: shared.last_error_at,
                    updates_sent: shared.updates_sent,
                    updates_received: shared.updates_received,
                    bfd: h.bfd.as_ref().map(|b| b.status.borrow().state.name().to_owned()),
                }
            })
            .collect()
    }

    /// Withdraws everything from every peer, waits `withdraw_grace`, then closes the sessions
    /// with a Cease NOTIFICATION (administrative shutdown). For SIGTERM and `xlb drain node`.
    pub async fn shutdown(mut self) {
        let peers = std::mem::take(&mut self.peers);
        for h in &peers {
            h.live.send_modify(|live| live.draining = true);
        }
        let withdrawn = async {
            for h in &peers {
                let mut drained = h.drained.clone();
                let _ = drained.wait_for(|d| *d).await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_STEP, withdrawn).await.is_err() {
            tracing::warn!("BGP: some peers did not take the withdrawals in time");
        }
        tracing::info!(grace = ?self.config.withdraw_grace, "BGP: routes withdrawn; waiting before closing the sessions");
        tokio::time::sleep(self.config.withdraw_grace).await;
        let mut tasks = Vec::new();
        for h in peers {
            let (task, bfd) = Self::stop_peer(h, Stop::Shutdown, self.hub.as_ref());
            tasks.push(task);
            tasks.extend(bfd);
        }
        let deadline = tokio::time::Instant::now() + SHUTDOWN_STEP;
        for mut task in tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                task.abort();
            }
        }
    }

    /// Ends every task at once, without a NOTIFICATION or withdrawal, as if the process had been
    /// killed: the TCP connections close, and peers with graceful restart keep our routes for
    /// the restart time. (Dropping the speaker does the same.)
    pub fn abort(self) {
        drop(self);
    }
}

impl Drop for Speaker {
    fn drop(&mut self) {
        for h in &self.peers {
            h.task.abort();
            if let Some(b) = &h.bfd {
                b.task.abort();
            }
        }
    }
}

#[cfg(test)]
mod tests;
