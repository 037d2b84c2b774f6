//! What a reload window showed: BIRD's session, the router's routes, `xlb status`'s latency,
//! the node's BGP messages on the wire, and when a dead backend got its last new flow.

use super::*;

/// The router's kernel routes (installed by BIRD) to VIPs, in namespace `router`.
pub fn router_routes(router: &str) -> BTreeSet<Ipv4Addr> {
    let Ok(out) = Command::new("ip").args(["-n", router, "-4", "route", "show", "proto", "bird"]).output() else {
        return BTreeSet::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next()?.parse::<Ipv4Addr>().ok())
        .filter(|a| in_vip_prefix(*a))
        .collect()
}

/// BIRD's view of its session to the node (`birdc show protocols`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BirdState {
    /// up, start, ...
    pub state: String,
    /// When it last changed state (and, once down, why).
    pub since: String,
    /// The BGP state: Established, Active, Connect, ...
    pub info: String,
}

/// See [`BirdState`].
pub fn bird_state(socket: &Path) -> Option<BirdState> {
    let out = Command::new("birdc").arg("-s").arg(socket).args(["show", "protocols", BGP_PROTOCOL]).output().ok()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().find(|l| l.split_whitespace().next() == Some(BGP_PROTOCOL))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    // Name Proto Table State Since... Info: since may be one word or two (date and time).
    let info = words.last()?.to_string();
    Some(BirdState { state: words.get(3)?.to_string(), since: words[4..words.len() - 1].join(" "), info })
}

