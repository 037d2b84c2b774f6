//! The admin socket: a unix stream socket, mode 0600, one JSON request and reply per line.

use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::Arc,
};

use serde::{Deserialize, Serialize};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};

use crate::{bgp::PeerStatus, plan::Plan, stats::Snapshot};

pub const DEFAULT_SOCKET: &str = "/run/xlb/admin.sock";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Counters and backend states.
    Stats,
    /// Configuration state (generation, last reload) with the VIP table.
    Status,
    /// Stop (or with `undo`, resume) sending new flows of `vip` to `backend`; its established
    /// flows finish where they are.
    Drain { vip: String, backend: String, undo: bool },
    /// Withdraw (or with `undo`, announce again) every VIP from BGP; forwarding goes on.
    DrainNode { undo: bool },
    /// What applying `config` (YAML text read from `path`) would change.
    Plan { path: String, config: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Stats(Snapshot),
    Status(Status),
    Done(String),
    Plan(Plan),
    Error(String),
}

/// What `xlb status` shows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub config_path: String,
    /// Configurations applied since the agent started (1 = the one it started with).
    pub config_generation: u64,
    pub last_reload: Option<ReloadOutcome>,
    /// `xlb drain node` in effect.
    pub node_drained: bool,
    /// VIP addresses announced over BGP.
    pub announced: Vec<String>,
    pub peers: Vec<PeerStatus>,
    /// VIPs a pass in progress has still to write.
    #[serde(default)]
    pub pending_vips: usize,
    /// Why the last pass stopped short (it is retried).
    #[serde(default)]
    pub reconcile_error: Option<String>,
    pub snapshot: Snapshot,
}

/// The result of the latest reload attempt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReloadOutcome {
    pub ok: bool,
    /// What changed, or why the file was rejected (the old configuration keeps serving).
    pub message: String,
    /// Seconds since the Unix epoch.
    pub at: u64,
}

impl Status {
    pub fn render(&self) -> String {
        let mut out = format!("config {} (generation {})\n", self.config_path, self.config_generation);
        match &self.last_reload {
            None => out.push_str("last reload: none since start\n"),
            Some(r) if r.ok => out.push_str(&format!("last reload: ok at {} — {}\n", r.at, r.message)),
            Some(r) => out.push_str(&format!(
                "last reload: REJECTED at {} — the previous configuration keeps serving\n  {}\n",
                r.at, r.message
            )),
        }
        if self.pending_vips > 0 {
            out.push_str(&format!("applying the configuration: {} VIPs to go\n", self.pending_vips));
        }
        if let Some(e) = &self.reconcile_error {
            out.push_str(&format!("map writes FAILING (retried): {e}\n"));
        }
        if self.node_drained {
            out.push_str("node DRAINED: every route withdrawn (`xlb drain node --undo` to announce again)\n");
        }
        if !self.peers.is_empty() {
            out.push_str(&format!(
                "announced: {}\n",
                if self.announced.is_empty() { "nothing".to_owned() } else { self.announced.join(", ") }
            ));
            out.push_str(&format!(
                "{:<28} {:>10} {:<13} {:>9} {:>6} {:>7}  {}\n",
                "BGP peer", "AS", "state", "prefixes", "flaps", "bfd", "last error"
            ));
            for p in &self.peers {
                out.push_str(&format!(
                    "{:<28} {:>10} {:<13} {:>9} {:>6} {:>7}  {}\n",
                    p.address,
                    p.remote_as,
                    p.state,
                    p.prefixes_sent,
                    p.flaps,
                    p.bfd.as_deref().unwrap_or("-"),
                    p.last_error.as_deref().unwrap_or("")
                ));
            }
        }
        out.push('\n');
        out.push_str(&self.snapshot.render_vips());
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AdminError {
    #[error("admin socket {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error(
        "admin socket {path}: the agent sent a reply this client cannot read ({source}); are agent and CLI the same version?"
    )]
    Decode { path: PathBuf, source: serde_json::Error },
    #[error("the agent at {path} closed the connection without replying")]
    NoReply { path: PathBuf },
    #[error("the agent says: {0}")]
    Agent(String),
}

/// A reply the agent works out asynchronously (reads on a blocking thread, changes by the
/// control thread).
pub type ReplyFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Reply> + Send>>;

/// Answers requests with `handle` until the task is dropped.
pub async fn serve<F>(path: &Path, handle: Arc<F>) -> Result<tokio::task::JoinHandle<()>, AdminError>
where
    F: Fn(Request) -> ReplyFuture + Send + Sync + 'static,
{
    let io = |source| AdminError::Io { path: path.to_owned(), source };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io)?;
    }
    // A socket file left by an agent that did not exit cleanly would make bind fail.
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let listener = UnixListener::bind(path).map_err(io)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io)?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handle = Arc::clone(&handle);
            tokio::spawn(async move {
                if let Err(e) = answer(stream, &*handle).await {
                    tracing::debug!(error = %e, "admin connection ended");
                }
            });
        }
    }))
}

async fn answer<F: Fn(Request) -> ReplyFuture>(stream: UnixStream, handle: &F) -> std::io::Result<()> {
    let (read, mut write) = stream.into_split();
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        let reply = match serde_json::from_str::<Request>(&line) {
            Ok(request) => handle(request).await,
            Err(e) => Reply::Error(format!("bad request {line:?}: {e}")),
        };
        let mut text =
            serde_json::to_string(&reply).unwrap_or_else(|e| format!("{{\"error\":\"encoding reply: {e}\"}}"));
        text.push('\n');
        write.write_all(text.as_bytes()).await?;
    }
    Ok(())
}

/// Sends one request to the agent listening at `path` and returns its reply.
pub async fn request(path: &Path, request: Request) -> Result<Reply, AdminError> {
    let io = |source| AdminError::Io { path: path.to_owned(), source };
    let stream = UnixStream::connect(path).await.map_err(io)?;
    let (read, mut write) = stream.into_split();
    let mut text =
        serde_json::to_string(&request).map_err(|source| AdminError::Decode { path: path.to_owned(), source })?;
    text.push('\n');
    write.write_all(text.as_bytes()).await.map_err(io)?;
    let line = BufReader::new(read)
        .lines()
        .next_line()
        .await
        .map_err(io)?
        .ok_or_else(|| AdminError::NoReply { path: path.to_owned() })?;
    match serde_json::from_str(&line).map_err(|source| AdminError::Decode { path: path.to_owned(), source })? {
        Reply::Error(message) => Err(AdminError::Agent(message)),
        reply => Ok(reply),
    }
}
