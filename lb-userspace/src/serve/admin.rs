//! The admin socket: a unix stream socket, mode 0600, one JSON request and reply per line.
//!
//! Clients are bounded like strangers even though only root can connect: a request line is at
//! most [`REQUEST_MAX`] bytes (a plan request, which carries a config file, [`PLAN_REQUEST_MAX`],
//! one at a time), a connection is closed after [`Limits::idle_timeout`] without a request or
//! [`Limits::write_timeout`] without reading its reply, and at most [`Limits::max_connections`]
//! are served at once.

use std::{
    io,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::{
    io::{AsyncBufRead, AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream, unix::OwnedWriteHalf},
    sync::{OwnedSemaphorePermit, Semaphore},
    task::JoinHandle,
};

mod api;

use crate::serve::accept::AcceptErrors;
pub use crate::serve::summary::{AttachmentStatus, NodeState, ReloadOutcome, StateStatus};
pub use api::{Reply, ReplyFuture, Request, Status};

pub const DEFAULT_SOCKET: &str = "/run/xlb/admin.sock";

/// The longest request line the agent reads, newline excluded; plan requests excepted.
pub const REQUEST_MAX: usize = 64 * 1024;

/// The longest plan request line. `xlb plan` sends the config file's text, not its path: the
/// agent may not see the CLI's files (the systemd unit runs it with `ProtectHome=yes`), and a
/// 10 000-VIP config is megabytes. The larger limit applies only to lines that start the way
/// the CLI writes a plan request (`{"plan"`, compact JSON), and to one such line at a time.
pub const PLAN_REQUEST_MAX: usize = 64 * 1024 * 1024;

/// How `serde_json` writes a [`Request::Plan`]; other spellings get [`REQUEST_MAX`].
const PLAN_PREFIX: &[u8] = b"{\"plan\"";

/// The longest reply line the client reads: a status at 10 000 VIPs is tens of megabytes.
pub const REPLY_MAX: usize = 256 * 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "admin socket {path}: the agent sent a reply this client cannot read ({source}); are agent and CLI the same version?"
    )]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error(
        "admin socket {path}: another agent answers there; give each agent its own (`agent.admin_socket` in its config, or --admin-socket)"
    )]
    InUse { path: PathBuf },
    #[error(
        "admin socket {path}: the path exists and is not a socket; move it aside or give the agent another (`agent.admin_socket` in its config, or --admin-socket)"
    )]
    NotASocket { path: PathBuf },
    #[error("the agent at {path} closed the connection without replying")]
    NoReply { path: PathBuf },
    #[error("the agent says: {0}")]
    Agent(String),
    #[error(
        "the request is {bytes} bytes, more than the {max} the agent reads (for `xlb plan`: the config file, as JSON)"
    )]
    RequestTooLong { bytes: usize, max: usize },
    #[error("the agent at {path} sent a reply longer than {max} bytes; this client reads no further")]
    ReplyTooLong { path: PathBuf, max: usize },
}

/// Bounds on what admin clients may cost the agent.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Connections served at once. Beyond it a connection gets an error reply and is closed:
    /// the CLI says so at once rather than hanging behind stuck clients.
    pub max_connections: usize,
    /// Time to wait for the next complete request line; the CLI sends its request at once.
    pub idle_timeout: Duration,
    /// Time for the client to take a reply.
    pub write_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_connections: 32, idle_timeout: Duration::from_secs(60), write_timeout: Duration::from_secs(10) }
    }
}

/// Answers requests with `handle` until the task is dropped.
pub async fn serve<F>(path: &Path, handle: Arc<F>) -> Result<JoinHandle<()>, AdminError>
where
    F: Fn(Request) -> ReplyFuture + Send + Sync + 'static,
{
    serve_with(path, handle, Limits::default()).await
}

