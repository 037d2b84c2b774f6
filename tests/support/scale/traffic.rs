//! The backends' servers and the client driving the checked VIPs.

use super::*;

/// The backends' TCP servers on 0.0.0.0:80: each answers a line with its name (`be<j>`);
/// `kill` closes one's listener for good (connections are then refused, health checks fail).
#[derive(Debug)]
pub struct Servers {
    stop: Arc<AtomicBool>,
    alive: Arc<Vec<AtomicBool>>,
    killed: Arc<Mutex<Vec<Option<SystemTime>>>>,
    threads: Vec<JoinHandle<()>>,
}

impl Servers {
    pub(super) fn start(backends: &[Netns]) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let alive: Arc<Vec<AtomicBool>> = Arc::new(backends.iter().map(|_| AtomicBool::new(true)).collect());
        let killed = Arc::new(Mutex::new(vec![None; backends.len()]));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let threads = backends
            .iter()
            .enumerate()
            .map(|(j, ns)| {
                let (stop, alive, killed, ready) =
                    (Arc::clone(&stop), Arc::clone(&alive), Arc::clone(&killed), ready_tx.clone());
                ns.run(move || serve(j, &stop, &alive[j], &killed, &ready))
            })
            .collect();
        for _ in backends {
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("backend server started");
        }
        Servers { stop, alive, killed, threads }
    }

    /// Kills backend `j`'s server; returns when it died (stamped just before its listener
    /// closed, so that nothing after the stamp can reach it).
    pub fn kill(&self, j: usize) -> SystemTime {
        self.alive[j].store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(at) = self.killed_at(j) {
                return at;
            }
            assert!(Instant::now() < deadline, "backend {j}'s server did not stop");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    pub fn killed_at(&self, j: usize) -> Option<SystemTime> {
        self.killed.lock().unwrap_or_else(|p| p.into_inner())[j]
    }
}

fn serve(
    j: usize,
    stop: &AtomicBool,
    alive: &AtomicBool,
    killed: &Mutex<Vec<Option<SystemTime>>>,
    ready: &std::sync::mpsc::Sender<()>,
) {
    let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, VIP_PORT));
    let listener = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr} on be{j}: {e}"));
    listener.set_nonblocking(true).expect("nonblocking");
    let _ = ready.send(());
    let name = format!("be{j}\n");
    while !stop.load(Ordering::Relaxed) {
        if !alive.load(Ordering::Relaxed) {
            killed.lock().unwrap_or_else(|p| p.into_inner())[j] = Some(SystemTime::now());
            drop(listener);
            return;
        }
        match listener.accept() {
            Ok((mut conn, _)) => {
                let _ = conn.set_nonblocking(false);
                let _ = conn.set_read_timeout(Some(Duration::from_millis(200)));
                let mut buf = [0u8; 64];
                // Health checks connect and close; clients send a line and read the answer,
                // then close first (TIME_WAIT stays on their side).
                if conn.read(&mut buf).is_ok_and(|n| n > 0) && conn.write_all(name.as_bytes()).is_ok() {
                    let _ = conn.read(&mut buf);
                }
            }
            Err(_) => std::thread::sleep(Duration::from_millis(1)),
        }
    }
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// A client load over some VIPs (round robin), one connection after another, every connection
/// from a source port no other has used (so every SYN is a new flow for the data plane).
/// Stopped on drop too.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<LoadResult>>,
}

/// What a load saw, by wall time.
#[derive(Debug, Clone, Default)]
pub struct LoadResult {
    /// Answers: when, and which backend.
    pub answers: Vec<(SystemTime, String)>,
    /// Connections refused (a dead backend's RST).
    pub refused: Vec<SystemTime>,
    /// Other failures: time outs, unreachable.
    pub failed: Vec<(SystemTime, String)>,
}

impl LoadResult {
    /// The longest time without an answer between the first and the last connection attempt.
    pub fn longest_silence(&self) -> Duration {
        let mut times: Vec<SystemTime> = self.answers.iter().map(|(t, _)| *t).collect();
        times.sort();
        times.windows(2).map(|w| since(w[1], w[0])).max().unwrap_or_default()
    }
}

/// Source ports the loads take, never reused within a process (below the ephemeral range's
/// usual start would collide with nothing either way: the client namespace runs nothing else).
static NEXT_PORT: AtomicU16 = AtomicU16::new(FIRST_PORT);
const FIRST_PORT: u16 = 20000;
const LAST_PORT: u16 = 60999;

impl Load {
    /// At most `max` connections and `max_time`, pacing 2 ms between connections.
    pub fn start(client: &Netns, vips: Vec<SocketAddr>, max: usize, max_time: Duration) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let thread = client.run(move || {
            let mut result = LoadResult::default();
            let start = Instant::now();
            for n in 0..max {
                if s.load(Ordering::Relaxed) || start.elapsed() > max_time {
                    break;
                }
                let port = NEXT_PORT.fetch_add(1, Ordering::Relaxed);
                if port >= LAST_PORT {
                    result.failed.push((SystemTime::now(), "out of fresh source ports".into()));
                    break;
                }
                match exchange(vips[n % vips.len()], port) {
                    Ok(name) => result.answers.push((SystemTime::now(), name)),
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                        result.refused.push(SystemTime::now())
                    }
                    Err(e) => result.failed.push((SystemTime::now(), e.to_string())),
                }
                std::thread::sleep(Duration::from_millis(2));
            }
            result
        });
        Load { stop, thread: Some(thread) }
    }

    pub fn finish(mut self) -> LoadResult {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().map(|t| t.join().expect("load thread")).unwrap_or_default()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One request on a new connection from source port `port`. The connect timeout stays under the
/// SYN retransmission time (1 s), so no SYN is ever sent twice.
fn exchange(addr: SocketAddr, port: u16) -> std::io::Result<String> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None)?;
    socket.bind(&SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)).into())?;
    socket.connect_timeout(&addr.into(), Duration::from_millis(900))?;
    let mut conn: std::net::TcpStream = socket.into();
    conn.set_read_timeout(Some(Duration::from_secs(1)))?;
    conn.write_all(b"who\n")?;
    let mut buf = [0u8; 64];
    let n = conn.read(&mut buf)?;
    let name = String::from_utf8_lossy(&buf[..n]).trim().to_owned();
    if name.is_empty() {
        return Err(std::io::Error::other("empty answer"));
    }
    Ok(name)
}
