//! The direct path against real backends on loopback (scripted byte for byte) and a client on
//! an in-memory pipe: what each side receives is asserted whole.

use std::{
    net::SocketAddr,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use arc_swap::ArcSwap;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
};

use super::{End, serve};
use crate::l7::{
    access_log::{AccessLog, Capture},
    balance::{BackendState, Pool},
    config::{Balance, PathMatch, Route},
    metrics::Metrics,
    proxy::{Conn, VipRuntime},
    route::Matcher,
    upstream::{Upstream, UpstreamSettings},
};

/// What a scripted backend does after an answer.
#[derive(Clone, Copy, PartialEq)]
enum After {
    KeepOpen,
    Close,
}

/// A backend on loopback: the n-th request it reads (over all its connections) gets
/// `answers[n]` (the last one again past the end), `None` for no answer at all (the connection
/// closes). It records each request head and counts its connections.
struct Backend {
    addr: SocketAddr,
    heads: Arc<Mutex<Vec<String>>>,
    accepted: Arc<AtomicUsize>,
}

async fn backend(answers: Vec<Option<&'static [u8]>>, after: After) -> Backend {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let heads = Arc::new(Mutex::new(Vec::new()));
    let accepted = Arc::new(AtomicUsize::new(0));
    let (seen, count) = (Arc::clone(&heads), Arc::clone(&accepted));
    let answers = Arc::new(answers);
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let (seen, answers) = (Arc::clone(&seen), Arc::clone(&answers));
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 4096];
                        match conn.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let end = buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
                    let head: Vec<u8> = buf.drain(..end).collect();
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push(String::from_utf8(head).unwrap());
                        seen.len() - 1
                    };
                    let Some(answer) = answers[n.min(answers.len() - 1)] else { return };
                    if conn.write_all(answer).await.is_err() || after == After::Close {
                        return;
                    }
                }
            });
        }
    });
    Backend { addr, heads, accepted }
}

struct Proxy {
    swap: ArcSwap<VipRuntime>,
    log: Capture,
}

/// One route over `backends` with `retries`, as the tier builds it.
fn proxy(backends: &[SocketAddr], retries: u32, request_timeout: Duration) -> Proxy {
    // Access log lines are written when `xlb::access` is enabled at info (the agent's default).
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_writer(std::io::sink).try_init();
    let metrics = Metrics::new().unwrap();
    let route = Route {
        name: "all".into(),
        host: None,
        path: PathMatch::Prefix("/".into()),
        balance: Balance::RoundRobin,
        rate_limit: None,
        concurrency_limit: None,
        backends: Vec::new(),
    };
    let pool =
        Pool::new(backends.iter().map(|a| (Arc::new(BackendState::new(*a)), 1)).collect(), Balance::RoundRobin, 0);
    let log = Capture::default();
    let access_log = AccessLog::new(Box::new(log.clone()), true, metrics.access_log_dropped.clone()).unwrap();
    let settings = UpstreamSettings {
        connect_timeout: Duration::from_secs(1),
        idle_timeout: Duration::from_secs(30),
        max_idle_per_backend: 4,
    };
    let runtime = VipRuntime {
        name: "web".into(),
        routes: vec![crate::l7::proxy::RouteRuntime {
            name: "all".into(),
            stats: metrics.route("web", "all"),
            pool,
            limiter: None,
            concurrency: None,
        }],
        matcher: Matcher::new(&[route]).unwrap(),
        upstream: Upstream::new(settings, 1),
        tls: None,
        proxy_protocol: false,
        request_timeout,
        idle_timeout: Duration::from_secs(5),
        retries,
        unrouted: metrics.route("web", "-"),
        access_log: Arc::new(access_log),
    };
    Proxy { swap: ArcSwap::from_pointee(runtime), log }
}

impl Proxy {
    /// Sends `input` as one client would over one connection, which it then half-closes; returns
    /// everything the client received and how the direct path left the connection.
    async fn client(&self, input: &[u8]) -> (String, End) {
        let (mut near, far) = tokio::io::duplex(1 << 20);
        near.write_all(input).await.unwrap();
        near.shutdown().await.unwrap();
        let conn = Conn::new("198.51.100.7:4000".parse().unwrap(), false);
        let mut far = far;
        let end = tokio::time::timeout(Duration::from_secs(10), serve(&self.swap, conn, &mut far))
            .await
            .expect("the direct path finishes");
        drop(far);
        let mut received = Vec::new();
        near.read_to_end(&mut received).await.unwrap();
        (String::from_utf8_lossy(&received).into_owned(), end)
    }

    fn log_lines(&self) -> Vec<serde_json::Value> {
        self.swap.load().access_log.flush();
        let text = String::from_utf8(self.log.0.lock().unwrap().clone()).unwrap();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    }
}

