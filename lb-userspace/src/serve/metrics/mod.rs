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
    convert::Infallible,
    net::SocketAddr,
    os::fd::{AsFd as _, OwnedFd},
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::{body::Incoming, server::conn::http1, service::service_fn};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::{Mutex, Semaphore},
    task::JoinHandle,
};

pub use exposition::{AgentInfo, render};

use crate::serve::{accept::AcceptErrors, page};

mod deadline;
use deadline::StallDeadline;

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
    /// Time to receive a request head, and the most a kept-alive connection waits for the next
    /// request.
    pub head_timeout: Duration,
    /// Largest request head read (at least 8 KiB); a larger one is answered 431.
    pub head_max: usize,
    /// The most a response may stall: a client that takes nothing of it for this long is
    /// disconnected with a reset, which frees what the kernel still queues for it.
    pub write_timeout: Duration,
    /// A body rendered less than this long ago is served again instead of rendering another.
    pub reuse_for: Duration,
    /// Requests one kept-alive connection may make, and how long it may stay.
    pub max_requests: u32,
    pub max_lifetime: Duration,
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
            // Prometheus keeps its connection between scrapes (15 s apart by default); the
            // head timeout closes it sooner when scrapes are sparser.
            max_requests: 1000,
            max_lifetime: Duration::from_secs(600),
        }
    }
}

/// Renders one response body: the exposition text, or the status page's JSON.
pub type Render = dyn Fn() -> Result<String, String> + Send + Sync;

/// What the listener serves: `/metrics` always; with `status`, the status page at `/` and the
/// JSON it polls at `/status.json` (each rendered at most once per `reuse_for`, like the
/// metrics); with `health`, `/healthz` (the agent is alive) and `/readyz` (it serves): each
/// answers `Ok(text)` with 200 and `Err(reason)` with 503, from the published view, at once.
pub struct Renders {
    pub metrics: Arc<Render>,
    pub status: Option<Arc<Render>>,
    pub health: Option<Probes>,
}

/// The agent's own liveness and readiness.
pub struct Probes {
    pub live: Arc<Render>,
    pub ready: Arc<Render>,
}

impl std::fmt::Debug for Probes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Probes").finish_non_exhaustive()
    }
}

impl std::fmt::Debug for Renders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Renders")
            .field("status", &self.status.is_some())
            .field("health", &self.health.is_some())
            .finish_non_exhaustive()
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
    serve_renders(addr, Renders { metrics: scrape, status: None, health: None }, limits).await
}

/// Serves what `renders` says on `addr` until the task is aborted.
pub async fn serve_renders(addr: SocketAddr, renders: Renders, limits: Limits) -> Result<JoinHandle<()>, MetricsError> {
    let listener = TcpListener::bind(addr).await.map_err(|source| MetricsError::Bind { addr, source })?;
    let server = Arc::new(Server {
        body: Body::new(renders.metrics, limits.reuse_for),
        status: renders.status.map(|status| Body::new(status, limits.reuse_for)),
        health: renders.health,
        limits,
    });
    Ok(tokio::spawn(accept_loop(listener, server)))
}

struct Server {
    body: Body,
    /// The status page's JSON, when the page is served.
    status: Option<Body>,
    health: Option<Probes>,
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
            serve_connection(stream, server).await;
            drop(slot);
        });
    }
}

const BUSY: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\
Connection: close\r\n\r\ntoo many metrics connections; try again\n";

/// The page may run its own inline script and style and fetch from this listener, nothing
/// else: no external asset can load even if a name in the JSON tried to inject one.
const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
connect-src 'self'; img-src data:";

