//! Drains the XDP program's drop log (`bpf_log`) into `tracing`, target `xlb::bpf`.
//!
//! The records wait in the program's 128 KiB ring buffer (full, the program drops new ones),
//! so memory is bounded and nothing in the agent waits for the log; the task wakes only when
//! the buffer has records, and with logging off it never does.

use anyhow::Context as _;
use tokio::io::unix::AsyncFd;

use crate::apply::dataplane::drop_log::DropLogger;

pub fn drain(logger: DropLogger) -> anyhow::Result<()> {
    // SAFETY: the AsyncFd owns the logger, which owns the ring buffer's fd: the fd stays open
    // as long as it is registered.
    let mut fd = unsafe { AsyncFd::register_with_interest(logger, tokio::io::Interest::READABLE) }
        .context("watching the drop log's ring buffer")?;
    tokio::spawn(async move {
        loop {
            let mut guard = match fd.readable_mut().await {
                Ok(guard) => guard,
                Err(e) => {
                    tracing::warn!(error = %e, "the drop log stopped; drops are still counted");
                    return;
                }
            };
            guard.get_inner_mut().flush();
            guard.clear_ready();
        }
    });
    Ok(())
}
