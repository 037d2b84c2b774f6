//! One request through the proxy: route, rate limit, pick a backend, forward with
//! X-Forwarded-For / Forwarded, retry idempotent requests on another backend when one fails
//! before answering, pass upgrades (WebSocket) through, count and log.

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http::{
    HeaderMap, HeaderName, HeaderValue, Method, Request, Response, StatusCode, Uri, Version,
    header::{CONNECTION, COOKIE, FORWARDED, HOST, RETRY_AFTER, TE, TRAILER, TRANSFER_ENCODING, UPGRADE},
    uri::PathAndQuery,
};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;

use super::{
    access_log::{AccessLog, Entry},
    balance::{InFlight, Pool},
    config::Balance,
    metrics::RouteStats,
    ratelimit::{Concurrency, Slot},
    ratelimit::{TokenBucket, retry_after_secs},
    route::Matcher,
    upstream::{Lease, Leased, Upstream, UpstreamError},
};

pub use super::upstream::Body;

/// What a VIP's proxy does, swapped whole on reload (requests take the current one).
pub struct VipRuntime {
    pub name: String,
    pub routes: Vec<RouteRuntime>,
    pub matcher: Matcher,
    /// Backend connections, kept per worker thread (see [`super::upstream`]); a reload that
    /// keeps their settings keeps them.
    pub upstream: Arc<Upstream>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub proxy_protocol: bool,
    pub request_timeout: Duration,
    pub idle_timeout: Duration,
    pub retries: u32,
    /// The series of requests no route matched (route `-`).
    pub unrouted: RouteStats,
    pub access_log: Arc<AccessLog>,
}

impl std::fmt::Debug for VipRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VipRuntime")
            .field("name", &self.name)
            .field("routes", &self.routes)
            .field("tls", &self.tls.is_some())
            .field("proxy_protocol", &self.proxy_protocol)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
pub struct RouteRuntime {
    pub name: String,
    pub stats: RouteStats,
    pub pool: Pool,
    pub limiter: Option<Arc<TokenBucket>>,
    pub concurrency: Option<Arc<Concurrency>>,
}

/// The client side of a connection.
#[derive(Debug, Clone, Copy)]
pub struct Conn {
    /// The client's address: the PROXY header's source, else the peer's.
    pub client: SocketAddr,
    pub tls: bool,
    /// The address as text, written once per connection (every request's forwarding headers
    /// and log line use it).
    text: AddrText,
}

/// `address:port` (`[v6]:port`) in a buffer of its own, and where the address is within it.
#[derive(Debug, Clone, Copy)]
struct AddrText {
    bytes: [u8; 64],
    len: u8,
    ip: (u8, u8),
}

impl AddrText {
    fn new(address: SocketAddr) -> Self {
        use std::io::Write as _;
        let mut bytes = [0u8; 64];
        let mut cursor = std::io::Cursor::new(&mut bytes[..]);
        // The longest, `[ffff:…:ffff%4294967295]:65535` (58 bytes), fits.
        let _ = write!(cursor, "{address}");
        let len = cursor.position() as u8;
        let ip = if address.is_ipv6() {
            (1, len - 1 - (digits(address.port()) + 1))
        } else {
            (0, len - digits(address.port()) - 1)
        };
        AddrText { bytes, len, ip }
    }
}

fn digits(n: u16) -> u8 {
    match n {
        0..=9 => 1,
        10..=99 => 2,
        100..=999 => 3,
        1000..=9999 => 4,
        _ => 5,
    }
}

/// A response the proxy makes itself (a refusal or an error), with a plain-text body; the
/// general path sends it through hyper, the direct path writes its bytes.
#[derive(Debug)]
pub struct Canned {
    pub status: StatusCode,
    pub body: Bytes,
    /// A redirect's Location, or Retry-After.
    pub extra: Option<(HeaderName, HeaderValue)>,
}

