//! The L7 tier end to end in namespaces: real HTTP through an l7 VIP on the node (XDP passes
//! it to the stack, the agent's proxy serves it) to HTTP servers on the backends. Host/path
//! routing, balancing, X-Forwarded-For, a backend failing under load, a WebSocket that lives
//! through a reload, the rate limit, PROXY protocol v2 into the access log, TLS, h2c and the
//! per-route metrics.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use xlb_tests::{
    netns::{Process, self_signed_certificate, wait_for, xlb_bin},
    require_root,
    topology::{CLIENT_V4, Topology, backend_v4},
};

mod client;
mod origin;

use client::{Reply, get, read_response, request_with, requests, vip_addr};
use origin::{Servers, big_body, header};

const VIP: &str = "10.210.100.1";
const METRICS: &str = "127.0.0.1:9843";
const BACKEND_PORT: u16 = 8080;

/// Starts the agent with JSON logs into `<dir>/agent.log`; waits for its admin socket.
fn start_agent(topo: &Topology, config: &str) -> Process {
    std::fs::write(topo.config_path(), config).expect("write config");
    let log = std::fs::File::create(topo.dir.join("agent.log")).expect("log file");
    let mut cmd = topo.node().command_keep_mounts(xlb_bin().to_str().unwrap());
    cmd.args(["run", "--iface", "eth0", "--log-format", "json", "--metrics-listen", METRICS, "--config"])
        .arg(topo.config_path())
        .arg("--admin-socket")
        .arg(topo.socket())
        .arg("--pin-dir")
        .arg(topo.pin_dir_of(0))
        .arg("--state-dir")
        .arg(topo.state_dir_of(0))
        .stderr(Stdio::from(log));
    let agent = Process::spawn(cmd, "xlb run");
    wait_for("the agent's admin socket", Duration::from_secs(10), || topo.stats());
    agent
}

fn agent_log(topo: &Topology) -> String {
    std::fs::read_to_string(topo.dir.join("agent.log")).unwrap_or_default()
}

/// Rewrites the config and SIGHUPs the agent; waits until the reload is applied and returns
/// its outcome.
fn reload_outcome(topo: &Topology, agent: &Process, config: &str) -> xlb::serve::admin::ReloadOutcome {
    let before = topo.status().expect("status").node.config_generation;
    std::fs::write(topo.config_path(), config).expect("write config");
    // SAFETY: kill with our own child's pid and a valid signal.
    unsafe { libc::kill(agent.child.id() as i32, libc::SIGHUP) };
    let status =
        wait_for("the reload", Duration::from_secs(10), || topo.status().filter(|s| s.node.config_generation > before));
    status.node.last_reload.expect("a reload outcome")
}

/// `reload_outcome`, which must succeed.
fn reload(topo: &Topology, agent: &Process, config: &str) {
    let outcome = reload_outcome(topo, agent, config);
    assert!(outcome.ok, "reload: {}", outcome.message);
}

fn metrics(topo: &Topology) -> String {
    topo.node()
        .run(|| {
            let mut conn = TcpStream::connect(METRICS).expect("metrics listener");
            conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            conn.write_all(b"GET /metrics HTTP/1.1\r\nHost: xlb\r\nConnection: close\r\n\r\n").unwrap();
            let mut text = String::new();
            let _ = conn.read_to_string(&mut text);
            text
        })
        .join()
        .expect("metrics thread")
}

/// The value of the sample `line_prefix` (a metric name with its labels), 0 when absent.
fn sample(text: &str, series: &str) -> f64 {
    text.lines().find_map(|l| l.strip_prefix(series).and_then(|rest| rest.trim().parse().ok())).unwrap_or(0.0)
}

fn backend(i: usize) -> String {
    format!("{{ address: {}, port: {BACKEND_PORT} }}", backend_v4(i))
}

