//! The direct HTTP/1.1 path: the requests most traffic is made of (HTTP/1.1, GET, HEAD, OPTIONS
//! or DELETE, no body, no upgrade) are served on the client's socket without hyper. Their head
//! is read and checked with httparse, sent to the backend rewritten as the general path would
//! (hop-by-hop headers out, X-Forwarded-* and Forwarded in), and the backend's response relayed
//! with its body as it came — its length or chunks followed only to know where it ends —
//! through the worker's own plain backend connections.
//!
//! Routes, limits, retries, metrics and the access log are the general path's own
//! ([`super::proxy`]). The first request of another kind hands the connection, with the bytes
//! read from it, to hyper for the rest of its life; so do bytes that are not a request hyper
//! would take (hyper answers them as it always did). Profiles of the keep-alive bench put two
//! thirds of the proxy's user-space CPU in hyper's dispatch, channels, header maps and
//! allocations; this path does one read and one write per side and allocates nothing per
//! request once its buffers have grown.

pub mod chunked;
pub mod head;
mod prefixed;

use std::{
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _},
    net::TcpStream,
};

pub use self::prefixed::Prefixed;
use self::{
    chunked::Chunked,
    head::{Framing, Parsed, ParsedResponse, REQUEST_HEADERS, RequestLine, ResponseHead, Simple},
};
use super::{
    client_stream::ClientStream,
    proxy::{
        Admission, Canned, Conn, Outcome, RouteRuntime, VipRuntime, admit, attempt_failed, done, finish, timed_out,
        unanswered,
    },
    ratelimit::Slot,
    upstream::{Upstream, UpstreamError},
};

/// A request head longer than this goes to the general path (hyper, which takes up to ~400 KiB).
const MAX_HEAD: usize = 16 * 1024;
/// A backend's response head may be this long.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Room for a response head and a small body, read at once.
const HEAD_READ: usize = 8 * 1024;
/// Bytes read at once while a larger body passes (64 KiB in two reads).
const BODY_READ: usize = 32 * 1024;
/// A connection waiting for its next request keeps buffers up to this size; larger ones,
/// grown by a large head or body, are let go.
const KEEP_BUFFER: usize = 16 * 1024;

/// How the direct path left a connection.
#[derive(Debug)]
pub enum End {
    /// Done with: the client closed, asked to close, idled out, or an error ended it.
    Closed,
    /// A request for the general path: these bytes, read from the connection, come first.
    Handoff(Vec<u8>),
}

/// Buffers a connection keeps between its requests.
#[derive(Debug)]
struct Buffers {
    /// What the client sent and the direct path has not yet served (lent out while serving).
    input: Vec<u8>,
    /// The head sent to the backend.
    request: Vec<u8>,
    /// What the backend sent.
    response: Vec<u8>,
    /// What the client gets first: the response head and the body bytes read with it.
    out: Vec<u8>,
}

/// What the direct path asks of a client connection beyond reads and writes.
pub trait ClientSocket {
    /// Turns Nagle's algorithm off.
    fn no_delay(&self);
}

impl ClientSocket for ClientStream {
    fn no_delay(&self) {
        let _ = self.set_nodelay(true);
    }
}

impl ClientSocket for tokio_rustls::server::TlsStream<ClientStream> {
    fn no_delay(&self) {
        let _ = self.get_ref().0.set_nodelay(true);
    }
}

#[cfg(test)]
impl ClientSocket for tokio::io::DuplexStream {
    fn no_delay(&self) {}
}

