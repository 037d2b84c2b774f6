//! The optional L7 tier: an HTTP reverse proxy (HTTP/1.1, h2c, TLS with rustls, WebSocket
//! pass-through) for `mode: l7` VIPs.
//!
//! XDP leaves an l7 VIP's packets to the local stack (the VIP is not in its maps); the agent
//! puts the VIP's address on `lo` ([`addr`]) and listens on it. Each listener holds its VIP's
//! runtime (routes, pools, TLS, client) in an `ArcSwap`: a reload swaps it, and requests take
//! the current one, while the listener, its connections and upgraded streams stay.

pub mod access_log;
pub mod addr;
pub mod balance;
pub mod client_stream;
pub mod h1;
pub mod metrics;
pub mod proxy;
pub mod proxy_protocol;
pub mod ratelimit;
pub mod route;
pub mod tls;
pub mod upstream;
pub mod workers;

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{io::AsyncWriteExt as _, sync::Semaphore, task::JoinHandle};

pub use crate::config::l7 as config;
use crate::{
    config::{Config, Mode, Vip},
    sources::health::Target,
    state::desired::BackendRef,
};
use access_log::AccessLog;
use addr::LocalAddress;
use balance::{BackendState, Pool};
use client_stream::{ClientListener, ClientStream};
use metrics::Metrics;
use proxy::{Conn, RouteRuntime, VipRuntime};
use ratelimit::{Concurrency, TokenBucket};
use upstream::{Upstream, UpstreamSettings};

use crate::{
    config::Scope,
    sources::limits::{GlobalLimiter, ShareHandle, ShareKind},
};
use workers::Workers;

/// A listener's accept loops, one per worker.
type AcceptLoops = Vec<JoinHandle<()>>;

/// Connections one listener serves at once; more wait in the kernel's backlog.
const MAX_CONNECTIONS: usize = 16_384;
/// Bound on a PROXY header and a TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
const BACKLOG: i32 = 1024;

#[derive(Debug, thiserror::Error)]
pub enum L7Error {
    #[error("l7 VIP `{vip}`: {message}")]
    Vip { vip: String, message: String },
    #[error("l7 VIP `{vip}`: listening on {endpoint}: {source}")]
    Listen { vip: String, endpoint: SocketAddr, source: std::io::Error },
    #[error("l7 VIP `{vip}`: {source}")]
    Address { vip: String, source: std::io::Error },
    #[error("l7 metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("starting the l7 access log's thread: {0}")]
    AccessLog(std::io::Error),
    #[error("starting the l7 worker threads: {0}")]
    Workers(std::io::Error),
}

/// The l7 VIPs of `config`.
pub fn l7_vips(config: &Config) -> impl Iterator<Item = (&Vip, &config::L7Vip)> {
    config.vips.iter().filter(|v| v.mode == Mode::L7).filter_map(|v| Some((v, v.l7.as_ref()?)))
}

/// The l7 backends `config` asks to health-check.
pub fn health_targets(config: &Config) -> Vec<Target> {
    l7_vips(config)
        .flat_map(|(vip, l7)| {
            l7.backends().filter_map(move |b| {
                Some(Target {
                    vip: vip.name.clone(),
                    backend: b.identity(),
                    addr: b.address.ip(),
                    check: config::check_for(vip, b)?,
                })
            })
        })
        .collect()
}

/// An l7 VIP as `xlb status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct L7VipStatus {
    pub name: String,
    pub endpoint: String,
    /// Listening, with at least `min_healthy` (and one) serving backends: announced.
    pub up: bool,
    pub backends: Vec<L7BackendStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct L7BackendStatus {
    /// `address:port`.
    pub address: String,
    /// Up and not drained.
    pub serving: bool,
    /// Requests awaiting it now.
    pub in_flight: u64,
}

