//! The L7 tier's worker threads: one current-thread tokio runtime per CPU, as nginx runs a
//! worker per CPU. Every worker has a listening socket of its own on every l7 VIP
//! (SO_REUSEPORT) and serves the connections it accepted to their end on its own thread, through backend connections of its own pool, so a
//! request, its backend connection and their wakeups stay on one thread: no work stealing,
//! no wakeups of another CPU, no pool shared between threads. (On the agent's multi-thread
//! runtime the proxy spent 1.7× nginx's CPU per request, much of it in the kernel.)

use std::cell::Cell;

use tokio::{runtime::Handle, sync::oneshot};

thread_local! {
    /// The index of the worker this thread is (0 off the workers).
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The index of the worker running the caller (0 elsewhere).
pub fn current() -> usize {
    INDEX.get()
}

/// Runtimes on threads of their own; they stop when this is dropped.
#[derive(Debug)]
pub struct Workers {
    handles: Vec<Handle>,
    /// Dropping a sender ends its worker's `block_on`, which drops its runtime.
    _stop: Vec<oneshot::Sender<()>>,
}

impl Workers {
    /// `count` workers (at least one), named `xlb-l7-<i>`.
    pub fn start(count: usize) -> std::io::Result<Self> {
        let (mut handles, mut stop) = (Vec::new(), Vec::new());
        for index in 0..count.max(1) {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            handles.push(runtime.handle().clone());
            let (tx, rx) = oneshot::channel::<()>();
            stop.push(tx);
            std::thread::Builder::new().name(format!("xlb-l7-{index}")).spawn(move || {
                INDEX.set(index);
                runtime.block_on(async {
                    let _ = rx.await;
                });
            })?;
        }
        Ok(Workers { handles, _stop: stop })
    }

    /// One worker per CPU the agent may run on.
    pub fn per_cpu() -> std::io::Result<Self> {
        Self::start(std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get))
    }

    pub fn handles(&self) -> &[Handle] {
        &self.handles
    }

    pub fn len(&self) -> usize {
        self.handles.len()
    }

    pub fn is_empty(&self) -> bool {
        self.handles.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_worker_knows_its_index_and_runs_on_its_own_thread() {
        let workers = Workers::start(3).unwrap();
        assert_eq!(workers.len(), 3);
        let seen: Vec<(usize, String)> = workers
            .handles()
            .iter()
            .map(|h| {
                let (tx, rx) = std::sync::mpsc::channel();
                h.spawn(async move {
                    let _ = tx.send((current(), std::thread::current().name().unwrap_or("").to_owned()));
                });
                rx.recv_timeout(std::time::Duration::from_secs(5)).unwrap()
            })
            .collect();
        assert_eq!(seen, vec![(0, "xlb-l7-0".into()), (1, "xlb-l7-1".into()), (2, "xlb-l7-2".into())]);
        assert_eq!(current(), 0, "off the workers");
        assert_eq!(Workers::start(0).unwrap().len(), 1, "at least one");
    }
}
