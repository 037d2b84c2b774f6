//! Prometheus `/metrics`: the same snapshot `xlb stats` shows, in the exposition format; beside
//! it, on the same listener and limits, the status page (`serve::page`).
//!
//! The data plane's counters are absolute values read from per-CPU maps, so every scrape builds
//! a fresh registry from one snapshot (counters set with `inc_by` from zero) instead of keeping
//! registered counters in step with the maps.

mod exposition;
#[cfg(test)]
mod tests;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};

pub use exposition::{AgentInfo, render};

use crate::serve::{accept::AcceptErrors, page};

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics listener {addr}: {source}; pick a free address with --metrics-listen")]
    Bind { addr: SocketAddr, source: std::io::Error },
}

/// Bounds on what `/metrics` clients may cost the agent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once. Beyond it a connection is accepted, told 503 and closed: the
    /// client learns at once instead of queueing in the kernel behind stuck clients, and its
    /// retry after the next scrape interval finds slots that the deadlines below have freed.
    pub max_connections: usize,
    /// Time to receive the request head.
    pub head_timeout: Duration,
    /// Largest request head read.
    pub head_max: usize,
    /// Time to deliver the whole response (until the client closes its side); a client that
    /// reads slower is disconnected with a reset, which frees what the kernel still queues.
    pub write_timeout: Duration,
    /// A body rendered less than this long ago is served again instead of rendering another.
    pub reuse_for: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            // A few Prometheus servers and curls, with plenty to spare.
            max_connections: 64,
            head_timeout: Duration::from_secs(5),
            head_max: 8 * 1024,
            // Prometheus' default scrape timeout is 10 s: past it nobody reads the answer.
            write_timeout: Duration::from_secs(10),
            // Scrapers a second apart see the same counters; renders stay one per second.
            reuse_for: Duration::from_secs(1),
        }
    }
}

/// Renders one response body: the exposition text, or the status page's JSON.
pub type Render = dyn Fn() -> Result<String, String> + Send + Sync;

/// What the listener serves: `/metrics` always; with `status`, the status page at `/` and the
/// JSON it polls at `/status.json` (each rendered at most once per `reuse_for`, like the
/// metrics).
pub struct Renders {
    pub metrics: Arc<Render>,
    pub status: Option<Arc<Render>>,
}

impl std::fmt::Debug for Renders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renders").field("status", &self.status.is_some()).finish_non_exhaustive()
    }
}

/// Serves `GET /metrics` on `addr` with whatever `scrape` returns, until the task is aborted.
pub async fn serve<F>(addr: SocketAddr, scrape: Arc<F>) -> Result<JoinHandle<()>, MetricsError>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    serve_with(addr, scrape, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with<F>(addr: SocketAddr, scrape: Arc<F>, limits: Limits) -> Result<JoinHandle<()>, MetricsError>
where
    F: Fn() -> Result<String, String> + Send + Sync + 'static,
{
    serve_renders(addr, Renders { metrics: scrape, status: None }, limits).await
}

/// Serves what `renders` says on `addr` until the task is aborted.
pub async fn serve_renders(addr: SocketAddr, renders: Renders, limits: Limits) -> Result<JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let server = Arc::new(Server {
        body: Body::new(renders.metrics, limits.reuse_for),
        status: renders.status.map(|status| Body::new(status, limits.reuse_for)),
        limits,
    });
    Ok(tokio::spawn(accept_loop(listener, server)))
}

struct Server {
    body: Body,
    /// The status page's JSON, when the page is served.
    status: Option<Body>,
    limits: Limits,
}

async fn accept_loop(listener: TcpListener, server: Arc<Server>) {
    let slots = Arc::new(Semaphore::new(server.limits.max_connections));
    let mut errors = AcceptErrors::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.after("metrics", &e).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            // Best effort, never waits: a fresh socket's send buffer takes these few bytes.
            let _ = stream.try_write(BUSY);
            continue;
        };
        let server = Arc::clone(&server);
        tokio::spawn(async move {
            if let Err(e) = respond(stream, &server).await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
            drop(slot);
        });
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\
Connection: close\r\n\r\ntoo many metrics connections; try again\n";

/// The page may run its own inline script and style and fetch from this listener, nothing
/// else: no external asset can load even if a name in the JSON tried to inject one.
const PAGE_POLICY: &str = "Content-Security-Policy: default-src 'none'; script-src 'unsafe-inline'; \
style-src 'unsafe-inline'; connect-src 'self'; img-src data:\r\nX-Content-Type-Options: nosniff\r\n";

