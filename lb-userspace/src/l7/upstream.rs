//! Backend connections of the L7 tier: HTTP/1.1 over hyper's client connection API, kept idle
//! per worker and backend, so a worker's requests reuse its own connections (the warmest first)
//! and never touch another worker's. A connection goes back to its worker's idle list when the
//! response body it carried has ended, from the body's own drop: no task per request, no pool
//! shared between threads, the request's URI sent in origin form as it came. (hyper-util's pooled
//! client spawned a task per request to return its connection, and keyed its pool by scheme and
//! authority behind a lock shared by every VIP's requests.)

use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex, Weak},
    time::{Duration, Instant},
};

use http::{Request, Response};
use hyper::{body::Incoming, client::conn::http1};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use super::workers;

/// The body of a request or response passing through the proxy.
pub type Body = http_body_util::combinators::UnsyncBoxBody<bytes::Bytes, hyper::Error>;

/// How backend connections are made and kept: connect timeout, how long one may sit idle, how
/// many idle ones a worker keeps per backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UpstreamSettings {
    pub connect_timeout: Duration,
    pub idle_timeout: Duration,
    pub max_idle_per_backend: u32,
}

/// Why a request got no response from a backend.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("no connection within {0:?}")]
    ConnectTimeout(Duration),
    #[error("{0}")]
    Transport(hyper::Error),
    #[error("{0}")]
    Io(std::io::Error),
    #[error("{0}")]
    Invalid(&'static str),
}

impl UpstreamError {
    /// The backend was never reached (the request was not sent).
    pub fn is_connect(&self) -> bool {
        matches!(self, UpstreamError::Connect(_) | UpstreamError::ConnectTimeout(_))
    }
}

/// A connection waiting for its next request.
#[derive(Debug)]
struct Idle {
    sender: http1::SendRequest<Body>,
    since: Instant,
}

impl Idle {
    /// Still worth a request: idle less than `timeout` and not closed by the backend.
    fn fresh(&self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout && !self.sender.is_closed()
    }
}

/// A plain connection (of the direct HTTP/1.1 path) waiting for its next request.
#[derive(Debug)]
struct IdleStream {
    stream: TcpStream,
    since: Instant,
}

impl IdleStream {
    /// Still worth a request: idle less than `timeout`, and the backend neither closed it nor
    /// sent bytes nobody asked for (seen without a system call unless the socket is readable).
    fn fresh(&self, timeout: Duration) -> bool {
        self.since.elapsed() < timeout
            && matches!(self.stream.try_read(&mut [0u8; 1]), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock)
    }
}

/// One worker's idle connections, by backend.
#[derive(Debug, Default)]
struct WorkerIdle {
    backends: HashMap<SocketAddr, Vec<Idle>>,
    /// The direct path's connections.
    streams: HashMap<SocketAddr, Vec<IdleStream>>,
    /// Whether this worker runs a task that closes connections idle past the timeout.
    sweeping: bool,
}

/// The backend connections of one VIP's proxy (kept across reloads that keep its settings).
#[derive(Debug)]
pub struct Upstream {
    settings: UpstreamSettings,
    /// Indexed by worker ([`workers::current`]); each lock is only ever taken by its worker's
    /// thread (off the workers, by whichever thread runs the request).
    idle: Box<[Mutex<WorkerIdle>]>,
}

/// A response and the connection that carries its body: the connection goes back to its idle
/// list when the body has ended (see [`Lease::release`]).
#[derive(Debug)]
pub struct Leased {
    pub response: Response<Incoming>,
    pub lease: Lease,
}

/// A connection lent to one request.
pub struct Lease {
    upstream: Arc<Upstream>,
    backend: SocketAddr,
    sender: http1::SendRequest<Body>,
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease").field("backend", &self.backend).finish_non_exhaustive()
    }
}

impl Lease {
    /// Gives the connection back for the next request of this worker; `ended`: its response
    /// ended whole (otherwise the connection is closed: the rest of a body would come first).
    pub fn release(self, ended: bool) {
        if ended && !self.sender.is_closed() {
            self.upstream.put(self.backend, self.sender);
        }
    }
}