/// Serves `io`'s requests for as long as they are simple ones.
pub async fn serve<S>(swap: &arc_swap::ArcSwap<VipRuntime>, conn: Conn, io: &mut S) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + ClientSocket,
{
    let mut buffers = Spare::take();
    let mut input = std::mem::take(&mut buffers.input);
    // Waiting for a head (the next one, or the rest of this one) is bounded by the idle timeout
    // from the moment the wait began, as hyper's header read timeout bounds it: a client sending
    // a byte now and then cannot hold the connection longer.
    let mut head_deadline = None;
    // Nagle's algorithm goes once the connection is to carry more than one request (as nginx
    // does it): an answer written in pieces must not wait for the client's ACK then; a
    // connection closed after its one answer (`Connection: close`) flushes at close.
    let mut no_delay = false;
    // The runtime as of the last request, checked for a reload by a pointer compare: taking a
    // count on the shared runtime per request made both workers bounce its counter.
    let mut current = arc_swap::cache::Cache::new(swap);
    loop {
        let rt: &VipRuntime = arc_swap::cache::Access::load(&mut current);
        // What needs the parsed headers is done in this block, before any wait: the array they
        // are parsed into is not kept in the connection's future.
        let step = {
            let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS];
            match head::parse_request(&input, &mut headers) {
                Parsed::Simple(request) => {
                    if !request.line.close && !no_delay {
                        io.no_delay();
                        no_delay = true;
                    }
                    Some(prepare(rt, &conn, &request, &mut buffers.request))
                }
                Parsed::Partial if input.len() < MAX_HEAD => None,
                Parsed::Partial | Parsed::Other => {
                    Spare::give_back(buffers);
                    return End::Handoff(input);
                }
            }
        };
        let next = match step {
            None => Next::Read,
            Some(prepared) => {
                let len = prepared.line().len;
                let flow = match prepared {
                    Prepared::Admitted(admitted) => exchange(rt, &conn, admitted, io, &mut buffers).await,
                    Prepared::Refused(line, canned) => {
                        reply(io, &canned, &line, &mut buffers.out, rt.idle_timeout).await
                    }
                };
                match flow {
                    Flow::KeepOpen => Next::Consumed(len),
                    Flow::Close => Next::Close,
                }
            }
        };
        match next {
            Next::Consumed(len) => {
                input.drain(..len);
                head_deadline = None;
                buffers.release_large();
            }
            Next::Close => {
                buffers.input = input;
                Spare::give_back(buffers);
                return End::Closed;
            }
            Next::Read => {
                input.reserve(4096);
                let deadline = *head_deadline.get_or_insert_with(|| tokio::time::Instant::now() + rt.idle_timeout);
                match tokio::time::timeout_at(deadline, io.read_buf(&mut input)).await {
                    Ok(Ok(n)) if n > 0 => {}
                    _ => {
                        buffers.input = input;
                        Spare::give_back(buffers);
                        return End::Closed;
                    }
                }
            }
        }
    }
}

/// Buffers of connections gone, kept by each worker for its next ones: a connection per
/// request would otherwise allocate (and glibc consolidate) them anew each time.
struct Spare;

/// Sets of buffers a worker keeps.
const SPARE_SETS: usize = 256;

thread_local! {
    static SPARE: std::cell::RefCell<Vec<Buffers>> = const { std::cell::RefCell::new(Vec::new()) };
}

impl Spare {
    fn take() -> Buffers {
        SPARE.with_borrow_mut(Vec::pop).unwrap_or_else(|| Buffers {
            input: Vec::with_capacity(4096),
            request: Vec::with_capacity(1024),
            response: Vec::with_capacity(HEAD_READ),
            out: Vec::with_capacity(1024),
        })
    }

    fn give_back(mut buffers: Buffers) {
        buffers.release_large();
        for buffer in [&mut buffers.input, &mut buffers.request, &mut buffers.response, &mut buffers.out] {
            buffer.clear();
        }
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_SETS {
                spare.push(buffers);
            }
        });
    }
}

impl Buffers {
    fn release_large(&mut self) {
        for buffer in [&mut self.input, &mut self.request, &mut self.response, &mut self.out] {
            if buffer.capacity() > KEEP_BUFFER {
                *buffer = Vec::new();
            }
        }
    }
}

enum Next {
    Consumed(usize),
    Read,
    Close,
}

/// Whether the client's connection takes another request.
enum Flow {
    KeepOpen,
    Close,
}

/// Writes `bytes` and flushes them within `idle`: a client that stops reading is let go. The
/// timer is set only when the write has to wait (most go whole into the socket at once).
async fn write_within<S: AsyncWrite + Unpin>(io: &mut S, bytes: &[u8], idle: Duration) -> bool {
    let mut write = std::pin::pin!(async {
        io.write_all(bytes).await?;
        io.flush().await
    });
    let first = std::future::poll_fn(|cx| std::task::Poll::Ready(write.as_mut().poll(cx))).await;
    match first {
        std::task::Poll::Ready(result) => result.is_ok(),
        std::task::Poll::Pending => matches!(tokio::time::timeout(idle, write).await, Ok(Ok(()))),
    }
}

/// Writes a response the proxy made.
async fn reply<S: AsyncWrite + Unpin>(
    io: &mut S,
    canned: &Canned,
    line: &RequestLine<'_>,
    out: &mut Vec<u8>,
    idle: Duration,
) -> Flow {
    out.clear();
    canned.write_h1(out, line.close, line.head_only);
    if write_within(io, out, idle).await && !line.close { Flow::KeepOpen } else { Flow::Close }
}

/// A request after [`prepare`].
enum Prepared<'r, 'b> {
    Admitted(Admitted<'r, 'b>),
    /// Refused before any backend (and logged): the client gets this answer.
    Refused(RequestLine<'b>, Canned),
}

impl<'b> Prepared<'_, 'b> {
    fn line(&self) -> &RequestLine<'b> {
        match self {
            Prepared::Admitted(admitted) => &admitted.line,
            Prepared::Refused(line, _) => line,
        }
    }
}

