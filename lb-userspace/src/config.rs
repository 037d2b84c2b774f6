//! The YAML configuration: parsing, and the checks that make a file acceptable.
//!
//! Errors name the file, the line and column, the field path, and what to do about it.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use serde_saphyr::Spanned;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub vips: Vec<Vip>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 VIPs, ICMPv6 for IPv6 VIPs. Port must be 0 (or absent).
    Icmp,
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
            Protocol::Icmp => "icmp",
        })
    }
}

impl Vip {
    /// `address:port/protocol`, with brackets around IPv6 addresses;
    /// `address/icmp` for ICMP VIPs, which have no port.
    pub fn endpoint(&self) -> String {
        match (self.address, self.protocol) {
            (a, Protocol::Icmp) => format!("{a}/{}", self.protocol),
            (IpAddr::V4(a), _) => format!("{a}:{}/{}", self.port, self.protocol),
            (IpAddr::V6(a), _) => format!("[{a}]:{}/{}", self.port, self.protocol),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: cannot read the configuration: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax {
        path: PathBuf,
        line: u64,
        column: u64,
        message: String,
    },
    #[error("{path}: {message}")]
    SyntaxNoLocation { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid {
        path: PathBuf,
        line: u64,
        column: u64,
        field: String,
        message: String,
    },
}

// The file as written, before the semantic checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    vips: Vec<Spanned<RawVip>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: String,
    address: IpAddr,
    #[serde(default)]
    port: u16,
    protocol: Protocol,
}

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(path, &text)
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| syntax_error(path, &e))?;
    let invalid =
        |at: &serde_saphyr::Location, field: String, message: String| ConfigError::Invalid {
            path: path.to_owned(),
            line: at.line(),
            column: at.column(),
            field,
            message,
        };

    if raw.vips.len() > lb_common::MAX_VIPS as usize {
        let at = raw.vips[lb_common::MAX_VIPS as usize].referenced;
        return Err(invalid(
            &at,
            "vips".into(),
            format!(
                "{} VIPs configured, at most {} are supported; split them over more nodes",
                raw.vips.len(),
                lb_common::MAX_VIPS
            ),
        ));
    }

    let mut names: BTreeMap<&str, u64> = BTreeMap::new();
    let mut endpoints: BTreeMap<(IpAddr, u16, Protocol), (u64, &str)> = BTreeMap::new();
    for (i, spanned) in raw.vips.iter().enumerate() {
        let vip = &spanned.value;
        let at = &spanned.referenced;
        let field = |name: &str| format!("vips[{i}].{name}");
        if vip.name.trim().is_empty() {
            return Err(invalid(
                at,
                field("name"),
                "must not be empty; give the VIP a short unique name such as `web`".into(),
            ));
        }
        if let Some(line) = names.insert(&vip.name, at.line()) {
            return Err(invalid(
                at,
                field("name"),
                format!(
                    "`{}` is already the name of the VIP at line {line}; VIP names must be unique",
                    vip.name
                ),
            ));
        }
        match (vip.protocol, vip.port) {
            (Protocol::Tcp | Protocol::Udp, 0) => {
                return Err(invalid(
                    at,
                    field("port"),
                    format!("a {} VIP needs a port between 1 and 65535", vip.protocol),
                ));
            }
            (Protocol::Icmp, p) if p != 0 => {
                return Err(invalid(
                    at,
                    field("port"),
                    "an icmp VIP has no port; remove `port` or set it to 0".into(),
                ));
            }
            _ => {}
        }
        if let Some((line, other)) = endpoints.insert(
            (vip.address, vip.port, vip.protocol),
            (at.line(), &vip.name),
        ) {
            return Err(invalid(
                at,
                field("address"),
                format!(
                    "VIP `{}` has the same address, port and protocol as `{other}` (line {line}); change one of them",
                    vip.name
                ),
            ));
        }
    }

    Ok(Config {
        vips: raw
            .vips
            .into_iter()
            .map(|s| Vip {
                name: s.value.name,
                address: s.value.address,
                port: s.value.port,
                protocol: s.value.protocol,
            })
            .collect(),
    })
}

fn syntax_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    // The crate's Display embeds a rendered snippet; keep the first line as the message.
    let message = e.to_string();
    let first = message.lines().next().unwrap_or_default();
    // Drop the crate's own "error: line L column C: " prefix; the location is printed once, ours.
    let first = first.strip_prefix("error: ").unwrap_or(first);
    let message = match first.split_once(": ") {
        Some((head, rest)) if head.starts_with("line ") && head.contains(" column ") => rest,
        _ => first,
    }
    .to_owned();
    match e.location() {
        Some(at) if at.line() > 0 => ConfigError::Syntax {
            path: path.to_owned(),
            line: at.line(),
            column: at.column(),
            message,
        },
        _ => ConfigError::SyntaxNoLocation {
            path: path.to_owned(),
            message,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.yaml"), text)
    }

    #[test]
    fn parses_a_valid_file() {
        let config = check(
            "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n  - name: ping6\n    address: 2001:db8::1\n    protocol: icmp\n",
        )
        .unwrap();
        assert_eq!(config.vips.len(), 2);
        assert_eq!(config.vips[0].endpoint(), "192.0.2.10:80/tcp");
        assert_eq!(config.vips[1].endpoint(), "2001:db8::1/icmp");
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = check(
            "vips:\n  - name: web\n    adress: 192.0.2.10\n    port: 80\n    protocol: tcp\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.yaml:3:"), "{text}");
        assert!(text.contains("adress"), "{text}");
        assert!(!text.contains("line 3"), "location printed once: {text}");
    }

    #[test]
    fn bad_address_is_a_syntax_error_with_location() {
        let err = check(
            "vips:\n  - name: web\n    address: 192.0.2.300\n    port: 80\n    protocol: tcp\n",
        )
        .unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");
    }

    #[test]
    fn duplicate_endpoint_is_rejected_with_both_names() {
        let err = check(
            "vips:\n  - name: a\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n  - name: b\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n",
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.yaml:6:"), "{text}");
        assert!(
            text.contains("vips[1].address") && text.contains("`a`") && text.contains("line 2"),
            "{text}"
        );
    }

    #[test]
    fn duplicate_name_and_missing_port_are_rejected() {
        let err = check(
            "vips:\n  - name: a\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n  - name: a\n    address: 192.0.2.11\n    port: 80\n    protocol: tcp\n",
        )
        .unwrap_err();
        assert!(err.to_string().contains("vips[1].name"), "{err}");
        let err =
            check("vips:\n  - name: a\n    address: 192.0.2.10\n    protocol: udp\n").unwrap_err();
        assert!(err.to_string().contains("vips[0].port"), "{err}");
        let err =
            check("vips:\n  - name: a\n    address: 192.0.2.10\n    port: 7\n    protocol: icmp\n")
                .unwrap_err();
        assert!(err.to_string().contains("no port"), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        assert_eq!(check("vips: []\n").unwrap().vips.len(), 0);
    }
}
