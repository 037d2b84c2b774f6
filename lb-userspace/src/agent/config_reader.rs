//! Reading the config file off the control thread. Parsing 10 000 VIPs takes about a second;
//! meanwhile the control thread keeps applying health and neighbour news against the running
//! configuration, so a backend that dies during a reload is out as fast as without one.

use std::{
    path::PathBuf,
    time::{Duration, Instant},
};

use tokio::sync::mpsc;

use crate::config::{self, Config, ConfigError, LastRead, VipItemCache};

/// One finished read of the file.
#[derive(Debug)]
pub struct ConfigRead {
    pub result: Result<Config, ConfigError>,
    /// When the reload was asked for.
    pub asked: Instant,
    /// How long reading and checking took.
    pub took: Duration,
    pub how: LastRead,
    cache: VipItemCache,
}

/// At most one read at a time; a reload asked for during a read runs once after it.
#[derive(Debug)]
pub struct ConfigReader {
    path: PathBuf,
    /// The last file's VIPs; away with the read while one runs.
    cache: Option<VipItemCache>,
    again: Option<Instant>,
    done_tx: mpsc::UnboundedSender<ConfigRead>,
    done_rx: mpsc::UnboundedReceiver<ConfigRead>,
}

impl ConfigReader {
    /// A reader of `path` whose first read was `cache`'s.
    pub fn new(path: PathBuf, cache: VipItemCache) -> Self {
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        Self { path, cache: Some(cache), again: None, done_tx, done_rx }
    }

    /// Starts a read, or queues one if a read is running (several queue as one).
    pub fn request(&mut self, asked: Instant) {
        match self.cache.take() {
            Some(cache) => self.start(cache, asked),
            None => {
                self.again.get_or_insert(asked);
            }
        }
    }

    /// The next finished read; pending forever while none runs.
    pub async fn finished(&mut self) -> ConfigRead {
        match self.done_rx.recv().await {
            Some(read) => read,
            // Never: `self` holds a sender.
            None => std::future::pending().await,
        }
    }

    /// Takes back what a finished read borrowed, and starts the queued read if there is one.
    pub fn returned(&mut self, read: &mut ConfigRead) {
        let cache = std::mem::take(&mut read.cache);
        match self.again.take() {
            Some(asked) => self.start(cache, asked),
            None => self.cache = Some(cache),
        }
    }

    fn start(&mut self, cache: VipItemCache, asked: Instant) {
        let (path, done) = (self.path.clone(), self.done_tx.clone());
        let read = move |mut cache: VipItemCache| {
            let started = Instant::now();
            let result = config::load_cached(&path, &mut cache);
            let how = cache.last_read();
            let _ = done.send(ConfigRead { result, asked, took: started.elapsed(), how, cache });
        };
        // The cache goes with the thread; if no thread can be made, the file is read here
        // instead, without it (slower for the control thread, but the reload happens).
        let spawned = std::thread::Builder::new().name("xlb-config".into()).spawn({
            let read = read.clone();
            move || read(cache)
        });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "cannot start a thread to read the config; reading it on the control thread");
            read(VipItemCache::default());
        }
    }
}
