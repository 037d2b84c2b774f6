//! The YAML reader's resource budgets, derived from the per-node limits (`MAX_VIPS` VIPs,
//! `MAX_BACKENDS` backends), and its budget errors in xlb's words.
//!
//! serde-saphyr's defaults (250 000 nodes) refuse a valid edge configuration; no budget at all
//! would let a few lines of aliases expand to billions of nodes. So every budget is what a file
//! at the limits, with every field written out, could need — with room to spare — and no more.
//! Aliases are charged as the nodes they expand to, so the node budget bounds an alias bomb.

use lb_common::{MAX_BACKENDS, MAX_VIPS};
use serde_saphyr::{Budget, Error, Options, budget::BudgetBreach};

/// YAML nodes (mappings, lists, scalars) of one VIP besides its backends, every field written:
/// its mapping and 10 scalar fields as key and value (21), a full `health_check` (key, mapping,
/// 12 fields: 26) and the `backends` key and list (2): 49, rounded up.
const NODES_PER_VIP: usize = 64;
/// One backend, every field written: its mapping and 5 scalar fields as key and value (11) and a
/// `health_check` of its own (26): 37, rounded up.
const NODES_PER_BACKEND: usize = 40;
/// The rest: `node`, `agent`, `nat_pools`, `bgp`, and the routes of l7 VIPs (whose backends are
/// proxied by the agent and take no backend slot).
const NODES_OTHER: usize = 1 << 20;
/// Most nodes of a file: 5 688 576.
pub(super) const MAX_NODES: usize =
    MAX_VIPS as usize * NODES_PER_VIP + MAX_BACKENDS as usize * NODES_PER_BACKEND + NODES_OTHER;
/// A node is one parser event and a mapping or list one more at its end, so the node budget
/// binds first; the stream and document events are the 16.
const MAX_EVENTS: usize = 2 * MAX_NODES + 16;
/// Text of keys and values: 32 bytes a node on average (an IPv6 address is at most 39, most keys
/// and values are far shorter).
const MAX_SCALAR_BYTES: usize = 32 * MAX_NODES;
/// The file itself, with indentation and comments: 64 bytes a node on average (~364 MB). Checked
/// before parsing, so a huge file is refused without being read whole.
pub(super) const MAX_FILE_BYTES: usize = 64 * MAX_NODES;
/// The schema nests 9 deep at most (root, vips, a VIP, l7, routes, a route, backends, a backend,
/// its health_check); this bounds the parser's recursion.
const MAX_DEPTH: usize = 16;
/// Copies of anchored events kept for aliases to replay (each is copied once per anchor it sits
/// in): serde-saphyr's default, ~100 MB. Anchors are for small shared templates, such as a
/// `health_check`; this bounds what they hold in memory.
const MAX_ANCHORED_EVENTS: usize = 1_000_000;
/// How deep aliases may replay aliases (an anchored template that uses another): the default.
const MAX_ALIAS_NESTING: usize = 64;

/// The options the configuration is read with.
pub(super) fn options() -> Options {
    let mut budget = Budget::default();
    budget.max_nodes = MAX_NODES;
    budget.max_events = MAX_EVENTS;
    budget.max_total_scalar_bytes = MAX_SCALAR_BYTES;
    budget.max_depth = MAX_DEPTH;
    // Each alias, anchor and merge key is at least one node, so the node budget binds first.
    budget.max_aliases = MAX_NODES;
    budget.max_anchors = MAX_NODES;
    budget.max_merge_keys = MAX_NODES;
    // One `&check` template used by all 10 000 VIPs is fine: what aliases expand to is charged
    // to the node budget, not judged by a ratio.
    budget.enforce_alias_anchor_ratio = false;
    budget.max_recorded_anchor_events = MAX_ANCHORED_EVENTS;
    let mut options = Options::default();
    options.budget = Some(budget);
    // Replayed events are charged to the event budget as well; this never binds first.
    options.alias_limits.max_total_replayed_events = MAX_EVENTS;
    options.alias_limits.max_replay_stack_depth = MAX_ALIAS_NESTING;
    options
}

/// What the limits allow, for the end of every budget message.
fn limits() -> String {
    format!("xlb takes at most {MAX_VIPS} VIPs and {MAX_BACKENDS} backends per node")
}

/// The refusal of a file of `bytes` bytes, larger than any configuration within the limits.
pub(super) fn too_large(bytes: usize) -> String {
    format!(
        "the file is larger than {MAX_FILE_BYTES} bytes ({bytes}); {}, which take far less: split the VIPs over more xlb nodes",
        limits()
    )
}

/// The error inside snippet and alias wrappers.
pub(super) fn original(mut e: &Error) -> &Error {
    loop {
        match e {
            Error::WithSnippet { error, .. } | Error::AliasError { error, .. } => e = error,
            other => return other,
        }
    }
}

/// `e` in xlb's words if a budget stopped the reader; `None` for any other error.
pub(super) fn breach_message(e: &Error) -> Option<String> {
    let expanded = "aliases counted as what they expand to";
    let message = match original(e) {
        Error::Budget { breach, .. } => match breach {
            BudgetBreach::Nodes { .. } | BudgetBreach::Events { .. } => format!(
                "the file has more than {MAX_NODES} YAML nodes (keys, values, lists; {expanded}); {}, which need far fewer: split the VIPs over more xlb nodes",
                limits()
            ),
            BudgetBreach::ScalarBytes { .. } => format!(
                "the keys and values of the file hold more than {MAX_SCALAR_BYTES} bytes of text ({expanded}); {}, which need far less: shorten the values or split the VIPs over more xlb nodes",
                limits()
            ),
            BudgetBreach::Depth { .. } => format!(
                "the file nests more than {MAX_DEPTH} levels deep; xlb's configuration nests at most 9 (vips, a VIP, l7, routes, a route, backends, a backend, its health_check): check the indentation"
            ),
            BudgetBreach::Aliases { .. } | BudgetBreach::Anchors { .. } | BudgetBreach::MergeKeys { .. } => {
                format!(
                    "the file has more than {MAX_NODES} aliases (*name), anchors (&name) or merge keys (<<); {}, which need far fewer",
                    limits()
                )
            }
            BudgetBreach::RecordedAnchorEvents { .. } | BudgetBreach::RecordedAnchorBytes { .. } => format!(
                "the anchors (&name) of the file hold more than {MAX_ANCHORED_EVENTS} YAML events to copy (one copy per anchor a node sits in); anchor a few small templates, such as a health_check, not whole lists"
            ),
            BudgetBreach::Documents { .. } => {
                "the file holds many YAML documents (---); xlb reads one configuration document".to_owned()
            }
            _ => format!("the file is beyond what xlb reads; {}", limits()),
        },
        Error::AliasReplayLimitExceeded { .. } => format!(
            "the aliases (*name) of the file expand to more than {MAX_EVENTS} YAML events; {}, which need far fewer",
            limits()
        ),
        Error::AliasReplayStackDepthExceeded { .. } => format!(
            "aliases (*name) replay aliases more than {MAX_ALIAS_NESTING} deep (a template that uses a template …); use fewer levels"
        ),
        // Unlimited per anchor (the default), so not met; worded like the other budgets if it were.
        Error::AliasExpansionLimitExceeded { .. } => format!("the file is beyond what xlb reads; {}", limits()),
        _ => return None,
    };
    Some(message)
}