impl Upstream {
    /// `workers`: how many worker threads take requests.
    pub fn new(settings: UpstreamSettings, workers: usize) -> Arc<Self> {
        Arc::new(Upstream { settings, idle: (0..workers.max(1)).map(|_| Mutex::default()).collect() })
    }

    pub fn settings(&self) -> UpstreamSettings {
        self.settings
    }

    /// The caller's worker's slot in `idle`.
    fn worker_index(&self) -> usize {
        workers::current() % self.idle.len()
    }

    fn worker(&self) -> &Mutex<WorkerIdle> {
        &self.idle[self.worker_index()]
    }

    /// Idle connections of this worker to `backend` (for tests and status).
    pub fn idle_count(&self, backend: SocketAddr) -> usize {
        self.worker().lock().map_or(0, |w| w.backends.get(&backend).map_or(0, Vec::len))
    }

    /// An idle connection to `backend` ready for a request, the most recently used first.
    fn take(&self, backend: SocketAddr) -> Option<http1::SendRequest<Body>> {
        let mut worker = self.worker().lock().ok()?;
        let list = worker.backends.get_mut(&backend)?;
        while let Some(idle) = list.pop() {
            if idle.fresh(self.settings.idle_timeout) && idle.sender.is_ready() {
                return Some(idle.sender);
            }
            // Closed by the backend, past the idle timeout, or (rarely) not yet done with its
            // last exchange: dropped, which closes it.
        }
        None
    }

    fn put(self: &Arc<Self>, backend: SocketAddr, sender: http1::SendRequest<Body>) {
        let max = self.settings.max_idle_per_backend as usize;
        if max == 0 {
            return;
        }
        let Ok(mut worker) = self.worker().lock() else { return };
        keep_warmest(worker.backends.entry(backend).or_default(), Idle { sender, since: Instant::now() }, max);
        self.start_sweep(&mut worker);
    }

    /// An idle plain connection to `backend` of this worker, the most recently used first.
    pub fn take_stream(&self, backend: SocketAddr) -> Option<TcpStream> {
        let mut worker = self.worker().lock().ok()?;
        let list = worker.streams.get_mut(&backend)?;
        while let Some(idle) = list.pop() {
            if idle.fresh(self.settings.idle_timeout) {
                return Some(idle.stream);
            }
        }
        None
    }

    /// Keeps a plain connection whose last response ended whole for this worker's next request.
    pub fn put_stream(self: &Arc<Self>, backend: SocketAddr, stream: TcpStream) {
        let max = self.settings.max_idle_per_backend as usize;
        if max == 0 {
            return;
        }
        let Ok(mut worker) = self.worker().lock() else { return };
        keep_warmest(worker.streams.entry(backend).or_default(), IdleStream { stream, since: Instant::now() }, max);
        self.start_sweep(&mut worker);
    }

