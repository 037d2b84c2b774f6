//! Rate limits and where their thresholds hold: a route's `rate_limit:` (per node, or `scope:
//! global` for all nodes together) with what a limited request gets back, and the top-level
//! `global_limits:` section that says how the nodes share a global threshold (the Redis server,
//! this node's name, how many nodes split it while Redis is away).

use std::time::Duration;

use serde::Deserialize;
use serde_saphyr::Location;

use super::{Checker, Config, ConfigError, Mode, Protocol, RawScalar, format_duration, parse_duration};

/// A token bucket: `rate` requests per second on average, `burst` at once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimit {
    pub rate: u32,
    pub burst: u32,
    pub scope: Scope,
    pub on_limit: OnLimit,
}

/// Requests of a route in progress at once (from admission until the response ends).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConcurrencyLimit {
    pub requests: u32,
    pub scope: Scope,
    pub on_limit: OnLimit,
}

/// A VIP's connection limit (L4, enforced by the XDP program): `rate` new flows per second over
/// the VIP, `burst` at once, and/or `concurrent` connections open at once (at least one).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnLimit {
    pub rate: Option<u32>,
    /// With `rate` (else 0).
    pub burst: u32,
    pub concurrent: Option<u32>,
    pub scope: Scope,
    pub on_limit: ConnOnLimit,
}

/// What a new flow over a VIP's connection limit gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConnOnLimit {
    /// Dropped: the client retries its SYN after its timeout.
    #[default]
    Drop,
    /// A TCP SYN is answered with a RST (the client fails at once); other packets are dropped.
    Reset,
}

/// Where a threshold holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scope {
    /// On each node by itself: N nodes admit N × the rate.
    #[default]
    Local,
    /// Over all nodes together: each node enforces its share, leased through `global_limits`.
    Global,
}

/// What a limited request gets: a status and body, or a redirect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnLimit {
    pub status: u16,
    pub body: String,
    /// A Location to redirect to (`status` is then a 3xx).
    pub redirect: Option<String>,
}

impl Default for OnLimit {
    fn default() -> Self {
        OnLimit { status: 429, body: "rate limit exceeded\n".into(), redirect: None }
    }
}