/// A request admitted on a route, with the head its backend gets already written.
struct Admitted<'r, 'b> {
    line: RequestLine<'b>,
    route: &'r RouteRuntime,
    /// Its place under the route's concurrency limit, held until the response ends.
    _slot: Option<Slot>,
    /// What a consistent-hash route hashes.
    key: Option<&'b [u8]>,
    start: Instant,
}

/// What of a request needs its headers: the route and limits, the head for the backend (into
/// `request`) and the hash key.
fn prepare<'r, 'b>(rt: &'r VipRuntime, conn: &Conn, req: &Simple<'b, '_>, request: &mut Vec<u8>) -> Prepared<'r, 'b> {
    let start = Instant::now();
    let line = req.line;
    match admit(rt, Some(line.host), line.path, start) {
        Admission::Admitted(route, slot) => {
            req.upstream_head(request, conn);
            let key = req.hash_key(route.pool.balance());
            Prepared::Admitted(Admitted { line, route, _slot: slot, key, start })
        }
        Admission::Refused(refusal) => {
            let outcome = done(refusal.canned.status.as_u16(), refusal.route, refusal.stats, None, 0, None);
            finish(rt, conn, line.method, Some(line.host), line.path, start, outcome);
            Prepared::Refused(line, refusal.canned)
        }
    }
}

/// One admitted request: attempts on backends (another one after a failure, as the route's
/// retries allow: these methods are safe to send twice), the response relayed.
async fn exchange<S>(rt: &VipRuntime, conn: &Conn, req: Admitted<'_, '_>, io: &mut S, bufs: &mut Buffers) -> Flow
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let Admitted { line, route, key, start, .. } = &req;
    let log = |outcome: Outcome<'_>| finish(rt, conn, line.method, Some(line.host), line.path, *start, outcome);
    let attempts = 1 + rt.retries;
    let deadline = tokio::time::Instant::from_std(*start + rt.request_timeout);
    let mut tried: Vec<SocketAddr> = Vec::new();
    let mut last_error = None;
    for attempt in 0..attempts {
        let Some(backend) = route.pool.pick(*key, &tried) else { break };
        tried.push(backend.address);
        if attempt > 0 {
            route.stats.retries.inc();
        }
        let _in_flight = backend.begin();
        let sent = tokio::time::timeout_at(deadline, send(&rt.upstream, backend.address, line, bufs)).await;
        let n = attempt + 1;
        match sent {
            Err(_) => {
                route.stats.timeouts.inc();
                let error = Some(format!("no response within {:?}", rt.request_timeout));
                log(done(504, &route.name, &route.stats, Some(&backend.identity), n, error));
                return reply(io, &timed_out(), line, &mut bufs.out, rt.idle_timeout).await;
            }
            Ok(Err(e)) => last_error = Some(attempt_failed(rt, route, backend.address, &e)),
            Ok(Ok((stream, head))) => {
                log(done(head.status, &route.name, &route.stats, Some(&backend.identity), n, None));
                return relay(&rt.upstream, backend.address, stream, &head, io, bufs, rt.idle_timeout).await;
            }
        }
    }
    let canned = unanswered(!tried.is_empty());
    let n = tried.len() as u32;
    let last = tried.last().map(SocketAddr::to_string);
    log(done(canned.status.as_u16(), &route.name, &route.stats, last.as_deref(), n, last_error));
    reply(io, &canned, line, &mut bufs.out, rt.idle_timeout).await
}

/// Why one try on a backend connection got no response head.
enum TryError {
    /// Nothing came back at all: on a connection that had been idle, the backend closed it
    /// before it saw the request (the request goes again on a new one).
    Silent(std::io::Error),
    Failed(UpstreamError),
}

/// Sends the request in `bufs.request` to `backend` and reads the response head into
/// `bufs.response` (the client's head into `bufs.out`): on an idle connection of this worker,
/// or a new one when there is none or the backend had closed it.
async fn send(
    upstream: &Arc<Upstream>,
    backend: SocketAddr,
    req: &RequestLine<'_>,
    bufs: &mut Buffers,
) -> Result<(TcpStream, ResponseHead), UpstreamError> {
    if let Some(mut stream) = upstream.take_stream(backend) {
        match try_send(&mut stream, req, bufs).await {
            Ok(head) => return Ok((stream, head)),
            Err(TryError::Failed(e)) => return Err(e),
            Err(TryError::Silent(_)) => {}
        }
    }
    // Boxed: connecting is rare next to reusing, and its future would make every
    // connection's future larger.
    let mut stream = Box::pin(upstream.connect_stream(backend)).await?;
    match try_send(&mut stream, req, bufs).await {
        Ok(head) => Ok((stream, head)),
        Err(TryError::Silent(e)) => Err(UpstreamError::Io(e)),
        Err(TryError::Failed(e)) => Err(e),
    }
}