#[derive(Debug)]
struct Listener {
    vip: String,
    runtime: Arc<ArcSwap<VipRuntime>>,
    accept: AcceptLoops,
    min_healthy: u32,
    backends: Vec<Arc<BackendState>>,
}

/// The listeners of every l7 VIP, their runtimes and the backends' shared state.
#[derive(Debug)]
pub struct Tier {
    listeners: BTreeMap<SocketAddr, Listener>,
    addresses: BTreeMap<IpAddr, LocalAddress>,
    backends: BTreeMap<(String, SocketAddr), Arc<BackendState>>,
    /// Down or drained (vip, identity), as the agent last said.
    not_serving: BTreeSet<BackendRef>,
    metrics: Metrics,
    access_log: Arc<AccessLog>,
    workers: Workers,
    /// The shares of `scope: global` limits (renewed through Redis by `sources::limits`).
    global_limits: GlobalLimiter,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Connections already accepted run on: they hold the runtime they need.
        for accept in &self.accept {
            accept.abort();
        }
    }
}

impl Tier {
    pub fn new() -> Result<Self, L7Error> {
        let metrics = Metrics::new()?;
        let access_log = Arc::new(AccessLog::stderr(metrics.access_log_dropped.clone()).map_err(L7Error::AccessLog)?);
        Ok(Tier {
            listeners: BTreeMap::new(),
            addresses: BTreeMap::new(),
            backends: BTreeMap::new(),
            not_serving: BTreeSet::new(),
            metrics,
            access_log,
            workers: Workers::per_cpu().map_err(L7Error::Workers)?,
            global_limits: GlobalLimiter::start(None),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn global_limits(&self) -> &GlobalLimiter {
        &self.global_limits
    }

    /// The share of a route's limit when it is global (named `vip/route` and `kind`).
    fn global_share(
        &self,
        scope: Scope,
        vip: &str,
        route: &str,
        kind: ShareKind,
        threshold: u32,
    ) -> Option<ShareHandle> {
        let suffix = if kind == ShareKind::Concurrency { "#concurrency" } else { "" };
        (scope == Scope::Global).then(|| self.global_limits.share(&format!("{vip}/{route}{suffix}"), threshold, kind))
    }

    /// Makes the listeners and routes those of `config` (within a tokio runtime): existing
    /// listeners get the new runtime, new VIPs get a listener (and their address on `lo`),
    /// removed VIPs lose theirs. A VIP whose runtime cannot be built (a TLS file, say) keeps
    /// its previous one; the errors are returned.
    pub fn apply(&mut self, config: &Config) -> Vec<L7Error> {
        let mut errors = Vec::new();
        self.global_limits.configure(config.global_limits.clone());
        let mut wanted: BTreeSet<SocketAddr> = BTreeSet::new();
        let mut used: BTreeSet<(String, SocketAddr)> = BTreeSet::new();
        for (vip, l7) in l7_vips(config) {
            let endpoint = SocketAddr::new(vip.address, vip.port);
            wanted.insert(endpoint);
            let previous = self.listeners.get(&endpoint).map(|l| l.runtime.load_full());
            let (runtime, backends) = match self.build(vip, l7, previous.as_deref()) {
                Ok(built) => built,
                Err(e) => {
                    errors.push(e);
                    // Keep serving what it served.
                    if let Some(l) = self.listeners.get(&endpoint) {
                        used.extend(l.backends.iter().map(|b| (l.vip.clone(), b.address)));
                    }
                    continue;
                }
            };
            used.extend(backends.iter().map(|b| (vip.name.clone(), b.address)));
            if let Some(listener) = self.listeners.get_mut(&endpoint) {
                listener.runtime.store(Arc::new(runtime));
                listener.vip = vip.name.clone();
                listener.min_healthy = vip.min_healthy;
                listener.backends = backends;
                continue;
            }
            match self.listen(vip, endpoint, runtime) {
                Ok((accept, runtime)) => {
                    tracing::info!(vip = %vip.name, %endpoint, tls = l7.tls.is_some(), proxy_protocol = l7.proxy_protocol, "l7 listener started");
                    let listener =
                        Listener { vip: vip.name.clone(), runtime, accept, min_healthy: vip.min_healthy, backends };
                    self.listeners.insert(endpoint, listener);
                }
                Err(e) => errors.push(e),
            }
        }
        self.listeners.retain(|endpoint, listener| {
            let keep = wanted.contains(endpoint);
            if !keep {
                tracing::info!(vip = %listener.vip, %endpoint, "l7 listener stopped");
            }
            keep
        });
        let in_use: BTreeSet<IpAddr> = self.listeners.keys().map(SocketAddr::ip).collect();
        self.addresses.retain(|address, _| in_use.contains(address));
        self.backends.retain(|key, _| used.contains(key));
        self.refresh_serving();
        errors
    }

    /// Builds a VIP's runtime, reusing the previous one's client (and its pooled connections)
    /// and rate-limit buckets where their settings are unchanged.
    fn build(
        &mut self,
        vip: &Vip,
        l7: &config::L7Vip,
        previous: Option<&VipRuntime>,
    ) -> Result<(VipRuntime, Vec<Arc<BackendState>>), L7Error> {
        let vip_err = |message: String| L7Error::Vip { vip: vip.name.clone(), message };
        let matcher = route::Matcher::new(&l7.routes).map_err(|e| vip_err(e.to_string()))?;
        let tls = match &l7.tls {
            Some(files) => Some(tls::acceptor(files).map_err(|e| vip_err(e.to_string()))?),
            None => None,
        };
        let mut all: Vec<Arc<BackendState>> = Vec::new();
        let mut routes = Vec::with_capacity(l7.routes.len());
        for route in &l7.routes {
            let mut pool = Vec::with_capacity(route.backends.len());
            for b in &route.backends {
                let state = Arc::clone(
                    self.backends
                        .entry((vip.name.clone(), b.address))
                        .or_insert_with(|| Arc::new(BackendState::new(b.address))),
                );
                if !all.iter().any(|s| Arc::ptr_eq(s, &state)) {
                    all.push(Arc::clone(&state));
                }
                pool.push((state, b.weight));
            }
            let old = previous.and_then(|p| p.routes.iter().find(|r| r.name == route.name));
            let limiter = route.rate_limit.as_ref().map(|limit| {
                match old.and_then(|r| r.limiter.as_ref()).filter(|bucket| bucket.limit() == limit) {
                    Some(bucket) => Arc::clone(bucket),
                    None => {
                        let share = self.global_share(limit.scope, &vip.name, &route.name, ShareKind::Rate, limit.rate);
                        Arc::new(TokenBucket::with_share(limit.clone(), share, Instant::now()))
                    }
                }
            });
            let concurrency = route.concurrency_limit.as_ref().map(|limit| {
                match old.and_then(|r| r.concurrency.as_ref()).filter(|c| c.limit() == limit) {
                    Some(kept) => Arc::clone(kept),
                    None => {
                        let share = self.global_share(
                            limit.scope,
                            &vip.name,
                            &route.name,
                            ShareKind::Concurrency,
                            limit.requests,
                        );
                        Arc::new(Concurrency::new(limit.clone(), share))
                    }
                }
            });
            routes.push(RouteRuntime {
                name: route.name.clone(),
                stats: self.metrics.route(&vip.name, &route.name),
                pool: Pool::new(pool, route.balance.clone(), l7.max_requests_per_backend as usize),
                limiter,
                concurrency,
            });
        }
        let settings = UpstreamSettings {
            connect_timeout: l7.connect_timeout,
            idle_timeout: l7.idle_timeout,
            max_idle_per_backend: l7.max_idle_per_backend,
        };
        // A worker's requests take its own idle backend connections.
        let upstream = match previous.filter(|p| p.upstream.settings() == settings) {
            Some(p) => Arc::clone(&p.upstream),
            None => Upstream::new(settings, self.workers.len()),
        };
        let runtime = VipRuntime {
            name: vip.name.clone(),
            routes,
            matcher,
            upstream,
            tls,
            proxy_protocol: l7.proxy_protocol,
            request_timeout: l7.request_timeout,
            idle_timeout: l7.idle_timeout,
            retries: l7.retries,
            unrouted: self.metrics.route(&vip.name, "-"),
            access_log: Arc::clone(&self.access_log),
        };
        Ok((runtime, all))
    }

    fn listen(
        &mut self,
        vip: &Vip,
        endpoint: SocketAddr,
        runtime: VipRuntime,
    ) -> Result<(AcceptLoops, Arc<ArcSwap<VipRuntime>>), L7Error> {
        if let std::collections::btree_map::Entry::Vacant(entry) = self.addresses.entry(endpoint.ip()) {
            let local = LocalAddress::add(endpoint.ip())
                .map_err(|source| L7Error::Address { vip: vip.name.clone(), source })?;
            entry.insert(local);
        }
        let listen_err = |source| L7Error::Listen { vip: vip.name.clone(), endpoint, source };
        // A socket per worker (SO_REUSEPORT): the kernel hands each new connection to one of
        // them and wakes that worker alone.
        let listeners: Vec<_> = self
            .workers
            .handles()
            .iter()
            .map(|_| client_stream::bind(endpoint, BACKLOG))
            .collect::<Result<_, _>>()
            .map_err(listen_err)?;
        let runtime = Arc::new(ArcSwap::from_pointee(runtime));
        let limit = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let accept = self
            .workers
            .handles()
            .iter()
            .zip(listeners)
            .map(|(worker, listener)| worker.spawn(accept_loop(listener, Arc::clone(&runtime), Arc::clone(&limit))))
            .collect();
        Ok((accept, runtime))
    }

    /// Backends down (health) or drained take no requests.
    pub fn set_not_serving(&mut self, not_serving: BTreeSet<BackendRef>) {
        self.not_serving = not_serving;
        self.refresh_serving();
    }

    fn refresh_serving(&self) {
        for ((vip, address), state) in &self.backends {
            state.set_serving(!self.not_serving.contains(&(vip.clone(), address.to_string())));
        }
    }

    /// Addresses with an l7 VIP that is up: listening, with at least `min_healthy` (and one)
    /// serving backends.
    pub fn up_addresses(&self) -> BTreeSet<IpAddr> {
        self.listeners
            .iter()
            .filter(|(_, l)| {
                let serving = l.backends.iter().filter(|b| b.is_serving()).count();
                serving > 0 && serving >= l.min_healthy as usize
            })
            .map(|(endpoint, _)| endpoint.ip())
            .collect()
    }

    /// Every l7 VIP's listener and backends, for `xlb status`.
    pub fn status(&self) -> Vec<L7VipStatus> {
        self.listeners
            .iter()
            .map(|(endpoint, l)| {
                let serving = l.backends.iter().filter(|b| b.is_serving()).count();
                L7VipStatus {
                    name: l.vip.clone(),
                    endpoint: endpoint.to_string(),
                    up: serving > 0 && serving >= l.min_healthy as usize,
                    backends: l
                        .backends
                        .iter()
                        .map(|b| L7BackendStatus {
                            address: b.identity.clone(),
                            serving: b.is_serving(),
                            in_flight: b.outstanding() as u64,
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Stops every listener and removes the addresses this agent added.
    pub fn shutdown(&mut self) {
        self.listeners.clear();
        self.addresses.clear();
        self.access_log.flush();
    }
}

/// Accepts on the calling worker until aborted; each connection is served on this worker.
async fn accept_loop(listener: std::net::TcpListener, runtime: Arc<ArcSwap<VipRuntime>>, limit: Arc<Semaphore>) {
    let listener = match ClientListener::new(listener) {
        Ok(listener) => listener,
        Err(e) => {
            tracing::error!(error = %e, worker = workers::current(), "l7 listener not registered with the worker");
            return;
        }
    };
    loop {
        let Ok(permit) = Arc::clone(&limit).acquire_owned().await else { return };
        match listener.accept().await {
            Ok((stream, peer)) => {
                tokio::spawn(serve_connection(Arc::clone(&runtime), stream, peer, permit));
            }
            Err(e) => {
                // Out of descriptors, mostly: wait instead of spinning.
                tracing::warn!(error = %e, "l7 accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

async fn serve_connection(
    swap: Arc<ArcSwap<VipRuntime>>,
    mut stream: ClientStream,
    peer: SocketAddr,
    _permit: tokio::sync::OwnedSemaphorePermit,
) {
    let rt = swap.load_full();
    let client = if rt.proxy_protocol {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, proxy_protocol::read(&mut stream)).await {
            Ok(Ok(header)) => header.source().unwrap_or(peer),
            Ok(Err(e)) => {
                tracing::debug!(vip = %rt.name, %peer, error = %e, "connection without a valid PROXY header dropped");
                return;
            }
            Err(_) => {
                tracing::debug!(vip = %rt.name, %peer, "no PROXY header in time");
                return;
            }
        }
    } else {
        peer
    };
    let conn = Conn::new(client, rt.tls.is_some());
    // Simple HTTP/1.1 requests are served directly; the first other one hands the connection
    // (and what was read of it) to hyper, whose future is boxed then (it is larger than the
    // rest of this one together, and most connections never need it).
    match &rt.tls {
        // Boxed: a TLS connection's futures are large, and a handshake costs far more anyway.
        Some(acceptor) => Box::pin(serve_tls(swap.clone(), conn, acceptor.clone(), stream)).await,
        None => {
            if let h1::End::Handoff(prefix) = h1::serve(&swap, conn, &mut stream).await {
                let _ = stream.set_nodelay(true);
                Box::pin(serve_general(swap, conn, h1::Prefixed::new(prefix, stream))).await;
            }
        }
    }
}

/// A TLS connection after its PROXY header: the handshake, then the direct path, unless the
/// client chose h2.
async fn serve_tls(
    swap: Arc<ArcSwap<VipRuntime>>,
    conn: Conn,
    acceptor: tokio_rustls::TlsAcceptor,
    stream: ClientStream,
) {
    let _ = stream.set_nodelay(true);
    let mut tls = match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
        Ok(Ok(tls)) => tls,
        Ok(Err(e)) => {
            tracing::debug!(vip = %swap.load().name, client = %conn.client, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => return,
    };
    let prefix = if tls.get_ref().1.alpn_protocol() == Some(b"h2") {
        Vec::new()
    } else {
        match h1::serve(&swap, conn, &mut tls).await {
            h1::End::Handoff(prefix) => prefix,
            h1::End::Closed => {
                // close_notify, then FIN.
                let _ = tokio::time::timeout(HANDSHAKE_TIMEOUT, tls.shutdown()).await;
                return;
            }
        }
    };
    serve_general(swap, conn, h1::Prefixed::new(prefix, tls)).await;
}

/// The general path for the rest of a connection: hyper, for HTTP/1 of every kind, h2 and
/// upgrades.
async fn serve_general<S>(swap: Arc<ArcSwap<VipRuntime>>, conn: Conn, io: h1::Prefixed<S>)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let rt = swap.load_full();
    let service = hyper::service::service_fn(move |req| proxy::handle(swap.load_full(), conn, req));
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder.http1().timer(TokioTimer::new()).header_read_timeout(rt.idle_timeout);
    builder.http2().timer(TokioTimer::new());
    if let Err(e) = builder.serve_connection_with_upgrades(TokioIo::new(io), service).await {
        tracing::debug!(vip = %rt.name, client = %conn.client, error = %e, "l7 connection ended with an error");
    }
}