/// [`serve`] with other limits.
pub async fn serve_with<F>(path: &Path, handle: Arc<F>, limits: Limits) -> Result<JoinHandle<()>, AdminError>
where
    F: Fn(Request) -> ReplyFuture + Send + Sync + 'static,
{
    let io = |source| AdminError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    clear_stale(path)?;
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(tokio::spawn(accept_loop(listener, handle, limits)))
}

/// Makes way for binding `path`: a socket file nobody listens on (left by an agent that was
/// killed or crashed) is removed; a live agent's socket is not taken over (that agent would go
/// on unreachable), and neither is a file that is not a socket.
fn clear_stale(path: &Path) -> Result<(), AdminError> {
    use std::os::unix::fs::FileTypeExt as _;
    let io = |source| AdminError::Io { path: path.to_owned(), source };
    match std::fs::symlink_metadata(path) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(io(e)),
        Ok(meta) if !meta.file_type().is_socket() => return Err(AdminError::NotASocket { path: path.to_owned() }),
        Ok(_) => {}
    }
    match std::os::unix::net::UnixStream::connect(path) {
        Ok(_) => Err(AdminError::InUse { path: path.to_owned() }),
        // Nobody listening: a stale file.
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io(e)),
            }
            tracing::info!(path = %path.display(), "removed a stale admin socket (its agent did not exit cleanly)");
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(e)),
    }
}

async fn accept_loop<F>(listener: UnixListener, handle: Arc<F>, limits: Limits)
where
    F: Fn(Request) -> ReplyFuture + Send + Sync + 'static,
{
    let limits = Arc::new(limits);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    // Plan lines may hold PLAN_REQUEST_MAX bytes each: one at a time.
    let plans = Arc::new(Semaphore::new(1));
    let mut errors = AcceptErrors::default();
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                errors.after("admin socket", &e).await;
                continue;
            }
        };
        let Ok(slot) = Arc::clone(&slots).try_acquire_owned() else {
            let busy = format!("the agent serves {} admin connections at once; try again", limits.max_connections);
            // Best effort, never waits: a fresh socket's buffer takes one short line.
            let _ = stream.try_write(&encode(&Reply::Error(busy)));
            continue;
        };
        let (handle, limits, plans) = (Arc::clone(&handle), Arc::clone(&limits), Arc::clone(&plans));
        tokio::spawn(async move {
            if let Err(e) = converse(stream, &*handle, &limits, &plans).await {
                tracing::debug!(error = %e, "admin connection ended");
            }
            drop(slot);
        });
    }
}

/// Answers the connection's requests in turn until it closes, idles, sends a line too long or
/// does not take a reply.
async fn converse<F>(stream: UnixStream, handle: &F, limits: &Limits, plans: &Arc<Semaphore>) -> io::Result<()>
where
    F: Fn(Request) -> ReplyFuture,
{
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut line = Vec::new();
    loop {
        let Ok(read) = tokio::time::timeout(limits.idle_timeout, read_request(&mut reader, &mut line, plans)).await
        else {
            return Ok(());
        };
        // Held until the reply is sent: a plan's request keeps its config text until then.
        let (read, _plan_slot) = read?;
        let request = match read {
            Line::End => return Ok(()),
            Line::TooLong => Err(too_long(request_max(&line))),
            Line::Complete => parse(&line),
        };
        // A plan's megabytes go back now, not when the connection ends.
        if line.capacity() > REQUEST_MAX {
            line = Vec::new();
        }
        line.clear();
        let reply = match request {
            Ok(request) => handle(request).await,
            Err(message) => Reply::Error(message),
        };
        send(&mut write, &reply, limits.write_timeout).await?;
        if read == Line::TooLong {
            // The rest of that line is still coming: nothing after it can be framed.
            return Ok(());
        }
    }
}

/// How reading a line ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Line {
    /// Up to a newline, or to the end of the stream.
    Complete,
    /// Longer than allowed: the buffer holds the first `max` bytes and the rest is unread.
    TooLong,
    /// The stream ended before a line began.
    End,
}

