//! The probes against local servers, the rise/fall state machine and the checker.

use std::sync::{Mutex, atomic::AtomicU16};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    time::timeout,
};

use super::*;

const LOCALHOST: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
/// Bound on every wait for something that should happen soon.
const PATIENCE: Duration = Duration::from_secs(5);

/// Accepts and immediately drops connections.
async fn tcp_server() -> u16 {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            drop(stream);
        }
    });
    port
}

/// Ports with nothing bound to them.
async fn closed_tcp_port() -> u16 {
    TcpListener::bind((LOCALHOST, 0)).await.unwrap().local_addr().unwrap().port()
}

async fn closed_udp_port() -> u16 {
    UdpSocket::bind((LOCALHOST, 0)).await.unwrap().local_addr().unwrap().port()
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Reply {
    Normal,
    Chunked,
    Never,
}

/// A hand-written HTTP/1.1 server whose status can be switched while it runs.
struct HttpServer {
    port: u16,
    status: Arc<AtomicU16>,
    requests: Arc<Mutex<Vec<String>>>,
}

async fn http_server(body: &'static str, reply: Reply) -> HttpServer {
    let listener = TcpListener::bind((LOCALHOST, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let status = Arc::new(AtomicU16::new(200));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (s, r) = (status.clone(), requests.clone());
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            let (status, requests) = (s.clone(), r.clone());
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while find(&request, b"\r\n\r\n").is_none() {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                requests.lock().unwrap().push(String::from_utf8_lossy(&request).into_owned());
                let code = status.load(Ordering::SeqCst);
                let response = match reply {
                    Reply::Never => {
                        // Hold the connection open without answering.
                        let _ = stream.read(&mut buf).await;
                        return;
                    }
                    Reply::Normal => format!(
                        "HTTP/1.1 {code} Whatever\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    ),
                    Reply::Chunked => {
                        let (a, b) = body.split_at(body.len() / 2);
                        format!(
                            "HTTP/1.1 {code} Whatever\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{a}\r\n{:x};ext=1\r\n{b}\r\n0\r\n\r\n",
                            a.len(),
                            b.len()
                        )
                    }
                };
                let _ = stream.write_all(response.as_bytes()).await;
                let _ = stream.shutdown().await;
            });
        }
    });
    HttpServer { port, status, requests }
}

/// Echoes every datagram back; the socket is returned to keep it open.
async fn udp_echo() -> u16 {
    let socket = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let _ = socket.send_to(&buf[..n], from).await;
        }
    });
    port
}

pub(super) fn http_check(port: u16) -> crate::config::HttpCheck {
    crate::config::HttpCheck {
        port,
        method: "GET".into(),
        path: "/healthz".into(),
        host: None,
        expect_status: vec![(200, 200)],
        expect_body: None,
        headers: Vec::new(),
        http2: false,
        tls: None,
    }
}

fn http(port: u16, status: u16, body: Option<&str>) -> CheckKind {
    CheckKind::Http(Box::new(crate::config::HttpCheck {
        expect_status: vec![(status, status)],
        expect_body: body.map(Into::into),
        ..http_check(port)
    }))
}

fn udp(port: u16, send: &str, expect: Option<&str>) -> CheckKind {
    CheckKind::Udp { port, send: send.into(), expect: expect.map(|e| e.as_bytes().to_vec()) }
}

const T: Duration = Duration::from_millis(500);

#[tokio::test]
async fn tcp_probe() {
    let port = tcp_server().await;
    assert_eq!(probe(LOCALHOST, &CheckKind::Tcp { port }, T).await, Ok(()));
    let err = probe(LOCALHOST, &CheckKind::Tcp { port: closed_tcp_port().await }, T).await.unwrap_err();
    assert_eq!(err.to_string(), "connect: connection refused");
}