    /// Sweeps this worker's idle connections from now on, if nothing does yet.
    fn start_sweep(self: &Arc<Self>, worker: &mut WorkerIdle) {
        if !worker.sweeping && tokio::runtime::Handle::try_current().is_ok() {
            worker.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(self), self.worker_index()));
        }
    }

    /// A new plain connection to `backend`, connected within the connect timeout.
    pub async fn connect_stream(&self, backend: SocketAddr) -> Result<TcpStream, UpstreamError> {
        let timeout = self.settings.connect_timeout;
        let stream = tokio::time::timeout(timeout, TcpStream::connect(backend))
            .await
            .map_err(|_| UpstreamError::ConnectTimeout(timeout))?
            .map_err(UpstreamError::Connect)?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }

    /// A new connection to `backend`: connected within the connect timeout, its hyper
    /// connection driven by a task of this worker.
    async fn connect(&self, backend: SocketAddr) -> Result<http1::SendRequest<Body>, UpstreamError> {
        let stream = self.connect_stream(backend).await?;
        let (sender, connection) = http1::handshake(TokioIo::new(stream)).await.map_err(UpstreamError::Transport)?;
        tokio::spawn(async move {
            if let Err(e) = connection.with_upgrades().await {
                tracing::debug!(%backend, error = %e, "backend connection ended with an error");
            }
        });
        Ok(sender)
    }

    /// Sends `request` to `backend` on an idle connection of this worker, else a new one. A
    /// request an idle connection could not take before writing a byte of it (the backend had
    /// just closed it) goes on a new connection.
    pub async fn send(self: &Arc<Self>, backend: SocketAddr, request: Request<Body>) -> Result<Leased, UpstreamError> {
        let mut request = request;
        if let Some(mut sender) = self.take(backend) {
            match sender.try_send_request(request).await {
                Ok(response) => return Ok(self.leased(backend, sender, response)),
                Err(mut e) => match e.take_message() {
                    Some(unsent) => request = unsent,
                    None => return Err(UpstreamError::Transport(e.into_error())),
                },
            }
        }
        let mut sender = self.connect(backend).await?;
        let response = sender.send_request(request).await.map_err(UpstreamError::Transport)?;
        Ok(self.leased(backend, sender, response))
    }

    fn leased(
        self: &Arc<Self>,
        backend: SocketAddr,
        sender: http1::SendRequest<Body>,
        response: Response<Incoming>,
    ) -> Leased {
        Leased { response, lease: Lease { upstream: Arc::clone(self), backend, sender } }
    }

    /// Drops this worker's connections idle past the timeout (their backends may be gone).
    fn expire(&self, worker: usize) {
        let Ok(mut idle) = self.idle[worker].lock() else { return };
        let timeout = self.settings.idle_timeout;
        idle.backends.retain(|_, list| {
            list.retain(|c| c.fresh(timeout));
            !list.is_empty()
        });
        idle.streams.retain(|_, list| {
            list.retain(|c| c.fresh(timeout));
            !list.is_empty()
        });
    }
}

/// Adds `idle` to `list` (most recent last), the oldest going when `max` are kept already: the
/// warmest connections stay.
fn keep_warmest<T>(list: &mut Vec<T>, idle: T, max: usize) {
    if list.len() >= max {
        list.remove(0);
    }
    list.push(idle);
}

