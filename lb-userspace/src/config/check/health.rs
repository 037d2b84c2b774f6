//! Health-check checks: a `health_check:` block with its defaults and bounds.

use super::{
    Checker, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_TIMEOUT, MAX_INTERVAL, MAX_THRESHOLD, MIN_INTERVAL,
};
use crate::config::{
    CheckKind, CheckType, ConfigError, HealthCheck, Protocol, RawHealthCheck, RawScalar, format_duration,
    parse_duration,
};

impl Checker<'_> {
    /// Validates a `health_check` block; `prefix` is its field path, and the VIP's protocol and
    /// port supply the default port.
    pub(in crate::config) fn check_health(
        &self,
        raw: RawHealthCheck,
        at: &serde_saphyr::Location,
        prefix: &str,
        protocol: Protocol,
        vip_port: u16,
    ) -> Result<HealthCheck, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let type_name = match raw.kind {
            CheckType::Tcp => "tcp",
            CheckType::Http => "http",
            CheckType::Udp => "udp",
        };
        // Fields of another check type are mistakes (a `path` on a tcp check checks nothing).
        let only = [
            ("path", raw.path.is_some(), CheckType::Http),
            ("host", raw.host.is_some(), CheckType::Http),
            ("expect_status", raw.expect_status.is_some(), CheckType::Http),
            ("expect_body", raw.expect_body.is_some(), CheckType::Http),
            ("send", raw.send.is_some(), CheckType::Udp),
            ("expect", raw.expect.is_some(), CheckType::Udp),
        ];
        for (name, present, kind) in only {
            if present && raw.kind != kind {
                let owner = if kind == CheckType::Http { "http" } else { "udp" };
                return Err(self.err(
                    at,
                    field(name),
                    format!("only {owner} checks have `{name}`; remove it from this {type_name} check"),
                ));
            }
        }
        let port = match (raw.port, protocol) {
            (Some(0), _) => {
                return Err(self.err(at, field("port"), "must be 1 to 65535, or left out to check the VIP's port"));
            }
            (Some(p), _) => p,
            (None, Protocol::Icmp) => {
                return Err(self.err(
                    at,
                    field("port"),
                    "an icmp VIP has no port to check by default; set the port the backends' service listens on",
                ));
            }
            (None, _) => vip_port,
        };
        let written = |name: &str, raw: Option<RawScalar>| match raw {
            None => Ok(None),
            Some(RawScalar(text)) => parse_duration(&text).map(Some).map_err(|m| self.err(at, field(name), m)),
        };
        let interval_written = written("interval", raw.interval)?;
        let timeout_written = written("timeout", raw.timeout)?;
        // Defaults follow what is written: a default interval leaves room for a written timeout,
        // a default timeout stays below a written interval (`interval: 1s` alone probes with a
        // 500ms timeout).
        let interval = interval_written.unwrap_or_else(|| {
            timeout_written.map_or(DEFAULT_INTERVAL, |t| DEFAULT_INTERVAL.max(t * 2)).min(MAX_INTERVAL)
        });
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(self.err(
                at,
                field("interval"),
                format!("out of range; use {} to {}", format_duration(MIN_INTERVAL), format_duration(MAX_INTERVAL)),
            ));
        }
        let timeout = timeout_written.unwrap_or_else(|| DEFAULT_TIMEOUT.min(interval / 2));
        if timeout.is_zero() || timeout >= interval {
            return Err(self.err(
                at,
                field("timeout"),
                format!(
                    "must be above 0 and shorter than the interval ({}), so probes never overlap",
                    format_duration(interval)
                ),
            ));
        }
        let threshold = |name: &str, raw: Option<u32>, default: u32| {
            let n = raw.unwrap_or(default);
            if (1..=MAX_THRESHOLD).contains(&n) {
                Ok(n)
            } else {
                Err(self.err(
                    at,
                    field(name),
                    format!("use 1 to {MAX_THRESHOLD} consecutive results (1 reacts to a single probe)"),
                ))
            }
        };
        let rise = threshold("rise", raw.rise, DEFAULT_RISE)?;
        let fall = threshold("fall", raw.fall, DEFAULT_FALL)?;
        let kind = match raw.kind {
            CheckType::Tcp => CheckKind::Tcp { port },
            CheckType::Http => {
                let path = raw.path.unwrap_or_else(|| "/".to_owned());
                // The path and host go into the request line and a header verbatim.
                if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(self.err(
                        at,
                        field("path"),
                        format!("`{path}` must start with `/` and have no spaces (e.g. /healthz)"),
                    ));
                }
                if let Some(host) = &raw.host
                    && (host.is_empty() || host.chars().any(|c| c.is_whitespace() || c.is_control()))
                {
                    return Err(self.err(
                        at,
                        field("host"),
                        format!(
                            "`{host}` is not a host name; write it as it goes in the Host header (e.g. www.example.com)"
                        ),
                    ));
                }
                let expect_status = raw.expect_status.unwrap_or(200);
                if !(100..=599).contains(&expect_status) {
                    return Err(self.err(
                        at,
                        field("expect_status"),
                        format!("{expect_status} is not an HTTP status; use 100 to 599"),
                    ));
                }
                if raw.expect_body.as_deref() == Some("") {
                    return Err(self.err(
                        at,
                        field("expect_body"),
                        "an empty string matches every body; remove it or give the text to look for",
                    ));
                }
                CheckKind::Http { port, path, host: raw.host, expect_status, expect_body: raw.expect_body }
            }
            CheckType::Udp => {
                let send = match raw.send {
                    Some(s) if !s.is_empty() => s.into_bytes(),
                    _ => {
                        return Err(self.err(
                            at,
                            field("send"),
                            "missing or empty: a udp check needs a payload that the service answers (e.g. send: \"ping\")",
                        ));
                    }
                };
                if raw.expect.as_deref() == Some("") {
                    return Err(self.err(
                        at,
                        field("expect"),
                        "an empty string matches every reply; remove it to accept any reply",
                    ));
                }
                CheckKind::Udp { port, send, expect: raw.expect.map(String::into_bytes) }
            }
        };
        Ok(HealthCheck { kind, interval, timeout, rise, fall })
    }
}