#[tokio::test]
async fn http_probe_checks_status_and_body() {
    let server = http_server("all good", Reply::Normal).await;
    assert_eq!(probe(LOCALHOST, &http(server.port, 200, None), T).await, Ok(()));
    assert_eq!(probe(LOCALHOST, &http(server.port, 200, Some("good")), T).await, Ok(()));
    let request = server.requests.lock().unwrap()[0].clone();
    assert!(request.starts_with("GET /healthz HTTP/1.1\r\n"), "{request}");
    assert!(request.to_ascii_lowercase().contains(&format!("\r\nhost: 127.0.0.1:{}\r\n", server.port)), "{request}");
    assert!(request.contains("\r\nuser-agent: xlb-health-check\r\n"), "{request}");

    let err = probe(LOCALHOST, &http(server.port, 200, Some("bad")), T).await.unwrap_err();
    assert_eq!(err.to_string(), r#"HTTP body does not contain "bad""#);
    server.status.store(503, Ordering::SeqCst);
    let err = probe(LOCALHOST, &http(server.port, 200, Some("good")), T).await.unwrap_err();
    assert_eq!(err.to_string(), "HTTP status 503, expected 200");
    assert_eq!(probe(LOCALHOST, &http(server.port, 503, None), T).await, Ok(()));

    let err = probe(LOCALHOST, &http(closed_tcp_port().await, 200, None), T).await.unwrap_err();
    assert_eq!(err.to_string(), "connect: connection refused");
}

#[tokio::test]
async fn http_probe_sends_the_configured_host_and_reads_chunked_bodies() {
    let server = http_server("0123456789 ready", Reply::Chunked).await;
    let kind = CheckKind::Http(Box::new(crate::config::HttpCheck {
        path: "/".into(),
        host: Some("www.example.com".into()),
        expect_body: Some("89 rea".into()), // spans the two chunks
        ..http_check(server.port)
    }));
    assert_eq!(probe(LOCALHOST, &kind, T).await, Ok(()));
    let request = server.requests.lock().unwrap()[0].clone();
    assert!(request.to_ascii_lowercase().contains("\r\nhost: www.example.com\r\n"), "{request}");
}

#[tokio::test]
async fn http_probe_times_out_on_a_silent_server() {
    let server = http_server("", Reply::Never).await;
    let err = probe(LOCALHOST, &http(server.port, 200, None), Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err, ProbeError::HttpTimeout("200ms".into()));
    assert_eq!(err.to_string(), "no HTTP response within 200ms");
}

#[tokio::test]
async fn udp_probe() {
    let port = udp_echo().await;
    assert_eq!(probe(LOCALHOST, &udp(port, "ping", None), T).await, Ok(()));
    assert_eq!(probe(LOCALHOST, &udp(port, "ping", Some("in")), T).await, Ok(()));
    let err = probe(LOCALHOST, &udp(port, "ping", Some("pong")), T).await.unwrap_err();
    assert_eq!(err.to_string(), r#"reply does not contain "pong""#);

    // Bound but never answering: the probe waits out its timeout.
    let silent = UdpSocket::bind((LOCALHOST, 0)).await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let err = probe(LOCALHOST, &udp(port, "ping", None), Duration::from_millis(200)).await.unwrap_err();
    assert_eq!(err.to_string(), "no reply within 200ms");

    let err = probe(LOCALHOST, &udp(closed_udp_port().await, "ping", None), T).await.unwrap_err();
    assert_eq!(err.to_string(), "receive: connection refused (ICMP port unreachable)");
}

#[test]
fn host_header_defaults_to_the_address() {
    assert_eq!(host_header("10.0.0.1:80".parse().unwrap()), "10.0.0.1");
    assert_eq!(host_header("[fd00::1]:80".parse().unwrap()), "[fd00::1]");
    assert_eq!(host_header("[fd00::1]:8080".parse().unwrap()), "[fd00::1]:8080");
}

#[test]
fn state_starts_up_and_needs_consecutive_failures_to_fall() {
    let mut s = HealthState::new(2, 3);
    assert!(s.is_up());
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(true), None, "a success resets the failure count");
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), Some(false), "third consecutive failure");
    assert!(!s.is_up());
    assert_eq!(s.record(false), None, "already down: no new flip");
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(false), None, "a failure resets the success count");
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(true), Some(true), "second consecutive success");
    assert!(s.is_up());
}

#[test]
fn flapping_never_flips_with_thresholds_above_one() {
    let mut s = HealthState::new(2, 2);
    // Fail, succeed, ... ending on a success.
    for i in 0..100 {
        assert_eq!(s.record(i % 2 == 1), None);
    }
    assert!(s.is_up());
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(false), Some(false));
    for i in 0..100 {
        assert_eq!(s.record(i % 2 == 0), None);
    }
    assert!(!s.is_up());
}

#[test]
fn thresholds_of_one_follow_every_result() {
    let mut s = HealthState::new(1, 1);
    assert_eq!(s.record(false), Some(false));
    assert_eq!(s.record(false), None);
    assert_eq!(s.record(true), Some(true));
    assert_eq!(s.record(false), Some(false));
    // Zero is treated as one rather than flipping without a result.
    let mut s = HealthState::new(0, 0);
    assert_eq!(s.record(true), None);
    assert_eq!(s.record(false), Some(false));
}

#[test]
fn transitions_take_exactly_rise_and_fall_results() {
    for rise in 1..6 {
        for fall in 1..6 {
            let mut s = HealthState::new(rise, fall);
            let flips: Vec<u32> = (1..=fall).filter(|_| s.record(false).is_some()).collect();
            assert_eq!(flips, [fall], "rise {rise} fall {fall}");
            let flips: Vec<u32> = (1..=rise).filter(|_| s.record(true).is_some()).collect();
            assert_eq!(flips, [rise], "rise {rise} fall {fall}");
        }
    }
}