const OK5: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: keep-alive\r\nKeep-Alive: timeout=9\r\n\r\nhello";

#[tokio::test]
async fn pipelined_requests_are_answered_in_order_over_one_backend_connection() {
    let be = backend(vec![Some(OK5)], After::KeepOpen).await;
    let p = proxy(&[be.addr], 0, Duration::from_secs(5));
    let (received, end) = p
        .client(
            b"GET /a?x=1 HTTP/1.1\r\nHost: api.test\r\nX-Forwarded-For: 203.0.113.1\r\n\r\n\
HEAD /b HTTP/1.1\r\nHost: api.test\r\nConnection: close\r\n\r\n",
        )
        .await;
    assert!(matches!(end, End::Closed), "{end:?}");
    assert_eq!(
        received,
        "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello\
HTTP/1.1 200 OK\r\ncontent-length: 5\r\nconnection: close\r\n\r\n",
        "the HEAD's answer has no body, and the next request was not read as one"
    );
    let heads = be.heads.lock().unwrap().clone();
    assert_eq!(
        heads[0],
        "GET /a?x=1 HTTP/1.1\r\nHost: api.test\r\nx-forwarded-for: 203.0.113.1, 198.51.100.7\r\n\
forwarded: for=198.51.100.7;proto=http;host=\"api.test\"\r\nx-forwarded-proto: http\r\nx-forwarded-host: api.test\r\n\r\n"
    );
    assert!(heads[1].starts_with("HEAD /b HTTP/1.1\r\nHost: api.test\r\n"), "{heads:?}");
    assert!(!heads[1].to_ascii_lowercase().contains("connection"), "hop-by-hop: {heads:?}");
    // The HEAD's answer carried 5 bytes of body anyway; that connection was not kept.
    assert_eq!(be.accepted.load(Ordering::SeqCst), 1);
    let lines = p.log_lines();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["fields"]["path"], "/a", "{lines:?}");
    assert_eq!(lines[1]["fields"]["method"], "HEAD", "{lines:?}");
    assert_eq!(lines[1]["fields"]["status"], 200, "{lines:?}");
}