/// One request per connection: enough for Prometheus, curl and the page's polls.
async fn respond(mut stream: TcpStream, server: &Server) -> std::io::Result<()> {
    let limits = &server.limits;
    let Ok(head) = tokio::time::timeout(limits.head_timeout, read_head(&mut stream, limits.head_max)).await else {
        return Ok(());
    };
    let head = head?;
    let line = head.split(|&b| b == b'\r').next().unwrap_or_default();
    let mut parts = line.split(|&b| b == b' ');
    let (method, target) = (parts.next().unwrap_or_default(), parts.next().unwrap_or_default());
    // A query string changes nothing here (a browser may add one to dodge its cache).
    let path = target.split(|&b| b == b'?').next().unwrap_or_default();
    let failed = |e: String| ("500 Internal Server Error", "text/plain", "", Bytes::from(format!("{e}\n")));
    let (status, content_type, extra, body) = match (method, path, &server.status) {
        (b"GET", b"/metrics", _) => match server.body.current().await {
            Ok(text) => ("200 OK", "text/plain; version=0.0.4", "", text),
            Err(e) => failed(format!("reading the data plane failed: {e}")),
        },
        (b"GET", b"/" | b"/status", Some(_)) => {
            ("200 OK", "text/html; charset=utf-8", PAGE_POLICY, Bytes::from_static(page::HTML.as_bytes()))
        }
        (b"GET", b"/status.json", Some(status)) => match status.current().await {
            Ok(json) => ("200 OK", "application/json", "Cache-Control: no-store\r\n", json),
            Err(e) => failed(format!("reading the agent's state failed: {e}")),
        },
        (b"GET", _, None) => ("404 Not Found", "text/plain", "", Bytes::from_static(b"metrics are at /metrics\n")),
        (b"GET", _, Some(_)) => (
            "404 Not Found",
            "text/plain",
            "",
            Bytes::from_static(b"metrics are at /metrics, the status page at /, its data at /status.json\n"),
        ),
        // Read-only: nothing here takes a body or changes anything.
        _ => ("405 Method Not Allowed", "text/plain", "Allow: GET\r\n", Bytes::from_static(b"GET only\n")),
    };
    let head = format!(
        "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n{extra}Connection: close\r\n\r\n",
        body.len()
    );
    // The body is the shared render, written from where it lies: a client that does not read
    // holds a reference to it and a socket, no copy.
    let write = async {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(&body).await?;
        stream.shutdown().await?;
        // Written is only queued: the kernel may take megabytes for a client that reads
        // nothing and would keep them after our close. The client's own close says it has read
        // the response (it was told `Connection: close`); until then the deadline holds.
        let mut rest = [0u8; 512];
        while stream.read(&mut rest).await? != 0 {}
        Ok(())
    };
    match tokio::time::timeout(limits.write_timeout, write).await {
        Ok(written) => written,
        Err(_) => {
            tracing::debug!("a metrics client read too slowly; disconnected");
            reset(&stream);
            Ok(())
        }
    }
}

/// The request head: up to the blank line, `max` bytes or the end of the stream, whichever
/// comes first.
async fn read_head(stream: &mut TcpStream, max: usize) -> std::io::Result<Vec<u8>> {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < max {
        let room = buf.len().min(max - head.len());
        let n = stream.read(&mut buf[..room]).await?;
        if n == 0 {
            break;
        }
        head.extend_from_slice(&buf[..n]);
    }
    Ok(head)
}

/// Makes the coming close a reset, so the kernel drops what is still queued for the client at
/// once instead of holding it for a peer that does not read.
fn reset(stream: &TcpStream) {
    let _ = socket2::SockRef::from(stream).set_linger(Some(Duration::ZERO));
}

/// A rendered body (exposition text or the page's JSON), shared by the requests that come
/// while it is fresh.
struct Body {
    scrape: Arc<Render>,
    /// The last render: taken by one scrape at a time, so at most one render runs.
    last: Arc<Mutex<Option<Rendered>>>,
    reuse_for: Duration,
}

#[derive(Clone)]
struct Rendered {
    /// When the render finished: reusing it for `reuse_for` after that bounds renders to one
    /// per `reuse_for` however long each takes.
    at: Instant,
    text: Result<Bytes, String>,
}

impl Body {
    fn new(scrape: Arc<Render>, reuse_for: Duration) -> Self {
        Body { scrape, last: Arc::new(Mutex::new(None)), reuse_for }
    }

    /// The last render if it is fresh, else a new one (failures are reused alike).
    async fn current(&self) -> Result<Bytes, String> {
        let mut last = Arc::clone(&self.last).lock_owned().await;
        if let Some(rendered) = last.as_ref().filter(|r| r.at.elapsed() < self.reuse_for) {
            return rendered.text.clone();
        }
        let scrape = Arc::clone(&self.scrape);
        // Its own task, holding the lock: a scrape whose client goes away mid-render must not
        // let the next one start a second render beside this one.
        let render = tokio::spawn(async move {
            // Tens of milliseconds at 10 000 VIPs: off the runtime's workers.
            let text = match tokio::task::spawn_blocking(move || scrape()).await {
                Ok(Ok(text)) => Ok(Bytes::from(text)),
                Ok(Err(e)) => Err(e),
                Err(e) => Err(format!("rendering the metrics failed: {e}")),
            };
            *last = Some(Rendered { at: Instant::now(), text: text.clone() });
            text
        });
        render.await.unwrap_or_else(|e| Err(format!("rendering the metrics failed: {e}")))
    }
}
