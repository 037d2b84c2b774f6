//! Unit tests of the exposition text and of the `/metrics` server's limits.

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use super::*;
use crate::serve::stats::{BackendStats, Counter, VipStats};
use crate::{announce::bgp::PeerStatus, serve::stats::Snapshot, serve::summary::ReloadOutcome};

fn snapshot() -> Snapshot {
    Snapshot {
        rx_packets: 12,
        counters: vec![
            Counter { name: "forwarded".into(), malformed: false, drop: false, outcome: true, value: 10 },
            Counter { name: "drop_no_backend".into(), malformed: false, drop: true, outcome: true, value: 2 },
            Counter { name: "truncated_tcp".into(), malformed: true, drop: false, outcome: true, value: 0 },
            Counter { name: "flow_miss".into(), malformed: false, drop: false, outcome: false, value: 4 },
        ],
        vips: vec![VipStats {
            name: "web".into(),
            endpoint: "192.0.2.1:80/tcp".into(),
            mode: "dsr-l2".into(),
            syn_cookies: None,
            up: true,
            serving: 1,
            min_healthy: 1,
            healthy: 1,
            panic: false,
            panic_threshold: 50,
            packets: 10,
            bytes: 1000,
            new_flows: 4,
            connections: Default::default(),
            backends: vec![
                BackendStats {
                    address: "10.0.0.1".into(),
                    weight: 3,
                    configured_weight: 3,
                    file_weight: None,
                    up: true,
                    drained: false,
                    mac_known: true,
                    health_error: None,
                    packets: 7,
                    bytes: 700,
                    new_flows: 3,
                    connections: crate::apply::conns::BackendConns { confirmed: 5, embryonic: 2, closed: 0, nat: 0 },
                },
                BackendStats {
                    address: "10.0.0.2".into(),
                    weight: 0,
                    configured_weight: 1,
                    file_weight: None,
                    up: false,
                    drained: false,
                    mac_known: true,
                    health_error: Some("connect: connection refused".into()),
                    packets: 3,
                    bytes: 300,
                    new_flows: 1,
                    connections: Default::default(),
                },
            ],
        }],
        flow_table: crate::apply::dataplane::FlowTableUsage { entries: 6, size: 1024 },
        nat: crate::apply::nat::NatUsage {
            flows: 5,
            swept: 2,
            pools: vec![crate::apply::nat::PoolUsage {
                pool: "edge".into(),
                address: "198.51.100.1".into(),
                flows: 5,
                ports: 100,
            }],
            per_backend: Default::default(),
        },
        l7: Vec::new(),
        connections_scan: Some(crate::serve::stats::ConnectionsScan { age_ms: 1500, busy_us: 800 }),
        limited_sources: vec![crate::apply::source_report::LimitedSource {
            scope: "node".into(),
            prefix: "203.0.113.0/24".into(),
            refused_per_second: 1200,
            admitted_per_second: 20,
            refused_total: 90_000,
        }],
    }
}