impl Canned {
    pub fn into_response(self) -> Response<Body> {
        let mut response = Response::new(Full::new(self.body).map_err(|n| match n {}).boxed_unsync());
        *response.status_mut() = self.status;
        let headers = response.headers_mut();
        headers.insert(http::header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
        if let Some((name, value)) = self.extra {
            headers.insert(name, value);
        }
        response
    }

    /// The response as HTTP/1.1 bytes, with `Connection: close` when the connection ends; to
    /// a HEAD request (`head_only`) without the body.
    pub fn write_h1(&self, out: &mut Vec<u8>, close: bool, head_only: bool) {
        use std::io::Write as _;
        let status = self.status;
        let reason = status.canonical_reason().unwrap_or("");
        // Writing to a Vec cannot fail.
        let _ = write!(
            out,
            "HTTP/1.1 {} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
            status.as_u16(),
            self.body.len()
        );
        if let Some((name, value)) = &self.extra {
            out.extend_from_slice(name.as_str().as_bytes());
            out.extend_from_slice(b": ");
            out.extend_from_slice(value.as_bytes());
            out.extend_from_slice(b"\r\n");
        }
        if close {
            out.extend_from_slice(b"connection: close\r\n");
        }
        out.extend_from_slice(b"\r\n");
        if !head_only {
            out.extend_from_slice(&self.body);
        }
    }
}

fn text(status: StatusCode, body: &'static str) -> Canned {
    Canned { status, body: Bytes::from_static(body.as_bytes()), extra: None }
}

/// No route matches the request's host and path.
pub fn no_route() -> Canned {
    text(StatusCode::NOT_FOUND, "no route for this host and path\n")
}

/// No backend answered within the request timeout.
pub fn timed_out() -> Canned {
    text(StatusCode::GATEWAY_TIMEOUT, "the backend did not answer in time\n")
}

/// No attempt got a response: none was possible (`tried_any` false), or every one failed.
pub fn unanswered(tried_any: bool) -> Canned {
    if tried_any {
        text(StatusCode::BAD_GATEWAY, "the backend failed the request\n")
    } else {
        text(
            StatusCode::SERVICE_UNAVAILABLE,
            "no backend available for this route (down, drained or at its request limit)\n",
        )
    }
}

/// What a request the route's rate limit refuses gets (`on_limit`): its status and body, a
/// Location when it redirects, Retry-After (time to the next token) when it is an error.
pub fn limited(on_limit: &crate::config::OnLimit, wait: std::time::Duration) -> Canned {
    let status = StatusCode::from_u16(on_limit.status).unwrap_or(StatusCode::TOO_MANY_REQUESTS);
    let extra = match on_limit.redirect.as_deref().map(HeaderValue::from_str) {
        Some(Ok(location)) => (http::header::LOCATION, location),
        _ => (RETRY_AFTER, HeaderValue::from(retry_after_secs(wait))),
    };
    Canned { status, body: Bytes::copy_from_slice(on_limit.body.as_bytes()), extra: Some(extra) }
}

fn empty() -> Body {
    Empty::new().map_err(|n| match n {}).boxed_unsync()
}

/// Safe to send twice (RFC 9110 §9.2.2).
fn idempotent(method: &Method) -> bool {
    matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE)
}

/// An HTTP/1.1 upgrade request (WebSocket and the like).
fn is_upgrade<B>(req: &Request<B>) -> bool {
    req.version() == Version::HTTP_11
        && req.headers().contains_key(UPGRADE)
        && req
            .headers()
            .get_all(CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

// Names the proxy reads or writes on every request, made once (a name given as text is parsed
// and checked on every use).
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): those named in Connection and the fixed
/// list. An upgrade keeps `Connection: upgrade` and `Upgrade`.
fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [CONNECTION, KEEP_ALIVE, PROXY_CONNECTION, TE, TRAILER, TRANSFER_ENCODING, UPGRADE] {
        headers.remove(name);
    }
    if keep_upgrade {
        headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    }
}

impl Conn {
    pub fn new(client: SocketAddr, tls: bool) -> Self {
        Conn { client, tls, text: AddrText::new(client) }
    }

    /// `address:port`, as `SocketAddr` writes it.
    pub fn client_text(&self) -> &str {
        std::str::from_utf8(&self.text.bytes[..usize::from(self.text.len)]).unwrap_or("")
    }

    /// The address alone (without brackets).
    pub fn ip_text(&self) -> &[u8] {
        &self.text.bytes[usize::from(self.text.ip.0)..usize::from(self.text.ip.1)]
    }