#[test]
fn jitter_stays_in_range() {
    let mut j = Jitter(42);
    let samples: Vec<f64> = (0..10_000).map(|_| j.unit()).collect();
    assert!(samples.iter().all(|u| (0.0..1.0).contains(u)));
    let mean = samples.iter().sum::<f64>() / samples.len() as f64;
    assert!((0.45..0.55).contains(&mean), "{mean}");
    assert_ne!(Jitter(1).unit(), Jitter(2).unit());
}

fn target(vip: &str, kind: CheckKind) -> Target {
    Target {
        vip: vip.into(),
        backend: "127.0.0.1".into(),
        addr: LOCALHOST,
        check: HealthCheck {
            kind,
            interval: Duration::from_millis(100),
            timeout: Duration::from_millis(80),
            rise: 2,
            fall: 2,
        },
    }
}

/// Waits (boundedly) until the published health of `key` satisfies `pred`.
async fn wait_for(
    rx: &mut watch::Receiver<HealthMap>,
    key: &(String, String),
    pred: impl Fn(&BackendHealth) -> bool,
) -> BackendHealth {
    timeout(PATIENCE, async {
        loop {
            if let Some(h) = rx.borrow_and_update().get(key).filter(|h| pred(h)) {
                return h.clone();
            }
            rx.changed().await.unwrap();
        }
    })
    .await
    .unwrap()
}

/// Polls the map (counters change without waking receivers).
async fn poll_for(rx: &watch::Receiver<HealthMap>, key: &(String, String), pred: impl Fn(&BackendHealth) -> bool) {
    timeout(PATIENCE, async {
        while !rx.borrow().get(key).is_some_and(&pred) {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn checker_follows_the_backend_down_and_up() {
    let server = http_server("ok", Reply::Normal).await;
    let t = target("web", http(server.port, 200, Some("ok")));
    let key = t.key();
    let (checker, mut rx) = Checker::start(vec![t]);
    assert_eq!(rx.borrow()[&key], BackendHealth::default(), "starts up");

    // Healthy probes update the counters without waking the receiver (a probe that timed
    // out on a loaded machine would rightly wake it: only assert when none failed).
    poll_for(&rx, &key, |h| h.checks >= 3).await;
    if rx.borrow()[&key].failures == 0 {
        assert!(!rx.has_changed().unwrap());
    }

    server.status.store(503, Ordering::SeqCst);
    let down = wait_for(&mut rx, &key, |h| !h.up).await;
    assert_eq!(down.last_error.as_deref(), Some("HTTP status 503, expected 200"));
    assert!(down.failures >= 2, "{down:?}");

    server.status.store(200, Ordering::SeqCst);
    let up = wait_for(&mut rx, &key, |h| h.up).await;
    assert_eq!(up.last_error.as_deref(), Some("HTTP status 503, expected 200"), "kept after recovery");
    assert!(up.checks > up.failures, "{up:?}");

    drop(checker);
    // Every task (each holds a sender) is gone: the channel closes.
    timeout(PATIENCE, async { while rx.changed().await.is_ok() {} }).await.unwrap();
}

#[tokio::test]
async fn replace_keeps_unchanged_targets_and_restarts_changed_ones() {
    let port = tcp_server().await;
    let refused = closed_tcp_port().await;
    let a = target("a", CheckKind::Tcp { port });
    let b = target("b", CheckKind::Tcp { port });
    let (mut checker, mut rx) = Checker::start(vec![a.clone()]);
    poll_for(&rx, &a.key(), |h| h.checks >= 2).await;

    // Unchanged `a` keeps its counters; `b` starts at zero.
    checker.replace(vec![a.clone(), b.clone()]);
    assert!(rx.has_changed().unwrap());
    let map = rx.borrow_and_update().clone();
    assert!(map[&a.key()].checks >= 2, "{map:?}");
    assert_eq!(map[&b.key()], BackendHealth::default());
    assert_eq!(checker.targets().count(), 2);

    // The same set again wakes nobody.
    checker.replace(vec![b.clone(), a.clone()]);
    assert!(!rx.has_changed().unwrap());

    // `a` removed; `b`'s check changed to a refused port: it restarts (the test runtime is
    // single-threaded, so the new task has not run yet) and goes down.
    poll_for(&rx, &b.key(), |h| h.checks >= 1).await;
    let b2 = target("b", CheckKind::Tcp { port: refused });
    checker.replace(vec![b2.clone()]);
    let map = rx.borrow_and_update().clone();
    assert_eq!(map.keys().collect::<Vec<_>>(), [&b2.key()]);
    assert_eq!(map[&b2.key()], BackendHealth::default());
    let down = wait_for(&mut rx, &b2.key(), |h| !h.up).await;
    assert_eq!(down.last_error.as_deref(), Some("connect: connection refused"));
    assert_eq!(checker.targets().collect::<Vec<_>>(), [&b2]);
}