/// Closes `worker`'s expired idle connections every half idle timeout (at least every 100 ms,
/// at most every 10 s) until the upstream is dropped.
async fn sweep(upstream: Weak<Upstream>, worker: usize) {
    loop {
        let period = match upstream.upgrade() {
            Some(u) => (u.settings.idle_timeout / 2).clamp(Duration::from_millis(100), Duration::from_secs(10)),
            None => return,
        };
        tokio::time::sleep(period).await;
        match upstream.upgrade() {
            Some(u) => u.expire(worker),
            None => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read as _, Write as _},
        net::TcpListener,
        sync::atomic::{AtomicUsize, Ordering},
    };

    use http_body_util::{BodyExt as _, Empty};

    use super::*;

    /// What the test backend does after each answer.
    #[derive(Clone, Copy)]
    enum After {
        KeepOpen,
        /// Closes the connection without saying so (as a backend's idle timeout does).
        Close,
    }

    /// An HTTP/1.1 backend on loopback answering every request with `body` (as many requests per
    /// connection as come); counts the connections it accepted. Its threads end with the test.
    fn backend(body: &'static [u8], after: After) -> (SocketAddr, Arc<AtomicUsize>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = Arc::clone(&accepted);
        std::thread::spawn(move || {
            for conn in listener.incoming().take(16) {
                let Ok(mut conn) = conn else { return };
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    conn.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 1024];
                    for _ in 0..100 {
                        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                            match conn.read(&mut chunk) {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                        buf.drain(..end);
                        let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                        if conn.write_all(head.as_bytes()).and_then(|()| conn.write_all(body)).is_err() {
                            return;
                        }
                        if let After::Close = after {
                            return;
                        }
                    }
                });
            }
        });
        (addr, accepted)
    }

    fn settings(max_idle: u32, idle_timeout: Duration) -> UpstreamSettings {
        UpstreamSettings { connect_timeout: Duration::from_secs(2), idle_timeout, max_idle_per_backend: max_idle }
    }

    fn get(path: &'static str) -> Request<Body> {
        let mut request = Request::new(Empty::new().map_err(|n| match n {}).boxed_unsync());
        *request.uri_mut() = http::Uri::from_static(path);
        request.headers_mut().insert(http::header::HOST, http::HeaderValue::from_static("test"));
        request
    }

    /// One request whose body is read whole; the connection released as the proxy's body does.
    async fn fetch(upstream: &Arc<Upstream>, backend: SocketAddr) -> Result<Vec<u8>, UpstreamError> {
        let Leased { response, lease } = upstream.send(backend, get("/")).await?;
        let body = response.into_body().collect().await.map_err(UpstreamError::Transport)?.to_bytes();
        lease.release(true);
        Ok(body.to_vec())
    }

    #[tokio::test]
    async fn a_worker_reuses_its_idle_connection_and_keeps_at_most_the_configured_number() {
        let (addr, accepted) = backend(b"hello", After::KeepOpen);
        let upstream = Upstream::new(settings(4, Duration::from_secs(30)), 1);
        for _ in 0..5 {
            assert_eq!(fetch(&upstream, addr).await.unwrap(), b"hello");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1, "five requests, one after another, on one connection");
        assert_eq!(upstream.idle_count(addr), 1);

        // Three at once need three connections; of the three released, a limit of two keeps the
        // two released last.
        let upstream = Upstream::new(settings(2, Duration::from_secs(30)), 1);
        let (addr, accepted) = backend(b"x", After::KeepOpen);
        let (a, b, c) =
            tokio::join!(upstream.send(addr, get("/")), upstream.send(addr, get("/")), upstream.send(addr, get("/")));
        let leased = [a.unwrap(), b.unwrap(), c.unwrap()];
        assert_eq!(accepted.load(Ordering::SeqCst), 3);
        for Leased { response, lease } in leased {
            response.into_body().collect().await.unwrap();
            lease.release(true);
        }
        assert_eq!(upstream.idle_count(addr), 2, "at most max_idle_per_backend kept");

        let none = Upstream::new(settings(0, Duration::from_secs(30)), 1);
        let (addr, accepted) = backend(b"x", After::KeepOpen);
        fetch(&none, addr).await.unwrap();
        fetch(&none, addr).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2, "max_idle_per_backend 0 keeps none");
    }

    #[tokio::test]
    async fn a_connection_the_backend_closed_or_a_body_left_unread_is_not_reused() {
        // The backend closes after each answer: the next request finds the idle connection
        // closed (or loses the race and gets its request back) and goes on a new one.
        let (addr, accepted) = backend(b"bye", After::Close);
        let upstream = Upstream::new(settings(4, Duration::from_secs(30)), 1);
        for _ in 0..3 {
            assert_eq!(fetch(&upstream, addr).await.unwrap(), b"bye");
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 3);

        // A response whose body the client did not read whole: its connection is not kept.
        let (addr, accepted) = backend(&[7u8; 256 * 1024], After::KeepOpen);
        let Leased { response, lease } = upstream.send(addr, get("/")).await.unwrap();
        drop(response);
        lease.release(false);
        assert_eq!(upstream.idle_count(addr), 0);
        assert_eq!(fetch(&upstream, addr).await.unwrap().len(), 256 * 1024);
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout_and_refusals_are_connect_errors() {
        let (addr, accepted) = backend(b"hi", After::KeepOpen);
        let upstream = Upstream::new(settings(4, Duration::from_millis(200)), 1);
        fetch(&upstream, addr).await.unwrap();
        assert_eq!(upstream.idle_count(addr), 1);
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(upstream.idle_count(addr), 0, "swept after the idle timeout");
        fetch(&upstream, addr).await.unwrap();
        assert_eq!(accepted.load(Ordering::SeqCst), 2);

        // Nothing listens on a port just freed.
        let closed = TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let error = upstream.send(closed, get("/")).await.unwrap_err();
        assert!(error.is_connect(), "{error}");
        assert!(error.to_string().starts_with("connecting: "), "{error}");
    }
}