async fn try_send(stream: &mut TcpStream, req: &RequestLine<'_>, bufs: &mut Buffers) -> Result<ResponseHead, TryError> {
    stream.write_all(&bufs.request).await.map_err(TryError::Silent)?;
    bufs.response.clear();
    loop {
        bufs.response.reserve(HEAD_READ);
        match stream.read_buf(&mut bufs.response).await {
            Ok(0) if bufs.response.is_empty() => {
                return Err(TryError::Silent(std::io::ErrorKind::UnexpectedEof.into()));
            }
            Ok(0) => {
                return Err(TryError::Failed(UpstreamError::Invalid("the backend closed within its response head")));
            }
            Ok(_) => {}
            Err(e) if bufs.response.is_empty() => return Err(TryError::Silent(e)),
            Err(e) => return Err(TryError::Failed(UpstreamError::Io(e))),
        }
        // Interim responses (100 Continue, 103 Early Hints) are not the answer.
        loop {
            match head::parse_response(&bufs.response, req.head_only, req.close, &mut bufs.out) {
                ParsedResponse::Final(head) => return Ok(head),
                ParsedResponse::Interim(len) => {
                    bufs.response.drain(..len);
                }
                ParsedResponse::Partial if bufs.response.len() < MAX_RESPONSE_HEAD => break,
                ParsedResponse::Partial => {
                    return Err(TryError::Failed(UpstreamError::Invalid("a response head over 64 KiB")));
                }
                ParsedResponse::Invalid(why) => return Err(TryError::Failed(UpstreamError::Invalid(why))),
            }
        }
    }
}

/// Where a body stands while it passes.
enum Body {
    Left(u64),
    Chunks(Chunked),
    UntilClose,
}

impl Body {
    fn new(framing: Framing) -> Self {
        match framing {
            Framing::Empty => Body::Left(0),
            Framing::Length(n) => Body::Left(n),
            Framing::Chunked => Body::Chunks(Chunked::default()),
            Framing::UntilClose => Body::UntilClose,
        }
    }

    /// Takes what of `bytes` belongs to the body; None when its framing is broken.
    fn take(&mut self, bytes: &[u8]) -> Option<usize> {
        match self {
            Body::Left(left) => {
                let n = (*left).min(bytes.len() as u64);
                *left -= n;
                Some(n as usize)
            }
            Body::Chunks(chunks) => chunks.feed(bytes).ok(),
            Body::UntilClose => Some(bytes.len()),
        }
    }

    fn ended(&self) -> bool {
        match self {
            Body::Left(left) => *left == 0,
            Body::Chunks(chunks) => chunks.done(),
            Body::UntilClose => false,
        }
    }
}

/// Relays the response: the client's head with the body bytes read along, then the rest of the
/// body as it comes (each read and write bounded by the idle timeout). The backend connection
/// goes back to the worker's idle list when the body ended whole and nothing followed it.
async fn relay<S>(
    upstream: &Arc<Upstream>,
    backend: SocketAddr,
    mut stream: TcpStream,
    head: &ResponseHead,
    io: &mut S,
    bufs: &mut Buffers,
    idle: Duration,
) -> Flow
where
    S: AsyncWrite + Unpin,
{
    let mut body = Body::new(head.framing);
    let read = &bufs.response[head.len..];
    let Some(taken) = body.take(read) else { return Flow::Close };
    // Bytes past the body: the backend cannot be trusted with another request.
    let mut clean = taken == read.len();
    bufs.out.extend_from_slice(&read[..taken]);
    if !write_within(io, &bufs.out, idle).await {
        return Flow::Close;
    }
    while !body.ended() {
        bufs.response.clear();
        bufs.response.reserve(BODY_READ);
        match tokio::time::timeout(idle, stream.read_buf(&mut bufs.response)).await {
            Ok(Ok(0)) if matches!(body, Body::UntilClose) => {
                clean = false;
                break;
            }
            Ok(Ok(n)) if n > 0 => {}
            // Cut short: the client cannot tell a whole body from this one but by closing.
            _ => return Flow::Close,
        }
        let Some(taken) = body.take(&bufs.response) else { return Flow::Close };
        clean &= taken == bufs.response.len();
        if !write_within(io, &bufs.response[..taken], idle).await {
            return Flow::Close;
        }
    }
    if clean && head.backend_keeps_open {
        upstream.put_stream(backend, stream);
    }
    if head.close { Flow::Close } else { Flow::KeepOpen }
}

#[cfg(test)]
mod tests;