#[test]
fn exposition_carries_every_counter_and_state() {
    let text = render(
        &snapshot(),
        &AgentInfo {
            config_generation: 3,
            last_reload: Some(ReloadOutcome { ok: false, message: "bad".into(), at: 1700000000 }),
            peers: vec![PeerStatus {
                address: "10.0.0.254".parse().unwrap(),
                remote_as: 65000,
                state: "established".into(),
                established_for_secs: Some(5),
                prefixes_sent: 2,
                flaps: 1,
                last_error: Some("hold timer expired".into()),
                last_error_at: Some(1_764_800_000),
                updates_sent: 3,
                updates_received: 1,
                bfd: Some("up".into()),
            }],
            attachments: vec![crate::serve::admin::AttachmentStatus {
                iface: "eth0".into(),
                attached: false,
                operator_detached: false,
                link_down: false,
                mode: Some("native".into()),
                reason: Some("gone".into()),
                reattached: 2,
                transmit_errors: Some(5),
            }],
            health_errors: crate::sources::health::ErrorCounts { backend: 7, local: 3 },
            health: [(
                ("web".to_owned(), "10.0.0.2".to_owned()),
                crate::sources::health::BackendHealth {
                    up: false,
                    last_error: None,
                    checks: 10,
                    failures: 3,
                    latency: crate::sources::health::Latency {
                        counts: [0, 3, 5, 0, 0, 0, 0, 0, 0, 0, 0, 1, 1],
                        sum_micros: 2_504_000,
                    },
                },
            )]
            .into_iter()
            .collect(),
            l7: vec![],
        },
    );
    for line in [
        "xlb_vip_packets_total{vip=\"web\"} 10",
        "xlb_flow_table_entries 6",
        "xlb_flow_table_size 1024",
        "xlb_nat_flows 5",
        "xlb_nat_swept_total 2",
        "xlb_nat_pool_flows{address=\"198.51.100.1\",pool=\"edge\"} 5",
        "xlb_source_limited_per_second{prefix=\"203.0.113.0/24\",scope=\"node\"} 1200",
        "xlb_nat_pool_ports{address=\"198.51.100.1\",pool=\"edge\"} 100",
        "xlb_vip_bytes_total{vip=\"web\"} 1000",
        "xlb_vip_up{vip=\"web\"} 1",
        "xlb_vip_panic{vip=\"web\"} 0",
        "xlb_backend_packets_total{backend=\"10.0.0.1\",vip=\"web\"} 7",
        "xlb_backend_up{backend=\"10.0.0.2\",vip=\"web\"} 0",
        "xlb_backend_weight{backend=\"10.0.0.2\",vip=\"web\"} 0",
        "xlb_backend_connections{backend=\"10.0.0.1\",state=\"confirmed\",vip=\"web\"} 5",
        "xlb_backend_connections{backend=\"10.0.0.1\",state=\"embryonic\",vip=\"web\"} 2",
        "xlb_backend_connections{backend=\"10.0.0.2\",state=\"confirmed\",vip=\"web\"} 0",
        "xlb_connections_count_age_seconds 1.5",
        "# TYPE xlb_backend_connections gauge",
        "xlb_packets_total{outcome=\"forwarded\"} 10",
        "xlb_drops_total{reason=\"drop_no_backend\"} 2",
        "xlb_malformed_total{reason=\"truncated_tcp\"} 0",
        "xlb_flow_events_total{event=\"flow_miss\"} 4",
        "xlb_config_generation 3",
        "xlb_xdp_attached{iface=\"eth0\",mode=\"none\"} 0",
        "xlb_interface_up{iface=\"eth0\"} 1",
        "xlb_bgp_updates_sent_total{peer=\"10.0.0.254\"} 3",
        "xlb_bgp_updates_received_total{peer=\"10.0.0.254\"} 1",
        "xlb_bgp_last_error_timestamp_seconds{peer=\"10.0.0.254\"} 1764800000",
        "xlb_bgp_last_error_info{error=\"hold timer expired\",peer=\"10.0.0.254\"} 1",
        "xlb_xdp_reattach_total{iface=\"eth0\"} 2",
        "xlb_xdp_transmit_errors_total{iface=\"eth0\"} 5",
        "xlb_health_check_local_errors_total 3",
        "xlb_bgp_session_up{peer=\"10.0.0.254\"} 1",
        "xlb_bgp_prefixes_sent{peer=\"10.0.0.254\"} 2",
        "xlb_bgp_session_flaps_total{peer=\"10.0.0.254\"} 1",
        "xlb_bfd_session_up{peer=\"10.0.0.254\"} 1",
        "xlb_health_checks_total{backend=\"10.0.0.2\",result=\"ok\",vip=\"web\"} 7",
        "xlb_health_check_duration_seconds_bucket{backend=\"10.0.0.2\",vip=\"web\",le=\"0.001\"} 3",
        "xlb_health_check_duration_seconds_bucket{backend=\"10.0.0.2\",vip=\"web\",le=\"0.0025\"} 8",
        "xlb_health_check_duration_seconds_bucket{backend=\"10.0.0.2\",vip=\"web\",le=\"2.5\"} 9",
        "xlb_health_check_duration_seconds_bucket{backend=\"10.0.0.2\",vip=\"web\",le=\"+Inf\"} 10",
        "xlb_health_check_duration_seconds_count{backend=\"10.0.0.2\",vip=\"web\"} 10",
        "xlb_health_check_duration_seconds_sum{backend=\"10.0.0.2\",vip=\"web\"} 2.504",
        "xlb_health_checks_total{backend=\"10.0.0.2\",result=\"failed\",vip=\"web\"} 3",
        concat!("xlb_build_info{version=\"", env!("CARGO_PKG_VERSION"), "\"} 1"),
        "xlb_config_last_reload_successful 0",
        "xlb_config_last_reload_timestamp_seconds 1700000000",
        "# TYPE xlb_vip_packets_total counter",
        "# TYPE xlb_backend_up gauge",
    ] {
        assert!(text.lines().any(|l| l == line), "missing `{line}` in:\n{text}");
    }
    assert!(!text.contains("xlb_drops_total{reason=\"forwarded\"}"), "only drops are drops");
    assert!(
        !text.contains("xlb_health_check_errors_total"),
        "a failed probe is counted once, in xlb_health_checks_total"
    );
}