fn backends(list: &[usize]) -> String {
    format!("[{}]", list.iter().map(|i| backend(*i)).collect::<Vec<_>>().join(", "))
}

fn l7_vip(name: &str, port: u16, options: &str, routes: &str) -> String {
    format!(
        "  - name: {name}\n    address: {VIP}\n    port: {port}\n    protocol: tcp\n    mode: l7\n    health_check: {{ type: http, path: /health, interval: 200ms, timeout: 100ms, rise: 2, fall: 2 }}\n    l7:\n{options}      routes:\n{routes}"
    )
}

#[test]
fn routes_by_host_and_path_and_retries_hide_a_failing_backend() {
    require_root!();
    let topo = Topology::new(3, &[VIP]);
    let servers = Servers::start(&topo);
    let routes = format!(
        "        - {{ name: api, host: api.test, path_prefix: /api/, backends: {} }}\n        - {{ name: exact, path_exact: /exact, backends: {} }}\n        - {{ name: users, path_regex: \"^/users/[0-9]+$\", backends: {} }}\n        - {{ name: sticky, path_prefix: /sticky, balance: consistent-hash, hash_header: x-user, backends: {} }}\n        - {{ name: least, path_prefix: /least, balance: least-outstanding, backends: {} }}\n        - {{ name: default, path_prefix: /, backends: {} }}\n",
        backends(&[0, 1]),
        backends(&[2]),
        backends(&[2]),
        backends(&[0, 1, 2]),
        backends(&[0, 1, 2]),
        backends(&[0, 1, 2]),
    );
    let config = format!("vips:\n{}", l7_vip("web", 80, "      connect_timeout: 500ms\n", &routes));
    let agent = start_agent(&topo, &config);
    let addr = topo.node().ip(&["-4", "addr", "show", "dev", "lo"]);
    assert!(String::from_utf8_lossy(&addr.stdout).contains(&format!("{VIP}/32")), "the VIP is local on the node");

    // Host and path pick the route; the balancing spreads within it.
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for _ in 0..20 {
        let r = get(&topo, "API.test:80", "/api/v1");
        assert_eq!(r.status, 200, "{r:?}");
        *seen.entry(r.backend().to_owned()).or_default() += 1;
    }
    assert_eq!(seen.keys().map(String::as_str).collect::<Vec<_>>(), ["be0", "be1"], "{seen:?}");
    assert_eq!(seen["be0"], 10, "round robin alternates: {seen:?}");
    assert_eq!(get(&topo, "api.test", "/exact").backend(), "be2");
    // Backend connections are reused: twenty requests one after another to be2 open at most one
    // more connection per worker (2 CPUs), counting the node's sockets to be2 in every state
    // (a connection closed after its request would sit in TIME-WAIT).
    let to_be2 = || {
        let out = topo
            .node()
            .command("ss")
            .args(["-Htan", "dst", &format!("{}:{BACKEND_PORT}", backend_v4(2))])
            .output()
            .expect("ss");
        String::from_utf8_lossy(&out.stdout).lines().count()
    };
    let before = to_be2();
    for _ in 0..20 {
        assert_eq!(get(&topo, "api.test", "/exact").backend(), "be2");
    }
    let opened = to_be2().saturating_sub(before);
    assert!(opened <= 2, "twenty requests opened {opened} backend connections");
    assert_eq!(get(&topo, "other.test", "/users/42").backend(), "be2");
    let spread: std::collections::BTreeSet<String> =
        (0..12).map(|_| get(&topo, "other.test", "/users/4x2").backend().to_owned()).collect();
    assert_eq!(spread.len(), 3, "a regex miss falls to the default route: {spread:?}");
    let spread: std::collections::BTreeSet<String> =
        (0..12).map(|_| get(&topo, "x", "/least").backend().to_owned()).collect();
    assert_eq!(spread.len(), 3, "idle least-outstanding ties rotate: {spread:?}");
    let sticky: Vec<String> = requests(
        &topo,
        80,
        (0..10).map(|_| ("GET", "x".to_owned(), "/sticky".to_owned(), "X-User: alice\r\n".to_owned())).collect(),
    )
    .into_iter()
    .map(|r| r.unwrap().backend().to_owned())
    .collect();
    assert!(sticky.iter().all(|b| *b == sticky[0]), "consistent hash on x-user: {sticky:?}");

    // The backend learns the client's address.
    let r = get(&topo, "api.test", "/api/who");
    assert!(r.body.contains(&format!("xff={CLIENT_V4} ")), "{r:?}");
    assert!(r.body.contains(&format!("fwd=for={CLIENT_V4};proto=http;host=\"api.test\"")), "{r:?}");

    // An HTTP/1.0 request without a Host reaches the backend with one (HTTP/1.1 requires it):
    // the backend's own address.
    let answer = topo
        .client()
        .run(|| -> std::io::Result<String> {
            let mut conn = TcpStream::connect_timeout(&vip_addr(80), Duration::from_secs(4))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            conn.write_all(b"GET /exact HTTP/1.0\r\n\r\n")?;
            let mut text = String::new();
            conn.read_to_string(&mut text)?;
            Ok(text)
        })
        .join()
        .expect("client thread")
        .expect("an HTTP/1.0 request");
    assert!(answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"), "{answer:?}");
    assert!(answer.contains(&format!("host={}:{BACKEND_PORT}\n", backend_v4(2))), "{answer:?}");

    // be1 fails in the middle of a load of GETs: connects are refused and its open connections
    // close. Retries on another backend hide it; the health check then takes it out.
    // be1 fails from the load's own thread after its 100th request: a load faster than a poll
    // of its progress must not end before be1 does.
    let done = Arc::new(AtomicUsize::new(0));
    let load_done = Arc::clone(&done);
    let alive = Arc::clone(&servers.alive);
    let load = topo.client().run(move || {
        let mut failures = Vec::new();
        let start = Instant::now();
        for i in 0..600 {
            if start.elapsed() > Duration::from_secs(60) {
                break;
            }
            if i == 100 {
                alive[1].store(false, Ordering::Relaxed);
            }
            match request_with(vip_addr(80), &[], "GET", "x", &format!("/load/{i}"), "") {
                Ok(r) if r.status == 200 => {}
                other => failures.push(format!("{i}: {other:?}")),
            }
            load_done.fetch_add(1, Ordering::Relaxed);
        }
        failures
    });
    let failures = load.join().expect("load thread");
    let completed = done.load(Ordering::Relaxed);
    assert!(failures.is_empty(), "{} of {completed} requests failed: {failures:?}", failures.len());
    assert_eq!(completed, 600);
    let text = metrics(&topo);
    let retries = sample(&text, "xlb_l7_retries_total{route=\"default\",vip=\"web\"}");
    let refused = sample(&text, "xlb_l7_upstream_errors_total{kind=\"connect\",route=\"default\",vip=\"web\"}");
    assert!(retries > 0.0 && refused > 0.0, "retries {retries}, connect errors {refused}:\n{text}");
    let ok = sample(&text, "xlb_l7_requests_total{class=\"2xx\",route=\"default\",vip=\"web\"}");
    assert!(ok >= 600.0, "2xx of the default route: {ok}");
    assert!(text.contains("xlb_l7_request_duration_seconds_bucket{route=\"api\",vip=\"web\",le=\"0.5\"}"), "{text}");
    // Down by its health check: no more attempts on be1.
    std::thread::sleep(Duration::from_secs(1));
    let before =
        sample(&metrics(&topo), "xlb_l7_upstream_errors_total{kind=\"connect\",route=\"default\",vip=\"web\"}");
    for _ in 0..30 {
        assert_eq!(get(&topo, "x", "/after").status, 200);
    }
    // Scrapes within a second share one render: past it, `after` is counted anew.
    std::thread::sleep(Duration::from_millis(1100));
    let after = sample(&metrics(&topo), "xlb_l7_upstream_errors_total{kind=\"connect\",route=\"default\",vip=\"web\"}");
    assert_eq!(before, after, "a backend down by health check is skipped");
    // `xlb status` shows the l7 VIP, up, with be1 not serving.
    let status = topo.stats().expect("stats");
    let web = status.l7.iter().find(|v| v.name == "web").expect("the l7 VIP in the status");
    assert!(web.up, "{web:?}");
    let be1 = format!("{}:{BACKEND_PORT}", backend_v4(1));
    assert!(web.backends.iter().any(|b| b.address == be1 && !b.serving), "{web:?}");
    assert!(web.backends.iter().filter(|b| b.serving).count() >= 2, "{web:?}");
    // A non-idempotent request to it is not retried; nothing else is hurt either. be1 back:
    servers.set_alive(1, true);
    wait_for("be1 serving again", Duration::from_secs(10), || {
        (0..6).any(|_| get(&topo, "x", "/back").backend() == "be1").then_some(())
    });
    // Drains name an l7 backend by address:port.
    let be1 = format!("{}:{BACKEND_PORT}", backend_v4(1));
    let out = topo.xlb(&["drain", "web", &be1]);
    assert!(out.status.success(), "drain: {}", String::from_utf8_lossy(&out.stderr));
    for _ in 0..12 {
        assert_ne!(get(&topo, "x", "/drained").backend(), "be1", "a drained backend takes no requests");
    }
    assert!(topo.xlb(&["drain", "--undo", "web", &be1]).status.success());
    let access = agent_log(&topo);
    let line = access.lines().find(|l| l.contains("\"path\":\"/api/who\"")).expect("an access log line");
    let json: serde_json::Value = serde_json::from_str(line).expect("JSON log line");
    assert_eq!(json["fields"]["client"].as_str().unwrap().split(':').next(), Some(CLIENT_V4), "{line}");
    assert_eq!(json["fields"]["status"], 200, "{line}");
    assert_eq!(json["fields"]["route"], "api", "{line}");
    // The proxy runs on a worker thread per CPU; the access log kept up and dropped nothing.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers = std::fs::read_dir(format!("/proc/{}/task", agent.child.id()))
        .expect("the agent's threads")
        .flatten()
        .filter(|t| std::fs::read_to_string(t.path().join("comm")).is_ok_and(|c| c.starts_with("xlb-l7-")))
        .count();
    assert_eq!(workers, cpus, "one L7 worker per CPU");
    let text = metrics(&topo);
    assert!(text.lines().any(|l| l == "xlb_l7_access_log_dropped_total 0"), "{text}");
}

/// Opens a WebSocket-style upgrade through the VIP; returns the connection after the 101.
fn open_upgrade(addr: SocketAddr) -> std::io::Result<BufReader<TcpStream>> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    conn.write_all(
        b"GET /ws HTTP/1.1\r\nHost: ws.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    )?;
    let mut reader = BufReader::new(conn);
    let mut status = String::new();
    reader.read_line(&mut status)?;
    if !status.contains(" 101 ") {
        return Err(std::io::Error::other(format!("no upgrade: {status}")));
    }
    loop {
        let mut line = String::new();
        reader.read_line(&mut line)?;
        if line.trim().is_empty() {
            return Ok(reader);
        }
    }
}

fn echo(ws: &mut BufReader<TcpStream>, text: &str) -> std::io::Result<String> {
    ws.get_mut().write_all(format!("{text}\n").as_bytes())?;
    let mut line = String::new();
    ws.read_line(&mut line)?;
    Ok(line.trim().to_owned())
}

#[test]
fn a_websocket_survives_reloads_and_the_rate_limit_answers_429() {
    require_root!();
    let topo = Topology::new(3, &[VIP]);
    let _servers = Servers::start(&topo);
    let config = |default: &[usize]| {
        format!(
            "vips:\n{}",
            l7_vip(
                "web",
                80,
                "",
                &format!(
                    "        - {{ name: ws, path_prefix: /ws, backends: {} }}\n        - {{ name: limited, path_prefix: /limited, rate_limit: {{ requests_per_second: 10, burst: 5 }}, backends: {} }}\n        - {{ name: default, path_prefix: /, backends: {} }}\n",
                    backends(&[0]),
                    backends(&[1]),
                    backends(default)
                )
            )
        )
    };
    let agent = start_agent(&topo, &config(&[0, 1, 2]));

    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let (back_tx, back_rx) = std::sync::mpsc::channel::<std::io::Result<String>>();
    let ws = topo.client().run(move || {
        let mut ws = match open_upgrade(vip_addr(80)) {
            Ok(ws) => ws,
            Err(e) => {
                let _ = back_tx.send(Err(e));
                return;
            }
        };
        while let Ok(text) = rx.recv() {
            let _ = back_tx.send(echo(&mut ws, &text));
        }
    });
    let say = |text: &str| {
        tx.send(text.to_owned()).unwrap();
        back_rx.recv_timeout(Duration::from_secs(10)).expect("the WebSocket thread answers")
    };
    assert_eq!(say("hello").unwrap(), "be0: hello");

    // Reloads that change the routes under a load of GETs: the listener, the requests and the
    // upgraded stream stay.
    let stop = Arc::new(AtomicBool::new(false));
    let load_stop = Arc::clone(&stop);
    let load = topo.client().run(move || {
        let (mut ok, mut failures) = (0usize, Vec::new());
        let start = Instant::now();
        while !load_stop.load(Ordering::Relaxed) && start.elapsed() < Duration::from_secs(60) {
            match request_with(vip_addr(80), &[], "GET", "x", "/during-reload", "") {
                Ok(r) if r.status == 200 => ok += 1,
                other => failures.push(format!("{other:?}")),
            }
        }
        (ok, failures)
    });
    for (round, default) in [[2usize].as_slice(), &[1, 2], &[2]].into_iter().enumerate() {
        reload(&topo, &agent, &config(default));
        assert_eq!(say(&format!("after reload {round}")).unwrap(), format!("be0: after reload {round}"));
        for _ in 0..4 {
            let b = get(&topo, "x", "/new").backend().to_owned();
            assert!(default.iter().any(|i| b == format!("be{i}")), "new routes serve: {b} not in {default:?}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    let (ok, failures) = load.join().expect("load thread");
    assert!(failures.is_empty() && ok > 10, "{ok} requests answered during the reloads, failures: {failures:?}");
    drop(tx);
    ws.join().expect("WebSocket thread");

    // The limited route: a burst of 5, then 10 a second; the rest get 429 with Retry-After.
    let results = topo
        .client()
        .run(|| {
            let start = Instant::now();
            let mut out = Vec::new();
            while start.elapsed() < Duration::from_secs(2) {
                out.push(request_with(vip_addr(80), &[], "GET", "x", "/limited", "").expect("request"));
                std::thread::sleep(Duration::from_millis(5));
            }
            (out, start.elapsed())
        })
        .join()
        .unwrap();
    let (replies, elapsed) = results;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let limited: Vec<&Reply> = replies.iter().filter(|r| r.status == 429).collect();
    assert_eq!(ok + limited.len(), replies.len(), "only 200 and 429");
    let expected = 5.0 + 10.0 * elapsed.as_secs_f64();
    assert!((ok as f64 - expected).abs() <= 3.0, "{ok} passed in {elapsed:?}, expected ≈{expected:.0}");
    assert!(limited.len() > 50, "{} refused", limited.len());
    assert!(limited.iter().all(|r| header(&r.head, "retry-after") == Some("1")), "{:?}", limited[0]);
    let text = metrics(&topo);
    let counted = sample(&text, "xlb_l7_rate_limited_total{route=\"limited\",vip=\"web\"}");
    assert_eq!(counted as usize, limited.len());
}

#[test]
fn proxy_protocol_tls_and_h2c() {
    require_root!();
    let topo = Topology::new(2, &[VIP]);
    let _servers = Servers::start(&topo);
    let (cert, key) = self_signed_certificate(&topo.dir, "tls.test");
    let routes = format!("        - {{ path_prefix: /, backends: {} }}\n", backends(&[0, 1]));
    let config = format!(
        "vips:\n{}{}{}",
        l7_vip("plain", 80, "", &routes),
        l7_vip("proxied", 8000, "      proxy_protocol: true\n", &routes),
        l7_vip("tls", 443, &format!("      tls: {{ cert: {}, key: {} }}\n", cert.display(), key.display()), &routes),
    );
    let mut agent = start_agent(&topo, &config);

    // PROXY v2 from an L4 tier: the header's client reaches the backend and the access log.
    let header = xlb::l7::proxy_protocol::encode("203.0.113.7:4242".parse().unwrap(), vip_addr(8000));
    let replies = topo
        .client()
        .run(move || {
            let with = request_with(vip_addr(8000), &header, "GET", "pp.test", "/proxied", "");
            let without = request_with(vip_addr(8000), &[], "GET", "pp.test", "/no-header", "");
            (with, without)
        })
        .join()
        .unwrap();
    let with = replies.0.expect("request with a PROXY header");
    assert_eq!(with.status, 200);
    assert!(with.body.contains("xff=203.0.113.7 "), "{with:?}");
    assert!(replies.1.is_err(), "a connection without the header is dropped: {:?}", replies.1);
    let log = wait_for("the access log line", Duration::from_secs(5), || {
        agent_log(&topo).lines().find(|l| l.contains("\"path\":\"/proxied\"")).map(str::to_owned)
    });
    let json: serde_json::Value = serde_json::from_str(&log).expect("JSON");
    assert_eq!(json["fields"]["client"], "203.0.113.7:4242", "{log}");
    assert_eq!(json["fields"]["vip"], "proxied", "{log}");

    // TLS (h2 by ALPN, and HTTP/1.1) and h2c with prior knowledge, by curl.
    let curl = |args: &[&str]| {
        let out = topo
            .client()
            .command("curl")
            .args(["-sS", "--max-time", "10", "-w", " %{http_version}"])
            .args(args)
            .output()
            .expect("curl");
        assert!(out.status.success(), "curl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let resolve = format!("tls.test:443:{VIP}");
    let cafile = cert.display().to_string();
    let h2 = curl(&["--cacert", &cafile, "--resolve", &resolve, "https://tls.test/secure"]);
    assert!(h2.starts_with("be") && h2.contains("GET /secure") && h2.ends_with(" 2"), "{h2}");
    // Two requests over one TLS connection (the second made no new connection), served on the
    // direct path.
    let url = "https://tls.test/secure1";
    let h1 = curl(&[
        "--http1.1",
        "--cacert",
        &cafile,
        "--resolve",
        &resolve,
        "-w",
        " %{num_connects} %{http_version}",
        url,
        url,
    ]);
    assert!(h1.contains("GET /secure1") && h1.ends_with(" 0 1.1"), "{h1}");
    assert_eq!(h1.matches("GET /secure1").count(), 2, "{h1}");
    // One plain connection: large bodies and a small one between them, each whole and in
    // order; the client reads late enough that the proxy's socket fills and it waits.
    let sizes = [1_048_576usize, 0, 20_000, 3_000_000];
    let bodies = topo
        .client()
        .run(move || -> std::io::Result<Vec<(u16, usize, bool)>> {
            let conn = TcpStream::connect_timeout(&vip_addr(80), Duration::from_secs(4))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut writer = conn.try_clone()?;
            let mut reader = BufReader::with_capacity(4096, conn);
            let mut got = Vec::new();
            for n in sizes {
                let path = if n == 0 { "/small".to_owned() } else { format!("/big/{n}") };
                writer.write_all(format!("GET {path} HTTP/1.1\r\nHost: keep.test\r\n\r\n").as_bytes())?;
                std::thread::sleep(Duration::from_millis(50));
                let (status, body) = read_response(&mut reader)?;
                let whole = n == 0 && body.contains("GET /small") || body.as_bytes() == big_body(n);
                got.push((status, body.len(), whole));
            }
            Ok(got)
        })
        .join()
        .expect("client thread")
        .expect("large and small bodies on one connection");
    assert!(bodies.iter().all(|&(status, _, whole)| status == 200 && whole), "{bodies:?}");

    // One plain connection: a GET (direct path), a POST with a body (which hands the connection
    // to hyper, with the bytes read), a GET again (hyper), answered in order.
    let answers = topo
        .client()
        .run(|| -> std::io::Result<Vec<(u16, String)>> {
            let conn = TcpStream::connect_timeout(&vip_addr(80), Duration::from_secs(4))?;
            conn.set_read_timeout(Some(Duration::from_secs(5)))?;
            let mut writer = conn.try_clone()?;
            let mut reader = BufReader::new(conn);
            let mut answers = Vec::new();
            for request in [
                "GET /one HTTP/1.1\r\nHost: keep.test\r\n\r\n",
                "POST /two HTTP/1.1\r\nHost: keep.test\r\nContent-Length: 5\r\n\r\nhello",
                "GET /three HTTP/1.1\r\nHost: keep.test\r\nConnection: close\r\n\r\n",
            ] {
                writer.write_all(request.as_bytes())?;
                answers.push(read_response(&mut reader)?);
            }
            Ok(answers)
        })
        .join()
        .expect("client thread")
        .expect("three requests on one connection");
    let said: Vec<(u16, bool)> = answers
        .iter()
        .zip(["GET /one", "POST /two", "GET /three"])
        .map(|((status, body), want)| (*status, body.contains(want)))
        .collect();
    assert_eq!(said, [(200, true); 3], "{answers:?}");
    let h2c = curl(&["--http2-prior-knowledge", &format!("http://{VIP}/h2c")]);
    assert!(h2c.contains("GET /h2c") && h2c.contains(&format!("host={VIP}")) && h2c.ends_with(" 2"), "{h2c}");

    // A reload whose certificate cannot be read is reported failed, and that VIP keeps serving
    // with its previous configuration.
    let broken = config.replace(&cert.display().to_string(), "/nonexistent/cert.pem");
    let outcome = reload_outcome(&topo, &agent, &broken);
    assert!(!outcome.ok && outcome.message.contains("/nonexistent/cert.pem"), "{outcome:?}");
    let again = curl(&["--cacert", &cafile, "--resolve", &resolve, "https://tls.test/still"]);
    assert!(again.contains("GET /still"), "{again}");

    // The agent added the VIP to lo; it takes it away when it exits.
    let on_lo = || String::from_utf8_lossy(&topo.node().ip(&["-4", "addr", "show", "dev", "lo"]).stdout).contains(VIP);
    assert!(on_lo());
    let status = agent.signal_and_wait(libc::SIGTERM, Duration::from_secs(15));
    assert!(status.success(), "{status:?}");
    assert!(!on_lo(), "the VIP address is gone from lo");
}

/// The router's nexthops for the VIP become `want` (node indexes) within 15 s.
fn wait_nexthops(topo: &Topology, want: &[usize], what: &str) {
    let want: std::collections::BTreeSet<String> = want.iter().map(|&i| xlb_tests::topology::node_v4(i)).collect();
    wait_for(what, Duration::from_secs(15), || (topo.router_nexthops(VIP) == want).then_some(()));
}

#[test]
fn an_l7_vip_is_announced_over_bgp_while_its_backends_are_up() {
    require_root!();
    use xlb_tests::{
        bird::{Bird, Neighbor, config},
        topology::{ROUTER_V4, node_v4},
    };
    let topo = Topology::edge(1, 1, 2, &[VIP]);
    let servers = Servers::start(&topo);
    let neighbors = [Neighbor::new("node0", ROUTER_V4, &node_v4(0), 65001)];
    let dir = Bird::temp_dir();
    let router = topo.router.as_ref().expect("an edge topology");
    let _bird = Bird::start(router, dir.clone(), &config(ROUTER_V4, &neighbors, false, &Bird::log_path(&dir)));
    let routes = format!("        - {{ path_prefix: /, backends: {} }}\n", backends(&[0, 1]));
    let config = format!(
        "bgp:\n  local_as: 65001\n  router_id: {}\n  withdraw_grace: 1s\n  peers:\n    - {{ address: {ROUTER_V4}, remote_as: 65000 }}\nvips:\n{}",
        node_v4(0),
        l7_vip("web", 80, "", &routes)
    );
    let _agent = start_agent(&topo, &config);
    wait_nexthops(&topo, &[0], "the l7 VIP announced");
    assert_eq!(topo.status().unwrap().announced, [VIP.to_owned()]);
    // Through the router: client → router → node (XDP passes it) → proxy → backends.
    let r = get(&topo, "x", "/via-router");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.body.contains(&format!("xff={} ", xlb_tests::topology::edge_client_v4(0))), "{r:?}");

    // Every backend fails its health check: the VIP is down and withdrawn; one back: announced.
    servers.set_alive(0, false);
    servers.set_alive(1, false);
    wait_nexthops(&topo, &[], "the l7 VIP withdrawn with no backend up");
    servers.set_alive(1, true);
    wait_nexthops(&topo, &[0], "the l7 VIP announced again");
    assert_eq!(get(&topo, "x", "/back").backend(), "be1");
}

#[test]
fn an_ipv6_l7_vip_serves_and_leaves_lo_when_removed() {
    require_root!();
    const VIP6: &str = "fd00:210:100::1";
    let topo = Topology::new(1, &[VIP6, VIP]);
    let _servers = Servers::start(&topo);
    let routes = format!("        - {{ path_prefix: /, backends: {} }}\n", backends(&[0]));
    let v6 = l7_vip("web6", 80, "", &routes).replace(&format!("address: {VIP}"), &format!("address: \"{VIP6}\""));
    let v4 = l7_vip("web4", 80, "", &routes);
    let agent = start_agent(&topo, &format!("vips:\n{v6}{v4}"));
    let on_lo = |address: &str| {
        String::from_utf8_lossy(&topo.node().ip(&["addr", "show", "dev", "lo"]).stdout).contains(&format!("{address}/"))
    };
    assert!(on_lo(VIP6) && on_lo(VIP));
    let addr = SocketAddr::new(VIP6.parse().unwrap(), 80);
    let reply = topo
        .client()
        .run(move || request_with(addr, &[], "GET", "[fd00:210:100::1]", "/six", ""))
        .join()
        .unwrap()
        .expect("request over IPv6");
    assert_eq!(reply.status, 200, "{reply:?}");
    assert!(reply.body.contains("xff=fd00:210::1 ") && reply.body.contains("for=\"[fd00:210::1]\""), "{reply:?}");
    // The IPv6 VIP goes: its listener and its address with it; the IPv4 one stays.
    reload(&topo, &agent, &format!("vips:\n{v4}"));
    assert!(!on_lo(VIP6) && on_lo(VIP), "only the removed VIP's address left lo");
    assert_eq!(get(&topo, "x", "/four").status, 200);
}
