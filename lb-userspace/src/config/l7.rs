//! The `l7:` section of a `mode: l7` VIP: listener options and routes, each with its own
//! backends, balancing and rate limit. A child of `config` (so that it shares the checker and
//! its file:line:column errors); the proxy that serves it is `crate::l7`.

use std::{collections::BTreeMap, net::IpAddr, net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;
use serde_saphyr::{Location, Spanned};

pub use super::limits::{ConcurrencyLimit, RateLimit};
use super::limits::{RawConcurrencyLimit, RawRateLimit};
use super::{
    Checker, ConfigError, HealthCheck, MAX_WEIGHT, Mode, Protocol, RawHealthCheck, RawScalar, RawVip, format_duration,
    parse_duration,
};

/// What the proxy of one `mode: l7` VIP does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Vip {
    /// Tried in order; the first that matches a request serves it.
    pub routes: Vec<Route>,
    /// TLS termination (certificate chain and key, PEM); plain HTTP (h1 and h2c) without it.
    pub tls: Option<TlsFiles>,
    /// Every connection starts with a PROXY protocol v2 header (an L4 tier in front).
    pub proxy_protocol: bool,
    /// Bound on connecting to a backend.
    pub connect_timeout: Duration,
    /// Bound on a backend's response head, from the request's arrival.
    pub request_timeout: Duration,
    /// Idle client connections and pooled backend connections close after this.
    pub idle_timeout: Duration,
    /// Idle pooled connections kept per backend.
    pub max_idle_per_backend: u32,
    /// Requests a backend may have in flight (until its response ends; 0: no limit); a backend
    /// at the limit is skipped, and a route whose backends all are answers 503.
    pub max_requests_per_backend: u32,
    /// Other backends an idempotent request is retried on when its backend fails it before
    /// answering (connection refused, reset).
    pub retries: u32,
}