/// Appends the next line to `line` (its newline dropped), never holding more than `max` bytes.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    max: usize,
) -> io::Result<Line> {
    loop {
        let available = reader.fill_buf().await?;
        if available.is_empty() {
            return Ok(if line.is_empty() { Line::End } else { Line::Complete });
        }
        let newline = available.iter().position(|&b| b == b'\n');
        let part = newline.unwrap_or(available.len());
        let room = max - line.len();
        if part > room {
            reserve_at_most(line, room, max);
            line.extend_from_slice(&available[..room]);
            reader.consume(room);
            return Ok(Line::TooLong);
        }
        reserve_at_most(line, part, max);
        line.extend_from_slice(&available[..part]);
        match newline {
            Some(_) => {
                reader.consume(part + 1);
                return Ok(Line::Complete);
            }
            None => reader.consume(part),
        }
    }
}

/// Room for `more` bytes in `line`, growing by doubling as `Vec` does but never past `max`.
fn reserve_at_most(line: &mut Vec<u8>, more: usize, max: usize) {
    let needed = line.len() + more;
    if needed > line.capacity() {
        let target = (line.capacity() * 2).clamp(needed, max.max(needed));
        line.reserve_exact(target - line.len());
    }
}

/// The longest request line that starts like `line`.
pub(crate) fn request_max(line: &[u8]) -> usize {
    if line.starts_with(PLAN_PREFIX) { PLAN_REQUEST_MAX } else { REQUEST_MAX }
}

/// Reads one request line into `line`, bounded by [`request_max`]. A plan request longer than
/// [`REQUEST_MAX`] first waits its turn in `plans`; the permit comes back with the line.
pub(crate) async fn read_request<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut Vec<u8>,
    plans: &Arc<Semaphore>,
) -> io::Result<(Line, Option<OwnedSemaphorePermit>)> {
    let read = read_line(reader, line, REQUEST_MAX).await?;
    if read != Line::TooLong || request_max(line) == REQUEST_MAX {
        return Ok((read, None));
    }
    // The semaphore is never closed: `ok()` only satisfies the types.
    let permit = Arc::clone(plans).acquire_owned().await.ok();
    Ok((read_line(reader, line, PLAN_REQUEST_MAX).await?, permit))
}

fn too_long(max: usize) -> String {
    format!("request longer than {max} bytes; xlb's requests are one JSON line")
}

/// The request in `line`, or why it is none, without quoting it (it may be anything, of any
/// size).
pub(crate) fn parse(line: &[u8]) -> Result<Request, String> {
    serde_json::from_slice(line).map_err(|e| {
        let what = match e.classify() {
            serde_json::error::Category::Syntax => "not JSON",
            serde_json::error::Category::Eof => "JSON cut short",
            serde_json::error::Category::Data => "JSON but no request this agent knows",
            serde_json::error::Category::Io => "unreadable",
        };
        format!(
            "the request is not a JSON admin request (expected one of stats, status, drain, drain_node, weight, plan, detach): \
             {what} at line {} column {}; are the CLI and the agent the same version?",
            e.line(),
            e.column()
        )
    })
}

