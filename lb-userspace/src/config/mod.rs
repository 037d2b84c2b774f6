//! Stage 1, configuration. Takes in the YAML file's text; gives out a validated `Config`, or an
//! error in xlb's words that names the file, the line and column, the field, and the fix.

mod check;
#[cfg(test)]
mod corpus_tests;
#[cfg(test)]
mod edge_tests;
mod error;
mod incremental;
mod keys;
// The `l7:` section of `mode: l7` VIPs: its types and checks.
pub mod l7;
pub mod limits;
pub mod memory;
mod model;
mod parse;
// Positions of keys and values, read again to place an error.
mod positions;
mod raw;
// The reader's errors in xlb's words.
#[cfg(test)]
mod check_tests;
mod read_errors;
#[cfg(test)]
mod sources_tests;
#[cfg(test)]
mod syn_cookies_tests;
#[cfg(test)]
mod tests;
#[cfg(test)]
mod timing_tests;
mod values;
// serde-saphyr's budgets, derived from the per-node limits.
mod yaml_budget;
// Tabs, misindented lines, open quotes and brackets, found where they are.
mod yaml_layout;

use check::Checker;
/// The highest backend `weight` a config (or `xlb weight`) may give.
pub use check::MAX_WEIGHT;
pub(crate) use check::{network, read_certificates};
pub use error::ConfigError;
pub use incremental::{LastRead, VipItemCache};
pub use keys::{backend_identities, backend_identity, endpoint, ip_from_words, ip_words, vip_key};
pub use limits::{ConcurrencyLimit, ConnLimit, ConnOnLimit, GlobalLimits, OnLimit, RateLimit, Scope};
pub use model::{
    AgentListeners, Backend, BfdConfig, BgpConfig, BgpPeer, CheckKind, Config, DEFAULT_PANIC_THRESHOLD,
    DEFAULT_TABLE_SIZE, GrpcCheck, HashFields, HealthCheck, HttpCheck, Mode, NatPool, NewFlowLimit, Node, Protocol,
    SourcePolicy, SynCookies, TlsCheck, TlsRoots, Unhashable, Vip,
};
pub use parse::{load, load_cached, parse, parse_cached};
use raw::{
    CheckType, RawBfd, RawBgp, RawCheckTls, RawConfig, RawHealthCheck, RawNatPool, RawNewFlows, RawNode, RawPeer,
    RawScalar, RawSources, RawSynCookies, RawVip,
};
pub use values::{Community, Mac, Prefix, format_duration, parse_duration};
use values::{DURATION_FORMS, Ports, parse_percent};