#[tokio::test]
async fn chunked_and_interim_responses_pass_and_the_connection_is_reused() {
    const CHUNKED: &[u8] = b"HTTP/1.1 103 Early Hints\r\nLink: </s.css>\r\n\r\n\
HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n";
    let be = backend(vec![Some(CHUNKED)], After::KeepOpen).await;
    let p = proxy(&[be.addr], 0, Duration::from_secs(5));
    let get = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n";
    let mut input = get.repeat(2);
    input.extend_from_slice(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n");
    let (received, _) = p.client(&input).await;
    let one = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n";
    let last =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n5\r\nhello\r\n0\r\nx-sum: 1\r\n\r\n";
    assert_eq!(received, format!("{one}{one}{last}"), "the 103 stays with the proxy; chunks pass as they came");
    assert_eq!(be.accepted.load(Ordering::SeqCst), 1, "three requests on one backend connection");
}

#[tokio::test]
async fn a_body_until_close_closes_the_client_and_a_closed_idle_connection_is_replaced() {
    let be = backend(vec![Some(b"HTTP/1.0 200 OK\r\n\r\nto the end")], After::Close).await;
    let p = proxy(&[be.addr], 0, Duration::from_secs(5));
    let (received, end) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\n\r\nGET /never HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert_eq!(received, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nto the end");
    assert!(matches!(end, End::Closed));
    assert_eq!(be.heads.lock().unwrap().len(), 1, "the client's second request was not served");

    // A backend that closes each connection after its answer, saying nothing: the idle
    // connection kept is found closed (or fails silently) and the request goes on a new one.
    let be = backend(vec![Some(OK5)], After::Close).await;
    let p = proxy(&[be.addr], 0, Duration::from_secs(5));
    for _ in 0..3 {
        let (received, _) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
        assert!(received.ends_with("\r\n\r\nhello"), "{received:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(be.accepted.load(Ordering::SeqCst), 3);
    assert!(p.log_lines().iter().all(|l| l["fields"]["status"] == 200 && l["fields"]["attempts"] == 1));
}

#[tokio::test]
async fn other_requests_hand_the_connection_over_with_every_byte_read() {
    let be = backend(vec![Some(OK5)], After::KeepOpen).await;
    let p = proxy(&[be.addr], 0, Duration::from_secs(5));
    let post = b"POST /form HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc";
    let mut input = b"GET / HTTP/1.1\r\nHost: h\r\n\r\n".to_vec();
    input.extend_from_slice(post);
    let (received, end) = p.client(&input).await;
    assert_eq!(received, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nhello", "the GET before it was served");
    let End::Handoff(rest) = end else { panic!("{end:?}") };
    assert_eq!(rest, post, "the POST goes to the general path whole");
    for other in [&b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"[..], b"GET / HTTP/1.0\r\n\r\n", b"\x16\x03\x01garbage\r\n\r\n"] {
        let (received, end) = p.client(other).await;
        assert!(received.is_empty());
        assert!(matches!(&end, End::Handoff(bytes) if bytes == other), "{end:?}");
    }
    // A head that never ends is bounded.
    let (_, end) = p.client(&[b"GET / HTTP/1.1\r\nHost: h\r\nX-Long: ".as_slice(), &[b'a'; 20_000]].concat()).await;
    assert!(matches!(&end, End::Handoff(bytes) if bytes.len() >= 16 * 1024), "a head over 16 KiB");
}

#[tokio::test]
async fn failures_retry_on_another_backend_then_answer_502_504_or_503() {
    // Nothing listens on a port just freed.
    let refused = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let broken = backend(vec![Some(b"SSH-2.0-not-http\r\n\r\n")], After::KeepOpen).await;
    let good = backend(vec![Some(OK5)], After::KeepOpen).await;
    // Round robin takes them in this order: refused, then (of the two left) broken, then good.
    let p = proxy(&[refused, good.addr, broken.addr], 2, Duration::from_secs(5));
    let (received, _) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert!(received.ends_with("\r\n\r\nhello"), "{received:?}");
    let line = p.log_lines().pop().unwrap();
    assert_eq!((line["fields"]["status"].as_u64(), line["fields"]["attempts"].as_u64()), (Some(200), Some(3)));

    let p = proxy(&[refused, broken.addr], 1, Duration::from_secs(5));
    let (received, _) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await;
    assert!(received.starts_with("HTTP/1.1 502 Bad Gateway\r\n"), "{received:?}");
    let line = p.log_lines().pop().unwrap();
    assert!(line["fields"]["error"].as_str().unwrap().contains("not HTTP/1.x"), "{line}");

    let silent = backend(vec![None], After::KeepOpen).await;
    let p = proxy(&[silent.addr], 0, Duration::from_secs(5));
    let (received, _) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(received.starts_with("HTTP/1.1 502 "), "a backend closing without answering: {received:?}");

    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let mute = listener.local_addr().unwrap();
    let p = proxy(&[mute], 0, Duration::from_millis(300));
    let (received, end) = p.client(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    assert!(received.starts_with("HTTP/1.1 504 Gateway Timeout\r\n"), "{received:?}");
    assert!(matches!(end, End::Closed), "the client's half-close ends it after the answer");
    drop(listener);

    // The proxy's own answer to a HEAD has no body either: the next answer follows its head.
    let p = proxy(&[], 0, Duration::from_secs(5));
    let (received, _) = p.client(b"HEAD / HTTP/1.1\r\nHost: h\r\n\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n").await;
    let body = "no backend available for this route (down, drained or at its request limit)\n";
    let head = format!(
        "HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n",
        body.len()
    );
    assert_eq!(received, format!("{head}{head}{body}"));
}

#[tokio::test]
async fn a_reload_reaches_the_next_request_of_an_open_connection() {
    let first = backend(vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nfirst")], After::KeepOpen).await;
    let second = backend(vec![Some(b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nsecond")], After::KeepOpen).await;
    let p = proxy(&[first.addr], 0, Duration::from_secs(5));
    let reloaded = proxy(&[second.addr], 0, Duration::from_secs(5)).swap.into_inner();
    let (mut near, mut far) = tokio::io::duplex(1 << 16);
    let conn = Conn::new("198.51.100.7:4000".parse().unwrap(), false);
    let client = async {
        near.write_all(b"GET / HTTP/1.1\r\nHost: h\r\n\r\n").await.unwrap();
        let mut got = Vec::new();
        while !got.ends_with(b"first") {
            let mut chunk = [0u8; 256];
            let n = near.read(&mut chunk).await.unwrap();
            assert!(n > 0, "closed after {got:?}");
            got.extend_from_slice(&chunk[..n]);
        }
        p.swap.store(reloaded);
        near.write_all(b"GET / HTTP/1.1\r\nHost: h\r\nConnection: close\r\n\r\n").await.unwrap();
        near.read_to_end(&mut got).await.unwrap();
        String::from_utf8(got).unwrap()
    };
    let served = async {
        let end = serve(&p.swap, conn, &mut far).await;
        drop(far);
        end
    };
    let (received, end) = tokio::time::timeout(Duration::from_secs(10), async { tokio::join!(client, served) })
        .await
        .expect("both sides finish");
    assert!(matches!(end, End::Closed));
    assert!(
        received.ends_with("\r\n\r\nfirstHTTP/1.1 200 OK\r\ncontent-length: 6\r\nconnection: close\r\n\r\nsecond"),
        "{received:?}"
    );
}