    /// The scheme the client spoke.
    pub fn proto(&self) -> &'static str {
        if self.tls { "https" } else { "http" }
    }
}

/// Writes X-Forwarded-For's value: `previous` (every value the request had, joined), then the
/// client's address.
pub fn forwarded_for(out: &mut Vec<u8>, previous: Option<&[u8]>, conn: &Conn) {
    if let Some(previous) = previous {
        out.extend_from_slice(previous);
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(conn.ip_text());
}

/// Writes Forwarded's value (RFC 7239): `previous`, then this hop's `for`, `proto` and `host`
/// (a host that cannot be a quoted string is left out).
pub fn forwarded_value(out: &mut Vec<u8>, previous: Option<&[u8]>, conn: &Conn, host: Option<&str>) {
    if let Some(previous) = previous {
        out.extend_from_slice(previous);
        out.extend_from_slice(b", ");
    }
    let v6 = conn.client.is_ipv6();
    out.extend_from_slice(if v6 { b"for=\"[" } else { b"for=" });
    out.extend_from_slice(conn.ip_text());
    out.extend_from_slice(if v6 { b"]\";proto=" } else { b";proto=" });
    out.extend_from_slice(conn.proto().as_bytes());
    if let Some(host) = host.filter(|h| h.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\')) {
        out.extend_from_slice(b";host=\"");
        out.extend_from_slice(host.as_bytes());
        out.push(b'"');
    }
}

/// X-Forwarded-For (appended), X-Forwarded-Proto, X-Forwarded-Host and Forwarded (RFC 7239,
/// appended).
fn add_forwarded(headers: &mut HeaderMap, conn: Conn, host: Option<&str>) {
    let previous = |name: &HeaderName| headers.get(name).map(HeaderValue::as_bytes);
    let mut xff = Vec::with_capacity(48);
    forwarded_for(&mut xff, previous(&X_FORWARDED_FOR), &conn);
    let mut forwarded = Vec::with_capacity(64);
    forwarded_value(&mut forwarded, previous(&FORWARDED), &conn, host);
    // The buffers become the values' bytes (checked, not copied).
    for (name, value) in [(X_FORWARDED_FOR, xff), (FORWARDED, forwarded)] {
        if let Ok(value) = HeaderValue::from_maybe_shared(Bytes::from(value)) {
            headers.insert(name, value);
        }
    }
    headers.insert(X_FORWARDED_PROTO, HeaderValue::from_static(conn.proto()));
    if let Some(host) = host
        && !headers.contains_key(X_FORWARDED_HOST)
        && let Ok(value) = HeaderValue::from_str(host)
    {
        headers.insert(X_FORWARDED_HOST, value);
    }
}

/// The value of cookie `name` in a Cookie header's `value`.
pub fn cookie_value<'a>(value: &'a [u8], name: &str) -> Option<&'a [u8]> {
    value.split(|b| *b == b';').find_map(|pair| {
        let pair = pair.trim_ascii();
        let eq = pair.iter().position(|b| *b == b'=')?;
        (&pair[..eq] == name.as_bytes()).then_some(&pair[eq + 1..])
    })
}

/// The value a consistent-hash route hashes.
fn hash_key<'a>(balance: &Balance, headers: &'a HeaderMap) -> Option<&'a [u8]> {
    match balance {
        Balance::HashHeader(name) => headers.get(name.as_str()).map(HeaderValue::as_bytes),
        Balance::HashCookie(name) => headers.get_all(COOKIE).iter().find_map(|v| cookie_value(v.as_bytes(), name)),
        _ => None,
    }
}

/// A response body that keeps its request counted in flight at the backend (and in progress on
/// its route) until it ends, and gives its backend connection back once it has ended whole.
struct Tracked {
    body: Incoming,
    /// None for an upgraded connection (the upgrade owns it now).
    lease: Option<Lease>,
    ended: bool,
    _guard: Option<InFlight>,
    _slot: Option<Slot>,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.release(self.ended || self.body.is_end_stream());
        }
    }
}

