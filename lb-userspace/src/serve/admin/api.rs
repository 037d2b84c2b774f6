//! The admin socket's wire types: one JSON request per line, one reply per line.

use std::{future::Future, pin::Pin};

use serde::{Deserialize, Serialize};

use crate::{
    apply::explain::{Explanation, Probe},
    apply::plan::Plan,
    serve::conns::ConnsReport,
    serve::stats::Snapshot,
    serve::summary::NodeState,
    serve::summary::Summary,
};

/// What the agent's request handler returns: a reply may wait for the agent's state.
pub type ReplyFuture = Pin<Box<dyn Future<Output = Reply> + Send>>;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Request {
    /// Counters and backend states.
    Stats,
    /// Configuration state (generation, last reload) with the whole VIP table and its counters.
    Status,
    /// Configuration state with counts and the VIPs not fully serving: what `xlb status` shows,
    /// as small at 10 000 VIPs as at ten.
    Summary,
    /// Stop (or with `undo`, resume) sending new flows of `vip` to `backend`; its established
    /// flows finish where they are.
    Drain { vip: String, backend: String, undo: bool },
    /// Give `backend` of `vip` the runtime weight `weight` in place of the config file's (`None`:
    /// back to the file's). Weight 0 takes no new flows, like a drain.
    Weight { vip: String, backend: String, weight: Option<u32> },
    /// Withdraw (or with `undo`, announce again) every VIP from BGP; forwarding goes on.
    DrainNode { undo: bool },
    /// What applying `config` (YAML text read from `path`) would change.
    Plan { path: String, config: String },
    /// `xlb detach` is about to detach XDP from `iface`: withdraw what depends on it and do not
    /// re-attach (until the agent restarts).
    Detach { iface: String },
    /// The live flows of `vip` (a name): the totals and the `limit` most recently active.
    Conns { vip: String, limit: u32 },
    /// Run one packet through the live program with the live maps (see `apply::explain`).
    Explain(Probe),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Reply {
    Stats(Snapshot),
    Status(Status),
    Summary(Summary),
    Done(String),
    Plan(Plan),
    Conns(ConnsReport),
    Explain(Explanation),
    Error(String),
}

/// What `xlb status --vips` shows: the agent's state and every VIP with its counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    #[serde(flatten)]
    pub node: NodeState,
    /// VIP addresses announced over BGP.
    pub announced: Vec<String>,
    pub snapshot: Snapshot,
}

impl Status {
    pub fn render(&self) -> String {
        let announced = if self.announced.is_empty() { "nothing".to_owned() } else { self.announced.join(", ") };
        let mut out = self.node.render(&announced);
        out.push('\n');
        out.push_str(&self.snapshot.render_vips());
        out
    }
}
