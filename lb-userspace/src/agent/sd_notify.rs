//! systemd's readiness protocol (`Type=notify`): datagrams of `KEY=value` lines to the socket
//! `$NOTIFY_SOCKET` names — a path, or an abstract socket when it starts with `@`. Outside
//! systemd (no `$NOTIFY_SOCKET`) every call does nothing.
//!
//! The watchdog (`WatchdogSec=`) is pinged only while the agent shows it is alive: the control
//! thread counts a heartbeat at every step of a pass and every tick while idle, and a ping goes
//! out only if that count moved since the last one. A wedged control thread (or runtime: the
//! pinger runs there) stops the pings, and systemd restarts the agent; the data plane keeps
//! forwarding meanwhile.

use std::{
    os::unix::net::{SocketAddr, UnixDatagram},
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

/// Where notifications go; does nothing when not started by systemd.
#[derive(Debug, Clone, Default)]
pub struct Notifier {
    addr: Option<SocketAddr>,
}

impl Notifier {
    /// The socket `$NOTIFY_SOCKET` names, if any.
    pub fn from_env() -> Self {
        let Some(name) = std::env::var_os("NOTIFY_SOCKET") else { return Self::default() };
        match address(name.as_encoded_bytes()) {
            Ok(addr) => Notifier { addr: Some(addr) },
            Err(e) => {
                tracing::warn!(socket = %name.to_string_lossy(), error = %e, "NOTIFY_SOCKET is unusable; systemd will not hear from the agent");
                Self::default()
            }
        }
    }

    /// Whether a service manager listens.
    pub fn enabled(&self) -> bool {
        self.addr.is_some()
    }

    /// Sends `state` (newline-separated `KEY=value` lines). Best effort: a lost notification is
    /// logged, never fatal.
    pub fn notify(&self, state: &str) {
        let Some(addr) = &self.addr else { return };
        let sent = UnixDatagram::unbound().and_then(|socket| socket.send_to_addr(state.as_bytes(), addr));
        if let Err(e) = sent {
            tracing::warn!(error = %e, state, "could not notify systemd");
        }
    }

    /// A `STATUS=` line (shown by `systemctl status`).
    pub fn status(&self, status: &str) {
        self.notify(&format!("STATUS={}", one_line(status)));
    }
}

/// A status on one line: a newline would start another `KEY=value` assignment.
fn one_line(status: &str) -> String {
    status.replace('\n', " ")
}

/// The socket address of a `$NOTIFY_SOCKET` value.
fn address(name: &[u8]) -> std::io::Result<SocketAddr> {
    match name.split_first() {
        Some((b'@', abstract_name)) => {
            use std::os::linux::net::SocketAddrExt as _;
            SocketAddr::from_abstract_name(abstract_name)
        }
        Some((b'/', _)) => {
            SocketAddr::from_pathname(<std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(name))
        }
        _ => Err(std::io::Error::other("neither an absolute path nor an abstract socket (@name)")),
    }
}

/// How often to ping the watchdog: half of `$WATCHDOG_USEC`, when it is set for this process
/// (`$WATCHDOG_PID` absent or ours).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if let Ok(pid) = std::env::var("WATCHDOG_PID")
        && pid.parse::<u32>().ok()? != std::process::id()
    {
        return None;
    }
    (usec > 0).then(|| Duration::from_micros(usec) / 2)
}

/// How often the idle control thread counts a heartbeat for a watchdog pinged every `every`:
/// several times per ping, so one late tick never costs one.
pub fn heartbeat_tick(every: Duration) -> Duration {
    (every / 4).max(Duration::from_millis(10))
}

/// Pings the watchdog every `every` while `heartbeat` moves; runs until the task is dropped.
pub async fn watchdog(notifier: Notifier, heartbeat: Arc<AtomicU64>, every: Duration) {
    // The first look one period from now: the heartbeat has had time to move.
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut last = heartbeat.load(Ordering::Relaxed);
    let mut stalled = false;
    loop {
        interval.tick().await;
        let now = heartbeat.load(Ordering::Relaxed);
        if now != last {
            last = now;
            if stalled {
                tracing::info!("the control thread is making progress again; watchdog pings resume");
                stalled = false;
            }
            notifier.notify("WATCHDOG=1");
        } else if !stalled {
            tracing::error!(
                ?every,
                "the control thread showed no sign of life since the last watchdog ping; not pinging (systemd restarts the agent if it stays so)"
            );
            stalled = true;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notifications_reach_a_path_socket_and_an_abstract_one() {
        let path = std::env::temp_dir().join(format!("xlb-notify-{}.sock", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let listener = UnixDatagram::bind(&path).unwrap();
        let notifier = Notifier { addr: Some(address(path.as_os_str().as_encoded_bytes()).unwrap()) };
        notifier.notify("READY=1");
        notifier.status("serving\n3 VIPs");
        let mut buf = [0u8; 256];
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"READY=1");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"STATUS=serving 3 VIPs");
        std::fs::remove_file(&path).unwrap();

        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("xlb-notify-test-{}", std::process::id());
        let listener = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap()).unwrap();
        let notifier = Notifier { addr: Some(address(format!("@{name}").as_bytes()).unwrap()) };
        notifier.notify("WATCHDOG=1");
        let n = listener.recv(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"WATCHDOG=1");
    }

    #[test]
    fn relative_names_are_refused_and_no_socket_is_a_no_op() {
        assert!(address(b"run/notify").is_err());
        assert!(address(b"").is_err());
        let none = Notifier::default();
        assert!(!none.enabled());
        none.notify("READY=1");
    }

    #[tokio::test(start_paused = true)]
    async fn the_watchdog_is_pinged_only_while_the_heartbeat_moves() {
        let name = format!("xlb-watchdog-test-{}", std::process::id());
        use std::os::linux::net::SocketAddrExt as _;
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let listener = UnixDatagram::bind_addr(&addr).unwrap();
        listener.set_nonblocking(true).unwrap();
        let heartbeat = Arc::new(AtomicU64::new(0));
        let every = Duration::from_secs(1);
        let task = tokio::spawn(watchdog(Notifier { addr: Some(addr) }, Arc::clone(&heartbeat), every));
        let mut pings = 0;
        let mut count = |listener: &UnixDatagram| {
            let mut buf = [0u8; 64];
            while let Ok(n) = listener.recv(&mut buf) {
                assert_eq!(&buf[..n], b"WATCHDOG=1");
                pings += 1;
            }
            pings
        };
        for _ in 0..5 {
            heartbeat.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(every).await;
        }
        let alive = count(&listener);
        assert!((4..=5).contains(&alive), "{alive} pings while alive");
        // Wedged: no more heartbeats, no more pings.
        tokio::time::sleep(every * 5).await;
        assert!(count(&listener) <= alive + 1, "pings went on without a heartbeat");
        let wedged = count(&listener);
        heartbeat.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(every * 2).await;
        assert_eq!(count(&listener), wedged + 1, "pings resume with the heartbeat");
        task.abort();
    }
}