impl L7Vip {
    /// Every backend of every route, once per address.
    pub fn backends(&self) -> impl Iterator<Item = &L7Backend> {
        let mut seen = std::collections::BTreeSet::new();
        self.routes.iter().flat_map(|r| r.backends.iter()).filter(move |b| seen.insert(b.address))
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    /// Unique within the VIP: labels metrics and access-log lines.
    pub name: String,
    /// The Host (or :authority) without port, lowercase; `*.example.com` matches subdomains.
    /// Any host when absent.
    pub host: Option<String>,
    pub path: PathMatch,
    pub balance: Balance,
    pub rate_limit: Option<RateLimit>,
    pub concurrency_limit: Option<ConcurrencyLimit>,
    pub backends: Vec<L7Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathMatch {
    Prefix(String),
    Exact(String),
    /// Matched against the path (without query); anchor it yourself.
    Regex(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Balance {
    /// Weighted round robin.
    RoundRobin,
    /// The backend with the fewest requests in flight per unit of weight.
    LeastOutstanding,
    /// Weighted rendezvous hash of a header's value (round robin when the request lacks it).
    HashHeader(String),
    /// Same, of a cookie's value.
    HashCookie(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct L7Backend {
    pub address: SocketAddr,
    pub weight: u32,
    /// Its own check (the VIP's applies otherwise).
    pub health_check: Option<HealthCheck>,
}

impl L7Backend {
    /// The name health checks and drains use: `address:port`.
    pub fn identity(&self) -> String {
        self.address.to_string()
    }
}

/// The check that applies to `backend` of the l7 VIP `vip` (`None`: always healthy); a check
/// without a port probes the backend's.
pub fn check_for(vip: &super::Vip, backend: &L7Backend) -> Option<HealthCheck> {
    let mut check = backend.health_check.clone().or_else(|| vip.health_check.clone())?;
    if check.kind.port() == 0 {
        check.kind.set_port(backend.address.port());
    }
    Some(check)
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawL7 {
    tls: Option<RawTls>,
    #[serde(default)]
    proxy_protocol: bool,
    connect_timeout: Option<RawScalar>,
    request_timeout: Option<RawScalar>,
    idle_timeout: Option<RawScalar>,
    max_idle_per_backend: Option<u32>,
    max_requests_per_backend: Option<u32>,
    retries: Option<u32>,
    #[serde(default)]
    routes: Vec<Spanned<RawRoute>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTls {
    cert: PathBuf,
    key: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    name: Option<String>,
    host: Option<String>,
    path_prefix: Option<String>,
    path_exact: Option<String>,
    path_regex: Option<String>,
    balance: Option<RawBalance>,
    hash_header: Option<String>,
    hash_cookie: Option<String>,
    rate_limit: Option<RawRateLimit>,
    concurrency_limit: Option<RawConcurrencyLimit>,
    #[serde(default)]
    backends: Vec<Spanned<RawL7Backend>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
enum RawBalance {
    RoundRobin,
    LeastOutstanding,
    ConsistentHash,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawL7Backend {
    address: IpAddr,
    port: u16,
    weight: Option<u32>,
    health_check: Option<Spanned<RawHealthCheck>>,
}

const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);
const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_MAX_IDLE: u32 = 64;
const MAX_IDLE: u32 = 10_000;
const DEFAULT_RETRIES: u32 = 2;
const MAX_IN_FLIGHT: u32 = 1_000_000;
const MAX_RETRIES: u32 = 10;

impl Checker<'_> {
    /// What `mode` says about the rest of the VIP: an l7 VIP is TCP on one port with an `l7:`
    /// section and its backends in the routes; other modes have no `l7:` section.
    pub(super) fn check_l7_mode(&self, i: usize, raw: &RawVip, at: &Location) -> Result<(), ConfigError> {
        let field = |name: &str| format!("vips[{i}].{name}");
        if raw.mode != Mode::L7 {
            return match &raw.l7 {
                Some(l7) => Err(self.err(
                    &l7.referenced,
                    field("l7"),
                    format!("only `mode: l7` VIPs have an l7 section; remove it or change mode from {}", raw.mode),
                )),
                None => Ok(()),
            };
        }
        if raw.protocol != Protocol::Tcp {
            return Err(self.err(at, field("protocol"), "an l7 VIP serves HTTP: use protocol: tcp"));
        }
        if raw.port.0 != raw.port.1 {
            return Err(self.err(at, field("port"), "an l7 VIP listens on one port; give one (e.g. 80 or 443)"));
        }
        if let Some(b) = raw.backend_list().first() {
            return Err(self.err(
                &b.referenced,
                field("backends"),
                "an l7 VIP's backends are listed per route (l7.routes[].backends, with a port each); move them there",
            ));
        }
        if raw.l7.is_none() {
            return Err(self.err(
                at,
                field("l7"),
                "`mode: l7` needs an l7 section with at least one route (see config/example.yaml)",
            ));
        }
        Ok(())
    }

    pub(super) fn check_l7(
        &self,
        i: usize,
        raw: RawL7,
        at: &Location,
        protocol: Protocol,
    ) -> Result<L7Vip, ConfigError> {
        let prefix = format!("vips[{i}].l7");
        let field = |name: &str| format!("{prefix}.{name}");
        let duration = |name: &str, raw: Option<RawScalar>, default: Duration| {
            let value = match raw {
                None => default,
                Some(RawScalar(text)) => parse_duration(&text).map_err(|m| self.err(at, field(name), m))?,
            };
            if value.is_zero() || value > MAX_TIMEOUT {
                return Err(self.err(
                    at,
                    field(name),
                    format!("out of range; use 1ms to {}", format_duration(MAX_TIMEOUT)),
                ));
            }
            Ok(value)
        };
        let connect_timeout = duration("connect_timeout", raw.connect_timeout, DEFAULT_CONNECT_TIMEOUT)?;
        let request_timeout = duration("request_timeout", raw.request_timeout, DEFAULT_REQUEST_TIMEOUT)?;
        let idle_timeout = duration("idle_timeout", raw.idle_timeout, DEFAULT_IDLE_TIMEOUT)?;
        let max_idle_per_backend = raw.max_idle_per_backend.unwrap_or(DEFAULT_MAX_IDLE);
        if max_idle_per_backend > MAX_IDLE {
            return Err(self.err(at, field("max_idle_per_backend"), format!("use 0 to {MAX_IDLE}")));
        }
        let max_requests_per_backend = raw.max_requests_per_backend.unwrap_or(0);
        if max_requests_per_backend > MAX_IN_FLIGHT {
            return Err(self.err(
                at,
                field("max_requests_per_backend"),
                format!("use 1 to {MAX_IN_FLIGHT}, or 0 for no limit"),
            ));
        }
        let retries = raw.retries.unwrap_or(DEFAULT_RETRIES);
        if retries > MAX_RETRIES {
            return Err(self.err(at, field("retries"), format!("use 0 to {MAX_RETRIES}")));
        }
        if let Some(tls) = &raw.tls {
            for (name, path) in [("cert", &tls.cert), ("key", &tls.key)] {
                if path.as_os_str().is_empty() {
                    return Err(self.err(at, field(&format!("tls.{name}")), "give the path of a PEM file"));
                }
            }
        }
        if raw.routes.is_empty() {
            return Err(self.err(
                at,
                field("routes"),
                "the list is empty; list at least one route (e.g. `- path_prefix: /` with its backends)",
            ));
        }
        let mut routes: Vec<Route> = Vec::with_capacity(raw.routes.len());
        // One health identity per address: its check must be the same in every route.
        let mut checks: BTreeMap<SocketAddr, Option<HealthCheck>> = BTreeMap::new();
        for (j, spanned) in raw.routes.into_iter().enumerate() {
            let route =
                self.check_route(&format!("{prefix}.routes[{j}]"), j, spanned.value, &spanned.referenced, protocol)?;
            if let Some(other) = routes.iter().position(|r| r.name == route.name) {
                return Err(self.err(
                    &spanned.referenced,
                    format!("{prefix}.routes[{j}].name"),
                    format!("`{}` is already the name of routes[{other}]; route names must be unique", route.name),
                ));
            }
            for b in &route.backends {
                if let Some(check) = checks.insert(b.address, b.health_check.clone())
                    && check != b.health_check
                {
                    return Err(self.err(
                        &spanned.referenced,
                        format!("{prefix}.routes[{j}].backends"),
                        format!(
                            "{} has another health_check in an earlier route; a backend has one check, give it the same everywhere",
                            b.address
                        ),
                    ));
                }
            }
            routes.push(route);
        }
        Ok(L7Vip {
            routes,
            tls: raw.tls.map(|t| TlsFiles { cert: t.cert, key: t.key }),
            proxy_protocol: raw.proxy_protocol,
            connect_timeout,
            request_timeout,
            idle_timeout,
            max_idle_per_backend,
            max_requests_per_backend,
            retries,
        })
    }

    fn check_route(
        &self,
        prefix: &str,
        j: usize,
        raw: RawRoute,
        at: &Location,
        protocol: Protocol,
    ) -> Result<Route, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let name = raw.name.unwrap_or_else(|| format!("route{j}"));
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(self.err(at, field("name"), format!("`{name}`: use letters, digits, `-`, `_` and `.`")));
        }
        let host = match raw.host {
            None => None,
            Some(h) => {
                let bare = h.strip_prefix("*.").unwrap_or(&h);
                if bare.is_empty()
                    || !bare.chars().all(|c| c.is_ascii_alphanumeric() || "-._[]:".contains(c))
                    || bare.contains('*')
                {
                    return Err(self.err(
                        at,
                        field("host"),
                        format!("`{h}` is not a host name; write www.example.com, or *.example.com for its subdomains"),
                    ));
                }
                Some(h.to_ascii_lowercase())
            }
        };
        let path = match (raw.path_prefix, raw.path_exact, raw.path_regex) {
            (None, None, None) => PathMatch::Prefix("/".to_owned()),
            (Some(p), None, None) => PathMatch::Prefix(self.check_path(at, &field("path_prefix"), p)?),
            (None, Some(p), None) => PathMatch::Exact(self.check_path(at, &field("path_exact"), p)?),
            (None, None, Some(r)) => {
                if let Err(e) = regex::RegexBuilder::new(&r).size_limit(1 << 20).build() {
                    let first = e.to_string().lines().last().unwrap_or_default().trim().to_owned();
                    return Err(self.err(at, field("path_regex"), format!("`{r}` is not a valid regex: {first}")));
                }
                PathMatch::Regex(r)
            }
            _ => {
                return Err(self.err(
                    at,
                    field("path_prefix"),
                    "give one of path_prefix, path_exact and path_regex (none matches every path)",
                ));
            }
        };
        let balance = match (raw.balance, raw.hash_header, raw.hash_cookie) {
            (None | Some(RawBalance::RoundRobin), None, None) => Balance::RoundRobin,
            (Some(RawBalance::LeastOutstanding), None, None) => Balance::LeastOutstanding,
            (None | Some(RawBalance::ConsistentHash), Some(h), None) => {
                if h.is_empty() || http::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    return Err(self.err(at, field("hash_header"), format!("`{h}` is not a header name")));
                }
                Balance::HashHeader(h.to_ascii_lowercase())
            }
            (None | Some(RawBalance::ConsistentHash), None, Some(c)) => {
                if c.is_empty() || c.contains(['=', ';', ' ']) {
                    return Err(self.err(at, field("hash_cookie"), format!("`{c}` is not a cookie name")));
                }
                Balance::HashCookie(c)
            }
            (Some(RawBalance::ConsistentHash), None, None) => {
                return Err(self.err(
                    at,
                    field("balance"),
                    "consistent-hash needs what to hash: hash_header: NAME or hash_cookie: NAME",
                ));
            }
            (_, Some(_), Some(_)) => {
                return Err(self.err(at, field("hash_cookie"), "hash on a header or on a cookie, not both"));
            }
            (Some(b), _, _) => {
                return Err(self.err(
                    at,
                    field("balance"),
                    format!(
                        "hash_header and hash_cookie go with consistent-hash, not {b:?}; remove them or change balance"
                    ),
                ));
            }
        };
        let rate_limit = match raw.rate_limit {
            None => None,
            Some(r) => Some(self.check_rate_limit(r, at, &field("rate_limit"))?),
        };
        let concurrency_limit = match raw.concurrency_limit {
            None => None,
            Some(c) => Some(self.check_concurrency_limit(c, at, &field("concurrency_limit"))?),
        };
        if raw.backends.is_empty() {
            return Err(self.err(at, field("backends"), "list at least one backend (address and port)"));
        }
        let mut backends: Vec<L7Backend> = Vec::with_capacity(raw.backends.len());
        for (k, spanned) in raw.backends.into_iter().enumerate() {
            let (b, bat) = (spanned.value, spanned.referenced);
            let bfield = |name: &str| format!("{prefix}.backends[{k}].{name}");
            if b.port == 0 {
                return Err(self.err(
                    &bat,
                    bfield("port"),
                    "must be 1 to 65535: the port the backend's HTTP server listens on",
                ));
            }
            let weight = b.weight.unwrap_or(1);
            if weight == 0 || weight > MAX_WEIGHT {
                return Err(self.err(
                    &bat,
                    bfield("weight"),
                    format!("use 1 to {MAX_WEIGHT} (remove the backend to take it out)"),
                ));
            }
            let address = SocketAddr::new(b.address, b.port);
            if backends.iter().any(|o| o.address == address) {
                return Err(self.err(
                    &bat,
                    bfield("address"),
                    format!("{address} is listed twice in this route; list each backend once"),
                ));
            }
            let health_check = match b.health_check {
                Some(hc) => {
                    Some(self.check_health(hc.value, &hc.referenced, &bfield("health_check"), protocol, b.port)?)
                }
                None => None,
            };
            backends.push(L7Backend { address, weight, health_check });
        }
        Ok(Route { name, host, path, balance, rate_limit, concurrency_limit, backends })
    }

    fn check_path(&self, at: &Location, field: &str, path: String) -> Result<String, ConfigError> {
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(at, field, format!("`{path}` must start with `/` and have no spaces (e.g. /api/)")));
        }
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn check(l7: &str) -> Result<super::super::Config, ConfigError> {
        let text = format!(
            "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: l7\n    health_check: {{ type: http, path: /health }}\n{l7}"
        );
        super::super::parse(Path::new("l7.yaml"), &text)
    }

    fn error(l7: &str) -> String {
        check(l7).expect_err("invalid").to_string()
    }

    const ROUTES: &str = "    l7:\n      routes:\n        - name: api\n          host: API.example.com\n          path_prefix: /api/\n          balance: least-outstanding\n          rate_limit: { requests_per_second: 5 }\n          backends:\n            - { address: 10.0.0.1, port: 8080 }\n            - { address: 10.0.0.2, port: 8080, weight: 2, health_check: { type: tcp } }\n        - path_regex: ^/u/[0-9]+$\n          hash_cookie: sid\n          backends:\n            - { address: 10.0.0.1, port: 8080 }\n";

    #[test]
    fn parses_routes_and_resolves_checks() {
        let config = check(ROUTES).unwrap();
        let vip = &config.vips[0];
        let l7 = vip.l7.as_ref().unwrap();
        assert_eq!(vip.mode, Mode::L7);
        assert_eq!((l7.retries, l7.connect_timeout, l7.proxy_protocol), (2, Duration::from_secs(2), false));
        let api = &l7.routes[0];
        assert_eq!(api.host.as_deref(), Some("api.example.com"));
        assert_eq!(api.path, PathMatch::Prefix("/api/".into()));
        assert_eq!(api.balance, Balance::LeastOutstanding);
        assert_eq!(api.rate_limit.as_ref().map(|l| (l.rate, l.burst)), Some((5, 5)));
        assert_eq!(l7.routes[1].name, "route1");
        assert_eq!(l7.routes[1].balance, Balance::HashCookie("sid".into()));
        assert_eq!(l7.backends().count(), 2, "a backend shared by routes counts once");
        // The VIP's http check probes each backend's port; the backend's own tcp check too.
        let check = check_for(vip, &api.backends[0]).unwrap();
        assert_eq!(check.kind.port(), 8080);
        assert!(matches!(check.kind, super::super::CheckKind::Http(_)));
        let own = check_for(vip, &api.backends[1]).unwrap();
        assert_eq!(own.kind, super::super::CheckKind::Tcp { port: 8080 });
    }

    #[test]
    fn bad_l7_sections_name_the_field_and_the_fix() {
        let cases = [
            (
                "    l7:\n      routes: []\n",
                "l7.yaml:9:15: vips[0].l7.routes: the list is empty; list at least one route",
            ),
            (
                "    l7:\n      retries: 11\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.retries: `11`: use 0 to 10",
            ),
            (
                "    l7:\n      max_requests_per_backend: 1000001\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.max_requests_per_backend: `1000001`: use 1 to 1000000, or 0 for no limit",
            ),
            (
                "    l7:\n      idle_timeout: 5\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.idle_timeout: `5` has no unit; write `5s`",
            ),
            (
                "    l7:\n      routes:\n        - path_prefix: /\n",
                "vips[0].l7.routes[0].backends: list at least one backend",
            ),
            (
                "    l7:\n      routes:\n        - path_prefix: api\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.routes[0].path_prefix: `api` must start with `/`",
            ),
            (
                "    l7:\n      routes:\n        - path_regex: \"(\"\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.routes[0].path_regex: `(` is not a valid regex",
            ),
            (
                "    l7:\n      routes:\n        - path_prefix: /\n          path_exact: /\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "give one of path_prefix, path_exact and path_regex",
            ),
            (
                "    l7:\n      routes:\n        - balance: consistent-hash\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.routes[0].balance: `consistent-hash` needs what to hash",
            ),
            (
                "    l7:\n      routes:\n        - balance: least-outstanding\n          hash_header: x-user\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "hash_header and hash_cookie go with consistent-hash",
            ),
            (
                "    l7:\n      routes:\n        - hash_header: \"bad header\"\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "`bad header` is not a header name",
            ),
            (
                "    l7:\n      routes:\n        - rate_limit: { requests_per_second: 0 }\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.routes[0].rate_limit: requests_per_second and burst must be",
            ),
            (
                "    l7:\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 0 }]\n",
                "vips[0].l7.routes[0].backends[0].port: `0`: must be 1 to 65535",
            ),
            (
                "    l7:\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 80 }, { address: 10.0.0.1, port: 80 }]\n",
                "10.0.0.1:80 is listed twice",
            ),
            (
                "    l7:\n      routes:\n        - host: \"a b\"\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "vips[0].l7.routes[0].host: `a b` is not a host name",
            ),
            (
                "    l7:\n      routes:\n        - name: a\n          backends: [{ address: 10.0.0.1, port: 80 }]\n        - name: a\n          backends: [{ address: 10.0.0.1, port: 80 }]\n",
                "`a` is already the name of routes[0]",
            ),
            (
                "    l7:\n      routes:\n        - backends: [{ address: 10.0.0.1, port: 80 }]\n        - backends: [{ address: 10.0.0.1, port: 80, health_check: { type: tcp } }]\n",
                "10.0.0.1:80 has another health_check in an earlier route",
            ),
            (
                "    l7:\n      routes:\n        - backends: [{ address: 10.0.0.1 }]\n",
                "vips[0].l7.routes[0].backends[0].port: missing; write the port",
            ),
            ("    l7:\n      listen: 1\n", "vips[0].l7.listen: `listen` is not a field in vips[0].l7"),
            ("", "vips[0].l7: `mode: l7` needs an l7 section"),
        ];
        for (l7, expected) in cases {
            let e = error(l7);
            assert!(e.contains(expected), "{l7}\n→ {e}\nexpected: {expected}");
            assert!(e.starts_with("l7.yaml:"), "{e}");
        }
    }

    #[test]
    fn mode_and_section_must_agree() {
        let text = "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: udp\n    mode: l7\n    l7: { routes: [] }\n";
        let e = super::super::parse(Path::new("l7.yaml"), text).unwrap_err().to_string();
        assert!(e.contains("l7.yaml:5:15: vips[0].protocol: `udp`: an l7 VIP serves HTTP"), "{e}");
        let text = "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: l7\n    backends: [{ address: 10.0.0.1 }]\n";
        let e = super::super::parse(Path::new("l7.yaml"), text).unwrap_err().to_string();
        assert!(e.contains("l7.yaml:7:") && e.contains("are listed per route"), "{e}");
        let text = "node: { next_hop_mac: 02:00:00:00:00:fe }\nvips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    l7: { routes: [] }\n";
        let e = super::super::parse(Path::new("l7.yaml"), text).unwrap_err().to_string();
        assert!(e.contains("vips[0].l7: only `mode: l7` VIPs have an l7 section"), "{e}");
    }
}
