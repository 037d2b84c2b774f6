//! Health-check checks: a `health_check:` block with its defaults and bounds.

use super::{
    Checker, DEFAULT_FALL, DEFAULT_INTERVAL, DEFAULT_RISE, DEFAULT_TIMEOUT, MAX_INTERVAL, MAX_THRESHOLD, MIN_INTERVAL,
};
use crate::config::{
    CheckKind, CheckType, ConfigError, GrpcCheck, HealthCheck, HttpCheck, Protocol, RawCheckTls, RawHealthCheck,
    RawScalar, TlsCheck, TlsRoots, format_duration, parse_duration,
};

impl Checker<'_> {
    /// Validates a `health_check` block; `prefix` is its field path, and the VIP's protocol and
    /// port supply the default port.
    pub(in crate::config) fn check_health(
        &self,
        mut raw: RawHealthCheck,
        at: &serde_saphyr::Location,
        prefix: &str,
        protocol: Protocol,
        vip_port: u16,
    ) -> Result<HealthCheck, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let type_name = match raw.kind {
            CheckType::Tcp => "tcp",
            CheckType::Http => "http",
            CheckType::Https => "https",
            CheckType::Grpc => "grpc",
            CheckType::Udp => "udp",
        };
        // Fields of another check type are mistakes (a `path` on a tcp check checks nothing).
        const WEB: &[CheckType] = &[CheckType::Http, CheckType::Https];
        let only: [(&str, bool, &[CheckType], &str); 11] = [
            ("method", raw.method.is_some(), WEB, "http and https"),
            ("path", raw.path.is_some(), WEB, "http and https"),
            ("host", raw.host.is_some(), WEB, "http and https"),
            ("expect_status", raw.expect_status.is_some(), WEB, "http and https"),
            ("expect_body", raw.expect_body.is_some(), WEB, "http and https"),
            ("headers", raw.headers.is_some(), WEB, "http and https"),
            ("http_version", raw.http_version.is_some(), WEB, "http and https"),
            ("tls", raw.tls.is_some(), &[CheckType::Https, CheckType::Grpc], "https and grpc"),
            ("service", raw.service.is_some(), &[CheckType::Grpc], "grpc"),
            ("send", raw.send.is_some(), &[CheckType::Udp], "udp"),
            ("expect", raw.expect.is_some(), &[CheckType::Udp], "udp"),
        ];
        for (name, present, kinds, owner) in only {
            if present && !kinds.contains(&raw.kind) {
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
        let interval_written = written("interval", raw.interval.take())?;
        let timeout_written = written("timeout", raw.timeout.take())?;
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
            CheckType::Http | CheckType::Https => {
                let tls = match raw.kind {
                    CheckType::Https => Some(self.check_tls(raw.tls.take(), at, &field("tls"))?),
                    _ => None,
                };
                CheckKind::Http(Box::new(self.check_http(&mut raw, at, prefix, port, tls)?))
            }
            CheckType::Grpc => {
                let tls = match raw.tls.take() {
                    Some(tls) => Some(self.check_tls(Some(tls), at, &field("tls"))?),
                    None => None,
                };
                let service = raw.service.take().unwrap_or_default();
                if service.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(self.err(
                        at,
                        field("service"),
                        format!("`{service}` is not a gRPC service name (e.g. grpc.health.v1.Health, or leave it out for the whole server)"),
                    ));
                }
                CheckKind::Grpc(Box::new(GrpcCheck { port, service, tls }))
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

/// Most certificates a `ca_file` may hold (a system bundle has ~150).
const MAX_CA_CERTIFICATES: usize = 1000;

impl Checker<'_> {
    /// The http/https fields of a check.
    fn check_http(
        &self,
        raw: &mut RawHealthCheck,
        at: &serde_saphyr::Location,
        prefix: &str,
        port: u16,
        tls: Option<TlsCheck>,
    ) -> Result<HttpCheck, ConfigError> {
        let field = |name: &str| format!("{prefix}.{name}");
        let path = raw.path.take().unwrap_or_else(|| "/".to_owned());
        // The path and host go into the request line and a header verbatim.
        if !path.starts_with('/') || path.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(self.err(
                at,
                field("path"),
                format!("`{path}` must start with `/` and have no spaces (e.g. /healthz)"),
            ));
        }
        let host = raw.host.take();
        if let Some(host) = &host
            && (host.is_empty() || http::HeaderValue::from_str(host).is_err() || host.chars().any(char::is_whitespace))
        {
            return Err(self.err(
                at,
                field("host"),
                format!("`{host}` is not a host name; write it as it goes in the Host header (e.g. www.example.com)"),
            ));
        }
        let method = raw.method.take().unwrap_or_else(|| "GET".to_owned());
        if !matches!(method.as_str(), "GET" | "HEAD" | "POST" | "OPTIONS") {
            return Err(self.err(at, field("method"), format!("`{method}` is not one of GET, HEAD, POST, OPTIONS")));
        }
        let expect_status = match raw.expect_status.take() {
            None => vec![(200, 200)],
            Some(statuses) if statuses.0.is_empty() => {
                return Err(self.err(
                    at,
                    field("expect_status"),
                    "an empty list accepts nothing; list codes or ranges (e.g. [200, 300-399])",
                ));
            }
            Some(statuses) => {
                let mut ranges = Vec::new();
                for item in statuses.0 {
                    let range = parse_status_range(&item).map_err(|why| self.err(at, field("expect_status"), why))?;
                    ranges.push(range);
                }
                ranges
            }
        };
        if raw.expect_body.as_deref() == Some("") {
            return Err(self.err(
                at,
                field("expect_body"),
                "an empty string matches every body; remove it or give the text to look for",
            ));
        }
        let mut headers = Vec::new();
        for (name, value) in raw.headers.take().unwrap_or_default() {
            if http::HeaderName::from_bytes(name.as_bytes()).is_err() {
                return Err(self.err(
                    at,
                    field("headers"),
                    format!("`{name}` is not a header name (letters, digits and -, e.g. X-Check)"),
                ));
            }
            if name.eq_ignore_ascii_case("host")
                || name.eq_ignore_ascii_case("content-length")
                || name.eq_ignore_ascii_case("transfer-encoding")
            {
                return Err(self.err(
                    at,
                    field("headers"),
                    format!("`{name}` is set by the check itself; use `host:` for the Host header"),
                ));
            }
            if http::HeaderValue::from_str(&value).is_err() {
                return Err(self.err(
                    at,
                    field("headers"),
                    format!(
                        "the value of `{name}` has characters a header cannot carry (control characters, non-ASCII)"
                    ),
                ));
            }
            headers.push((name, value));
        }
        let http2 = match raw.http_version.take() {
            None => false,
            Some(RawScalar(v)) if v == "1.1" => false,
            Some(RawScalar(v)) if v == "2" || v == "2.0" => true,
            Some(RawScalar(v)) => return Err(self.err(at, field("http_version"), format!("`{v}` is not 1.1 or 2"))),
        };
        Ok(HttpCheck {
            port,
            method,
            path,
            host,
            expect_status,
            expect_body: raw.expect_body.take(),
            headers,
            http2,
            tls,
        })
    }

    /// `tls:` of an https or grpc check: the roots are read now, so a reload with a bad file
    /// keeps the old configuration.
    fn check_tls(
        &self,
        raw: Option<RawCheckTls>,
        at: &serde_saphyr::Location,
        field: &str,
    ) -> Result<TlsCheck, ConfigError> {
        let Some(raw) = raw else { return Ok(TlsCheck { sni: None, roots: TlsRoots::System }) };
        if let Some(sni) = &raw.sni
            && rustls::pki_types::ServerName::try_from(sni.as_str()).is_err()
        {
            return Err(self.err(at, format!("{field}.sni"), format!("`{sni}` is not a DNS name or an IP address")));
        }
        let roots = match (raw.ca_file, raw.insecure_skip_verify.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(self.err(
                    at,
                    format!("{field}.insecure_skip_verify"),
                    "with ca_file the certificate is verified; set one or the other",
                ));
            }
            (None, true) => TlsRoots::Insecure,
            (None, false) => TlsRoots::System,
            (Some(path), false) => {
                let certificates =
                    read_certificates(&path).map_err(|why| self.err(at, format!("{field}.ca_file"), why))?;
                TlsRoots::File { path, certificates }
            }
        };
        Ok(TlsCheck { sni: raw.sni, roots })
    }
}

