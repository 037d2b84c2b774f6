//! Which route serves a request: host (exact or `*.suffix`) and path (prefix, exact or regex),
//! routes tried in configuration order.

use regex::Regex;

use super::config::{PathMatch, Route};

/// Size bound on a compiled path regex (the config check uses the same).
pub const REGEX_SIZE_LIMIT: usize = 1 << 20;

#[derive(Debug)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: any name ending in `.example.com` (not example.com itself).
    Suffix(String),
}

#[derive(Debug)]
enum PathMatcher {
    Prefix(String),
    Exact(String),
    Regex(Regex),
}

/// The compiled match conditions of a VIP's routes, in order.
#[derive(Debug)]
pub struct Matcher {
    entries: Vec<(HostMatch, PathMatcher)>,
}

#[derive(Debug, thiserror::Error)]
#[error("route {route}: path_regex: {source}")]
pub struct RouteError {
    route: String,
    source: regex::Error,
}

impl Matcher {
    pub fn new(routes: &[Route]) -> Result<Self, RouteError> {
        let entries = routes
            .iter()
            .map(|route| {
                let host = match route.host.as_deref() {
                    None => HostMatch::Any,
                    Some(h) => match h.strip_prefix("*.") {
                        Some(suffix) => HostMatch::Suffix(format!(".{suffix}")),
                        None => HostMatch::Exact(h.to_owned()),
                    },
                };
                let path = match &route.path {
                    PathMatch::Prefix(p) => PathMatcher::Prefix(p.clone()),
                    PathMatch::Exact(p) => PathMatcher::Exact(p.clone()),
                    PathMatch::Regex(r) => PathMatcher::Regex(
                        regex::RegexBuilder::new(r)
                            .size_limit(REGEX_SIZE_LIMIT)
                            .build()
                            .map_err(|source| RouteError { route: route.name.clone(), source })?,
                    ),
                };
                Ok((host, path))
            })
            .collect::<Result<_, _>>()?;
        Ok(Matcher { entries })
    }

    /// The index of the first route that matches `host` (as sent: any case, maybe with a port)
    /// and `path` (without the query).
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<usize> {
        // Normalized only when a route asks for a host (most match any).
        let normalized = std::cell::OnceCell::new();
        self.entries.iter().position(|(h, p)| {
            let host = || normalized.get_or_init(|| host.map(normalize_host)).as_deref();
            let host_ok = match h {
                HostMatch::Any => true,
                HostMatch::Exact(want) => host().is_some_and(|got| want == got),
                HostMatch::Suffix(suffix) => {
                    host().is_some_and(|got| got.len() > suffix.len() && got.ends_with(suffix.as_str()))
                }
            };
            host_ok
                && match p {
                    PathMatcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
                    PathMatcher::Exact(exact) => path == exact,
                    PathMatcher::Regex(re) => re.is_match(path),
                }
        })
    }
}

/// `Example.COM:8080` → `example.com`; `[2001:db8::1]:443` → `[2001:db8::1]`; a trailing dot
/// goes too.
pub fn normalize_host(host: &str) -> String {
    let host = host.trim();
    let without_port = if host.starts_with('[') {
        match host.find(']') {
            Some(end) => &host[..=end],
            None => host,
        }
    } else {
        match host.rsplit_once(':') {
            Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
            _ => host,
        }
    };
    without_port.trim_end_matches('.').to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::l7::{Balance, L7Backend};

    fn route(name: &str, host: Option<&str>, path: PathMatch) -> Route {
        Route {
            name: name.into(),
            host: host.map(Into::into),
            path,
            balance: Balance::RoundRobin,
            rate_limit: None,
            concurrency_limit: None,
            backends: vec![L7Backend { address: "10.0.0.1:80".parse().unwrap(), weight: 1, health_check: None }],
        }
    }

    #[test]
    fn first_matching_route_wins() {
        let routes = [
            route("exact", Some("api.example.com"), PathMatch::Exact("/health".into())),
            route("api", Some("api.example.com"), PathMatch::Prefix("/v1/".into())),
            route("users", None, PathMatch::Regex("^/users/[0-9]+$".into())),
            route("wild", Some("*.example.com"), PathMatch::Prefix("/".into())),
            route("default", None, PathMatch::Prefix("/".into())),
        ];
        let m = Matcher::new(&routes).unwrap();
        let name = |host: Option<&str>, path: &str| m.find(host, path).map(|i| routes[i].name.as_str());
        assert_eq!(name(Some("api.example.com"), "/health"), Some("exact"));
        assert_eq!(name(Some("API.Example.com:8080"), "/health"), Some("exact"));
        assert_eq!(name(Some("api.example.com."), "/v1/x"), Some("api"));
        assert_eq!(name(Some("api.example.com"), "/health/x"), Some("wild"), "exact is exact");
        assert_eq!(name(Some("other"), "/users/42"), Some("users"));
        assert_eq!(name(None, "/users/42x"), Some("default"));
        assert_eq!(name(Some("www.example.com"), "/"), Some("wild"));
        assert_eq!(name(Some("example.com"), "/"), Some("default"), "*.x does not match x itself");
        assert_eq!(name(Some("badexample.com"), "/"), Some("default"));
        let only_host = [route("h", Some("a.test"), PathMatch::Prefix("/".into()))];
        let m = Matcher::new(&only_host).unwrap();
        assert_eq!(m.find(None, "/"), None, "a host route needs a host");
        assert_eq!(m.find(Some("b.test"), "/"), None);
    }

    #[test]
    fn hosts_normalize() {
        assert_eq!(normalize_host("Example.COM:8080"), "example.com");
        assert_eq!(normalize_host("[2001:DB8::1]:443"), "[2001:db8::1]");
        assert_eq!(normalize_host("[2001:db8::1]"), "[2001:db8::1]");
        assert_eq!(normalize_host("host."), "host");
        assert_eq!(normalize_host("10.0.0.1"), "10.0.0.1");
    }

    #[test]
    fn bad_regexes_are_errors_not_panics() {
        let e = Matcher::new(&[route("r", None, PathMatch::Regex("(".into()))]).unwrap_err();
        assert!(e.to_string().starts_with("route r: path_regex:"), "{e}");
    }
}