/// An address nothing listens on (for `serve_with`, which binds it itself).
fn free_addr() -> SocketAddr {
    let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    probe.local_addr().unwrap()
}

/// Everything the server sends until it closes or resets the connection; `None` if that
/// takes longer than `patience`.
async fn read_until_closed(stream: &mut TcpStream, patience: Duration) -> Option<Vec<u8>> {
    let mut received = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    tokio::time::timeout(patience, async {
        // A reset (the server gave up on the client) ends the stream like a close.
        while let Ok(n @ 1..) = stream.read(&mut buf).await {
            received.extend_from_slice(&buf[..n]);
        }
    })
    .await
    .ok()?;
    Some(received)
}

/// One request on a connection of its own, which the server closes after it.
async fn get(addr: SocketAddr, path: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let reply = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("a reply in time");
    String::from_utf8(reply).unwrap()
}

#[tokio::test]
async fn serves_metrics_over_http_and_404_elsewhere() {
    let addr = free_addr();
    let server = serve(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned()))).await.unwrap();
    let reply = get(addr, "/metrics").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    assert!(reply.contains("\r\nContent-Length: 9\r\n") && reply.ends_with("\r\n\r\nxlb_up 1\n"), "{reply}");
    assert!(reply.contains("\r\nContent-Type: text/plain; version=0.0.4\r\n"), "{reply}");
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
    assert!(get(addr, "/healthz").await.starts_with("HTTP/1.1 404"), "no probes given: not served");
    server.abort();
}

#[tokio::test]
async fn keeps_connections_alive_and_answers_head() {
    let addr = free_addr();
    let server = serve(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned()))).await.unwrap();
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut replies = String::new();
    for _ in 0..3 {
        stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        let mut buf = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await.unwrap().unwrap();
        replies.push_str(std::str::from_utf8(&buf[..n]).unwrap());
    }
    assert_eq!(replies.matches("HTTP/1.1 200 OK\r\n").count(), 3, "three answers on one connection: {replies}");
    stream.write_all(b"HEAD /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    let reply = String::from_utf8(read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap()).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("Content-Length: 9\r\n"), "{reply}");
    assert!(reply.ends_with("\r\n\r\n"), "HEAD has no body: {reply:?}");
    server.abort();
}