/// `200`, `200-399`: an inclusive range of HTTP statuses.
fn parse_status_range(item: &str) -> Result<(u16, u16), String> {
    let status = |text: &str| match text.trim().parse::<u16>() {
        Ok(code) if (100..=599).contains(&code) => Ok(code),
        _ => Err(format!("`{item}` is not an HTTP status or range; use codes 100 to 599 (e.g. 200, or 200-399)")),
    };
    match item.split_once('-') {
        None => status(item).map(|code| (code, code)),
        Some((low, high)) => {
            let (low, high) = (status(low)?, status(high)?);
            if low > high {
                return Err(format!("`{item}`: the range is backwards; write it low-high (e.g. 200-399)"));
            }
            Ok((low, high))
        }
    }
}

/// The certificates of a PEM file (bounded).
pub(crate) fn read_certificates(path: &str) -> Result<Vec<Vec<u8>>, String> {
    use rustls::pki_types::{CertificateDer, pem::PemObject as _};
    let text =
        std::fs::read(path).map_err(|e| format!("cannot read `{path}`: {e}; give a PEM file of CA certificates"))?;
    let mut certificates = Vec::new();
    for certificate in CertificateDer::pem_slice_iter(&text) {
        let certificate = certificate.map_err(|e| format!("`{path}` is not PEM: {e}"))?;
        certificates.push(certificate.to_vec());
        if certificates.len() > MAX_CA_CERTIFICATES {
            return Err(format!("`{path}` holds more than {MAX_CA_CERTIFICATES} certificates"));
        }
    }
    if certificates.is_empty() {
        return Err(format!("`{path}` holds no certificate (-----BEGIN CERTIFICATE-----)"));
    }
    Ok(certificates)
}