/// One connection: HTTP/1.1 through hyper with keep-alive, within the limits. A response that
/// stalls past `write_timeout`, or a connection past its lifetime, ends in a reset.
async fn serve_connection(stream: TcpStream, server: Arc<Server>) {
    let limits = server.limits.clone();
    let _ = stream.set_nodelay(true);
    // A second descriptor of the socket, to turn the close into a reset when a client stalls:
    // the socket closes only when both are gone.
    let handle: Option<OwnedFd> = stream.as_fd().try_clone_to_owned().ok();
    let served = Arc::new(std::sync::atomic::AtomicU32::new(0));
    let service = {
        let server = Arc::clone(&server);
        service_fn(move |request: Request<Incoming>| {
            let server = Arc::clone(&server);
            let n = served.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
            async move {
                let mut response = respond(&server, &request).await;
                if n >= server.limits.max_requests {
                    response.headers_mut().insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok::<_, Infallible>(response)
            }
        })
    };
    let io = TokioIo::new(StallDeadline::new(stream, limits.write_timeout));
    let connection = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head_timeout)
        .max_buf_size(limits.head_max.max(8192))
        .title_case_headers(true)
        .keep_alive(true)
        .serve_connection(io, service);
    let ended = match tokio::time::timeout(limits.max_lifetime, connection).await {
        Ok(Ok(())) => return,
        Ok(Err(e)) => e.to_string(),
        Err(_) => "its lifetime is over".to_owned(),
    };
    tracing::debug!(error = %ended, "a metrics connection was cut off");
    if let Some(handle) = handle {
        let _ = socket2::SockRef::from(&handle).set_linger(Some(Duration::ZERO));
    }
}

fn response(status: StatusCode, content_type: &'static str, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    response(status, "text/plain", Bytes::from_static(body.as_bytes()))
}

/// Whether the client takes gzip (`Accept-Encoding` with gzip or `*` at a q above 0).
fn wants_gzip(request: &Request<Incoming>) -> bool {
    request.headers().get_all(header::ACCEPT_ENCODING).iter().filter_map(|v| v.to_str().ok()).any(|value| {
        value.split(',').any(|item| {
            let mut parts = item.split(';').map(str::trim);
            let coding = parts.next().unwrap_or_default();
            let q = parts.find_map(|p| p.strip_prefix("q=")).and_then(|q| q.trim().parse::<f32>().ok()).unwrap_or(1.0);
            (coding.eq_ignore_ascii_case("gzip") || coding == "*") && q > 0.0
        })
    })
}

async fn respond(server: &Server, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let method = request.method();
    if method != Method::GET && method != Method::HEAD {
        // Read-only: nothing here takes a body or changes anything.
        let mut refused = text(StatusCode::METHOD_NOT_ALLOWED, "GET only\n");
        refused.headers_mut().insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return refused;
    }
    let gzip = wants_gzip(request);
    let failed = |e: String| response(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", Bytes::from(format!("{e}\n")));
    // A query string changes nothing here (a browser may add one to dodge its cache).
    match (request.uri().path(), &server.status, &server.health) {
        ("/metrics", _, _) => match server.body.current(gzip).await {
            Ok((body, zipped)) => compressed(response(StatusCode::OK, "text/plain; version=0.0.4", body), zipped),
            Err(e) => failed(format!("reading the data plane failed: {e}")),
        },
        ("/" | "/status", Some(_), _) => {
            let mut page =
                response(StatusCode::OK, "text/html; charset=utf-8", Bytes::from_static(page::HTML.as_bytes()));
            page.headers_mut().insert(header::CONTENT_SECURITY_POLICY, HeaderValue::from_static(PAGE_POLICY));
            page.headers_mut().insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
            page
        }
        ("/status.json", Some(status), _) => match status.current(gzip).await {
            Ok((json, zipped)) => {
                let mut ok = compressed(response(StatusCode::OK, "application/json", json), zipped);
                ok.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
                ok
            }
            Err(e) => failed(format!("reading the agent's state failed: {e}")),
        },
        ("/healthz", _, Some(probes)) => probe(&probes.live),
        ("/readyz", _, Some(probes)) => probe(&probes.ready),
        (_, None, _) => text(StatusCode::NOT_FOUND, "metrics are at /metrics\n"),
        (_, Some(_), _) => {
            text(StatusCode::NOT_FOUND, "metrics are at /metrics, the status page at /, its data at /status.json\n")
        }
    }
    // HEAD: hyper sends the head of the response (its length included) without the body.
}

fn compressed(mut response: Response<Full<Bytes>>, zipped: bool) -> Response<Full<Bytes>> {
    response.headers_mut().insert(header::VARY, HeaderValue::from_static("Accept-Encoding"));
    if zipped {
        response.headers_mut().insert(header::CONTENT_ENCODING, HeaderValue::from_static("gzip"));
    }
    response
}

fn probe(check: &Arc<Render>) -> Response<Full<Bytes>> {
    let mut reply = match check() {
        Ok(text) => response(StatusCode::OK, "text/plain", Bytes::from(format!("{text}\n"))),
        Err(reason) => response(StatusCode::SERVICE_UNAVAILABLE, "text/plain", Bytes::from(format!("{reason}\n"))),
    };
    reply.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    reply
}

/// A rendered body (exposition text or the page's JSON), shared by the requests that come
/// while it is fresh, with its gzip form made once, for the first client that asks for it.
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
    gzip: Option<Bytes>,
}

