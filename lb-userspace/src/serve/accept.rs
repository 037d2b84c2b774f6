//! What the agent's listeners (admin socket, `/metrics`) do when `accept` fails.
//!
//! Out of file descriptors or memory (EMFILE, ENFILE, ENOBUFS, ENOMEM) the pending connection
//! stays queued, so retrying at once fails again at once: a loop that only `continue`s spins a
//! core until something else frees a descriptor. Those errors pause the loop instead, and are
//! logged once per burst rather than a hundred times a second.

use std::{
    io,
    time::{Duration, Instant},
};

/// How long the accept loop waits after an error that retrying at once would repeat.
pub(crate) const PAUSE: Duration = Duration::from_millis(100);

/// At most one warning per listener this often while errors go on.
const WARN_EVERY: Duration = Duration::from_secs(10);

/// How long to wait before accepting again after `error`: nothing for errors that belong to the
/// one connection that failed (Linux hands a connection's pending network error to `accept`),
/// [`PAUSE`] for anything else, exhaustion first of all, so an unknown error cannot spin either.
pub(crate) fn pause_after(error: &io::Error) -> Duration {
    const PER_CONNECTION: [i32; 11] = [
        libc::ECONNABORTED,
        libc::EINTR,
        libc::EPROTO,
        libc::EPERM,
        libc::ENOPROTOOPT,
        libc::EHOSTDOWN,
        libc::ENONET,
        libc::EHOSTUNREACH,
        libc::EOPNOTSUPP,
        libc::ENETUNREACH,
        libc::ENETDOWN,
    ];
    match error.raw_os_error() {
        Some(code) if PER_CONNECTION.contains(&code) => Duration::ZERO,
        _ => PAUSE,
    }
}

/// The accept errors of one listener, for rate-limited warnings.
#[derive(Debug, Default)]
pub(crate) struct AcceptErrors {
    last_warning: Option<Instant>,
    /// Errors since the last warning.
    unreported: u64,
}

impl AcceptErrors {
    /// Counts an error at `now`; `Some(n)` when it is time to warn, `n` errors since the last
    /// warning (this one included).
    pub(crate) fn record(&mut self, now: Instant) -> Option<u64> {
        self.unreported += 1;
        let due = self.last_warning.is_none_or(|at| now.duration_since(at) >= WARN_EVERY);
        if !due {
            return None;
        }
        self.last_warning = Some(now);
        Some(std::mem::take(&mut self.unreported))
    }

    /// Logs `error` of the `listener` (rate-limited) and waits as long as [`pause_after`] says.
    pub(crate) async fn after(&mut self, listener: &str, error: &io::Error) {
        let pause = pause_after(error);
        if pause.is_zero() {
            tracing::debug!(listener, %error, "a connection failed before it was accepted");
            return;
        }
        if let Some(errors) = self.record(Instant::now()) {
            tracing::warn!(
                listener,
                %error,
                errors,
                "accepting a connection failed (out of file descriptors or memory?); retrying every {} ms",
                PAUSE.as_millis()
            );
        }
        tokio::time::sleep(pause).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exhaustion_pauses_and_a_failed_connection_does_not() {
        for code in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert_eq!(pause_after(&io::Error::from_raw_os_error(code)), PAUSE, "errno {code}");
        }
        assert_eq!(pause_after(&io::Error::from_raw_os_error(libc::ECONNABORTED)), Duration::ZERO);
        assert_eq!(pause_after(&io::Error::other("no errno")), PAUSE, "unknown errors must not spin either");
    }

    #[test]
    fn warns_once_per_burst_then_every_ten_seconds_with_the_count() {
        let start = Instant::now();
        let mut errors = AcceptErrors::default();
        assert_eq!(errors.record(start), Some(1), "the first error of a burst is reported");
        for i in 1..50 {
            assert_eq!(errors.record(start + PAUSE * i), None);
        }
        assert_eq!(errors.record(start + WARN_EVERY), Some(50), "then the count since");
        assert_eq!(errors.record(start + WARN_EVERY + PAUSE), None);
    }
}