#[tokio::test]
async fn gzips_when_asked_once_per_render() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let renders = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&renders);
    let text: String = (0..2000).map(|i| format!("xlb_vip_packets_total{{vip=\"v{i}\"}} {i}\n")).collect();
    let plain = text.clone();
    let addr = free_addr();
    let limits = Limits { reuse_for: Duration::from_secs(60), ..Limits::default() };
    let scrape = move || {
        counted.fetch_add(1, Ordering::SeqCst);
        Ok(text.clone())
    };
    let server = serve_with(addr, Arc::new(scrape), limits).await.unwrap();
    for accept in ["gzip", "deflate, gzip;q=0.5", "*"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {accept}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap();
        let at = reply.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&reply[..at]).into_owned();
        assert!(head.contains("Content-Encoding: gzip") && head.contains("Vary: Accept-Encoding"), "{accept}: {head}");
        let mut unzipped = String::new();
        std::io::Read::read_to_string(&mut flate2::read::GzDecoder::new(&reply[at + 4..]), &mut unzipped).unwrap();
        assert_eq!(unzipped, plain, "{accept}");
        assert!(reply.len() - at < plain.len() / 4, "compressed: {} of {}", reply.len() - at, plain.len());
    }
    for refused in ["gzip;q=0", "identity", "br"] {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let request =
            format!("GET /metrics HTTP/1.1\r\nHost: x\r\nAccept-Encoding: {refused}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let reply = String::from_utf8(read_until_closed(&mut stream, Duration::from_secs(5)).await.unwrap()).unwrap();
        assert!(!reply.contains("Content-Encoding") && reply.ends_with(&plain), "{refused}");
    }
    assert_eq!(renders.load(Ordering::SeqCst), 1, "one render for plain and gzipped scrapes alike");
    server.abort();
}

#[tokio::test]
async fn slow_or_oversized_request_heads_are_cut_off() {
    let addr = free_addr();
    let limits = Limits { head_timeout: Duration::from_millis(500), ..Limits::default() };
    let server = serve_with(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned())), limits).await.unwrap();
    // A byte every 100 ms: past the head timeout before the head ends.
    let mut slow = TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let mut closed = false;
    for byte in b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n" {
        if slow.write_all(&[*byte]).await.is_err() {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let rest = read_until_closed(&mut slow, Duration::from_secs(5)).await.expect("closed");
    let rest = String::from_utf8_lossy(&rest);
    assert!(closed || !rest.contains("200 OK"), "a slowloris head was served: {rest}");
    assert!(started.elapsed() < Duration::from_secs(8));
    // A kept-alive connection that asks nothing more is closed too.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
    let idle_reply = read_until_closed(&mut idle, Duration::from_secs(5)).await.expect("closed after the head timeout");
    assert!(String::from_utf8_lossy(&idle_reply).starts_with("HTTP/1.1 200 OK"));
    // A head past the limit: 431.
    let mut big = TcpStream::connect(addr).await.unwrap();
    let huge = format!("GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
    let _ = big.write_all(huge.as_bytes()).await;
    let reply = read_until_closed(&mut big, Duration::from_secs(5)).await.expect("answered");
    assert!(String::from_utf8_lossy(&reply).starts_with("HTTP/1.1 431"), "{}", String::from_utf8_lossy(&reply));
    server.abort();
}

#[tokio::test]
async fn probes_answer_200_or_503_with_the_reason() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let ready = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&ready);
    let renders = Renders {
        metrics: Arc::new(|| Ok("xlb_up 1\n".to_owned())),
        status: None,
        health: Some(Probes {
            live: Arc::new(|| Ok("ok".to_owned())),
            ready: Arc::new(move || {
                if flag.load(Ordering::SeqCst) { Ok("ready".to_owned()) } else { Err("not ready: starting".to_owned()) }
            }),
        }),
    };
    let addr = free_addr();
    let server = serve_renders(addr, renders, Limits::default()).await.unwrap();
    let live = get(addr, "/healthz").await;
    assert!(live.starts_with("HTTP/1.1 200 OK\r\n") && live.ends_with("\r\n\r\nok\n"), "{live}");
    let not_ready = get(addr, "/readyz").await;
    assert!(not_ready.starts_with("HTTP/1.1 503 ") && not_ready.ends_with("not ready: starting\n"), "{not_ready}");
    assert!(not_ready.contains("Cache-Control: no-store"), "{not_ready}");
    ready.store(true, Ordering::SeqCst);
    assert!(get(addr, "/readyz").await.starts_with("HTTP/1.1 200 OK\r\n"), "answered at once, not cached");
    server.abort();
}