/// When BIRD's Established session last changed state, once that has settled: BIRD stamps the
/// protocol again when its channels finish feeding, a millisecond or more after the session came
/// up, so a stamp read right after the routes arrived may still move without any flap. Two polls
/// 100 ms apart must agree (bounded at 5 s; then the last reading stands).
fn settled_since(socket: &Path) -> Option<String> {
    let start = Instant::now();
    let mut last: Option<BirdState> = None;
    loop {
        let now = bird_state(socket);
        let settled = matches!((&last, &now), (Some(a), Some(b)) if a == b && b.info == "Established");
        if settled || start.elapsed() > Duration::from_secs(5) {
            return now.map(|s| s.since);
        }
        last = now;
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// What a full reload with a kill showed.
#[derive(Debug)]
pub struct FullReload {
    pub reload: Result<Done, String>,
    /// From the kill until status showed the victim down everywhere.
    pub victim_down: Result<Duration, String>,
    pub health: HealthDown,
    pub load: LoadResult,
}

/// New flows the data plane sent to the victim after its server died, seen as SYNs arriving in
/// its namespace (kernel time stamps; the first SYN of each client port only — the client never
/// reuses a port, so each is a new flow for XDP too).
///
/// The last of them says when the victim stopped getting new flows only if traffic kept reaching
/// the node after it: a lost BGP session or route stops new flows to every backend. So the
/// client's answers (from the other backends) must keep coming for a second after it, never more
/// than [`HealthDown::MAX_SILENCE`] apart; at ~300 flows/s, a quarter of them to the victim while
/// it is in its VIPs' tables, that many flows without one to it leave no doubt it was out.
#[derive(Debug, Clone)]
pub struct HealthDown {
    /// From the kill to the last new flow to the victim (zero if none came after the kill).
    pub last_new_flow: Duration,
    pub new_flows_after_kill: usize,
    /// New flows to the victim per second in the second before the reload: the measurement's
    /// resolution is about one over this.
    pub rate_before: f64,
    /// The longest time without an answer in the second after the victim's last new flow
    /// (counting from that flow).
    pub silence_after: Duration,
}

impl HealthDown {
    /// Longest gap between answers that still counts as traffic flowing.
    pub const MAX_SILENCE: Duration = Duration::from_millis(250);
    /// How long answers must go on after the victim's last new flow.
    pub const CONFIRM: Duration = Duration::from_secs(1);

    pub(super) fn compute(
        syns: &[Seen],
        killed_at: SystemTime,
        load: &LoadResult,
        reload_at: SystemTime,
    ) -> HealthDown {
        let mut first: BTreeMap<(Ipv4Addr, u16), SystemTime> = BTreeMap::new();
        for s in syns {
            first.entry((s.src, s.sport)).or_insert(s.at);
        }
        let after: Vec<SystemTime> = first.values().copied().filter(|t| *t >= killed_at).collect();
        let last = after.iter().max().copied().unwrap_or(killed_at);
        let window = Duration::from_secs(1);
        let before = first
            .values()
            .filter(|t| **t < reload_at && reload_at.duration_since(**t).is_ok_and(|d| d <= window))
            .count();
        // Answers from `last` to a second later, and the gaps between them (from `last` to the
        // first, and from the last one to the second's end).
        let end = last + Self::CONFIRM;
        let mut times: Vec<SystemTime> =
            load.answers.iter().map(|(t, _)| *t).filter(|t| *t > last && *t <= end).collect();
        times.sort();
        let points: Vec<SystemTime> = std::iter::once(last).chain(times).chain(std::iter::once(end)).collect();
        let silence_after = points.windows(2).map(|w| since(w[1], w[0])).max().unwrap_or_default();
        HealthDown {
            last_new_flow: since(last, killed_at),
            new_flows_after_kill: after.len(),
            rate_before: before as f64 / window.as_secs_f64(),
            silence_after,
        }
    }

    /// Whether the figure means anything: traffic reached the victim before, and kept reaching
    /// the node after its last new flow (see the type's doc).
    pub fn valid(&self) -> Result<(), String> {
        if self.rate_before < 5.0 {
            return Err(format!("only {:.0} new flows/s reached the victim before the reload", self.rate_before));
        }
        if self.silence_after > Self::MAX_SILENCE {
            return Err(format!(
                "traffic stopped reaching the node: {} ms without an answer within a second after the victim's last new flow",
                self.silence_after.as_millis()
            ));
        }
        Ok(())
    }
}

/// Monitors of a reload window. Stopped and joined on drop too.
#[derive(Debug)]
pub struct Monitors {
    pub started: Instant,
    started_wall: SystemTime,
    stop: Arc<AtomicBool>,
    status: Option<JoinHandle<Vec<(Instant, Duration, bool)>>>,
    routes: Option<JoinHandle<Vec<(Instant, usize)>>>,
    bird: Option<JoinHandle<Vec<BirdSample>>>,
    since_before: Option<String>,
}

/// One poll of BIRD: when, and what it said (nothing: birdc failed).
type BirdSample = (Instant, Option<BirdState>);

/// Bound on any monitor's life.
const MONITOR_MAX: Duration = Duration::from_secs(600);

impl Monitors {
    pub(super) fn start(scale: &Scale, status_every: Option<Duration>) -> Monitors {
        let stop = Arc::new(AtomicBool::new(false));
        let socket = scale.socket();
        let s = Arc::clone(&stop);
        let status = status_every.map(|every| {
            std::thread::spawn(move || {
                let mut samples = Vec::new();
                let start = Instant::now();
                while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                    let at = Instant::now();
                    let (took, view) = status(&socket);
                    samples.push((at, took, view.is_ok()));
                    std::thread::sleep(every);
                }
                samples
            })
        });
        let router = scale.topo.router.as_ref().expect("router").name.clone();
        let s = Arc::clone(&stop);
        let routes = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                let dump = Instant::now();
                samples.push((dump, router_routes(&router).len()));
                // Dumping 10 000 routes costs a CPU tens of milliseconds: at most a tenth of one.
                std::thread::sleep(Duration::from_millis(50).max(dump.elapsed() * 10));
            }
            samples
        });
        let bird_socket = scale.bird.socket.clone();
        let since_before = settled_since(&bird_socket);
        let s = Arc::clone(&stop);
        let bird = std::thread::spawn(move || {
            let mut samples = Vec::new();
            let start = Instant::now();
            while !s.load(Ordering::Relaxed) && start.elapsed() < MONITOR_MAX {
                samples.push((Instant::now(), bird_state(&bird_socket)));
                std::thread::sleep(Duration::from_millis(100));
            }
            samples
        });
        Monitors {
            started: Instant::now(),
            started_wall: SystemTime::now(),
            stop,
            status,
            routes: Some(routes),
            bird: Some(bird),
            since_before,
        }
    }

    /// Stops the monitors; what they saw, with the BGP messages the node sent meanwhile.
    pub fn finish(mut self, scale: &Scale) -> Observed {
        // The first BGP message after the window closes the last gap.
        std::thread::sleep(Duration::from_millis(u64::from(BGP_KEEPALIVE_SECS) * 1200));
        let ended = Instant::now();
        let ended_wall = SystemTime::now();
        self.stop.store(true, Ordering::Relaxed);
        let status = self.status.take().map(|t| t.join().expect("status monitor")).unwrap_or_default();
        let routes = self.routes.take().map(|t| t.join().expect("route monitor")).unwrap_or_default();
        let bird = self.bird.take().map(|t| t.join().expect("BIRD monitor")).unwrap_or_default();
        let since_after = bird_state(&scale.bird.socket).map(|s| s.since);
        let node: Ipv4Addr = node_v4(0).parse().expect("node address");
        let captured = scale.bgp.snapshot();
        let notifications = captured.iter().filter(|p| p.bgp_type == Some(3)).count();
        let peer_messages = captured
            .iter()
            .filter(|p| p.dst == node && p.payload > 0 && p.at > self.started_wall && p.at <= ended_wall)
            .count();
        // Gaps between the node's messages over the window: from the last one before it to the
        // first one after it (or the window's end, if none came).
        let times: Vec<SystemTime> = captured.iter().filter(|p| p.src == node && p.payload > 0).map(|p| p.at).collect();
        let before = times.iter().copied().filter(|t| *t <= self.started_wall).max();
        let inside: Vec<SystemTime> =
            times.iter().copied().filter(|t| *t > self.started_wall && *t <= ended_wall).collect();
        let mut series: Vec<SystemTime> = before.into_iter().chain(inside.iter().copied()).collect();
        series.sort();
        let mut gap = Duration::ZERO;
        let mut gap_at = Duration::ZERO;
        for w in series.windows(2) {
            let g = since(w[1], w[0]);
            if g > gap {
                (gap, gap_at) = (g, since(w[0], self.started_wall));
            }
        }
        if let Some(last) = series.last() {
            let tail = since(ended_wall, *last);
            if tail > gap {
                (gap, gap_at) = (tail, since(*last, self.started_wall));
            }
        }
        let expected = scale.spec().vips;
        let missing: Vec<(Duration, usize)> = routes
            .iter()
            .filter(|(_, n)| *n != expected)
            .map(|(at, n)| (at.saturating_duration_since(self.started), *n))
            .collect();
        let not_established: Vec<(Duration, String)> = bird
            .iter()
            .filter(|(_, s)| s.as_ref().is_none_or(|s| s.info != "Established"))
            .map(|(at, s)| (at.saturating_duration_since(self.started), format!("{s:?}")))
            .collect();
        Observed {
            window: ended - self.started,
            status_latencies: status.iter().map(|(_, d, _)| *d).collect(),
            status_failures: status.iter().filter(|(_, _, ok)| !ok).count(),
            route_polls: routes.len(),
            routes_short: missing,
            min_routes: routes.iter().map(|(_, n)| *n).min().unwrap_or(0),
            bird_polls: bird.len(),
            not_established,
            since_before: self.since_before.clone(),
            since_after,
            messages: inside.len(),
            peer_messages,
            keepalive_gap: gap,
            keepalive_gap_at: gap_at,
            notifications,
        }
    }
}

