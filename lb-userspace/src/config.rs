//! The YAML configuration: parsing, and the checks that make a file acceptable.
//!
//! Errors name the file, the line and column, the field path, and what to do about it.

use std::{
    collections::BTreeMap,
    fmt,
    net::IpAddr,
    path::{Path, PathBuf},
    str::FromStr,
};

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use crate::maglev;

/// Default Maglev table size: prime, and ≥ 100 × backends for up to 655 backends.
pub const DEFAULT_TABLE_SIZE: u32 = 65537;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    pub node: Node,
    pub vips: Vec<Vip>,
}

/// Node-wide forwarding settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// L2 next hop toward dsr-ipip backends that have no `mac` of their own.
    pub next_hop_mac: Option<Mac>,
    /// Outer source of IPv4 tunnels: one address, or a prefix whose host bits vary per flow.
    pub tunnel_source_v4: Option<Prefix>,
    pub tunnel_source_v6: Option<Prefix>,
    /// IP MTU of the egress link; the interface's when absent.
    pub mtu: Option<u32>,
    /// Connection-table entries.
    pub flow_table_size: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub hash: HashFields,
    pub table_size: u32,
    pub unhashable: Unhashable,
    pub backends: Vec<Backend>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    pub weight: u32,
    pub mac: Option<Mac>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Protocol {
    Tcp,
    Udp,
    /// ICMP for IPv4 VIPs, ICMPv6 for IPv6 VIPs. Port must be 0 (or absent).
    Icmp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Rewrite the destination MAC to the backend's; the backend shares the L2 segment.
    DsrL2,
    /// Encapsulate (IPIP, IP6IP6, IPv4-in-IPv6) toward the backend.
    DsrIpip,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum HashFields {
    /// Source and destination address and port, and protocol.
    #[default]
    FiveTuple,
    /// The client address only: a client always reaches the same backend.
    SourceIp,
}

/// What to do with IPv4 fragments and IPv6 packets with extension headers sent to the VIP's
/// address: their ports cannot be trusted, so they are never hashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Unhashable {
    /// Hand them to the local stack untouched.
    #[default]
    Pass,
    Drop,
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// An address with a prefix length (`10.0.0.0/24`); a bare address is a full-length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
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

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::DsrL2 => "dsr-l2",
            Mode::DsrIpip => "dsr-ipip",
        })
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a MAC address; write it as 02:00:5e:00:53:01");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddr =
            addr.parse().map_err(|_| format!("`{s}` is not an address or prefix (e.g. 10.0.0.0/24)"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Prefix { address, len })
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl Vip {
    /// `address:port/protocol` (brackets around IPv6); `address/icmp` for ICMP VIPs.
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
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}:{column}: {message}")]
    Syntax { path: PathBuf, line: u64, column: u64, message: String },
    #[error("{path}: {message}")]
    SyntaxNoLocation { path: PathBuf, message: String },
    #[error("{path}:{line}:{column}: {field}: {message}")]
    Invalid { path: PathBuf, line: u64, column: u64, field: String, message: String },
}

// The file as written, before the semantic checks.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: Option<Spanned<RawNode>>,
    #[serde(default)]
    vips: Vec<Spanned<RawVip>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    next_hop_mac: Option<Mac>,
    tunnel_source_v4: Option<Prefix>,
    tunnel_source_v6: Option<Prefix>,
    mtu: Option<u32>,
    flow_table_size: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: String,
    address: IpAddr,
    #[serde(default)]
    port: u16,
    protocol: Protocol,
    mode: Mode,
    #[serde(default)]
    hash: HashFields,
    maglev_table_size: Option<u32>,
    #[serde(default)]
    unhashable: Unhashable,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: IpAddr,
    weight: Option<u32>,
    mac: Option<Mac>,
}

/// Most connection-table entries (the LRU map is preallocated: ~100 bytes each).
const MAX_FLOW_TABLE_SIZE: u32 = 1 << 24;
/// Largest backend weight; weights are relative, so this only bounds arithmetic.
const MAX_WEIGHT: u32 = 65535;

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_owned(), source })?;
    parse(path, &text)
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = serde_saphyr::from_str(text).map_err(|e| syntax_error(path, &e))?;
    Checker { path }.check(raw)
}

struct Checker<'a> {
    path: &'a Path,
}