async fn request(addr: SocketAddr, line: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(format!("{line}\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let reply = read_until_closed(&mut stream, Duration::from_secs(10)).await.expect("a reply in time");
    String::from_utf8(reply).unwrap()
}

#[tokio::test]
async fn serves_the_status_page_and_its_json_beside_the_metrics() {
    let addr = free_addr();
    let renders = Renders {
        metrics: Arc::new(|| Ok("xlb_up 1\n".to_owned())),
        status: Some(Arc::new(|| Ok("{\"at_ms\":7}".to_owned()))),
        health: None,
    };
    let server = serve_renders(addr, renders, Limits::default()).await.unwrap();
    for path in ["/", "/status", "/?fresh=1"] {
        let reply = get(addr, path).await;
        let (head, body) = reply.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{path}: {head}");
        assert!(head.contains("Content-Type: text/html; charset=utf-8\r\n"), "{head}");
        assert!(head.contains("Content-Security-Policy: default-src 'none';"), "{head}");
        assert!(head.contains("X-Content-Type-Options: nosniff"), "{head}");
        assert_eq!(body, page::HTML, "{path}");
    }
    let reply = get(addr, "/status.json").await;
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("Content-Type: application/json\r\n"));
    assert!(reply.contains("Cache-Control: no-store\r\n") && reply.ends_with("\r\n\r\n{\"at_ms\":7}"), "{reply}");
    assert!(get(addr, "/metrics").await.ends_with("\r\n\r\nxlb_up 1\n"));
    let reply = get(addr, "/status.jsonx").await;
    assert!(reply.starts_with("HTTP/1.1 404") && reply.ends_with("its data at /status.json\n"), "{reply}");
    // Read-only: no other method, whatever the path.
    for line in ["POST / HTTP/1.1", "PUT /status.json HTTP/1.1", "DELETE /metrics HTTP/1.1"] {
        let reply = request(addr, line).await;
        assert!(reply.starts_with("HTTP/1.1 405 ") && reply.contains("Allow: GET, HEAD\r\n"), "{line}: {reply}");
    }
    server.abort();
}

#[tokio::test]
async fn a_status_render_error_is_a_500_and_the_metrics_still_serve() {
    let addr = free_addr();
    let renders = Renders {
        metrics: Arc::new(|| Ok("xlb_up 1\n".to_owned())),
        status: Some(Arc::new(|| Err("map read failed".to_owned()))),
        health: None,
    };
    let server = serve_renders(addr, renders, Limits::default()).await.unwrap();
    let reply = get(addr, "/status.json").await;
    assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
    assert!(reply.ends_with("\r\n\r\nreading the agent's state failed: map read failed\n"), "{reply}");
    assert!(get(addr, "/metrics").await.starts_with("HTTP/1.1 200 OK\r\n"));
    server.abort();
}

#[tokio::test]
async fn a_scrape_error_is_a_500() {
    let addr = free_addr();
    let server = serve(addr, Arc::new(|| Err("map read failed".to_owned()))).await.unwrap();
    let reply = get(addr, "/metrics").await;
    assert!(reply.starts_with("HTTP/1.1 500 "), "{reply}");
    assert!(reply.ends_with("\r\n\r\nreading the data plane failed: map read failed\n"), "{reply}");
    server.abort();
}

/// A current-thread runtime: were the render on it, nothing else would be served meanwhile.
#[tokio::test]
async fn one_render_off_the_runtime_serves_concurrent_scrapes() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let release = Arc::new(AtomicBool::new(false));
    let released_in_time = Arc::new(AtomicBool::new(false));
    let scrape = {
        let (calls, release, released_in_time) =
            (Arc::clone(&calls), Arc::clone(&release), Arc::clone(&released_in_time));
        move || {
            calls.fetch_add(1, Ordering::SeqCst);
            let until = Instant::now() + Duration::from_secs(5);
            while !release.load(Ordering::SeqCst) && Instant::now() < until {
                std::thread::sleep(Duration::from_millis(5));
            }
            released_in_time.store(release.load(Ordering::SeqCst), Ordering::SeqCst);
            Ok("xlb_up 1\n".to_owned())
        }
    };
    let addr = free_addr();
    let limits = Limits { reuse_for: Duration::from_secs(60), ..Limits::default() };
    let server = serve_with(addr, Arc::new(scrape), limits).await.unwrap();
    let scrapers: Vec<_> = (0..20).map(|_| tokio::spawn(get(addr, "/metrics"))).collect();
    while calls.load(Ordering::SeqCst) == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The render is blocked; this runtime's only thread still answers.
    assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
    release.store(true, Ordering::SeqCst);
    for scraper in scrapers {
        let reply = scraper.await.unwrap();
        assert!(reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.ends_with("\r\n\r\nxlb_up 1\n"), "{reply}");
    }
    assert!(released_in_time.load(Ordering::SeqCst), "the render ran on the runtime's thread");
    assert_eq!(calls.load(Ordering::SeqCst), 1, "one render for every scrape within reuse_for");
    server.abort();
}