/// `reply` as one line.
fn encode(reply: &Reply) -> Vec<u8> {
    let mut text = serde_json::to_vec(reply).unwrap_or_else(|e| {
        serde_json::to_vec(&Reply::Error(format!("encoding the reply failed: {e}")))
            .unwrap_or_else(|_| br#"{"error":"encoding the reply failed"}"#.to_vec())
    });
    text.push(b'\n');
    text
}

async fn send(write: &mut OwnedWriteHalf, reply: &Reply, deadline: Duration) -> io::Result<()> {
    tokio::time::timeout(deadline, write.write_all(&encode(reply))).await.unwrap_or_else(|_| {
        Err(io::Error::new(io::ErrorKind::TimedOut, format!("the client took no reply for {deadline:?}")))
    })
}

/// Sends one request to the agent listening at `path` and returns its reply.
pub async fn request(path: &Path, request: Request) -> Result<Reply, AdminError> {
    let io = |source| AdminError::Io { path: path.to_owned(), source };
    let mut text =
        serde_json::to_vec(&request).map_err(|source| AdminError::Decode { path: path.to_owned(), source })?;
    let max = request_max(&text);
    if text.len() > max {
        return Err(AdminError::RequestTooLong { bytes: text.len(), max });
    }
    text.push(b'\n');
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    // An agent that refuses the request (too many connections) answers and closes before
    // reading it: its answer explains a failed write better than the write's error.
    let written = write.write_all(&text).await;
    let mut line = Vec::new();
    match (read_line(&mut BufReader::new(read), &mut line, REPLY_MAX).await, written) {
        (Ok(Line::Complete), _) => {}
        (Ok(Line::TooLong), _) => return Err(AdminError::ReplyTooLong { path: path.to_owned(), max: REPLY_MAX }),
        (_, Err(e)) | (Err(e), Ok(())) => return Err(io(e)),
        (Ok(Line::End), Ok(())) => return Err(AdminError::NoReply { path: path.to_owned() }),
    }
    match serde_json::from_slice(&line).map_err(|source| AdminError::Decode { path: path.to_owned(), source })? {
        Reply::Error(message) => Err(AdminError::Agent(message)),
        reply => Ok(reply),
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// A socket path of its own under the temp dir, removed when dropped.
    struct TempSocket(PathBuf);

    impl TempSocket {
        fn new(name: &str) -> Self {
            TempSocket(std::env::temp_dir().join(format!("xlb-admin-{}-{name}.sock", std::process::id())))
        }
    }

    impl Drop for TempSocket {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// An agent whose async handler answers a plan with its config's size and anything else
    /// with `Done("stats")`, after a pause; the requests it was handed are kept.
    async fn agent(socket: &TempSocket, limits: Limits) -> (JoinHandle<()>, Arc<std::sync::Mutex<Vec<Request>>>) {
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let log = Arc::clone(&seen);
        let handle = move |request: Request| {
            log.lock().unwrap().push(request.clone());
            Box::pin(async move {
                tokio::time::sleep(Duration::from_millis(1)).await;
                match request {
                    Request::Plan { config, .. } => Reply::Done(format!("plan of {} bytes", config.len())),
                    _ => Reply::Done("stats".into()),
                }
            }) as ReplyFuture
        };
        (serve_with(&socket.0, Arc::new(handle), limits).await.unwrap(), seen)
    }

    #[tokio::test]
    async fn a_line_longer_than_the_limit_is_refused_and_the_connection_closed() {
        let socket = TempSocket::new("long");
        let (server, seen) = agent(&socket, Limits::default()).await;
        let (mut read, mut write) = UnixStream::connect(&socket.0).await.unwrap().into_split();
        // 1 MiB in one line: the agent stops reading at 64 KiB, so this write stalls and then
        // fails when the agent closes.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&vec![b'x'; 1 << 20]).await;
            let _ = write.write_all(b"\n").await;
        });
        let mut received = Vec::new();
        // Closed with our bytes unread, the agent's end resets ours once its reply is read.
        let _ = tokio::time::timeout(Duration::from_secs(5), read.read_to_end(&mut received))
            .await
            .expect("the agent closes the connection");
        let reply: Reply = serde_json::from_slice(received.strip_suffix(b"\n").unwrap()).unwrap();
        match reply {
            Reply::Error(message) => {
                assert_eq!(message, "request longer than 65536 bytes; xlb's requests are one JSON line")
            }
            other => panic!("{other:?}"),
        }
        writer.await.unwrap();
        assert!(seen.lock().unwrap().is_empty());
        server.abort();
    }

    #[tokio::test]
    async fn a_line_never_holds_more_than_the_limit() {
        let input = vec![b'x'; 1 << 20];
        let mut reader = tokio::io::BufReader::new(&input[..]);
        let mut line = Vec::new();
        assert_eq!(read_line(&mut reader, &mut line, REQUEST_MAX).await.unwrap(), Line::TooLong);
        assert_eq!(line.len(), REQUEST_MAX);
        assert!(line.capacity() <= REQUEST_MAX, "capacity {}", line.capacity());

        let input = b"{\"stats\":1}\n\"status\"\npartial";
        let mut reader = tokio::io::BufReader::with_capacity(4, &input[..]);
        let mut lines = Vec::new();
        loop {
            let mut line = Vec::new();
            match read_line(&mut reader, &mut line, 16).await.unwrap() {
                Line::End => break,
                read => lines.push((read, String::from_utf8(line).unwrap())),
            }
        }
        assert_eq!(
            lines,
            [
                (Line::Complete, "{\"stats\":1}".to_owned()),
                (Line::Complete, "\"status\"".to_owned()),
                (Line::Complete, "partial".to_owned())
            ]
        );
    }

    #[tokio::test]
    async fn a_malformed_request_is_explained_without_echoing_it() {
        let socket = TempSocket::new("malformed");
        let (server, _) = agent(&socket, Limits::default()).await;
        let mut stream = UnixStream::connect(&socket.0).await.unwrap();
        for bad in
            ["{\"stats_please\":\"SECRET-1\"}\n", "SECRET-2 is not json\n", "{\"drain\":{\"vip\":\"SECRET-3\"}}\n"]
        {
            stream.write_all(bad.as_bytes()).await.unwrap();
            let (reply, closed) = next_reply(&mut stream).await;
            let Reply::Error(message) = reply else { panic!("{reply:?}") };
            assert!(!message.contains("SECRET"), "{message}");
            assert!(
                message.starts_with(
                    "the request is not a JSON admin request (expected one of stats, status, drain, drain_node, weight, plan, detach)"
                ),
                "{message}"
            );
            assert!(message.ends_with("are the CLI and the agent the same version?"), "{message}");
            assert!(!closed, "a malformed request does not end the connection");
        }
        stream.write_all(b"\"stats\"\n").await.unwrap();
        let (reply, _) = next_reply(&mut stream).await;
        assert!(matches!(reply, Reply::Done(ref m) if m == "stats"), "{reply:?}");
        server.abort();
    }

    /// The next reply line, and whether the connection closed right after it (waits briefly).
    async fn next_reply(stream: &mut UnixStream) -> (Reply, bool) {
        let mut line = Vec::new();
        let mut byte = [0u8; 1];
        tokio::time::timeout(Duration::from_secs(5), async {
            while stream.read(&mut byte).await.unwrap() == 1 && byte[0] != b'\n' {
                line.push(byte[0]);
            }
        })
        .await
        .expect("a reply in time");
        let reply = serde_json::from_slice(&line).unwrap();
        let closed = matches!(
            tokio::time::timeout(Duration::from_millis(100), stream.read(&mut byte)).await,
            Ok(Ok(0) | Err(_))
        );
        (reply, closed)
    }

    #[tokio::test]
    async fn a_plan_request_may_carry_a_large_config() {
        let socket = TempSocket::new("plan");
        let (server, _) = agent(&socket, Limits::default()).await;
        let config = "#".repeat(3 * REQUEST_MAX);
        let plan = || request(&socket.0, Request::Plan { path: "big.yaml".into(), config: config.clone() });
        // Two at once: the second waits for the first's turn, then is served too.
        let (first, second) = tokio::join!(plan(), plan());
        for reply in [first.unwrap(), second.unwrap()] {
            assert!(
                matches!(reply, Reply::Done(ref m) if *m == format!("plan of {} bytes", 3 * REQUEST_MAX)),
                "{reply:?}"
            );
        }
        server.abort();
    }

    #[tokio::test]
    async fn the_client_refuses_a_request_the_agent_would_not_read() {
        let vip = "v".repeat(REQUEST_MAX);
        let refused =
            request(Path::new("/nonexistent/xlb.sock"), Request::Drain { vip, backend: "b".into(), undo: false })
                .await
                .unwrap_err();
        assert!(matches!(refused, AdminError::RequestTooLong { max: REQUEST_MAX, .. }), "{refused}");
    }

    #[tokio::test]
    async fn round_trip_and_agent_errors() {
        let socket = TempSocket::new("roundtrip");
        let handle = |request: Request| {
            Box::pin(async move {
                match request {
                    Request::Stats => Reply::Done("ok".into()),
                    _ => Reply::Error("no".into()),
                }
            }) as ReplyFuture
        };
        let server = serve(&socket.0, Arc::new(handle)).await.unwrap();
        assert!(matches!(request(&socket.0, Request::Stats).await.unwrap(), Reply::Done(ref m) if m == "ok"));
        let refused = request(&socket.0, Request::Status).await.unwrap_err();
        assert!(matches!(refused, AdminError::Agent(ref m) if m == "no"), "{refused}");
        server.abort();
    }

    #[tokio::test]
    async fn a_live_agent_s_socket_is_not_taken_over() {
        let socket = TempSocket::new("inuse");
        let (server, _) = agent(&socket, Limits::default()).await;
        let refused = agent_on(&socket).await.unwrap_err();
        assert!(matches!(refused, AdminError::InUse { .. }), "{refused}");
        assert!(refused.to_string().contains("another agent answers there"), "{refused}");
        assert!(matches!(request(&socket.0, Request::Stats).await.unwrap(), Reply::Done(_)));
        server.abort();
    }

    #[tokio::test]
    async fn a_stale_socket_file_is_removed_and_bound_again() {
        let socket = TempSocket::new("stale");
        // A socket file nobody listens on, as a killed agent leaves it.
        drop(std::os::unix::net::UnixListener::bind(&socket.0).unwrap());
        assert!(socket.0.exists());
        assert_eq!(
            std::os::unix::net::UnixStream::connect(&socket.0).unwrap_err().kind(),
            io::ErrorKind::ConnectionRefused
        );
        let server = agent_on(&socket).await.expect("a stale socket does not block the start");
        assert!(matches!(request(&socket.0, Request::Stats).await.unwrap(), Reply::Done(ref m) if m == "second"));
        server.abort();
    }

    #[tokio::test]
    async fn a_file_that_is_not_a_socket_is_left_alone() {
        let socket = TempSocket::new("notsocket");
        std::fs::write(&socket.0, "precious").unwrap();
        let refused = agent_on(&socket).await.unwrap_err();
        assert!(matches!(refused, AdminError::NotASocket { .. }), "{refused}");
        assert!(refused.to_string().contains("is not a socket; move it aside"), "{refused}");
        assert_eq!(std::fs::read_to_string(&socket.0).unwrap(), "precious");
    }

    async fn agent_on(socket: &TempSocket) -> Result<JoinHandle<()>, AdminError> {
        let handle = |_| Box::pin(async { Reply::Done("second".into()) }) as ReplyFuture;
        serve(&socket.0, Arc::new(handle)).await
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed() {
        let socket = TempSocket::new("idle");
        let limits = Limits { idle_timeout: Duration::from_millis(100), ..Limits::default() };
        let (server, _) = agent(&socket, limits).await;
        let mut stream = UnixStream::connect(&socket.0).await.unwrap();
        let mut buf = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await;
        assert!(matches!(read, Ok(Ok(0))), "{read:?}");
        server.abort();
    }

    #[tokio::test]
    async fn beyond_max_connections_a_client_is_told_so() {
        let socket = TempSocket::new("busy");
        let limits = Limits { max_connections: 1, ..Limits::default() };
        let (server, _) = agent(&socket, limits).await;
        let first = UnixStream::connect(&socket.0).await.unwrap();
        let refused = request(&socket.0, Request::Stats).await.unwrap_err();
        assert!(
            matches!(refused, AdminError::Agent(ref m) if m == "the agent serves 1 admin connections at once; try again"),
            "{refused}"
        );
        drop(first);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while request(&socket.0, Request::Stats).await.is_err() {
            assert!(std::time::Instant::now() < deadline, "the slot was not released");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        server.abort();
    }
}