impl Drop for Monitors {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.status.take() {
            let _ = t.join();
        }
        if let Some(t) = self.routes.take() {
            let _ = t.join();
        }
        if let Some(t) = self.bird.take() {
            let _ = t.join();
        }
    }
}

/// What the monitors saw over a window.
#[derive(Debug, Clone)]
pub struct Observed {
    pub window: Duration,
    pub status_latencies: Vec<Duration>,
    pub status_failures: usize,
    pub route_polls: usize,
    /// Polls (time into the window, routes present) that found fewer routes than VIPs.
    pub routes_short: Vec<(Duration, usize)>,
    pub min_routes: usize,
    pub bird_polls: usize,
    /// Polls at which BIRD's session was not Established.
    pub not_established: Vec<(Duration, String)>,
    /// When BIRD last saw the session change state, before and after: a change means it went
    /// down (and perhaps up again) in between.
    pub since_before: Option<String>,
    pub since_after: Option<String>,
    /// BGP messages (TCP segments with payload) the node sent within the window, and the router.
    pub messages: usize,
    pub peer_messages: usize,
    /// The longest time without a BGP message from the node, and where in the window it began.
    pub keepalive_gap: Duration,
    pub keepalive_gap_at: Duration,
    /// NOTIFICATION messages on the session (either way) since the capture started.
    pub notifications: usize,
}

impl Observed {
    /// Whether BIRD kept the session Established through the window.
    pub fn established_throughout(&self) -> bool {
        self.bird_polls > 0
            && self.not_established.is_empty()
            && self.since_before.is_some()
            && self.since_before == self.since_after
            && self.notifications == 0
    }

    pub fn status_worst(&self) -> Duration {
        self.status_latencies.iter().copied().max().unwrap_or_default()
    }
}