#[tokio::test]
async fn a_stale_render_is_rendered_again() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let calls = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&calls);
    let scrape = move || Ok(format!("xlb_renders {}\n", counted.fetch_add(1, Ordering::SeqCst) + 1));
    let addr = free_addr();
    let limits = Limits { reuse_for: Duration::from_millis(50), ..Limits::default() };
    let server = serve_with(addr, Arc::new(scrape), limits).await.unwrap();
    assert!(get(addr, "/metrics").await.ends_with("xlb_renders 1\n"));
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(get(addr, "/metrics").await.ends_with("xlb_renders 2\n"));
    server.abort();
}

/// Connects with a tiny receive buffer, asks for the metrics and reads nothing.
async fn slow_reader(addr: SocketAddr) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_read_neither_block_others_nor_stay() {
    const BODY: usize = 4_000_000;
    let body = format!("{}\n", "x".repeat(BODY - 1));
    let addr = free_addr();
    // Generous: on a loaded machine the server may start on a stuck client late, and a
    // stuck client read before its deadline would just be drained.
    let write_timeout = Duration::from_secs(3);
    let limits =
        Limits { max_connections: 256, write_timeout, reuse_for: Duration::from_secs(60), ..Limits::default() };
    let server = serve_with(addr, Arc::new(move || Ok(body.clone())), limits).await.unwrap();
    let mut stuck = Vec::new();
    for _ in 0..200 {
        stuck.push(slow_reader(addr).await);
    }
    let all_asked = Instant::now();

    let reply = get(addr, "/metrics").await;
    assert!(all_asked.elapsed() < write_timeout, "a reading client waited for the stuck ones");
    let (head, got) = reply.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK\r\n") && head.contains(&format!("Content-Length: {BODY}\r\n")), "{head}");
    assert_eq!(got.len(), BODY, "the whole body");

    // Reading earlier would drain them in time: only once every deadline has passed.
    tokio::time::sleep_until((all_asked + write_timeout + Duration::from_secs(2)).into()).await;
    for stream in &mut stuck {
        let received = read_until_closed(stream, Duration::from_secs(10)).await.expect("dropped after the deadline");
        assert!(received.len() < BODY, "a client that did not read in time was not cut off");
    }
    server.abort();
}

#[tokio::test]
async fn beyond_max_connections_a_client_is_told_503_at_once() {
    let addr = free_addr();
    let limits = Limits { max_connections: 1, head_timeout: Duration::from_secs(60), ..Limits::default() };
    let server = serve_with(addr, Arc::new(|| Ok("xlb_up 1\n".to_owned())), limits).await.unwrap();
    // Holds the only slot: connected, silent.
    let silent = TcpStream::connect(addr).await.unwrap();
    let reply = get(addr, "/metrics").await;
    assert_eq!(
        reply,
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: text/plain\r\nContent-Length: 40\r\n\
             Connection: close\r\n\r\ntoo many metrics connections; try again\n"
    );
    drop(silent);
    // The slot comes back once the server sees the close.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let reply = get(addr, "/metrics").await;
        if reply.starts_with("HTTP/1.1 200 OK\r\n") {
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not released: {reply}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    server.abort();
}