impl Checker<'_> {
    fn err(&self, at: &serde_saphyr::Location, field: impl Into<String>, message: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            path: self.path.to_owned(),
            line: at.line(),
            column: at.column(),
            field: field.into(),
            message: message.into(),
        }
    }

    fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let (raw_node, node_at) = match raw.node {
            Some(n) => (n.value, n.referenced),
            None => (RawNode::default(), serde_saphyr::Location::UNKNOWN),
        };
        let node = self.check_node(raw_node, &node_at)?;

        if raw.vips.len() > lb_common::MAX_VIPS as usize {
            let at = raw.vips[lb_common::MAX_VIPS as usize].referenced;
            return Err(self.err(
                &at,
                "vips",
                format!(
                    "{} VIPs configured, at most {} are supported; split them over more nodes",
                    raw.vips.len(),
                    lb_common::MAX_VIPS
                ),
            ));
        }
        let mut names: BTreeMap<String, u64> = BTreeMap::new();
        let mut endpoints: BTreeMap<(IpAddr, u16, Protocol), (u64, String)> = BTreeMap::new();
        let mut policies: BTreeMap<IpAddr, (Unhashable, String)> = BTreeMap::new();
        let mut backend_slots = 0usize;
        let mut vips = Vec::with_capacity(raw.vips.len());
        for (i, spanned) in raw.vips.into_iter().enumerate() {
            let at = spanned.referenced;
            let vip = self.check_vip(i, spanned.value, &at, &node)?;
            if let Some(line) = names.insert(vip.name.clone(), at.line()) {
                return Err(self.err(
                    &at,
                    format!("vips[{i}].name"),
                    format!("`{}` is already the name of the VIP at line {line}; VIP names must be unique", vip.name),
                ));
            }
            if let Some((line, other)) =
                endpoints.insert((vip.address, vip.port, vip.protocol), (at.line(), vip.name.clone()))
            {
                return Err(self.err(
                    &at,
                    format!("vips[{i}].address"),
                    format!("VIP `{}` has the same address, port and protocol as `{other}` (line {line}); change one of them", vip.name),
                ));
            }
            if let Some((policy, other)) = policies.insert(vip.address, (vip.unhashable, vip.name.clone()))
                && policy != vip.unhashable
            {
                {
                    return Err(self.err(
                        &at,
                        format!("vips[{i}].unhashable"),
                        format!(
                            "VIP `{other}` on the same address says {policy:?}; fragments carry no port, so every VIP on {} must agree",
                            vip.address
                        )
                        .to_lowercase(),
                    ));
                }
            }
            backend_slots += vip.backends.len();
            if backend_slots > lb_common::MAX_BACKENDS as usize {
                return Err(self.err(
                    &at,
                    format!("vips[{i}].backends"),
                    format!("more than {} backends over all VIPs", lb_common::MAX_BACKENDS),
                ));
            }
            vips.push(vip);
        }
        Ok(Config { node, vips })
    }

    fn check_node(&self, raw: RawNode, at: &serde_saphyr::Location) -> Result<Node, ConfigError> {
        if let Some(p) = raw.tunnel_source_v4 {
            if !p.address.is_ipv4() {
                return Err(self.err(at, "node.tunnel_source_v4", "must be an IPv4 address or prefix"));
            }
            // The flow hash fills the host bits: a short prefix would make martian sources.
            if p.len < 16 {
                return Err(self.err(
                    at,
                    "node.tunnel_source_v4",
                    "use a prefix of /16 or longer (e.g. 198.51.100.0/24)",
                ));
            }
        }
        if let Some(p) = raw.tunnel_source_v6 {
            if !p.address.is_ipv6() {
                return Err(self.err(at, "node.tunnel_source_v6", "must be an IPv6 address or prefix"));
            }
            if p.len < 96 {
                return Err(self.err(
                    at,
                    "node.tunnel_source_v6",
                    "the per-flow part is the last 32 bits: use a prefix of /96 or longer",
                ));
            }
        }
        if let Some(mtu) = raw.mtu
            && !(576..=65535).contains(&mtu)
        {
            {
                return Err(self.err(
                    at,
                    "node.mtu",
                    format!("{mtu} is not a usable IP MTU; use 576..=65535 or leave it out to use the interface's"),
                ));
            }
        }
        let flow_table_size = raw.flow_table_size.unwrap_or(lb_common::FLOW_TABLE_SIZE);
        if !(1024..=MAX_FLOW_TABLE_SIZE).contains(&flow_table_size) {
            return Err(self.err(at, "node.flow_table_size", format!("must be 1024..={MAX_FLOW_TABLE_SIZE}")));
        }
        Ok(Node {
            next_hop_mac: raw.next_hop_mac,
            tunnel_source_v4: raw.tunnel_source_v4,
            tunnel_source_v6: raw.tunnel_source_v6,
            mtu: raw.mtu,
            flow_table_size,
        })
    }

    fn check_vip(&self, i: usize, raw: RawVip, at: &serde_saphyr::Location, node: &Node) -> Result<Vip, ConfigError> {
        let field = |name: &str| format!("vips[{i}].{name}");
        if raw.name.trim().is_empty() {
            return Err(self.err(
                at,
                field("name"),
                "must not be empty; give the VIP a short unique name such as `web`",
            ));
        }
        match (raw.protocol, raw.port) {
            (Protocol::Tcp | Protocol::Udp, 0) => {
                return Err(self.err(
                    at,
                    field("port"),
                    format!("a {} VIP needs a port between 1 and 65535", raw.protocol),
                ));
            }
            (Protocol::Icmp, p) if p != 0 => {
                return Err(self.err(at, field("port"), "an icmp VIP has no port; remove `port` or set it to 0"));
            }
            _ => {}
        }
        let table_size = raw.maglev_table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if table_size > lb_common::MAX_MAGLEV_TABLE_SIZE || !maglev::is_prime(table_size) {
            return Err(self.err(
                at,
                field("maglev_table_size"),
                format!(
                    "{table_size} must be a prime no larger than {} (e.g. 65537, 131071)",
                    lb_common::MAX_MAGLEV_TABLE_SIZE
                ),
            ));
        }
        let mut backends: Vec<Backend> = Vec::with_capacity(raw.backends.len());
        for (j, spanned) in raw.backends.into_iter().enumerate() {
            let b = spanned.value;
            let bat = spanned.referenced;
            let bfield = |name: &str| format!("vips[{i}].backends[{j}].{name}");
            let weight = b.weight.unwrap_or(1);
            if weight > MAX_WEIGHT {
                return Err(self.err(
                    &bat,
                    bfield("weight"),
                    format!("{weight} is above {MAX_WEIGHT}; weights are relative, scale them down"),
                ));
            }
            if backends.iter().any(|o| o.address == b.address) {
                return Err(self.err(&bat, bfield("address"), format!("{} is listed twice for this VIP", b.address)));
            }
            match raw.mode {
                Mode::DsrL2 => {
                    if b.address.is_ipv4() != raw.address.is_ipv4() {
                        return Err(self.err(
                            &bat,
                            bfield("address"),
                            "dsr-l2 leaves the IP header alone: the backend must have the VIP's address family",
                        ));
                    }
                    if b.mac.is_none() {
                        return Err(self.err(
                            &bat,
                            bfield("mac"),
                            "dsr-l2 needs the backend's MAC address (e.g. mac: 02:00:5e:00:53:01)",
                        ));
                    }
                }
                Mode::DsrIpip => {
                    if raw.address.is_ipv6() && b.address.is_ipv4() {
                        return Err(self.err(
                            &bat,
                            bfield("address"),
                            "an IPv6 VIP cannot be carried in IPv4 here; give it IPv6 backends",
                        ));
                    }
                    if b.mac.is_none() && node.next_hop_mac.is_none() {
                        return Err(self.err(
                            &bat,
                            bfield("mac"),
                            "set the backend's `mac` (on-link backend) or node.next_hop_mac (routed backends)",
                        ));
                    }
                    let (tunnel, name) = if b.address.is_ipv4() {
                        (node.tunnel_source_v4, "node.tunnel_source_v4")
                    } else {
                        (node.tunnel_source_v6, "node.tunnel_source_v6")
                    };
                    if tunnel.is_none() {
                        return Err(self.err(
                            &bat,
                            bfield("address"),
                            format!(
                                "dsr-ipip to an {} backend needs {name}",
                                if b.address.is_ipv4() { "IPv4" } else { "IPv6" }
                            ),
                        ));
                    }
                }
            }
            backends.push(Backend { address: b.address, weight, mac: b.mac });
        }
        Ok(Vip {
            name: raw.name,
            address: raw.address,
            port: raw.port,
            protocol: raw.protocol,
            mode: raw.mode,
            hash: raw.hash,
            table_size,
            unhashable: raw.unhashable,
            backends,
        })
    }
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
        Some(at) if at.line() > 0 => {
            ConfigError::Syntax { path: path.to_owned(), line: at.line(), column: at.column(), message }
        }
        _ => ConfigError::SyntaxNoLocation { path: path.to_owned(), message },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str) -> Result<Config, ConfigError> {
        parse(Path::new("test.yaml"), text)
    }

    const NODE: &str =
        "node:\n  next_hop_mac: 02:00:00:00:00:fe\n  tunnel_source_v4: 10.0.0.0/24\n  tunnel_source_v6: fd00::1\n";

    fn vip(extra: &str) -> String {
        format!(
            "{NODE}vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n{extra}"
        )
    }

    #[test]
    fn parses_a_valid_file() {
        let config = check(&vip(
            "    hash: source-ip\n    unhashable: drop\n    backends:\n      - address: 10.1.0.1\n        weight: 3\n      - address: fd00:1::1\n        mac: 02:00:00:00:01:01\n",
        ))
        .unwrap();
        let v = &config.vips[0];
        assert_eq!(v.endpoint(), "192.0.2.10:80/tcp");
        assert_eq!(
            (v.mode, v.hash, v.unhashable, v.table_size),
            (Mode::DsrIpip, HashFields::SourceIp, Unhashable::Drop, 65537)
        );
        assert_eq!(v.backends[0].weight, 3);
        assert_eq!(v.backends[1].mac, Some(Mac([2, 0, 0, 0, 1, 1])));
        assert_eq!(config.node.tunnel_source_v4.unwrap().len, 24);
        assert_eq!(config.node.tunnel_source_v6.unwrap().len, 128);
    }

    #[test]
    fn unknown_field_names_line_and_column() {
        let err = check("vips:\n  - name: web\n    adress: 192.0.2.10\n").unwrap_err();
        let text = err.to_string();
        assert!(text.starts_with("test.yaml:3:"), "{text}");
        assert!(text.contains("adress"), "{text}");
        assert!(!text.contains("line 3"), "location printed once: {text}");
    }

    #[test]
    fn bad_values_are_syntax_errors_with_location() {
        let err = check("vips:\n  - name: web\n    address: 192.0.2.300\n").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { line: 3, .. }), "{err}");
        let err = check("node:\n  next_hop_mac: 02:00:00:00:00\n").unwrap_err();
        assert!(err.to_string().contains("not a MAC address"), "{err}");
    }

    #[test]
    fn semantic_errors_name_the_field_and_the_fix() {
        let cases = [
            (vip("    maglev_table_size: 65536\n"), "vips[0].maglev_table_size", "prime"),
            (
                vip("    backends:\n      - address: 10.1.0.1\n      - address: 10.1.0.1\n"),
                "vips[0].backends[1].address",
                "twice",
            ),
            (
                vip("    backends:\n      - address: 10.1.0.1\n        weight: 70000\n"),
                "vips[0].backends[0].weight",
                "scale",
            ),
            (
                "vips:\n  - name: l2\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n      - address: 10.1.0.1\n".to_string(),
                "vips[0].backends[0].mac",
                "MAC",
            ),
            (
                "vips:\n  - name: l2\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    backends:\n      - address: fd00::1\n        mac: 02:00:00:00:00:01\n".to_string(),
                "vips[0].backends[0].address",
                "family",
            ),
            (
                "vips:\n  - name: t\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends:\n      - address: 10.1.0.1\n        mac: 02:00:00:00:00:01\n".to_string(),
                "vips[0].backends[0].address",
                "node.tunnel_source_v4",
            ),
            (
                format!(
                    "{NODE}vips:\n  - name: t\n    address: 2001:db8::1\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n    backends:\n      - address: 10.1.0.1\n"
                ),
                "vips[0].backends[0].address",
                "IPv6 backends",
            ),
        ];
        for (text, field, hint) in cases {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.contains(field) && err.contains(hint), "expected {field} / {hint}: {err}");
        }
    }

    #[test]
    fn short_tunnel_prefixes_are_rejected() {
        let err = check("node:\n  tunnel_source_v4: 10.0.0.0/8\n").unwrap_err().to_string();
        assert!(err.contains("node.tunnel_source_v4") && err.contains("/16"), "{err}");
        let err = check("node:\n  tunnel_source_v6: fd00::/64\n").unwrap_err().to_string();
        assert!(err.contains("node.tunnel_source_v6") && err.contains("/96"), "{err}");
    }

    #[test]
    fn duplicates_and_conflicting_policies_are_rejected() {
        let two = |a: &str, b: &str| {
            format!(
                "{NODE}vips:\n  - name: a\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n{a}  - name: b\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-ipip\n{b}"
            )
        };
        let err = check(&two("", "")).unwrap_err().to_string();
        assert!(err.contains("vips[1].address") && err.contains("`a`") && err.contains("line"), "{err}");
        let err = check(&two("", "").replacen("name: b", "name: a", 1)).unwrap_err().to_string();
        assert!(err.contains("vips[1].name"), "{err}");
        let err = check(&two("    unhashable: drop\n", "    unhashable: pass\n").replacen("port: 80", "port: 81", 1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("vips[1].unhashable") && err.contains("must agree"), "{err}");
    }

    #[test]
    fn ports_follow_the_protocol() {
        let err =
            check("vips:\n  - name: a\n    address: 192.0.2.10\n    protocol: udp\n    mode: dsr-l2\n").unwrap_err();
        assert!(err.to_string().contains("vips[0].port"), "{err}");
        let err =
            check("vips:\n  - name: a\n    address: 192.0.2.10\n    port: 7\n    protocol: icmp\n    mode: dsr-l2\n")
                .unwrap_err();
        assert!(err.to_string().contains("no port"), "{err}");
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let config = check("vips: []\n").unwrap();
        assert_eq!(config.vips.len(), 0);
        assert_eq!(config.node.flow_table_size, lb_common::FLOW_TABLE_SIZE);
    }
}