/// `global_limits:`: the store the nodes share global thresholds through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GlobalLimits {
    /// `host:port` of the Redis server.
    pub redis: String,
    /// This node's name among the nodes sharing the limits (unique per node).
    pub node: String,
    /// How many nodes share the limits: each takes threshold ÷ nodes while Redis is unreachable
    /// and none has been learned from it.
    pub nodes: u32,
    /// How often a node renews its shares (reports its demand, reads the others').
    pub renew_every: Duration,
    /// Prefix of the Redis keys (several clusters may share one server).
    pub key_prefix: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRateLimit {
    requests_per_second: u32,
    burst: Option<u32>,
    scope: Option<Scope>,
    on_limit: Option<RawOnLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConcurrencyLimit {
    requests: u32,
    scope: Option<Scope>,
    on_limit: Option<RawOnLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConnLimit {
    new_per_second: Option<u32>,
    burst: Option<u32>,
    concurrent: Option<u32>,
    scope: Option<Scope>,
    on_limit: Option<ConnOnLimit>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOnLimit {
    status: Option<u16>,
    body: Option<String>,
    redirect: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawGlobalLimits {
    redis: Option<String>,
    node: Option<String>,
    nodes: Option<u32>,
    renew_every: Option<RawScalar>,
    key_prefix: Option<String>,
}

pub(super) const MAX_RATE: u32 = 1_000_000;
const MAX_CONCURRENT: u32 = 1_000_000;
const MAX_BODY: usize = 4096;
const DEFAULT_RENEW: Duration = Duration::from_millis(100);
const MIN_RENEW: Duration = Duration::from_millis(20);
const MAX_RENEW: Duration = Duration::from_secs(1);
const MAX_NODES: u32 = 1000;
const REDIRECT_STATUSES: [u16; 5] = [301, 302, 303, 307, 308];

impl Checker<'_> {
    /// A route's `rate_limit:` (`field`: its path in the file).
    pub(super) fn check_rate_limit(
        &self,
        raw: RawRateLimit,
        at: &Location,
        field: &str,
    ) -> Result<RateLimit, ConfigError> {
        let burst = raw.burst.unwrap_or(raw.requests_per_second.max(1));
        if !(1..=MAX_RATE).contains(&raw.requests_per_second) || !(1..=MAX_RATE).contains(&burst) {
            return Err(self.err(at, field, format!("requests_per_second and burst must be 1 to {MAX_RATE}")));
        }
        let on_limit = match raw.on_limit {
            None => OnLimit::default(),
            Some(o) => self.check_on_limit(o, at, &format!("{field}.on_limit"), &OnLimit::default())?,
        };
        Ok(RateLimit { rate: raw.requests_per_second, burst, scope: raw.scope.unwrap_or_default(), on_limit })
    }

    /// A VIP's `connection_limit:` (`field`: its path in the file); `vip` is its mode and
    /// protocol.
    pub(super) fn check_conn_limit(
        &self,
        raw: RawConnLimit,
        at: &Location,
        field: &str,
        vip: (Mode, Protocol),
    ) -> Result<ConnLimit, ConfigError> {
        if vip.0 == Mode::L7 {
            return Err(self.err(
                at,
                field,
                "applies to VIPs the XDP program serves (dsr-l2, dsr-ipip, nat); an l7 VIP's routes have \
                 rate_limit and concurrency_limit: use those",
            ));
        }
        if raw.new_per_second.is_none() && raw.concurrent.is_none() {
            return Err(self.err(
                at,
                field,
                "limits nothing: give new_per_second (new connections per second), concurrent (connections \
                 open at once) or both",
            ));
        }
        if let Some(rate) = raw.new_per_second
            && !(1..=MAX_RATE).contains(&rate)
        {
            return Err(self.err(at, format!("{field}.new_per_second"), format!("use 1 to {MAX_RATE}")));
        }
        let burst = match (raw.new_per_second, raw.burst) {
            (Some(rate), burst) => burst.unwrap_or(rate.div_ceil(10).max(1)),
            (None, Some(_)) => {
                return Err(self.err(
                    at,
                    format!("{field}.burst"),
                    "is the burst of new_per_second, which is not set: set new_per_second or remove burst",
                ));
            }
            (None, None) => 0,
        };
        if raw.new_per_second.is_some() && !(1..=MAX_RATE).contains(&burst) {
            return Err(self.err(at, format!("{field}.burst"), format!("use 1 to {MAX_RATE}")));
        }
        if let Some(concurrent) = raw.concurrent {
            if !(1..=MAX_CONCURRENT).contains(&concurrent) {
                return Err(self.err(at, format!("{field}.concurrent"), format!("use 1 to {MAX_CONCURRENT}")));
            }
            if vip.1 != Protocol::Tcp {
                return Err(self.err(
                    at,
                    format!("{field}.concurrent"),
                    "counts TCP connections, which end with a FIN or a RST; a UDP flow has no end the data \
                     plane can see: limit new_per_second instead",
                ));
            }
        }
        let on_limit = raw.on_limit.unwrap_or_default();
        if on_limit == ConnOnLimit::Reset && vip.1 != Protocol::Tcp {
            return Err(self.err(
                at,
                format!("{field}.on_limit"),
                "reset answers a TCP SYN with a RST; a UDP VIP's refused packets can only be dropped: use drop",
            ));
        }
        Ok(ConnLimit {
            rate: raw.new_per_second,
            burst,
            concurrent: raw.concurrent,
            scope: raw.scope.unwrap_or_default(),
            on_limit,
        })
    }

    /// A route's `concurrency_limit:` (`field`: its path in the file). Refused requests get
    /// 503 unless `on_limit` says otherwise.
    pub(super) fn check_concurrency_limit(
        &self,
        raw: RawConcurrencyLimit,
        at: &Location,
        field: &str,
    ) -> Result<ConcurrencyLimit, ConfigError> {
        if !(1..=MAX_CONCURRENT).contains(&raw.requests) {
            return Err(self.err(at, format!("{field}.requests"), format!("use 1 to {MAX_CONCURRENT}")));
        }
        let busy = OnLimit { status: 503, body: "too many requests in progress\n".into(), redirect: None };
        let on_limit = match raw.on_limit {
            None => busy,
            Some(o) => self.check_on_limit(o, at, &format!("{field}.on_limit"), &busy)?,
        };
        Ok(ConcurrencyLimit { requests: raw.requests, scope: raw.scope.unwrap_or_default(), on_limit })
    }

    fn check_on_limit(
        &self,
        raw: RawOnLimit,
        at: &Location,
        field: &str,
        default: &OnLimit,
    ) -> Result<OnLimit, ConfigError> {
        let sub = |name: &str| format!("{field}.{name}");
        let body = raw.body.unwrap_or_else(|| default.body.clone());
        if body.len() > MAX_BODY {
            return Err(self.err(at, sub("body"), format!("{} bytes; keep it within {MAX_BODY}", body.len())));
        }
        let Some(redirect) = raw.redirect else {
            let status = raw.status.unwrap_or(default.status);
            if !(400..=599).contains(&status) {
                return Err(self.err(
                    at,
                    sub("status"),
                    format!(
                        "{status} is not an error status; use 400 to 599 ({} by default), or give a redirect",
                        default.status
                    ),
                ));
            }
            return Ok(OnLimit { status, body, redirect: None });
        };
        let absolute = ["http://", "https://"].iter().any(|s| redirect.starts_with(s)) || redirect.starts_with('/');
        if !absolute || redirect.chars().any(|c| c.is_control() || c == ' ') {
            return Err(self.err(
                at,
                sub("redirect"),
                "a redirect is an http(s):// URL or a path starting with /, without spaces or control characters",
            ));
        }
        let status = raw.status.unwrap_or(302);
        if !REDIRECT_STATUSES.contains(&status) {
            return Err(self.err(
                at,
                sub("status"),
                format!("{status} with a redirect; use one of 301, 302, 303, 307, 308 (302 by default)"),
            ));
        }
        Ok(OnLimit { status, body, redirect: Some(redirect) })
    }

    /// `global_limits:`; `bgp_router_id` names the node when `node` is not given.
    pub(super) fn check_global_limits(
        &self,
        raw: RawGlobalLimits,
        at: &Location,
        bgp_router_id: Option<std::net::IpAddr>,
    ) -> Result<GlobalLimits, ConfigError> {
        let field = |name: &str| format!("global_limits.{name}");
        let Some(redis) = raw.redis else {
            return Err(self.err(
                at,
                field("redis"),
                "give the Redis server the nodes share, as host:port (e.g. 10.0.0.5:6379)",
            ));
        };
        let valid = redis
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
        if !valid || redis.contains('/') || redis.chars().any(char::is_whitespace) {
            return Err(self.err(
                at,
                field("redis"),
                "not host:port; write e.g. 10.0.0.5:6379 or redis.example.net:6379",
            ));
        }
        let node = match raw.node.or_else(|| bgp_router_id.map(|id| id.to_string())) {
            Some(node) => node,
            None => {
                return Err(self.err(
                    at,
                    field("node"),
                    "name this node (unique among the nodes sharing the limits), or give bgp.router_id",
                ));
            }
        };
        if node.is_empty() || node.len() > 64 || !node.chars().all(|c| c.is_ascii_graphic() && c != ':') {
            return Err(self.err(at, field("node"), "1 to 64 printable characters, no spaces or colons"));
        }
        let Some(nodes) = raw.nodes else {
            return Err(self.err(
                at,
                field("nodes"),
                "say how many nodes share the limits: each takes threshold ÷ nodes while Redis is unreachable",
            ));
        };
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(self.err(at, field("nodes"), format!("use 1 to {MAX_NODES}")));
        }
        let renew_every = match raw.renew_every {
            None => DEFAULT_RENEW,
            Some(RawScalar(text)) => parse_duration(&text).map_err(|m| self.err(at, field("renew_every"), m))?,
        };
        if !(MIN_RENEW..=MAX_RENEW).contains(&renew_every) {
            return Err(self.err(
                at,
                field("renew_every"),
                format!("use {} to {}", format_duration(MIN_RENEW), format_duration(MAX_RENEW)),
            ));
        }
        let key_prefix = raw.key_prefix.unwrap_or_else(|| "xlb".into());
        if key_prefix.is_empty() || key_prefix.len() > 64 || !key_prefix.chars().all(|c| c.is_ascii_graphic()) {
            return Err(self.err(at, field("key_prefix"), "1 to 64 printable characters, no spaces"));
        }
        Ok(GlobalLimits { redis, node, nodes, renew_every, key_prefix })
    }

    /// A `scope: global` limit needs `global_limits:`.
    pub(super) fn check_global_scopes(&self, config: &Config) -> Result<(), ConfigError> {
        if config.global_limits.is_some() {
            return Ok(());
        }
        for (i, vip) in config.vips.iter().enumerate() {
            if vip.connection_limit.as_ref().is_some_and(|l| l.scope == Scope::Global) {
                return Err(self.err(
                    &Location::UNKNOWN,
                    format!("vips[{i}].connection_limit.scope"),
                    "a global limit needs a global_limits section (the Redis server the nodes share); add one or use scope: local",
                ));
            }
            let Some(l7) = &vip.l7 else { continue };
            for (j, route) in l7.routes.iter().enumerate() {
                let global = [
                    ("rate_limit", route.rate_limit.as_ref().map(|l| l.scope)),
                    ("concurrency_limit", route.concurrency_limit.as_ref().map(|l| l.scope)),
                ];
                if let Some((name, _)) = global.iter().find(|(_, scope)| *scope == Some(Scope::Global)) {
                    return Err(self.err(
                        &Location::UNKNOWN,
                        format!("vips[{i}].l7.routes[{j}].{name}.scope"),
                        "a global limit needs a global_limits section (the Redis server the nodes share); add one or use scope: local",
                    ));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::parse;

    const L7: &str = "vips:\n  - name: web\n    address: 10.0.0.1\n    port: 80\n    protocol: tcp\n    mode: l7\n    l7:\n      routes:\n        - name: api\n          rate_limit: LIMIT\n          backends: [{ address: 10.0.1.1, port: 8080 }]\n";

    fn with_limit(limit: &str, global: &str) -> Result<Config, ConfigError> {
        parse(Path::new("xlb.yaml"), &format!("{global}{}", L7.replace("LIMIT", limit)))
    }

    fn limit(config: &Config) -> RateLimit {
        config.vips[0].l7.as_ref().unwrap().routes[0].rate_limit.clone().unwrap()
    }

    const GLOBAL: &str = "global_limits:\n  redis: 10.0.0.9:6379\n  node: lb1\n  nodes: 3\n";

    #[test]
    fn a_global_limit_with_its_section() {
        let config = with_limit("{ requests_per_second: 500, scope: global }", GLOBAL).unwrap();
        let l = limit(&config);
        assert_eq!((l.rate, l.burst, l.scope), (500, 500, Scope::Global));
        assert_eq!(l.on_limit, OnLimit::default());
        let g = config.global_limits.unwrap();
        assert_eq!((g.redis.as_str(), g.node.as_str(), g.nodes), ("10.0.0.9:6379", "lb1", 3));
        assert_eq!((g.renew_every, g.key_prefix.as_str()), (DEFAULT_RENEW, "xlb"));
    }

    #[test]
    fn a_concurrency_limit_answers_503_unless_told_otherwise() {
        let yaml = L7.replace("rate_limit: LIMIT", "concurrency_limit: LIMIT");
        let parse_with = |limit: &str, global: &str| {
            parse(Path::new("xlb.yaml"), &format!("{global}{}", yaml.replace("LIMIT", limit)))
        };
        let c = parse_with("{ requests: 50, scope: global }", GLOBAL).unwrap();
        let l = c.vips[0].l7.as_ref().unwrap().routes[0].concurrency_limit.clone().unwrap();
        assert_eq!((l.requests, l.scope, l.on_limit.status), (50, Scope::Global, 503));
        let e = parse_with("{ requests: 50, scope: global }", "").unwrap_err().to_string();
        assert!(e.contains("concurrency_limit.scope") && e.contains("global_limits section"), "{e}");
        let e = parse_with("{ requests: 0 }", "").unwrap_err().to_string();
        assert!(e.contains("concurrency_limit.requests") && e.contains("1 to 1000000"), "{e}");
    }

    #[test]
    fn a_vips_connection_limit_and_its_mistakes() {
        let vip = |mode: &str, protocol: &str, limit: &str| {
            format!(
                "vips:\n  - name: web\n    address: 10.0.0.1\n    port: 80\n    protocol: {protocol}\n    mode: {mode}\n    \
                 connection_limit: {limit}\n    backends: [{{ address: 10.0.1.1, mac: \"02:00:00:00:00:01\" }}]\n"
            )
        };
        let c =
            parse(Path::new("xlb.yaml"), &vip("dsr-l2", "tcp", "{ new_per_second: 5000, on_limit: reset }")).unwrap();
        let l = c.vips[0].connection_limit.clone().unwrap();
        assert_eq!((l.rate, l.burst, l.scope, l.on_limit), (Some(5000), 500, Scope::Local, ConnOnLimit::Reset));
        let c = parse(Path::new("xlb.yaml"), &vip("dsr-l2", "tcp", "{ concurrent: 300 }")).unwrap();
        let l = c.vips[0].connection_limit.clone().unwrap();
        assert_eq!((l.rate, l.burst, l.concurrent), (None, 0, Some(300)));
        let g = format!("{GLOBAL}{}", vip("dsr-l2", "udp", "{ new_per_second: 50, burst: 5, scope: global }"));
        let l = parse(Path::new("xlb.yaml"), &g).unwrap().vips[0].connection_limit.clone().unwrap();
        assert_eq!((l.rate, l.burst, l.scope, l.on_limit), (Some(50), 5, Scope::Global, ConnOnLimit::Drop));
        let cases = [
            (vip("dsr-l2", "udp", "{ new_per_second: 5, on_limit: reset }"), "connection_limit.on_limit", "use drop"),
            (vip("dsr-l2", "tcp", "{ new_per_second: 0 }"), "connection_limit.new_per_second", "1 to 1000000"),
            (vip("dsr-l2", "tcp", "{ new_per_second: 5, burst: 0 }"), "connection_limit.burst", "1 to 1000000"),
            (vip("dsr-l2", "tcp", "{ new_per_second: 5, scope: global }"), "connection_limit.scope", "global_limits"),
            (vip("dsr-l2", "tcp", "{ scope: local }"), "connection_limit", "give new_per_second"),
            (vip("dsr-l2", "tcp", "{ concurrent: 5, burst: 2 }"), "connection_limit.burst", "set new_per_second"),
            (vip("dsr-l2", "tcp", "{ concurrent: 0 }"), "connection_limit.concurrent", "1 to 1000000"),
            (vip("dsr-l2", "udp", "{ concurrent: 10 }"), "connection_limit.concurrent", "limit new_per_second"),
        ];
        for (yaml, field, fix) in cases {
            let e = parse(Path::new("xlb.yaml"), &yaml).unwrap_err().to_string();
            assert!(e.contains(field) && e.contains(fix), "{yaml}: {e}");
        }
        let l7 = L7
            .replace("          rate_limit: LIMIT\n", "")
            .replace("    mode: l7\n", "    mode: l7\n    connection_limit: { new_per_second: 5 }\n");
        let e = parse(Path::new("xlb.yaml"), &l7).unwrap_err().to_string();
        assert!(e.contains("vips[0].connection_limit") && e.contains("rate_limit and concurrency_limit"), "{e}");
    }

    #[test]
    fn on_limit_status_body_and_redirect() {
        let c = with_limit("{ requests_per_second: 5, on_limit: { status: 503, body: \"busy\\n\" } }", "").unwrap();
        assert_eq!(limit(&c).on_limit, OnLimit { status: 503, body: "busy\n".into(), redirect: None });
        let c = with_limit("{ requests_per_second: 5, on_limit: { redirect: \"https://busy.example.com/\" } }", "")
            .unwrap();
        assert_eq!(limit(&c).on_limit.status, 302);
        assert_eq!(limit(&c).on_limit.redirect.as_deref(), Some("https://busy.example.com/"));
    }

    #[test]
    fn mistakes_are_named_at_their_field() {
        let cases = [
            ("{ requests_per_second: 5, scope: global }", "", "rate_limit.scope", "needs a global_limits section"),
            ("{ requests_per_second: 5, on_limit: { status: 200 } }", "", "on_limit.status", "not an error status"),
            ("{ requests_per_second: 5, on_limit: { redirect: /x, status: 429 } }", "", "on_limit.status", "301, 302"),
            ("{ requests_per_second: 5, on_limit: { redirect: \"x y\" } }", "", "on_limit.redirect", "a path starting"),
            (
                "{ requests_per_second: 5, scope: global }",
                "global_limits:\n  node: a\n  nodes: 2\n",
                "global_limits.redis",
                "host:port",
            ),
            (
                "{ requests_per_second: 5, scope: global }",
                "global_limits:\n  redis: r:6379\n  nodes: 2\n",
                "global_limits.node",
                "bgp.router_id",
            ),
            (
                "{ requests_per_second: 5, scope: global }",
                "global_limits:\n  redis: r:6379\n  node: a\n",
                "global_limits.nodes",
                "how many nodes",
            ),
            (
                "{ requests_per_second: 5, scope: global }",
                "global_limits:\n  redis: r\n  node: a\n  nodes: 2\n",
                "global_limits.redis",
                "not host:port",
            ),
            (
                "{ requests_per_second: 5, scope: global }",
                "global_limits:\n  redis: r:1\n  node: a\n  nodes: 2\n  renew_every: 5s\n",
                "global_limits.renew_every",
                "20ms to 1s",
            ),
        ];
        for (limit, global, field, words) in cases {
            let e = with_limit(limit, global).expect_err(limit).to_string();
            assert!(e.contains(field) && e.contains(words), "{limit} / {global}: {e}");
            assert!(e.starts_with("xlb.yaml:"), "{e}");
        }
    }
}