impl hyper::body::Body for Tracked {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<hyper::body::Frame<Bytes>, hyper::Error>>> {
        let frame = std::pin::Pin::new(&mut self.body).poll_frame(cx);
        if let std::task::Poll::Ready(None) = frame {
            self.ended = true;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> hyper::body::SizeHint {
        self.body.size_hint()
    }
}

/// What the access log line says about one request.
#[derive(Debug)]
pub struct Outcome<'a> {
    route: &'a str,
    stats: &'a RouteStats,
    status: u16,
    /// The backend's `address:port`.
    backend: Option<&'a str>,
    attempts: u32,
    error: Option<String>,
}

pub fn done<'a>(
    status: u16,
    route: &'a str,
    stats: &'a RouteStats,
    backend: Option<&'a str>,
    attempts: u32,
    error: Option<String>,
) -> Outcome<'a> {
    Outcome { route, stats, status, backend, attempts, error }
}

pub fn finish(
    rt: &VipRuntime,
    conn: &Conn,
    method: &str,
    host: Option<&str>,
    path: &str,
    start: Instant,
    o: Outcome<'_>,
) {
    let elapsed = start.elapsed();
    o.stats.answered(o.status, elapsed.as_secs_f64());
    if AccessLog::enabled() {
        rt.access_log.record(&Entry {
            vip: &rt.name,
            route: o.route,
            client: conn.client_text(),
            method,
            host: host.unwrap_or(""),
            path,
            status: o.status,
            backend: o.backend,
            attempts: o.attempts,
            duration: elapsed,
            error: o.error.as_deref().unwrap_or(""),
        });
    }
}

/// Counts an attempt on `backend` that got no response (its connect or transport error) and
/// says what failed, for the access log.
pub fn attempt_failed(rt: &VipRuntime, route: &RouteRuntime, backend: SocketAddr, e: &UpstreamError) -> String {
    let kind = if e.is_connect() { "connect" } else { "transport" };
    if e.is_connect() { &route.stats.connect_errors } else { &route.stats.transport_errors }.inc();
    tracing::debug!(vip = %rt.name, route = %route.name, %backend, error = %e, kind, "backend attempt failed");
    format!("{backend}: {e}")
}

/// What [`admit`] decides: the route (and the request's place under its concurrency limit), or
/// a refusal.
#[derive(Debug)]
pub enum Admission<'a> {
    Admitted(&'a RouteRuntime, Option<Slot>),
    Refused(Refusal<'a>),
}

/// A request refused before any backend: no route, or a route's limit.
#[derive(Debug)]
pub struct Refusal<'a> {
    pub canned: Canned,
    /// The route's name (`-` when none matched) and its series.
    pub route: &'a str,
    pub stats: &'a RouteStats,
}

/// The route a request to `host` and `path` takes, with its place under the route's concurrency
/// limit (held until the response ends), when no route's limit refuses it — both paths admit
/// requests here.
pub fn admit<'a>(rt: &'a VipRuntime, host: Option<&str>, path: &str, now: Instant) -> Admission<'a> {
    let Some(index) = rt.matcher.find(host, path) else {
        return Admission::Refused(Refusal { canned: no_route(), route: "-", stats: &rt.unrouted });
    };
    let route = &rt.routes[index];
    let refused = |canned| Admission::Refused(Refusal { canned, route: &route.name, stats: &route.stats });
    if let Some(limiter) = &route.limiter
        && let Err(wait) = limiter.take(now)
    {
        route.stats.rate_limited.inc();
        return refused(limited(&limiter.limit().on_limit, wait));
    }
    let mut slot = None;
    if let Some(concurrency) = &route.concurrency {
        let Some(entered) = concurrency.try_enter() else {
            route.stats.concurrency_limited.inc();
            return refused(limited(&concurrency.limit().on_limit, std::time::Duration::from_secs(1)));
        };
        slot = Some(entered);
    }
    Admission::Admitted(route, slot)
}

