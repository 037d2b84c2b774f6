//! The servers on the backends and the clients' traffic: TCP, UDP and HTTP exchanges, load,
//! long-lived streams, health-check switches.

use super::*;

impl Topology {
    /// Starts, on every backend, a TCP server and a UDP server on `vip:port` that answer each
    /// request with the backend's name (`be<i>`).
    pub fn serve(&mut self, vip: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(vip.parse().expect("VIP"), port);
            let name = format!("be{i}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            let tcp_name = name.clone();
            let tcp_ready = ready_tx.clone();
            self.servers.push(ns.run(move || {
                accept_loop(addr, &stop, &tcp_ready, |mut conn| {
                    let mut buf = [0u8; 64];
                    if conn.read(&mut buf).is_ok_and(|n| n > 0) {
                        let _ = conn.write_all(tcp_name.as_bytes());
                        // Let the client close first: TIME_WAIT stays on its side, where
                        // connect() avoids reusing the port, not on ours, where a reused
                        // client port would meet it.
                        let _ = conn.read(&mut buf);
                    }
                });
            }));
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                let socket = UdpSocket::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                socket.set_read_timeout(Some(Duration::from_millis(20))).expect("timeout");
                ready_tx.send(()).expect("ready");
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((_, peer)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(name.as_bytes(), peer);
                    }
                }
            }));
            for _ in 0..2 {
                ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
            }
        }
    }

    /// Starts, on every backend, an HTTP/1.1 server on `addr:port` that answers every request
    /// with 200 and the backend's name as the body, one request per connection.
    pub fn serve_http(&mut self, addr: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(addr.parse().expect("address"), port);
            let name = format!("be{i}");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                accept_loop(addr, &stop, &ready_tx, |mut conn| {
                    // The request head, then the answer.
                    let mut head = Vec::new();
                    let mut buf = [0u8; 1024];
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 16 * 1024 {
                        match conn.read(&mut buf) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => head.extend_from_slice(&buf[..n]),
                        }
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{name}",
                        name.len()
                    );
                    let _ = conn.write_all(answer.as_bytes());
                });
            }));
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
        }
    }

    /// `count` HTTP GETs of `vip:port` from client `c`, each on a new connection; returns how
    /// many answers (200, body = the backend's name) each backend gave, and the failures.
    pub fn http_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, http_exchange, never).join().expect("client thread")
    }

    /// Starts, on every backend, a TCP server on `vip:port` that answers every line it reads on
    /// a connection with the backend's name and a newline, until the client closes.
    pub fn serve_streams(&mut self, vip: &str, port: u16) {
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(vip.parse().expect("VIP"), port);
            let name = format!("be{i}\n");
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            let stop = Arc::clone(&self.stop);
            self.servers.push(ns.run(move || {
                let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                listener.set_nonblocking(true).expect("nonblocking");
                ready_tx.send(()).expect("ready");
                let mut conns = Vec::new();
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((conn, _)) = listener.accept() {
                        let name = name.clone();
                        let stop = Arc::clone(&stop);
                        conns.push(std::thread::spawn(move || {
                            let _ = conn.set_nonblocking(false);
                            let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                            let mut conn = std::io::BufReader::new(conn);
                            let mut line = String::new();
                            while !stop.load(Ordering::Relaxed) {
                                line.clear();
                                match std::io::BufRead::read_line(&mut conn, &mut line) {
                                    Ok(0) => break,
                                    Ok(_) => {
                                        if conn.get_mut().write_all(name.as_bytes()).is_err() {
                                            break;
                                        }
                                    }
                                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                                    Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                                    Err(_) => break,
                                }
                            }
                        }));
                    } else {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                }
                for conn in conns {
                    let _ = conn.join();
                }
            }));
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
        }
    }

    /// Opens `count` long TCP streams to `vip:port` from the client (see `serve_streams`);
    /// each exchanges a line every 50 ms until the returned `Streams` is finished. A stream that
    /// waits 3 s for an answer ends with an error.
    pub fn open_streams(&self, vip: &str, port: u16, count: usize) -> Streams {
        self.open_streams_waiting(vip, port, count, Duration::from_secs(3))
    }

    /// `open_streams` whose streams wait up to `answer_within` for each answer (a link that
    /// drops most frames, as a flood's does, leaves TCP retransmitting with backoff for seconds).
    pub fn open_streams_waiting(&self, vip: &str, port: u16, count: usize, answer_within: Duration) -> Streams {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        let stop = Arc::new(AtomicBool::new(false));
        let exchanges: Arc<Vec<std::sync::atomic::AtomicUsize>> =
            Arc::new((0..count).map(|_| std::sync::atomic::AtomicUsize::new(0)).collect());
        let threads = (0..count)
            .map(|i| {
                let stop = Arc::clone(&stop);
                let exchanges = Arc::clone(&exchanges);
                self.clients[0].run(move || -> Result<String, String> {
                    let conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4)).map_err(|e| e.to_string())?;
                    conn.set_read_timeout(Some(answer_within)).map_err(|e| e.to_string())?;
                    let mut reader = std::io::BufReader::new(conn.try_clone().map_err(|e| e.to_string())?);
                    let mut writer = conn;
                    let mut first: Option<String> = None;
                    // Bounded: at most 1 200 exchanges and 120 s even if nobody says stop.
                    let began = std::time::Instant::now();
                    for n in 0..1200 {
                        if stop.load(Ordering::Relaxed) || began.elapsed() > Duration::from_secs(120) {
                            break;
                        }
                        writer.write_all(b"x\n").map_err(|e| format!("exchange {n}: {e}"))?;
                        let mut line = String::new();
                        std::io::BufRead::read_line(&mut reader, &mut line)
                            .map_err(|e| format!("exchange {n}: {e}"))?;
                        let name = line.trim().to_owned();
                        if name.is_empty() {
                            return Err(format!("exchange {n}: connection closed"));
                        }
                        match &first {
                            None => first = Some(name),
                            Some(f) if *f != name => {
                                return Err(format!("exchange {n}: answered by {name}, began on {f}"));
                            }
                            Some(_) => {}
                        }
                        exchanges[i].fetch_add(1, Ordering::Relaxed);
                        std::thread::sleep(Duration::from_millis(50));
                    }
                    first.ok_or_else(|| "no exchange".to_owned())
                })
            })
            .collect();
        Streams { stop, exchanges, threads }
    }

    /// `count` TCP request/answer exchanges with `vip:port` from the client, each on a new
    /// connection; returns how many answers each backend gave, and the failures.
    pub fn tcp_requests(&self, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        self.requests(vip, port, count, tcp_exchange)
    }

    /// `tcp_requests` from client `c`.
    pub fn tcp_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, tcp_exchange, never).join().expect("client thread")
    }

    /// `udp_requests` from client `c`.
    pub fn udp_requests_from(&self, c: usize, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests_from(c, vip, port, count, udp_exchange, never).join().expect("client thread")
    }

    /// One UDP exchange from client `c`'s source port `sport`: which backend answered.
    pub fn udp_from_port(&self, c: usize, vip: &str, port: u16, sport: u16) -> std::io::Result<String> {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        self.clients[c].run(move || udp_exchange_from(addr, sport)).join().expect("client thread")
    }

    /// `count` UDP request/answer exchanges, each from a new source port.
    pub fn udp_requests(&self, vip: &str, port: u16, count: usize) -> (BTreeMap<String, usize>, usize) {
        self.requests(vip, port, count, udp_exchange)
    }

    /// Runs `exchange` `count` times from the client namespace, tallying the backend names it
    /// returns; gives up after MAX_FAILURES failures.
    fn requests(
        &self,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
    ) -> (BTreeMap<String, usize>, usize) {
        let never = Arc::new(AtomicBool::new(false));
        self.spawn_requests(vip, port, count, exchange, never).join().expect("client thread")
    }

    /// TCP requests (as `tcp_requests`) one after another in the background until `Load::finish`
    /// (at most `max` of them).
    pub fn tcp_load(&self, vip: &str, port: u16, max: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let thread = self.spawn_requests(vip, port, max, tcp_exchange, Arc::clone(&stop));
        Load { stop, thread }
    }

    fn spawn_requests(
        &self,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(BTreeMap<String, usize>, usize)> {
        self.spawn_requests_from(0, vip, port, count, exchange, stop)
    }

    fn spawn_requests_from(
        &self,
        client: usize,
        vip: &str,
        port: u16,
        count: usize,
        exchange: fn(SocketAddr) -> std::io::Result<String>,
        stop: Arc<AtomicBool>,
    ) -> std::thread::JoinHandle<(BTreeMap<String, usize>, usize)> {
        let addr = SocketAddr::new(vip.parse::<IpAddr>().expect("VIP"), port);
        self.clients[client].run(move || {
            let mut seen = BTreeMap::new();
            let mut failed = 0;
            for _ in 0..count {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                match exchange(addr) {
                    Ok(name) if !name.is_empty() => *seen.entry(name).or_insert(0) += 1,
                    other => {
                        failed += 1;
                        eprintln!("request to {addr} failed: {other:?}");
                    }
                }
                // Bounded in time too: a broken path fails fast instead of timing out
                // request after request.
                if failed >= MAX_FAILURES {
                    break;
                }
            }
            (seen, failed)
        })
    }

    /// Starts, on every backend, a TCP listener on its own address and `port` for health
    /// checks; `HealthSwitches::set` opens or closes each one.
    pub fn serve_health(&mut self, port: u16) -> HealthSwitches {
        let switches: Arc<Vec<AtomicBool>> =
            Arc::new((0..self.backends.len()).map(|_| AtomicBool::new(true)).collect());
        for (i, ns) in self.backends.iter().enumerate() {
            let addr = SocketAddr::new(backend_v4(i).parse().expect("address"), port);
            let stop = Arc::clone(&self.stop);
            let switches = Arc::clone(&switches);
            self.servers.push(ns.run(move || {
                let mut listener: Option<TcpListener> = None;
                while !stop.load(Ordering::Relaxed) {
                    if !switches[i].load(Ordering::Relaxed) {
                        // Closed: connects are refused.
                        listener = None;
                    } else if listener.is_none() {
                        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                        l.set_nonblocking(true).expect("nonblocking");
                        listener = Some(l);
                    }
                    if let Some(l) = &listener {
                        while l.accept().is_ok() {}
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        HealthSwitches(switches)
    }
}

/// One TCP request/answer exchange on a new connection.
fn tcp_exchange(addr: SocketAddr) -> std::io::Result<String> {
    // Long enough for two SYN retransmissions (1 s, then 2 s): a client's TCP retries a lost
    // SYN, and so does this one.
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(2)))?;
    // A line: the stream servers answer lines, the others any bytes.
    conn.write_all(b"who\n")?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

/// One HTTP/1.1 GET on a new connection: the body of a 200 answer.
fn http_exchange(addr: SocketAddr) -> std::io::Result<String> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(4)))?;
    conn.write_all(format!("GET / HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    match answer.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_owned()),
        _ => Err(std::io::Error::other(format!("not a 200 answer: {answer:?}"))),
    }
}

/// Runs a listener on `addr` until `stop`, handing each accepted connection (blocking, with a
/// 2 s read timeout) to `handle`; signals `ready` once bound.
fn accept_loop(
    addr: SocketAddr,
    stop: &AtomicBool,
    ready: &std::sync::mpsc::Sender<()>,
    mut handle: impl FnMut(TcpStream),
) {
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    ready.send(()).expect("ready");
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_secs(2)));
                handle(conn);
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

/// One UDP request/answer exchange from a new source port.
fn udp_exchange(addr: SocketAddr) -> std::io::Result<String> {
    udp_exchange_from(addr, 0)
}

/// One UDP request/answer exchange from source port `sport` (0: any).
fn udp_exchange_from(addr: SocketAddr, sport: u16) -> std::io::Result<String> {
    let any: IpAddr = if addr.is_ipv4() { "0.0.0.0".parse().unwrap() } else { "::".parse().unwrap() };
    let socket = UdpSocket::bind(SocketAddr::new(any, sport))?;
    socket.set_read_timeout(Some(Duration::from_secs(1)))?;
    socket.send_to(b"who", addr)?;
    let mut buf = [0u8; 64];
    let n = socket.recv(&mut buf)?;
    Ok(String::from_utf8_lossy(&buf[..n]).into_owned())
}

/// Requests running in the background (`Topology::tcp_load`).
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(BTreeMap<String, usize>, usize)>,
}

impl Load {
    /// Stops the load; returns the answers by backend and the failures.
    pub fn finish(self) -> (BTreeMap<String, usize>, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("load thread")
    }
}

/// The health listeners of `Topology::serve_health`, by backend index.
#[derive(Debug, Clone)]
pub struct HealthSwitches(Arc<Vec<AtomicBool>>);

impl HealthSwitches {
    pub fn set(&self, backend: usize, healthy: bool) {
        self.0[backend].store(healthy, Ordering::Relaxed);
    }
}
/// Asserts that `seen` spreads over backends in proportion to `weights` (by backend index),
/// each share within `tolerance` (absolute) of its weight's share.
pub fn assert_spread(seen: &BTreeMap<String, usize>, weights: &[u32], tolerance: f64, what: &str) {
    let total: usize = seen.values().sum();
    let weight_sum: u32 = weights.iter().sum();
    for (i, w) in weights.iter().enumerate() {
        let share = *seen.get(&format!("be{i}")).unwrap_or(&0) as f64 / total as f64;
        let ideal = f64::from(*w) / f64::from(weight_sum);
        assert!(
            (share - ideal).abs() <= tolerance,
            "{what}: be{i} got {share:.3} of {total}, weight share {ideal:.3}; all: {seen:?}"
        );
    }
}

/// Long TCP streams in flight (`Topology::open_streams`).
#[derive(Debug)]
pub struct Streams {
    stop: Arc<AtomicBool>,
    exchanges: Arc<Vec<std::sync::atomic::AtomicUsize>>,
    threads: Vec<std::thread::JoinHandle<Result<String, String>>>,
}

impl Streams {
    /// Exchanges each stream has completed so far.
    pub fn exchanges(&self) -> Vec<usize> {
        self.exchanges.iter().map(|e| e.load(Ordering::Relaxed)).collect()
    }

    /// Waits until every stream has completed `more` exchanges beyond what it had now, or one
    /// has ended; bounded by `timeout`. Returns whether all made that progress.
    pub fn progress(&self, more: usize, timeout: Duration) -> bool {
        let start = self.exchanges();
        let deadline = std::time::Instant::now() + timeout;
        while std::time::Instant::now() < deadline {
            let now = self.exchanges();
            if now.iter().zip(&start).all(|(n, s)| *n >= s + more) {
                return true;
            }
            if self.threads.iter().any(|t| t.is_finished()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }

    /// Stops the streams; returns each one's backend, or why it broke.
    pub fn finish(self) -> Vec<Result<String, String>> {
        self.stop.store(true, Ordering::Relaxed);
        self.threads.into_iter().map(|t| t.join().unwrap_or_else(|_| Err("stream thread panicked".into()))).collect()
    }
}
