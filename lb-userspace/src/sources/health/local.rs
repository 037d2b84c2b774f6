//! Health-check failures that are this host's, not the backend's.
//!
//! A probe that cannot even start — no descriptor for its socket (EMFILE, ENFILE), no buffer
//! or memory (ENOBUFS, ENOMEM), no local address or port (EADDRNOTAVAIL), no route of ours
//! (ENETUNREACH, EHOSTUNREACH, ENETDOWN returned by `connect` itself) — says nothing about the
//! backend. Counting it as a failure would take healthy backends down, and a VIP with them,
//! exactly when the agent is under pressure. Such a result counts neither toward rise nor fall:
//! the backend keeps its state, the error is counted (`xlb_health_check_local_errors_total`)
//! and logged at most once per `WARN_EVERY`.
//!
//! Which errors are local depends on where they arise: `connect` on a non-blocking socket
//! returns at once what our own stack decides (route lookup, address selection); what the
//! network answers (refused, reset, an ICMP unreachable from a router, a failed ARP for an
//! on-link backend) arrives later, on the socket, and is the backend's.

use std::{
    io,
    net::SocketAddr,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::TcpStream;

/// At most one warning about local errors this often.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// Whether `error`, returned by a socket call that had not reached the network yet, is this
/// host's.
pub fn is_local(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(
            libc::EMFILE
                | libc::ENFILE
                | libc::ENOBUFS
                | libc::ENOMEM
                | libc::EADDRNOTAVAIL
                | libc::ENETUNREACH
                | libc::EHOSTUNREACH
                | libc::ENETDOWN
        )
    )
}

/// Why a connect failed, and whose fault it is.
#[derive(Debug)]
pub struct ConnectError {
    pub local: bool,
    pub error: io::Error,
}

/// Connects to `target` (not bounded in time: the caller's deadline applies), telling this
/// host's errors from the backend's.
pub async fn connect(target: SocketAddr) -> Result<TcpStream, ConnectError> {
    let local = |error: io::Error| ConnectError { local: is_local(&error), error };
    // Any failure to make the socket is ours, whatever the errno.
    let ours = |error: io::Error| ConnectError { local: true, error };
    let socket = Socket::new(Domain::for_address(target), Type::STREAM, Some(Protocol::TCP)).map_err(ours)?;
    socket.set_nonblocking(true).map_err(ours)?;
    match socket.connect(&target.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(local(e)),
    }
    let stream = TcpStream::from_std(std::net::TcpStream::from(socket)).map_err(ours)?;
    let backend = |error: io::Error| ConnectError { local: false, error };
    stream.writable().await.map_err(backend)?;
    if let Some(e) = stream.take_error().map_err(backend)? {
        return Err(backend(e));
    }
    Ok(stream)
}

/// Probe failures counted since the agent started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorCounts {
    /// The backend's: they count toward `fall`.
    pub backend: u64,
    /// This host's: they count toward nothing.
    pub local: u64,
}

/// The checker's failure counters, shared by every probe task.
#[derive(Debug, Default)]
pub struct HealthErrors {
    backend: AtomicU64,
    local: AtomicU64,
    /// When the last warning went out, and local errors since.
    warned: Mutex<(Option<Instant>, u64)>,
}

impl HealthErrors {
    pub fn snapshot(&self) -> ErrorCounts {
        ErrorCounts { backend: self.backend.load(Ordering::Relaxed), local: self.local.load(Ordering::Relaxed) }
    }

    pub fn backend_failure(&self) {
        self.backend.fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a local error of a probe of `backend` (of `vip`) and warns if none was this
    /// recent.
    pub fn local_error(&self, vip: &str, backend: &str, error: &str) {
        self.local.fetch_add(1, Ordering::Relaxed);
        if let Some(errors) = self.due(Instant::now()) {
            tracing::warn!(
                vip,
                backend,
                error,
                errors,
                "a health check could not run (an error of this host, not the backend's): backend states stay as they were"
            );
        }
    }

    /// `Some(local errors since the last warning)` when a warning is due at `now`.
    fn due(&self, now: Instant) -> Option<u64> {
        let mut warned = self.warned.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        warned.1 += 1;
        if warned.0.is_some_and(|at| now.duration_since(at) < WARN_EVERY) {
            return None;
        }
        warned.0 = Some(now);
        Some(std::mem::take(&mut warned.1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_and_our_routes_are_local_the_backends_answers_are_not() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM, libc::EADDRNOTAVAIL, libc::ENETUNREACH] {
            assert!(is_local(&io::Error::from_raw_os_error(code)), "errno {code}");
        }
        for code in [libc::ECONNREFUSED, libc::ECONNRESET, libc::ETIMEDOUT, libc::EPIPE] {
            assert!(!is_local(&io::Error::from_raw_os_error(code)), "errno {code}");
        }
        assert!(!is_local(&io::Error::other("no errno")));
    }

    #[test]
    fn warnings_are_rate_limited_with_the_count() {
        let errors = HealthErrors::default();
        let start = Instant::now();
        assert_eq!(errors.due(start), Some(1));
        for i in 1..20 {
            assert_eq!(errors.due(start + Duration::from_millis(100 * i)), None);
        }
        assert_eq!(errors.due(start + WARN_EVERY), Some(20));
    }

    #[tokio::test]
    async fn a_refused_connect_is_the_backends_and_no_route_is_ours() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let refused = connect(closed).await.unwrap_err();
        assert!(!refused.local, "{:?}", refused.error);
        assert_eq!(refused.error.kind(), io::ErrorKind::ConnectionRefused);
        // The IPv6 discard prefix through an unspecified source: no route on a test host, said
        // by our own stack at once. A host that does route it says nothing here.
        if let Err(e) = connect("[100::1]:80".parse().unwrap()).await
            && matches!(e.error.raw_os_error(), Some(libc::ENETUNREACH | libc::EADDRNOTAVAIL))
        {
            assert!(e.local, "{:?}", e.error);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        assert!(connect(listener.local_addr().unwrap()).await.is_ok());
    }
}