/// Serves one request with the VIP's current runtime.
pub async fn handle(rt: Arc<VipRuntime>, conn: Conn, mut req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
    let start = Instant::now();
    let upgrade = is_upgrade(&req);
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (mut parts, body) = req.into_parts();
    // The host as sent: h2's :authority, else the Host header (its bytes shared, not copied).
    let host_value = match parts.uri.authority() {
        Some(authority) => HeaderValue::from_str(authority.as_str()).ok(),
        None => parts.headers.get(HOST).cloned(),
    };
    let host = host_value.as_ref().and_then(|h| h.to_str().ok());
    let path = parts.uri.path();
    let method = &parts.method;
    // Every way out of here is counted and logged once, with what is known of the request.
    let log = |outcome: Outcome<'_>| finish(&rt, &conn, method.as_str(), host, path, start, outcome);
    let (route, slot) = match admit(&rt, host, path, start) {
        Admission::Admitted(route, slot) => (route, slot),
        Admission::Refused(refusal) => {
            log(done(refusal.canned.status.as_u16(), refusal.route, refusal.stats, None, 0, None));
            return Ok(refusal.canned.into_response());
        }
    };
    let upgrade_to = upgrade.then(|| parts.headers.get(UPGRADE).cloned()).flatten();
    strip_hop_by_hop(&mut parts.headers, upgrade);
    if let Some(upgrade_to) = upgrade_to {
        parts.headers.insert(UPGRADE, upgrade_to);
    }
    if !parts.headers.contains_key(HOST)
        && let Some(value) = host_value.clone()
    {
        parts.headers.insert(HOST, value);
    }
    add_forwarded(&mut parts.headers, conn, host);
    let path_and_query = parts.uri.path_and_query().cloned().unwrap_or_else(|| PathAndQuery::from_static("/"));
    let replayable = idempotent(method) && body.is_end_stream() && !upgrade;
    let attempts = if replayable { 1 + rt.retries } else { 1 };
    let mut body = Some(body.boxed_unsync());
    let deadline = tokio::time::Instant::from_std(start + rt.request_timeout);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error: Option<String> = None;
    for attempt in 0..attempts {
        let key = hash_key(route.pool.balance(), &parts.headers);
        let Some(backend) = route.pool.pick(key, &tried) else { break };
        tried.push(backend.address);
        if attempt > 0 {
            route.stats.retries.inc();
        }
        // Origin form: the path and query as they came (Host says the authority).
        let uri = Uri::from(path_and_query.clone());
        let mut upstream = Request::new(body.take().unwrap_or_else(empty));
        *upstream.method_mut() = method.clone();
        *upstream.uri_mut() = uri;
        *upstream.version_mut() = Version::HTTP_11;
        // The last attempt takes the headers; earlier ones copy them for the next.
        *upstream.headers_mut() =
            if attempt + 1 == attempts { std::mem::take(&mut parts.headers) } else { parts.headers.clone() };
        // HTTP/1.1 requires a Host: a client that sent none (HTTP/1.0, h2 without :authority)
        // gets the backend's address, without the default port, as a client of it would send.
        if !upstream.headers().contains_key(HOST) {
            let address = backend.address;
            let host = match address {
                SocketAddr::V4(a) if a.port() == 80 => a.ip().to_string(),
                SocketAddr::V6(a) if a.port() == 80 => format!("[{}]", a.ip()),
                _ => backend.identity.clone(),
            };
            if let Ok(value) = HeaderValue::from_str(&host) {
                upstream.headers_mut().insert(HOST, value);
            }
        }
        // Counts until the response body ends (or the attempt fails).
        let in_flight = backend.begin();
        let result = tokio::time::timeout_at(deadline, rt.upstream.send(backend.address, upstream)).await;
        let n = attempt + 1;
        match result {
            Err(_) => {
                route.stats.timeouts.inc();
                let error = Some(format!("no response within {:?}", rt.request_timeout));
                log(done(504, &route.name, &route.stats, Some(&backend.identity), n, error));
                return Ok(timed_out().into_response());
            }
            Ok(Err(e)) => last_error = Some(attempt_failed(&rt, route, backend.address, &e)),
            Ok(Ok(Leased { mut response, lease })) => {
                let status = response.status();
                if status == StatusCode::SWITCHING_PROTOCOLS
                    && let Some(client_side) = client_upgrade
                {
                    let backend_side = hyper::upgrade::on(&mut response);
                    let (vip, route_name) = (rt.name.clone(), route.name.clone());
                    tokio::spawn(async move {
                        match tokio::try_join!(client_side, backend_side) {
                            Ok((client_io, backend_io)) => {
                                let (mut c, mut b) = (TokioIo::new(client_io), TokioIo::new(backend_io));
                                let _ = tokio::io::copy_bidirectional(&mut c, &mut b).await;
                            }
                            Err(e) => tracing::debug!(%vip, route = %route_name, error = %e, "upgrade failed"),
                        }
                    });
                } else {
                    strip_hop_by_hop(response.headers_mut(), false);
                }
                log(done(status.as_u16(), &route.name, &route.stats, Some(&backend.identity), n, None));
                // An upgraded stream no longer counts as a request in flight.
                let upgraded = status == StatusCode::SWITCHING_PROTOCOLS;
                let (guard, slot, lease) =
                    if upgraded { (None, None, None) } else { (Some(in_flight), slot, Some(lease)) };
                return Ok(response
                    .map(|body| Tracked { body, lease, ended: false, _guard: guard, _slot: slot }.boxed_unsync()));
            }
        }
    }
    let canned = unanswered(!tried.is_empty());
    let n = tried.len() as u32;
    let last = tried.last().map(SocketAddr::to_string);
    log(done(canned.status.as_u16(), &route.name, &route.stats, last.as_deref(), n, last_error));
    Ok(canned.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_headers_go_and_forwarded_headers_are_appended() {
        let mut h = HeaderMap::new();
        h.insert(CONNECTION, HeaderValue::from_static("keep-alive, x-secret"));
        h.insert("x-secret", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("x-forwarded-for", HeaderValue::from_static("203.0.113.1"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h, false);
        assert!(!h.contains_key("x-secret") && !h.contains_key(CONNECTION) && !h.contains_key("keep-alive"));
        add_forwarded(&mut h, Conn::new("198.51.100.7:4000".parse().unwrap(), false), Some("example.com"));
        assert_eq!(h["x-forwarded-for"], "203.0.113.1, 198.51.100.7");
        assert_eq!(h["forwarded"], "for=198.51.100.7;proto=http;host=\"example.com\"");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-kept"], "yes");
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, Conn::new("[2001:db8::7]:4000".parse().unwrap(), true), None);
        assert_eq!(h["forwarded"], "for=\"[2001:db8::7]\";proto=https");
    }

    #[test]
    fn a_connection_writes_its_client_address_once() {
        let v4 = Conn::new("198.51.100.7:4000".parse().unwrap(), false);
        assert_eq!((v4.client_text(), v4.ip_text()), ("198.51.100.7:4000", &b"198.51.100.7"[..]));
        let v6 = Conn::new("[2001:db8::7]:9".parse().unwrap(), true);
        assert_eq!((v6.client_text(), v6.ip_text()), ("[2001:db8::7]:9", &b"2001:db8::7"[..]));
        let scoped = Conn::new("[fe80::1%4294967295]:65535".parse().unwrap(), false);
        assert_eq!(scoped.client_text(), "[fe80::1%4294967295]:65535");
        let long = "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535";
        let widest = Conn::new(long.parse().unwrap(), false);
        assert_eq!(widest.client_text(), long);
        assert_eq!(widest.ip_text(), b"ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff");
    }

    #[test]
    fn hash_keys_come_from_headers_and_cookies() {
        let mut h = HeaderMap::new();
        h.insert("x-user", HeaderValue::from_static("alice"));
        h.append(COOKIE, HeaderValue::from_static("a=1; sid=abc; b=2"));
        assert_eq!(hash_key(&Balance::HashHeader("x-user".into()), &h), Some(&b"alice"[..]));
        assert_eq!(hash_key(&Balance::HashCookie("sid".into()), &h), Some(&b"abc"[..]));
        assert_eq!(hash_key(&Balance::HashCookie("si".into()), &h), None);
        assert_eq!(hash_key(&Balance::RoundRobin, &h), None);
    }

    #[test]
    fn upgrades_and_idempotent_methods() {
        let req =
            Request::builder().header(CONNECTION, "keep-alive, Upgrade").header(UPGRADE, "websocket").body(()).unwrap();
        assert!(is_upgrade(&req));
        let req = Request::builder().header(UPGRADE, "websocket").body(()).unwrap();
        assert!(!is_upgrade(&req), "Upgrade without Connection: upgrade is not one");
        assert!(idempotent(&Method::GET) && idempotent(&Method::PUT) && !idempotent(&Method::POST));
    }
}