impl Body {
    fn new(scrape: Arc<Render>, reuse_for: Duration) -> Self {
        Body { scrape, last: Arc::new(Mutex::new(None)), reuse_for }
    }

    /// The last render if it is fresh, else a new one (failures are reused alike); gzipped when
    /// `gzip` (the second value says whether it is).
    async fn current(&self, gzip: bool) -> Result<(Bytes, bool), String> {
        let mut last = Arc::clone(&self.last).lock_owned().await;
        if let Some(rendered) = last.as_ref().filter(|r| r.at.elapsed() < self.reuse_for) {
            match (&rendered.text, &rendered.gzip, gzip) {
                (Err(e), _, _) => return Err(e.clone()),
                (Ok(text), _, false) => return Ok((text.clone(), false)),
                (Ok(_), Some(zipped), true) => return Ok((zipped.clone(), true)),
                (Ok(_), None, true) => {}
            }
        }
        let scrape = Arc::clone(&self.scrape);
        let fresh = last.as_ref().filter(|r| r.at.elapsed() < self.reuse_for).cloned();
        // Its own task, holding the lock: a scrape whose client goes away mid-render must not
        // let the next one start a second render beside this one.
        let render = tokio::spawn(async move {
            // Tens of milliseconds at 10 000 VIPs: off the runtime's workers, as is the gzip.
            let done = tokio::task::spawn_blocking(move || {
                let mut rendered = match fresh {
                    Some(rendered) => rendered,
                    None => Rendered { at: Instant::now(), text: scrape().map(Bytes::from), gzip: None },
                };
                if gzip && let Ok(text) = &rendered.text {
                    rendered.gzip = Some(gzipped(text));
                }
                rendered
            })
            .await;
            let rendered = done.unwrap_or_else(|e| Rendered {
                at: Instant::now(),
                text: Err(format!("rendering the metrics failed: {e}")),
                gzip: None,
            });
            *last = Some(rendered.clone());
            rendered
        });
        let rendered = render.await.map_err(|e| format!("rendering the metrics failed: {e}"))?;
        match (rendered.text, rendered.gzip) {
            (Err(e), _) => Err(e),
            (Ok(_), Some(zipped)) if gzip => Ok((zipped, true)),
            (Ok(text), _) => Ok((text, false)),
        }
    }
}

/// `text` gzipped at the fast level: a scrape compresses ~10×, and this runs once per render.
fn gzipped(text: &[u8]) -> Bytes {
    use std::io::Write as _;
    let mut encoder = flate2::write::GzEncoder::new(Vec::with_capacity(text.len() / 8), flate2::Compression::fast());
    // Writing into a Vec cannot fail.
    let _ = encoder.write_all(text);
    Bytes::from(encoder.finish().unwrap_or_default())
}
