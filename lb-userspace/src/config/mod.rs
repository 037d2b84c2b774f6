//! The YAML configuration: parsing, and the checks that make a file acceptable.
//!
//! Errors name the file, the line and column, the field path, and what to do about it.

use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    io::Read as _,
    net::{IpAddr, Ipv4Addr},
    path::{Path, PathBuf},
    str::FromStr,
    time::Duration,
};

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

// The `l7:` section of `mode: l7` VIPs: its types and checks.
pub mod l7;
pub mod memory;
// serde-saphyr's budgets, derived from the per-node limits.
#[cfg(test)]
mod edge_tests;
mod incremental;
mod keys;
mod yaml_budget;

pub use incremental::{LastRead, VipItemCache};
pub use keys::{endpoint, ip_from_words, ip_words, vip_key};

/// Default Maglev table size: prime, and ≥ 100 slots a backend (shares within ~1%) for VIPs of up
/// to 163 backends. Not larger: at 4 bytes a slot it takes 64 KiB a VIP, 640 MiB of BPF memory
/// for 10 000 VIPs (65537 would take 2.5 GiB).
pub const DEFAULT_TABLE_SIZE: u32 = 16381;

/// A validated configuration.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Config {
    pub node: Node,
    pub vips: Vec<Vip>,
    /// The BGP speaker that announces the VIPs; none without a `bgp:` section.
    pub bgp: Option<BgpConfig>,
    /// The agent's own listeners; command-line flags override them.
    pub agent: AgentListeners,
    /// Source-address pools of `mode: nat` VIPs, sorted by name (the index is the pool's id).
    pub nat_pools: Vec<NatPool>,
}

/// `nat_pools:` entry: connections that a NAT VIP opens to its backends leave from one of
/// `addresses` and a port in `ports`. The node must receive traffic for these addresses (they
/// are usually assigned to its interface).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NatPool {
    pub name: String,
    pub addresses: Vec<IpAddr>,
    pub port_first: u16,
    pub port_last: u16,
}

impl NatPool {
    /// Concurrent flows the pool holds toward one backend address and port.
    pub fn capacity(&self) -> u64 {
        self.addresses.len() as u64 * (u64::from(self.port_last) - u64::from(self.port_first) + 1)
    }
}

/// `agent:`: where the agent listens and keeps its state. Read at start (changing them needs a restart).
#[derive(Debug, Clone, PartialEq, Eq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentListeners {
    /// The admin socket (`xlb status`, `drain`, `plan`); /run/xlb/admin.sock when absent.
    pub admin_socket: Option<PathBuf>,
    /// Prometheus `/metrics` (e.g. 127.0.0.1:9842); none when absent.
    pub metrics_listen: Option<std::net::SocketAddr>,
    /// Directory of the state file (drains that survive restarts); /var/lib/xlb/<iface> when
    /// absent.
    pub state_dir: Option<PathBuf>,
}

/// The BGP speaker (`bgp:`): every VIP that is up is announced to every peer as a host route
/// (/32, /128) with this node as next hop.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BgpConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    /// Proposed in OPEN; the session uses the smaller of both sides' (0: no keepalives at all).
    pub hold_time: Duration,
    /// Ceiling of the exponential backoff between connection attempts.
    pub connect_retry: Duration,
    /// Advertised restart time (RFC 4724): how long peers keep our routes while we restart;
    /// zero leaves graceful restart out of OPEN.
    pub graceful_restart_time: Duration,
    /// How long a drain or shutdown waits after withdrawing before it closes the sessions.
    pub withdraw_grace: Duration,
    pub communities: Vec<Community>,
    pub med: Option<u32>,
    /// Sent to iBGP peers only.
    pub local_pref: Option<u32>,
    pub peers: Vec<BgpPeer>,
}

/// A BGP neighbour.
#[derive(Clone, PartialEq, Eq)]
pub struct BgpPeer {
    pub address: IpAddr,
    pub remote_as: u32,
    pub port: u16,
    /// TCP MD5 signature key (RFC 2385).
    pub password: Option<String>,
    pub bfd: BfdConfig,
    /// Local address to connect from; the kernel's choice (by route) when absent.
    pub source_address: Option<IpAddr>,
}

/// BFD (RFC 5880/5881) with a peer: single hop, asynchronous mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BfdConfig {
    pub enabled: bool,
    /// Desired minimum transmit interval once the session is up (1 s before, as RFC 5880 asks).
    pub min_tx: Duration,
    /// Required minimum receive interval.
    pub min_rx: Duration,
    /// Packets the peer may miss before it counts us as down (our detect multiplier).
    pub multiplier: u8,
}

impl Default for BfdConfig {
    fn default() -> Self {
        BfdConfig {
            enabled: false,
            min_tx: Duration::from_millis(100),
            min_rx: Duration::from_millis(100),
            multiplier: 3,
        }
    }
}

impl fmt::Debug for BgpPeer {
    // The password stays out of logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BgpPeer")
            .field("address", &self.address)
            .field("remote_as", &self.remote_as)
            .field("port", &self.port)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("bfd", &self.bfd)
            .field("source_address", &self.source_address)
            .finish()
    }
}

impl BgpPeer {
    /// Internal BGP: the peer is in our own AS.
    pub fn is_ibgp(&self, local_as: u32) -> bool {
        self.remote_as == local_as
    }
}

/// A standard community (RFC 1997), written `AS:VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Community {
    pub asn: u16,
    pub value: u16,
}

impl Community {
    /// The 32-bit wire value.
    pub fn to_u32(self) -> u32 {
        (u32::from(self.asn) << 16) | u32::from(self.value)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

impl FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a community; write AS:VALUE with both parts 0..=65535 (e.g. 65010:100)");
        let (asn, value) = s.split_once(':').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>().map_err(|_| bad())
        };
        Ok(Community { asn: part(asn)?, value: part(value)? })
    }
}

/// Node-wide forwarding settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Node {
    /// L2 next hop toward dsr-ipip backends that have no `mac` of their own.
    pub next_hop_mac: Option<Mac>,
    /// Router addresses whose MACs the agent resolves (ARP / neighbour discovery) for dsr-ipip
    /// backends without a `mac`, when `next_hop_mac` is not given.
    pub next_hop_v4: Option<IpAddr>,
    pub next_hop_v6: Option<IpAddr>,
    /// Outer source of IPv4 tunnels: one address, or a prefix whose host bits vary per flow.
    pub tunnel_source_v4: Option<Prefix>,
    pub tunnel_source_v6: Option<Prefix>,
    /// IP MTU of the egress link; the interface's when absent.
    pub mtu: Option<u32>,
    /// Connection-table entries.
    pub flow_table_size: u32,
    /// Entries of each NAT table (forward and reverse): concurrent NAT flows.
    pub nat_table_size: u32,
    /// NAT flows idle this long expire: established TCP, TCP after FIN/RST or before the
    /// backend answered, UDP.
    pub nat_tcp_timeout: Duration,
    pub nat_closing_timeout: Duration,
    pub nat_udp_timeout: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vip {
    pub name: String,
    pub address: IpAddr,
    /// The first port (the only one unless `port_last` is larger).
    pub port: u16,
    /// The last port of a port range (`port: 8000-8099`); equal to `port` for one port.
    pub port_last: u16,
    pub protocol: Protocol,
    pub mode: Mode,
    pub hash: HashFields,
    pub table_size: u32,
    pub unhashable: Unhashable,
    pub backends: Vec<Backend>,
    /// The check of every backend that has none of its own; backends with no check at all are
    /// always healthy.
    pub health_check: Option<HealthCheck>,
    /// With fewer healthy backends than this the VIP counts as down.
    pub min_healthy: u32,
    /// Percent: with fewer of its (undrained) backends healthy than this, health is ignored
    /// and new flows go to all of them (Envoy's panic mode); 0 disables it.
    pub panic_threshold: u32,
    /// `mode: nat`: the name of its source-address pool; none for DNAT only (the client's
    /// address reaches the backend, which must route its replies through this node).
    pub snat_pool: Option<String>,
    /// The HTTP proxy's listener and routes (`mode: l7` only; its backends are the routes').
    pub l7: Option<l7::L7Vip>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub address: IpAddr,
    /// `mode: nat`: the port at the backend; the client's destination port when absent.
    pub port: Option<u16>,
    /// `mode: nat`: the interface (one the agent runs on, `--iface`) that leads to the backend;
    /// when absent, packets toward it leave by the interface they came in on.
    pub interface: Option<String>,
    pub weight: u32,
    pub mac: Option<Mac>,
    /// Replaces the VIP's check for this backend (typically to probe another port).
    pub health_check: Option<HealthCheck>,
}

/// How a backend's health is probed, and how many results it takes to change its state.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HealthCheck {
    pub kind: CheckKind,
    /// Time between probes (each probe is jittered by up to ±10%).
    pub interval: Duration,
    /// Bound on one probe; shorter than `interval`.
    pub timeout: Duration,
    /// Consecutive successes that bring a down backend up.
    pub rise: u32,
    /// Consecutive failures that take an up backend down.
    pub fall: u32,
}

/// One probe. Ports are resolved when the configuration is checked (the VIP's by default).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum CheckKind {
    /// Succeeds when a TCP connection is established.
    Tcp { port: u16 },
    /// HTTP/1.1 GET: succeeds on `expect_status` with a body containing `expect_body`, if set.
    Http { port: u16, path: String, host: Option<String>, expect_status: u16, expect_body: Option<String> },
    /// Sends `send` on a connected UDP socket: succeeds on a reply containing `expect` (any reply
    /// without it); an ICMP port-unreachable fails.
    Udp { port: u16, send: Vec<u8>, expect: Option<Vec<u8>> },
}

impl CheckKind {
    pub fn port(&self) -> u16 {
        match self {
            CheckKind::Tcp { port } | CheckKind::Http { port, .. } | CheckKind::Udp { port, .. } => *port,
        }
    }

    pub fn set_port(&mut self, to: u16) {
        match self {
            CheckKind::Tcp { port } | CheckKind::Http { port, .. } | CheckKind::Udp { port, .. } => *port = to,
        }
    }
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
    /// Translate addresses and ports both ways: full NAT through `snat_pool`, or DNAT only.
    Nat,
    /// Terminated by the agent's HTTP proxy (the `l7:` section); XDP leaves it to the stack.
    L7,
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

/// `port:` as written: one port (`443`) or an inclusive range (`8000-8099`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Ports(u16, u16);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(u16),
            Range(String),
        }
        let bad = |s: &str| format!("`{s}` is not a port or a port range; write 443 or 8000-8099");
        match Written::deserialize(d)? {
            Written::One(p) => Ok(Ports(p, p)),
            Written::Range(s) => {
                let (a, b) = s.split_once('-').ok_or_else(|| serde::de::Error::custom(bad(&s)))?;
                let port = |t: &str| t.trim().parse::<u16>().map_err(|_| serde::de::Error::custom(bad(&s)));
                Ok(Ports(port(a)?, port(b)?))
            }
        }
    }
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
            Mode::Nat => "nat",
            Mode::L7 => "l7",
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

/// The accepted duration forms, for error messages.
const DURATION_FORMS: &str = "write a whole number with a unit: 500ms, 2s, 1m or 1h";

/// Parses `500ms`, `2s` or `1m`.
/// A whole percentage, `50%` or `50`, from 0 to 100.
fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
    match number.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!(
            "`{text}` is not a percentage; write a whole number from 0 to 100 such as `50%` (0 turns panic mode off)"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration; {DURATION_FORMS}");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Writes a duration the way [`parse_duration`] reads it (`1m`, `2s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{d:?}")
    } else if ms != 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

impl Vip {
    /// The check that applies to `backend`: its own, else the VIP's; `None` means always healthy.
    pub fn check_for<'a>(&'a self, backend: &'a Backend) -> Option<&'a HealthCheck> {
        backend.health_check.as_ref().or(self.health_check.as_ref())
    }

    /// `address:port/protocol` (brackets around IPv6); `address/icmp` for ICMP VIPs.
    pub fn endpoint(&self) -> String {
        endpoint(&vip_key(self), self.port, self.port_last)
    }

    /// Serves a range of ports (kept in the data plane under port 0 of its address).
    pub fn is_port_range(&self) -> bool {
        self.port_last > self.port
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
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    node: Option<Spanned<RawNode>>,
    #[serde(default)]
    vips: Vec<Spanned<RawVip>>,
    #[serde(default)]
    bgp: Option<Spanned<RawBgp>>,
    #[serde(default)]
    agent: AgentListeners,
    #[serde(default)]
    nat_pools: Vec<Spanned<RawNatPool>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawNatPool {
    name: String,
    #[serde(default)]
    addresses: Vec<IpAddr>,
    ports: Option<Ports>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBgp {
    local_as: Option<u32>,
    router_id: Option<IpAddr>,
    hold_time: Option<RawScalar>,
    connect_retry: Option<RawScalar>,
    graceful_restart_time: Option<RawScalar>,
    withdraw_grace: Option<RawScalar>,
    #[serde(default)]
    communities: Vec<Spanned<RawScalar>>,
    med: Option<u32>,
    local_pref: Option<u32>,
    #[serde(default)]
    peers: Vec<Spanned<RawPeer>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPeer {
    address: IpAddr,
    remote_as: u32,
    port: Option<u16>,
    password: Option<String>,
    bfd: Option<Spanned<RawBfd>>,
    source_address: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBfd {
    enabled: Option<bool>,
    min_tx: Option<RawScalar>,
    min_rx: Option<RawScalar>,
    multiplier: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawNode {
    next_hop_mac: Option<Mac>,
    next_hop_v4: Option<IpAddr>,
    next_hop_v6: Option<IpAddr>,
    tunnel_source_v4: Option<Prefix>,
    tunnel_source_v6: Option<Prefix>,
    mtu: Option<u32>,
    flow_table_size: Option<u32>,
    nat_table_size: Option<u32>,
    nat_tcp_timeout: Option<RawScalar>,
    nat_closing_timeout: Option<RawScalar>,
    nat_udp_timeout: Option<RawScalar>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVip {
    name: String,
    address: IpAddr,
    #[serde(default)]
    port: Ports,
    protocol: Protocol,
    mode: Mode,
    #[serde(default)]
    hash: HashFields,
    maglev_table_size: Option<u32>,
    #[serde(default)]
    unhashable: Unhashable,
    #[serde(default)]
    backends: Vec<Spanned<RawBackend>>,
    health_check: Option<Spanned<RawHealthCheck>>,
    min_healthy: Option<u32>,
    panic_threshold: Option<Spanned<RawScalar>>,
    snat_pool: Option<String>,
    l7: Option<Spanned<l7::RawL7>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBackend {
    address: IpAddr,
    port: Option<u16>,
    interface: Option<String>,
    weight: Option<u32>,
    mac: Option<Mac>,
    // Boxed: a backend's own check is rare, and inline it would triple every backend's size
    // (100 000 of them at the limit, more in a file the YAML budget stops).
    health_check: Option<Box<Spanned<RawHealthCheck>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHealthCheck {
    #[serde(rename = "type")]
    kind: CheckType,
    port: Option<u16>,
    interval: Option<RawScalar>,
    timeout: Option<RawScalar>,
    rise: Option<u32>,
    fall: Option<u32>,
    path: Option<String>,
    host: Option<String>,
    expect_status: Option<u16>,
    expect_body: Option<String>,
    send: Option<String>,
    expect: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
enum CheckType {
    Tcp,
    Http,
    Udp,
}

/// Any scalar as text, so that `interval: 2` gets the duration message (with the accepted
/// forms) rather than a type error.
#[derive(Debug, Clone)]
struct RawScalar(String);

impl<'de> Deserialize<'de> for RawScalar {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl serde::de::Visitor<'_> for Visitor {
            type Value = RawScalar;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a duration ({DURATION_FORMS})")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawScalar, E> {
                Ok(RawScalar(v.to_owned()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawScalar, E> {
                Ok(RawScalar(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawScalar, E> {
                Ok(RawScalar(v.to_string()))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<RawScalar, E> {
                Ok(RawScalar(v.to_string()))
            }
        }
        d.deserialize_any(Visitor)
    }
}

/// A VIP's panic threshold unless it sets one (Envoy's default).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
/// Most connection-table entries (the LRU map is preallocated: ~100 bytes each).
const MAX_FLOW_TABLE_SIZE: u32 = 1 << 24;
/// Largest backend weight; weights are relative, so this only bounds arithmetic.
const MAX_WEIGHT: u32 = 65535;
/// Health-check defaults.
const DEFAULT_INTERVAL: Duration = Duration::from_secs(2);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
const DEFAULT_RISE: u32 = 2;
const DEFAULT_FALL: u32 = 3;
/// Probing more often than this only loads the backends; less often is no check at all.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Bound on rise and fall: beyond it a state change takes unreasonably long to notice.
const MAX_THRESHOLD: u32 = 100;
/// BGP defaults.
const DEFAULT_HOLD_TIME: Duration = Duration::from_secs(9);
const DEFAULT_CONNECT_RETRY: Duration = Duration::from_secs(5);
const DEFAULT_RESTART_TIME: Duration = Duration::from_secs(120);
const DEFAULT_WITHDRAW_GRACE: Duration = Duration::from_secs(5);
const BGP_PORT: u16 = 179;
/// NAT idle timeouts (like conntrack's, shorter for established TCP: an L4 balancer's flows
/// are usually short, and a dead flow holds a pool port).
const DEFAULT_NAT_TCP_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const DEFAULT_NAT_CLOSING_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_NAT_UDP_TIMEOUT: Duration = Duration::from_secs(60);
/// 4-octet AS numbers are carried as this in 2-octet fields (RFC 6793); no one may use it.
const AS_TRANS: u32 = 23456;
/// The graceful restart capability carries the restart time in 12 bits.
const MAX_RESTART_TIME: Duration = Duration::from_secs(4095);
const MIN_CONNECT_RETRY: Duration = Duration::from_millis(100);
const MAX_CONNECT_RETRY: Duration = Duration::from_secs(3600);
const MAX_WITHDRAW_GRACE: Duration = Duration::from_secs(600);
const MIN_BFD_INTERVAL: Duration = Duration::from_millis(10);
const MAX_BFD_INTERVAL: Duration = Duration::from_secs(60);
/// Longest TCP MD5 key Linux takes (TCP_MD5SIG_MAXKEYLEN).
const MAX_MD5_KEY: usize = 80;

/// Reads and validates the configuration file at `path`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse(path, &text)
}

/// `load`, re-parsing only the VIPs that changed since the last file read through `cache`.
pub fn load_cached(path: &Path, cache: &mut VipItemCache) -> Result<Config, ConfigError> {
    let text = read_text(path)?;
    parse_cached(path, &text, cache)
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let read_err = |source| ConfigError::Read { path: path.to_owned(), source };
    // Read one byte past the budget, no more: a huge file is refused without being read whole.
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|f| f.take(yaml_budget::MAX_FILE_BYTES as u64 + 1).read_to_end(&mut bytes))
        .map_err(read_err)?;
    if bytes.len() > yaml_budget::MAX_FILE_BYTES {
        return Err(ConfigError::SyntaxNoLocation {
            path: path.to_owned(),
            message: yaml_budget::too_large(bytes.len()),
        });
    }
    String::from_utf8(bytes).map_err(|e| read_err(std::io::Error::new(std::io::ErrorKind::InvalidData, e.utf8_error())))
}

/// Parses and validates `text`; `path` only names the source in errors.
pub fn parse(path: &Path, text: &str) -> Result<Config, ConfigError> {
    check_size(path, text)?;
    let raw = incremental::read_whole(text).map_err(|e| syntax_error(path, &e))?;
    Checker { path }.check(raw)
}

/// `parse`, re-parsing only the VIPs that changed since the last text read through `cache`.
pub fn parse_cached(path: &Path, text: &str, cache: &mut VipItemCache) -> Result<Config, ConfigError> {
    check_size(path, text)?;
    let raw = cache.read(text).map_err(|e| syntax_error(path, &e))?;
    Checker { path }.check(raw)
}

fn check_size(path: &Path, text: &str) -> Result<(), ConfigError> {
    if text.len() > yaml_budget::MAX_FILE_BYTES {
        return Err(ConfigError::SyntaxNoLocation {
            path: path.to_owned(),
            message: yaml_budget::too_large(text.len()),
        });
    }
    Ok(())
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
        let nat_pools = self.check_pools(raw.nat_pools)?;

        // At the first VIP over the limit.
        let max_vips = lb_common::MAX_VIPS as usize;
        if let Some(over) = raw.vips.get(max_vips) {
            return Err(self.err(
                &over.referenced,
                format!("vips[{max_vips}]"),
                format!(
                    "more than {max_vips} VIPs (the per-node limit; the file has {}); split them over more nodes",
                    raw.vips.len()
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
            // Each backend of an L4 VIP takes a backend slot (an l7 VIP's are proxied by the
            // agent); refused at the backend that crosses the limit.
            if spanned.value.mode != Mode::L7 {
                let max = lb_common::MAX_BACKENDS as usize;
                let room = max.saturating_sub(backend_slots);
                if let Some(over) = spanned.value.backends.get(room) {
                    return Err(self.err(
                        &over.referenced,
                        format!("vips[{i}].backends[{room}]"),
                        format!(
                            "more than {max} backends over all VIPs (the per-node limit); split the VIPs over more nodes"
                        ),
                    ));
                }
                backend_slots += spanned.value.backends.len();
            }
            let vip = self.check_vip(i, spanned.value, &at, &node, &nat_pools)?;
            if let Some(line) = names.insert(vip.name.clone(), at.line()) {
                return Err(self.err(
                    &at,
                    format!("vips[{i}].name"),
                    format!("`{}` is already the name of the VIP at line {line}; VIP names must be unique", vip.name),
                ));
            }
            // Port ranges share one key per address and protocol (see `config::vip_key`).
            let key_port = if vip.is_port_range() { 0 } else { vip.port };
            if let Some((line, other)) =
                endpoints.insert((vip.address, key_port, vip.protocol), (at.line(), vip.name.clone()))
            {
                let what = if key_port == 0 && vip.protocol != Protocol::Icmp {
                    "is a second port range on the same address and protocol as"
                } else {
                    "has the same address, port and protocol as"
                };
                return Err(self.err(
                    &at,
                    format!("vips[{i}].address"),
                    format!("VIP `{}` {what} `{other}` (line {line}); change one of them", vip.name),
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
            vips.push(vip);
        }
        let bgp = match raw.bgp {
            Some(b) => Some(self.check_bgp(b.value, &b.referenced)?),
            None => None,
        };
        self.check_pool_addresses(&nat_pools, &vips)?;
        Ok(Config { node, vips, bgp, agent: raw.agent, nat_pools })
    }

    fn check_as(&self, at: &serde_saphyr::Location, field: &str, asn: u32) -> Result<u32, ConfigError> {
        match asn {
            0 => Err(self.err(at, field, "AS 0 is reserved (RFC 7607); use the real AS number (e.g. 65010)")),
            AS_TRANS => Err(self.err(
                at,
                field,
                "23456 is AS_TRANS, the stand-in for 4-octet AS numbers (RFC 6793); use the real AS number",
            )),
            n => Ok(n),
        }
    }

    fn check_bgp(&self, raw: RawBgp, at: &serde_saphyr::Location) -> Result<BgpConfig, ConfigError> {
        let local_as = match raw.local_as {
            Some(n) => self.check_as(at, "bgp.local_as", n)?,
            None => return Err(self.err(at, "bgp.local_as", "required: this node's AS number (e.g. local_as: 65010)")),
        };
        let router_id = match raw.router_id {
            None => {
                return Err(self.err(
                    at,
                    "bgp.router_id",
                    "required: an IPv4 address unique among the routers, usually the node's own (e.g. router_id: 192.0.2.21)",
                ));
            }
            Some(IpAddr::V6(_)) => {
                return Err(self.err(
                    at,
                    "bgp.router_id",
                    "must be an IPv4 address (BGP identifiers are 32 bits, also on IPv6-only nodes), e.g. 192.0.2.21",
                ));
            }
            Some(IpAddr::V4(id)) => {
                if id.is_unspecified() || id.is_broadcast() || id.is_multicast() {
                    return Err(self.err(
                        at,
                        "bgp.router_id",
                        format!("{id} is not a valid BGP identifier; use a unicast IPv4 address (e.g. the node's own)"),
                    ));
                }
                id
            }
        };
        let duration = |name: &str, raw: Option<RawScalar>, default: Duration| match raw {
            None => Ok(default),
            Some(RawScalar(text)) => parse_duration(&text).map_err(|m| self.err(at, format!("bgp.{name}"), m)),
        };
        let hold_time = duration("hold_time", raw.hold_time, DEFAULT_HOLD_TIME)?;
        let secs = hold_time.as_secs();
        if hold_time.subsec_nanos() != 0 || secs == 1 || secs == 2 || secs > 65535 {
            return Err(self.err(
                at,
                "bgp.hold_time",
                format!(
                    "{} is not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds",
                    format_duration(hold_time)
                ),
            ));
        }
        let connect_retry = duration("connect_retry", raw.connect_retry, DEFAULT_CONNECT_RETRY)?;
        if !(MIN_CONNECT_RETRY..=MAX_CONNECT_RETRY).contains(&connect_retry) {
            return Err(self.err(
                at,
                "bgp.connect_retry",
                format!(
                    "{} is out of range; use {} to {}",
                    format_duration(connect_retry),
                    format_duration(MIN_CONNECT_RETRY),
                    format_duration(MAX_CONNECT_RETRY)
                ),
            ));
        }
        let graceful_restart_time = duration("graceful_restart_time", raw.graceful_restart_time, DEFAULT_RESTART_TIME)?;
        if graceful_restart_time.subsec_nanos() != 0 || graceful_restart_time > MAX_RESTART_TIME {
            return Err(self.err(
                at,
                "bgp.graceful_restart_time",
                format!(
                    "{} is out of range; use 0 (no graceful restart) to 4095s, in whole seconds",
                    format_duration(graceful_restart_time)
                ),
            ));
        }
        let withdraw_grace = duration("withdraw_grace", raw.withdraw_grace, DEFAULT_WITHDRAW_GRACE)?;
        if withdraw_grace > MAX_WITHDRAW_GRACE {
            return Err(self.err(
                at,
                "bgp.withdraw_grace",
                format!(
                    "{} is out of range; use 0 to {}",
                    format_duration(withdraw_grace),
                    format_duration(MAX_WITHDRAW_GRACE)
                ),
            ));
        }
        let mut communities = Vec::with_capacity(raw.communities.len());
        for (i, c) in raw.communities.into_iter().enumerate() {
            let community: Community =
                c.value.0.parse().map_err(|m| self.err(&c.referenced, format!("bgp.communities[{i}]"), m))?;
            if !communities.contains(&community) {
                communities.push(community);
            }
        }
        if raw.peers.is_empty() {
            return Err(self.err(
                at,
                "bgp.peers",
                "list at least one peer (address and remote_as), or remove the bgp section",
            ));
        }
        let mut peers: Vec<BgpPeer> = Vec::with_capacity(raw.peers.len());
        for (i, spanned) in raw.peers.into_iter().enumerate() {
            let peer = self.check_peer(i, spanned.value, &spanned.referenced)?;
            if let Some(j) = peers.iter().position(|p| p.address == peer.address) {
                return Err(self.err(
                    &spanned.referenced,
                    format!("bgp.peers[{i}].address"),
                    format!("{} is already bgp.peers[{j}]; list each neighbour once", peer.address),
                ));
            }
            peers.push(peer);
        }
        if raw.local_pref.is_some() && !peers.iter().any(|p| p.is_ibgp(local_as)) {
            return Err(self.err(
                at,
                "bgp.local_pref",
                format!(
                    "LOCAL_PREF is only sent to iBGP peers (remote_as {local_as}) and none is configured; remove it, or use med toward eBGP peers"
                ),
            ));
        }
        Ok(BgpConfig {
            local_as,
            router_id,
            hold_time,
            connect_retry,
            graceful_restart_time,
            withdraw_grace,
            communities,
            med: raw.med,
            local_pref: raw.local_pref,
            peers,
        })
    }

    fn check_peer(&self, i: usize, raw: RawPeer, at: &serde_saphyr::Location) -> Result<BgpPeer, ConfigError> {
        let field = |name: &str| format!("bgp.peers[{i}].{name}");
        let unusable = |a: &IpAddr| a.is_unspecified() || a.is_multicast() || a.is_loopback();
        if unusable(&raw.address) {
            return Err(self.err(
                at,
                field("address"),
                format!("{} cannot be a BGP neighbour; use the router's unicast address on the link", raw.address),
            ));
        }
        let remote_as = self.check_as(at, &field("remote_as"), raw.remote_as)?;
        let port = raw.port.unwrap_or(BGP_PORT);
        if port == 0 {
            return Err(self.err(at, field("port"), "must be 1..=65535; leave it out for BGP's port, 179"));
        }
        if let Some(password) = &raw.password {
            if password.is_empty() {
                return Err(self.err(
                    at,
                    field("password"),
                    "an empty password signs nothing; remove it, or give the TCP MD5 key the router has",
                ));
            }
            if password.len() > MAX_MD5_KEY {
                return Err(self.err(
                    at,
                    field("password"),
                    format!("{} bytes is longer than the {MAX_MD5_KEY} Linux takes for a TCP MD5 key", password.len()),
                ));
            }
        }
        if let Some(source) = raw.source_address {
            if source.is_ipv4() != raw.address.is_ipv4() {
                return Err(self.err(
                    at,
                    field("source_address"),
                    format!(
                        "{source} is not of the peer's address family; use this node's {} address on the link",
                        if raw.address.is_ipv4() { "IPv4" } else { "IPv6" }
                    ),
                ));
            }
            if unusable(&source) {
                return Err(self.err(
                    at,
                    field("source_address"),
                    format!("{source} cannot be a session's source; use one of this node's unicast addresses"),
                ));
            }
        }
        let bfd = match raw.bfd {
            Some(b) => self.check_bfd(&field("bfd"), b.value, &b.referenced)?,
            None => BfdConfig::default(),
        };
        Ok(BgpPeer {
            address: raw.address,
            remote_as,
            port,
            password: raw.password,
            bfd,
            source_address: raw.source_address,
        })
    }

    fn check_bfd(&self, prefix: &str, raw: RawBfd, at: &serde_saphyr::Location) -> Result<BfdConfig, ConfigError> {
        let defaults = BfdConfig::default();
        let interval = |name: &str, raw: Option<RawScalar>, default: Duration| {
            let value = match raw {
                None => default,
                Some(RawScalar(text)) => {
                    parse_duration(&text).map_err(|m| self.err(at, format!("{prefix}.{name}"), m))?
                }
            };
            if !(MIN_BFD_INTERVAL..=MAX_BFD_INTERVAL).contains(&value) {
                return Err(self.err(
                    at,
                    format!("{prefix}.{name}"),
                    format!(
                        "{} is out of range; use {} to {}",
                        format_duration(value),
                        format_duration(MIN_BFD_INTERVAL),
                        format_duration(MAX_BFD_INTERVAL)
                    ),
                ));
            }
            Ok(value)
        };
        let min_tx = interval("min_tx", raw.min_tx, defaults.min_tx)?;
        let min_rx = interval("min_rx", raw.min_rx, defaults.min_rx)?;
        let multiplier = match raw.multiplier {
            None => defaults.multiplier,
            Some(n) => u8::try_from(n).ok().filter(|n| *n >= 1).ok_or_else(|| {
                self.err(
                    at,
                    format!("{prefix}.multiplier"),
                    format!("{n}: use 1..=255, the packets the peer may miss before it counts us as down (3 is usual)"),
                )
            })?,
        };
        Ok(BfdConfig { enabled: raw.enabled.unwrap_or(defaults.enabled), min_tx, min_rx, multiplier })
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
        let nat_table_size = raw.nat_table_size.unwrap_or(lb_common::NAT_TABLE_SIZE);
        if !(1024..=MAX_FLOW_TABLE_SIZE).contains(&nat_table_size) {
            return Err(self.err(at, "node.nat_table_size", format!("must be 1024..={MAX_FLOW_TABLE_SIZE}")));
        }
        let timeout = |name: &str, value: Option<RawScalar>, default: Duration| -> Result<Duration, ConfigError> {
            let field = format!("node.{name}");
            let d = match value {
                None => return Ok(default),
                Some(RawScalar(text)) => parse_duration(&text).map_err(|m| self.err(at, &field, m))?,
            };
            if d < Duration::from_secs(1) || d > Duration::from_secs(u64::from(u32::MAX)) {
                return Err(self.err(
                    at,
                    &field,
                    "NAT timeouts count whole seconds: use 1s or more (e.g. 30s, 15m, 2h)",
                ));
            }
            Ok(d)
        };
        let nat_tcp_timeout = timeout("nat_tcp_timeout", raw.nat_tcp_timeout, DEFAULT_NAT_TCP_TIMEOUT)?;
        let nat_closing_timeout = timeout("nat_closing_timeout", raw.nat_closing_timeout, DEFAULT_NAT_CLOSING_TIMEOUT)?;
        let nat_udp_timeout = timeout("nat_udp_timeout", raw.nat_udp_timeout, DEFAULT_NAT_UDP_TIMEOUT)?;
        if raw.next_hop_v4.is_some_and(|a| !a.is_ipv4()) {
            return Err(self.err(at, "node.next_hop_v4", "must be an IPv4 address (the router's, on this link)"));
        }
        if raw.next_hop_v6.is_some_and(|a| !a.is_ipv6()) {
            return Err(self.err(at, "node.next_hop_v6", "must be an IPv6 address (the router's, on this link)"));
        }
        Ok(Node {
            next_hop_mac: raw.next_hop_mac,
            next_hop_v4: raw.next_hop_v4,
            next_hop_v6: raw.next_hop_v6,
            tunnel_source_v4: raw.tunnel_source_v4,
            tunnel_source_v6: raw.tunnel_source_v6,
            mtu: raw.mtu,
            flow_table_size,
            nat_table_size,
            nat_tcp_timeout,
            nat_closing_timeout,
            nat_udp_timeout,
        })
    }

    fn check_vip(
        &self,
        i: usize,
        raw: RawVip,
        at: &serde_saphyr::Location,
        node: &Node,
        pools: &[NatPool],
    ) -> Result<Vip, ConfigError> {
        let field = |name: &str| format!("vips[{i}].{name}");
        if raw.name.trim().is_empty() {
            return Err(self.err(
                at,
                field("name"),
                "must not be empty; give the VIP a short unique name such as `web`",
            ));
        }
        let Ports(port, port_last) = raw.port;
        if port_last < port {
            return Err(self.err(
                at,
                field("port"),
                format!("the range {port}-{port_last} is empty; write the lower port first (e.g. 8000-8099)"),
            ));
        }
        match (raw.protocol, port) {
            (Protocol::Tcp | Protocol::Udp, 0) => {
                return Err(self.err(
                    at,
                    field("port"),
                    format!("a {} VIP needs a port between 1 and 65535", raw.protocol),
                ));
            }
            (Protocol::Icmp, p) if p != 0 || port_last != 0 => {
                return Err(self.err(at, field("port"), "an icmp VIP has no port; remove `port` or set it to 0"));
            }
            _ => {}
        }
        let pool = self.check_nat_mode(&raw, at, &field, pools)?;
        let table_size = raw.maglev_table_size.unwrap_or(DEFAULT_TABLE_SIZE);
        if table_size > lb_common::MAX_MAGLEV_TABLE_SIZE || !lb_common::is_prime(table_size) {
            return Err(self.err(
                at,
                field("maglev_table_size"),
                format!(
                    "{table_size} must be a prime no larger than {} (e.g. 16381, the default, or 65537)",
                    lb_common::MAX_MAGLEV_TABLE_SIZE
                ),
            ));
        }
        self.check_l7_mode(i, &raw, at)?;
        let mut backends: Vec<Backend> = Vec::with_capacity(raw.backends.len());
        // A set, not a scan of `backends`: a VIP may have tens of thousands.
        let mut addresses = HashSet::with_capacity(raw.backends.len());
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
            if !addresses.insert(b.address) {
                return Err(self.err(&bat, bfield("address"), format!("{} is listed twice for this VIP", b.address)));
            }
            if b.port.is_some() && raw.mode != Mode::Nat {
                return Err(self.err(
                    &bat,
                    bfield("port"),
                    "only mode: nat translates ports; direct server return keeps the VIP's port, so remove `port`",
                ));
            }
            if b.interface.is_some() && raw.mode != Mode::Nat {
                return Err(self.err(
                    &bat,
                    bfield("interface"),
                    "only mode: nat sends to backends by another interface; direct server return answers by the one the packet came in on, so remove `interface`",
                ));
            }
            if let Some(name) = &b.interface
                && (name.is_empty() || name.len() >= 16 || name.contains(['/', ' ']))
            {
                return Err(self.err(&bat, bfield("interface"), format!("`{name}` is not an interface name")));
            }
            if b.port == Some(0) {
                return Err(self.err(
                    &bat,
                    bfield("port"),
                    "must be 1..=65535 (or absent: the client's destination port)",
                ));
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
                    // Without `mac`, the agent resolves the backend's address on the interface.
                }
                Mode::Nat => {
                    if b.address.is_ipv4() != raw.address.is_ipv4() {
                        return Err(self.err(
                            &bat,
                            bfield("address"),
                            "NAT between address families is not supported: give the VIP backends of its own family",
                        ));
                    }
                    if let Some(pool) = pool
                        && pool.addresses[0].is_ipv4() != b.address.is_ipv4()
                    {
                        return Err(self.err(
                            &bat,
                            bfield("address"),
                            format!("the pool `{}` has addresses of the other family than this backend", pool.name),
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
                    // Without `mac`: node.next_hop_mac, else the MAC of node.next_hop_v4/v6, else
                    // of the backend itself (on-link), resolved by the agent.
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
                // check_l7_mode refuses VIP-level backends on l7 VIPs.
                Mode::L7 => {}
            }
            let health_check = match b.health_check {
                Some(hc) => {
                    // Without a port it probes where this backend serves: its own `port` (nat).
                    let serves = b.port.unwrap_or(port);
                    Some(self.check_health(hc.value, &hc.referenced, &bfield("health_check"), raw.protocol, serves)?)
                }
                None => None,
            };
            backends.push(Backend {
                address: b.address,
                port: b.port,
                interface: b.interface,
                weight,
                mac: b.mac,
                health_check,
            });
        }
        // An l7 VIP's check probes each backend's own port unless it names one (port 0 here).
        let check_port = if raw.mode == Mode::L7 { 0 } else { port };
        let port_named = raw.health_check.as_ref().is_some_and(|hc| hc.value.port.is_some());
        let health_check = match raw.health_check {
            Some(hc) => {
                Some(self.check_health(hc.value, &hc.referenced, &field("health_check"), raw.protocol, check_port)?)
            }
            None => None,
        };
        // A VIP check without a port probes where each backend serves: a nat backend with its
        // own `port` gets the check on that port (as its own check).
        if let Some(check) = health_check.as_ref().filter(|_| !port_named && raw.mode == Mode::Nat) {
            for b in backends.iter_mut().filter(|b| b.health_check.is_none()) {
                if let Some(serves) = b.port.filter(|&p| p != check.kind.port()) {
                    let mut own = check.clone();
                    own.kind.set_port(serves);
                    b.health_check = Some(own);
                }
            }
        }
        let l7 = match raw.l7 {
            Some(l7) => Some(self.check_l7(i, l7.value, &l7.referenced, raw.protocol)?),
            None => None,
        };
        let backend_count = l7.as_ref().map_or(backends.len(), |l7| l7.backends().count());
        let min_healthy = raw.min_healthy.unwrap_or(1);
        if min_healthy == 0 {
            return Err(self.err(
                at,
                field("min_healthy"),
                "must be at least 1: a VIP with no healthy backend is down whatever this says",
            ));
        }
        // Only an explicit value is held to the backend count: a VIP with no backends is valid
        // (and down) with the default.
        if raw.min_healthy.is_some() && min_healthy as usize > backend_count {
            return Err(self.err(
                at,
                field("min_healthy"),
                format!(
                    "{min_healthy} is more than the VIP's {backend_count} backends, so it could never be up; lower it",
                ),
            ));
        }
        let panic_threshold = match raw.panic_threshold {
            None => DEFAULT_PANIC_THRESHOLD,
            Some(value) => {
                let fail = |message: String| self.err(&value.referenced, field("panic_threshold"), message);
                if raw.mode == Mode::L7 {
                    return Err(fail(
                        "applies to L4 VIPs only (the l7 proxy retries another backend instead); remove it".into(),
                    ));
                }
                parse_percent(&value.value.0).map_err(fail)?
            }
        };
        Ok(Vip {
            name: raw.name,
            address: raw.address,
            port,
            port_last,
            protocol: raw.protocol,
            mode: raw.mode,
            hash: raw.hash,
            table_size,
            unhashable: raw.unhashable,
            backends,
            health_check,
            min_healthy,
            panic_threshold,
            snat_pool: raw.snat_pool,
            l7,
        })
    }

    /// `mode: nat` needs TCP or UDP; `snat_pool` needs `mode: nat` and a pool of that name.
    fn check_nat_mode<'p>(
        &self,
        raw: &RawVip,
        at: &serde_saphyr::Location,
        field: &dyn Fn(&str) -> String,
        pools: &'p [NatPool],
    ) -> Result<Option<&'p NatPool>, ConfigError> {
        if raw.mode != Mode::Nat {
            if raw.snat_pool.is_some() {
                return Err(self.err(
                    at,
                    field("snat_pool"),
                    "only mode: nat uses a source pool; remove it or set mode: nat",
                ));
            }
            return Ok(None);
        }
        if raw.protocol == Protocol::Icmp {
            return Err(self.err(at, field("mode"), "NAT translates ports: use it with tcp or udp VIPs"));
        }
        let Some(name) = &raw.snat_pool else { return Ok(None) };
        match pools.iter().find(|p| &p.name == name) {
            Some(pool) => Ok(Some(pool)),
            None => {
                let known: Vec<&str> = pools.iter().map(|p| p.name.as_str()).collect();
                Err(self.err(
                    at,
                    field("snat_pool"),
                    format!(
                        "no pool named `{name}` under nat_pools (known: {}); add it or fix the name",
                        if known.is_empty() { "none".to_owned() } else { known.join(", ") }
                    ),
                ))
            }
        }
    }

    fn check_pools(&self, raw: Vec<Spanned<RawNatPool>>) -> Result<Vec<NatPool>, ConfigError> {
        if raw.len() > lb_common::MAX_NAT_POOLS as usize {
            return Err(self.err(
                &raw[0].referenced,
                "nat_pools",
                format!("at most {} pools are supported", lb_common::MAX_NAT_POOLS),
            ));
        }
        let mut pools: Vec<NatPool> = Vec::with_capacity(raw.len());
        for (i, spanned) in raw.into_iter().enumerate() {
            let (p, at) = (spanned.value, spanned.referenced);
            let field = |name: &str| format!("nat_pools[{i}].{name}");
            if p.name.trim().is_empty() || pools.iter().any(|o| o.name == p.name) {
                return Err(self.err(&at, field("name"), "give every pool a unique, non-empty name"));
            }
            if p.addresses.is_empty() || p.addresses.len() > lb_common::MAX_POOL_ADDRS {
                return Err(self.err(
                    &at,
                    field("addresses"),
                    format!("list 1 to {} addresses of one family", lb_common::MAX_POOL_ADDRS),
                ));
            }
            if p.addresses.iter().any(|a| a.is_ipv4() != p.addresses[0].is_ipv4()) {
                return Err(self.err(&at, field("addresses"), "mixes IPv4 and IPv6; make one pool per family"));
            }
            if let Some((k, a)) = p.addresses.iter().enumerate().find(|(k, a)| p.addresses[..*k].contains(a)) {
                return Err(self.err(&at, field(&format!("addresses[{k}]")), format!("{a} is listed twice")));
            }
            let Some(Ports(port_first, port_last)) = p.ports else {
                return Err(self.err(
                    &at,
                    field("ports"),
                    "required: the source ports to use, e.g. ports: 20000-59999",
                ));
            };
            if port_first == 0 || port_last < port_first {
                return Err(self.err(
                    &at,
                    field("ports"),
                    format!("{port_first}-{port_last} is not a usable range; write first-last within 1..=65535, e.g. 20000-59999"),
                ));
            }
            pools.push(NatPool { name: p.name, addresses: p.addresses, port_first, port_last });
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// A pool address must not be a VIP's: replies to it are looked up as NAT replies first.
    fn check_pool_addresses(&self, pools: &[NatPool], vips: &[Vip]) -> Result<(), ConfigError> {
        for pool in pools {
            if let Some(vip) = vips.iter().find(|v| pool.addresses.contains(&v.address)) {
                return Err(self.err(
                    &serde_saphyr::Location::UNKNOWN,
                    format!("nat_pools.{}.addresses", pool.name),
                    format!(
                        "{} is also the address of VIP `{}`; give the pool addresses of its own",
                        vip.address, vip.name
                    ),
                ));
            }
        }
        Ok(())
    }

    /// Validates a `health_check` block; `prefix` is its field path, and the VIP's protocol and
    /// port supply the default port.
    fn check_health(
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
                return Err(self.err(at, field("port"), "must be 1..=65535, or left out to check the VIP's port"));
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
        let duration = |name: &str, raw: Option<RawScalar>, default: Duration| match raw {
            None => Ok(default),
            Some(RawScalar(text)) => parse_duration(&text).map_err(|m| self.err(at, field(name), m)),
        };
        let interval = duration("interval", raw.interval, DEFAULT_INTERVAL)?;
        if !(MIN_INTERVAL..=MAX_INTERVAL).contains(&interval) {
            return Err(self.err(
                at,
                field("interval"),
                format!(
                    "{} is out of range; use {} to {}",
                    format_duration(interval),
                    format_duration(MIN_INTERVAL),
                    format_duration(MAX_INTERVAL)
                ),
            ));
        }
        let timeout = duration("timeout", raw.timeout, DEFAULT_TIMEOUT)?;
        if timeout.is_zero() || timeout >= interval {
            return Err(self.err(
                at,
                field("timeout"),
                format!(
                    "{} must be above 0 and shorter than the interval ({}), so probes never overlap",
                    format_duration(timeout),
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
                    format!("{n} consecutive results: use 1..={MAX_THRESHOLD} (1 reacts to a single probe)"),
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
                        format!("{expect_status} is not an HTTP status; use 100..=599"),
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
                            "a udp check needs a payload that the service answers (e.g. send: \"ping\")",
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

fn syntax_error(path: &Path, e: &serde_saphyr::Error) -> ConfigError {
    // A budget stops the reader: say which, in xlb's words, where it was crossed.
    if let Some(message) = yaml_budget::breach_message(e) {
        return match e.location() {
            Some(at) if at.line() > 0 => {
                ConfigError::Syntax { path: path.to_owned(), line: at.line(), column: at.column(), message }
            }
            _ => ConfigError::SyntaxNoLocation { path: path.to_owned(), message },
        };
    }
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
            (Mode::DsrIpip, HashFields::SourceIp, Unhashable::Drop, 16381)
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
                "node:\n  next_hop_v4: fd00::1\n".to_string(),
                "node.next_hop_v4",
                "IPv4 address",
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
    fn port_ranges_parse_and_are_checked() {
        let vip = |port: &str, protocol: &str| {
            format!(
                "vips:\n  - name: r\n    address: 192.0.2.1\n    port: {port}\n    protocol: {protocol}\n    mode: dsr-l2\n"
            )
        };
        let config = check(&vip("8000-8099", "tcp")).unwrap();
        let v = &config.vips[0];
        assert_eq!((v.port, v.port_last, v.is_port_range()), (8000, 8099, true));
        assert_eq!(v.endpoint(), "192.0.2.1:8000-8099/tcp");
        let one = check(&vip("443", "tcp")).unwrap();
        assert_eq!((one.vips[0].port, one.vips[0].port_last, one.vips[0].is_port_range()), (443, 443, false));
        for (text, hint) in [
            (vip("8099-8000", "tcp"), "vips[0].port: the range 8099-8000 is empty"),
            (vip("80-x", "tcp"), "`80-x` is not a port or a port range"),
            (vip("1-2", "icmp"), "an icmp VIP has no port"),
        ] {
            let err = check(&text).unwrap_err().to_string();
            assert!(err.contains(hint), "expected {hint}: {err}");
        }
        let two = format!(
            "{}{}",
            vip("8000-8099", "udp"),
            vip("9000-9099", "udp").replace("vips:\n", "").replace("name: r", "name: s")
        );
        let err = check(&two).unwrap_err().to_string();
        assert!(err.contains("a second port range on the same address and protocol"), "{err}");
        let mixed = format!(
            "{}{}",
            vip("8000-8099", "tcp"),
            vip("8080", "tcp").replace("vips:\n", "").replace("name: r", "name: s")
        );
        assert!(check(&mixed).is_ok(), "a single port inside a range is allowed: it takes precedence");
    }

    #[test]
    fn agent_listeners_are_read_and_checked() {
        let config = check(
            "agent:\n  admin_socket: /run/xlb/edge.sock\n  metrics_listen: 127.0.0.1:9842\n  state_dir: /var/lib/xlb/edge\n",
        )
        .unwrap();
        assert_eq!(config.agent.admin_socket, Some(PathBuf::from("/run/xlb/edge.sock")));
        assert_eq!(config.agent.state_dir, Some(PathBuf::from("/var/lib/xlb/edge")));
        assert_eq!(config.agent.metrics_listen, Some("127.0.0.1:9842".parse().unwrap()));
        assert_eq!(check("vips: []\n").unwrap().agent, AgentListeners::default());
        let err = check("agent:\n  metrics_listen: localhost\n").unwrap_err().to_string();
        assert!(err.contains(":2:") && err.contains("socket address"), "{err}");
        let err = check("agent:\n  metrics: 127.0.0.1:1\n").unwrap_err().to_string();
        assert!(err.contains("unknown field `metrics`"), "{err}");
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

    fn checked(extra: &str) -> String {
        vip(&format!(
            "    backends:\n      - address: 10.1.0.1\n      - address: 10.1.0.2\n        health_check: {{ type: tcp, port: 8080 }}\n{extra}"
        ))
    }

    #[test]
    fn panic_threshold_defaults_to_half_and_takes_percentages() {
        assert_eq!(check(&checked("")).unwrap().vips[0].panic_threshold, DEFAULT_PANIC_THRESHOLD);
        for (text, want) in [("25%", 25), ("0", 0), ("100 %", 100), ("\"75%\"", 75)] {
            let config = check(&checked(&format!("    panic_threshold: {text}\n"))).unwrap();
            assert_eq!(config.vips[0].panic_threshold, want, "{text}");
        }
        for bad in ["101%", "-5", "12.5%", "half"] {
            let err = check(&checked(&format!("    panic_threshold: {bad}\n"))).unwrap_err();
            let ConfigError::Invalid { line, column, field, message, .. } = &err else { panic!("{err:?}") };
            assert_eq!(field, "vips[0].panic_threshold", "{bad}");
            // The value's own place: the last line of `checked`, after `panic_threshold: `.
            assert_eq!((*line, *column), (15, 22), "{bad}: {err}");
            assert_eq!(
                message,
                &format!(
                    "`{bad}` is not a percentage; write a whole number from 0 to 100 such as `50%` (0 turns panic mode off)"
                )
            );
        }
    }

    #[test]
    fn health_checks_default_and_resolve_ports() {
        let config = check(&checked("    health_check:\n      type: tcp\n")).unwrap();
        let v = &config.vips[0];
        let default = HealthCheck {
            kind: CheckKind::Tcp { port: 80 },
            interval: Duration::from_secs(2),
            timeout: Duration::from_secs(1),
            rise: 2,
            fall: 3,
        };
        assert_eq!(v.health_check, Some(default.clone()));
        assert_eq!(v.min_healthy, 1);
        assert_eq!(v.check_for(&v.backends[0]), Some(&default));
        let own = v.check_for(&v.backends[1]).unwrap();
        assert_eq!(own, &HealthCheck { kind: CheckKind::Tcp { port: 8080 }, ..default });

        // No VIP check: only the backend with its own is checked.
        let config = check(&checked("")).unwrap();
        let v = &config.vips[0];
        assert_eq!((v.check_for(&v.backends[0]), v.check_for(&v.backends[1]).is_some()), (None, true));
    }

    #[test]
    fn a_nat_backend_s_check_probes_its_own_port() {
        let nat = |check: &str| {
            format!(
                "vips:\n  - name: n\n    address: 192.0.2.1\n    port: 80\n    protocol: tcp\n    mode: nat\n{check}    backends:\n      - {{ address: 10.1.0.1, port: 8080 }}\n      - address: 10.1.0.2\n      - {{ address: 10.1.0.3, port: 9000, health_check: {{ type: http }} }}\n"
            )
        };
        let ports = |config: &Config| -> Vec<Option<u16>> {
            let v = &config.vips[0];
            v.backends.iter().map(|b| v.check_for(b).map(|c| c.kind.port())).collect()
        };
        // The VIP's check without a port: each backend's own port, else the VIP's.
        let config = check(&nat("    health_check: { type: tcp }\n")).unwrap();
        assert_eq!(ports(&config), [Some(8080), Some(80), Some(9000)]);
        // A port named in the check is the port probed.
        let config = check(&nat("    health_check: { type: tcp, port: 7000 }\n")).unwrap();
        assert_eq!(ports(&config), [Some(7000), Some(7000), Some(9000)]);
        // No VIP check: only the backend with its own.
        let config = check(&nat("")).unwrap();
        assert_eq!(ports(&config), [None, None, Some(9000)]);
    }

    #[test]
    fn http_and_udp_checks_parse() {
        let config = check(&checked(
            "    min_healthy: 2\n    health_check:\n      type: http\n      port: 8443\n      interval: 500ms\n      timeout: 250ms\n      rise: 1\n      fall: 1\n      path: /healthz?full=1\n      host: www.example.com\n      expect_status: 204\n      expect_body: ready\n",
        ))
        .unwrap();
        let v = &config.vips[0];
        assert_eq!(v.min_healthy, 2);
        assert_eq!(
            v.health_check,
            Some(HealthCheck {
                kind: CheckKind::Http {
                    port: 8443,
                    path: "/healthz?full=1".into(),
                    host: Some("www.example.com".into()),
                    expect_status: 204,
                    expect_body: Some("ready".into()),
                },
                interval: Duration::from_millis(500),
                timeout: Duration::from_millis(250),
                rise: 1,
                fall: 1,
            })
        );
        let config = check(
            "vips:\n  - name: ping\n    address: 192.0.2.1\n    protocol: icmp\n    mode: dsr-l2\n    health_check:\n      type: udp\n      port: 53\n      interval: 1m\n      send: \"\\x00ping\"\n      expect: pong\n",
        )
        .unwrap();
        let udp = config.vips[0].health_check.as_ref().unwrap();
        assert_eq!(udp.kind, CheckKind::Udp { port: 53, send: b"\0ping".to_vec(), expect: Some(b"pong".to_vec()) });
        assert_eq!(udp.interval, Duration::from_secs(60));
        let config = check(&vip("    health_check: { type: http }\n")).unwrap();
        assert_eq!(
            config.vips[0].health_check.as_ref().unwrap().kind,
            CheckKind::Http { port: 80, path: "/".into(), host: None, expect_status: 200, expect_body: None }
        );
    }

    const NAT: &str = "nat_pools:\n  - name: edge\n    addresses: [198.51.100.1, 198.51.100.2]\n    ports: 20000-20999\nvips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: nat\n";

    #[test]
    fn nat_vips_and_pools_parse_with_defaults() {
        let config = check(&format!(
            "{NAT}    snat_pool: edge\n    backends:\n      - {{ address: 10.1.0.1, port: 8080 }}\n      - {{ address: 10.1.0.2 }}\n"
        ))
        .unwrap();
        let vip = &config.vips[0];
        assert_eq!(vip.mode, Mode::Nat);
        assert_eq!(vip.snat_pool.as_deref(), Some("edge"));
        assert_eq!(vip.backends[0].port, Some(8080));
        assert_eq!(vip.backends[1].port, None);
        assert_eq!(config.nat_pools[0].capacity(), 2000);
        assert_eq!(config.node.nat_table_size, lb_common::NAT_TABLE_SIZE);
        assert_eq!(config.node.nat_tcp_timeout, Duration::from_secs(900));
        assert_eq!(config.node.nat_closing_timeout, Duration::from_secs(10));
        assert_eq!(config.node.nat_udp_timeout, Duration::from_secs(60));
        let dnat = check(&format!("{NAT}    backends:\n      - {{ address: 10.1.0.1 }}\n")).unwrap();
        assert_eq!(dnat.vips[0].snat_pool, None, "no pool: DNAT only");
    }

    #[test]
    fn bad_nat_config_names_the_field_and_the_fix() {
        let cases = [
            (
                format!("{NAT}    snat_pool: edgy\n"),
                "vips[0].snat_pool",
                "no pool named `edgy` under nat_pools (known: edge); add it or fix the name",
            ),
            (
                vip("    snat_pool: edge\n"),
                "vips[0].snat_pool",
                "only mode: nat uses a source pool; remove it or set mode: nat",
            ),
            (
                vip("    backends:\n      - { address: 10.1.0.1, port: 8080 }\n"),
                "vips[0].backends[0].port",
                "only mode: nat translates ports; direct server return keeps the VIP's port, so remove `port`",
            ),
            (
                vip("    backends:\n      - { address: 10.1.0.1, interface: eth1 }\n"),
                "vips[0].backends[0].interface",
                "only mode: nat sends to backends by another interface; direct server return answers by the one the packet came in on, so remove `interface`",
            ),
            (
                format!("{NAT}    backends:\n      - {{ address: 10.1.0.1, interface: \"a/b\" }}\n"),
                "vips[0].backends[0].interface",
                "`a/b` is not an interface name",
            ),
            (
                NAT.replace("protocol: tcp", "protocol: icmp").replace("    port: 80\n", ""),
                "vips[0].mode",
                "NAT translates ports: use it with tcp or udp VIPs",
            ),
            (
                format!("{NAT}    backends:\n      - {{ address: \"fd00::1\" }}\n"),
                "vips[0].backends[0].address",
                "NAT between address families is not supported: give the VIP backends of its own family",
            ),
            (
                NAT.replace("ports: 20000-20999", "ports: 0-10"),
                "nat_pools[0].ports",
                "0-10 is not a usable range; write first-last within 1..=65535, e.g. 20000-59999",
            ),
            (
                NAT.replace("    ports: 20000-20999\n", ""),
                "nat_pools[0].ports",
                "required: the source ports to use, e.g. ports: 20000-59999",
            ),
            (
                NAT.replace("198.51.100.2", "\"2001:db8::1\""),
                "nat_pools[0].addresses",
                "mixes IPv4 and IPv6; make one pool per family",
            ),
            (NAT.replace("198.51.100.2", "198.51.100.1"), "nat_pools[0].addresses[1]", "198.51.100.1 is listed twice"),
            (
                NAT.replace("198.51.100.2", "192.0.2.10"),
                "nat_pools.edge.addresses",
                "192.0.2.10 is also the address of VIP `web`; give the pool addresses of its own",
            ),
            (
                format!("node:\n  nat_udp_timeout: 500ms\n{NAT}"),
                "node.nat_udp_timeout",
                "NAT timeouts count whole seconds: use 1s or more (e.g. 30s, 15m, 2h)",
            ),
        ];
        for (text, field, message) in cases {
            match check(&text) {
                Err(ConfigError::Invalid { field: f, message: m, .. }) => {
                    assert_eq!((f.as_str(), m.as_str()), (field, message), "{text}")
                }
                other => panic!("{text}: expected an error on {field}, got {other:?}"),
            }
        }
    }

    #[test]
    fn durations_parse_and_print() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        for bad in ["", "2", "s", "1.5s", "-1s", "2 s", "1d", "5us"] {
            assert_eq!(
                parse_duration(bad),
                Err(format!("`{bad}` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h"))
            );
        }
        for text in ["0ms", "1ms", "1500ms", "2s", "90s", "1m", "90m", "1h"] {
            assert_eq!(format_duration(parse_duration(text).unwrap()), text);
        }
    }

    #[test]
    fn bad_health_checks_name_the_field_and_the_fix() {
        let vip_check = |body: &str| checked(&format!("    health_check:\n{body}"));
        let cases = [
            (
                vip_check("      type: tcp\n      interval: 2\n"),
                "vips[0].health_check.interval",
                "`2` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h",
            ),
            (
                vip_check("      type: tcp\n      timeout: 1.5s\n"),
                "vips[0].health_check.timeout",
                "`1.5s` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h",
            ),
            (
                vip_check("      type: tcp\n      interval: 50ms\n"),
                "vips[0].health_check.interval",
                "50ms is out of range; use 100ms to 1h",
            ),
            (
                vip_check("      type: tcp\n      interval: 1s\n"),
                "vips[0].health_check.timeout",
                "1s must be above 0 and shorter than the interval (1s), so probes never overlap",
            ),
            (
                vip_check("      type: tcp\n      timeout: 0ms\n"),
                "vips[0].health_check.timeout",
                "0ms must be above 0 and shorter than the interval (2s), so probes never overlap",
            ),
            (
                vip_check("      type: tcp\n      rise: 0\n"),
                "vips[0].health_check.rise",
                "0 consecutive results: use 1..=100 (1 reacts to a single probe)",
            ),
            (
                vip_check("      type: tcp\n      fall: 101\n"),
                "vips[0].health_check.fall",
                "101 consecutive results: use 1..=100 (1 reacts to a single probe)",
            ),
            (
                vip_check("      type: tcp\n      port: 0\n"),
                "vips[0].health_check.port",
                "must be 1..=65535, or left out to check the VIP's port",
            ),
            (
                vip_check("      type: tcp\n      path: /\n"),
                "vips[0].health_check.path",
                "only http checks have `path`; remove it from this tcp check",
            ),
            (
                vip_check("      type: http\n      send: x\n"),
                "vips[0].health_check.send",
                "only udp checks have `send`; remove it from this http check",
            ),
            (
                vip_check("      type: http\n      path: healthz\n"),
                "vips[0].health_check.path",
                "`healthz` must start with `/` and have no spaces (e.g. /healthz)",
            ),
            (
                vip_check("      type: http\n      host: a b\n"),
                "vips[0].health_check.host",
                "`a b` is not a host name; write it as it goes in the Host header (e.g. www.example.com)",
            ),
            (
                vip_check("      type: http\n      expect_status: 600\n"),
                "vips[0].health_check.expect_status",
                "600 is not an HTTP status; use 100..=599",
            ),
            (
                vip_check("      type: http\n      expect_body: \"\"\n"),
                "vips[0].health_check.expect_body",
                "an empty string matches every body; remove it or give the text to look for",
            ),
            (
                vip_check("      type: udp\n"),
                "vips[0].health_check.send",
                "a udp check needs a payload that the service answers (e.g. send: \"ping\")",
            ),
            (
                vip_check("      type: udp\n      send: ping\n      expect: \"\"\n"),
                "vips[0].health_check.expect",
                "an empty string matches every reply; remove it to accept any reply",
            ),
            (
                checked("").replace("port: 8080", "rise: 0"),
                "vips[0].backends[1].health_check.rise",
                "0 consecutive results: use 1..=100 (1 reacts to a single probe)",
            ),
            (
                checked("    min_healthy: 3\n"),
                "vips[0].min_healthy",
                "3 is more than the VIP's 2 backends, so it could never be up; lower it",
            ),
            (
                checked("    min_healthy: 0\n"),
                "vips[0].min_healthy",
                "must be at least 1: a VIP with no healthy backend is down whatever this says",
            ),
            (
                "vips:\n  - name: ping\n    address: 192.0.2.1\n    protocol: icmp\n    mode: dsr-l2\n    health_check: { type: tcp }\n".into(),
                "vips[0].health_check.port",
                "an icmp VIP has no port to check by default; set the port the backends' service listens on",
            ),
        ];
        for (text, want_field, want_message) in cases {
            match check(&text) {
                Err(ConfigError::Invalid { field, message, .. }) => {
                    assert_eq!((field.as_str(), message.as_str()), (want_field, want_message), "{text}")
                }
                other => panic!("{want_field}: expected a validation error, got {other:?}\n{text}"),
            }
        }
    }

    #[test]
    fn health_check_errors_point_at_the_block() {
        let err = check(&checked("    health_check:\n      type: tcp\n      rise: 0\n")).unwrap_err().to_string();
        assert_eq!(
            err,
            "test.yaml:16:7: vips[0].health_check.rise: 0 consecutive results: use 1..=100 (1 reacts to a single probe)"
        );
        let err = check(&checked("    health_check:\n      type: tcp\n      intreval: 2s\n")).unwrap_err().to_string();
        assert!(err.starts_with("test.yaml:"), "{err}");
        assert!(err.contains("intreval"), "{err}");
        let err = check(&checked("    health_check:\n      type: icmp\n")).unwrap_err().to_string();
        assert_eq!(err, "test.yaml:16:13: unknown variant `icmp`, expected one of tcp, http, udp");
    }

    const BGP: &str = "bgp:\n  local_as: 65010\n  router_id: 192.0.2.21\n";

    #[test]
    fn bgp_parses_with_defaults_and_every_field() {
        let config = check(&format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 65000 }}\n")).unwrap();
        let bgp = config.bgp.unwrap();
        assert_eq!(
            bgp,
            BgpConfig {
                local_as: 65010,
                router_id: Ipv4Addr::new(192, 0, 2, 21),
                hold_time: Duration::from_secs(9),
                connect_retry: Duration::from_secs(5),
                graceful_restart_time: Duration::from_secs(120),
                withdraw_grace: Duration::from_secs(5),
                communities: vec![],
                med: None,
                local_pref: None,
                peers: vec![BgpPeer {
                    address: "10.0.0.1".parse().unwrap(),
                    remote_as: 65000,
                    port: 179,
                    password: None,
                    bfd: BfdConfig {
                        enabled: false,
                        min_tx: Duration::from_millis(100),
                        min_rx: Duration::from_millis(100),
                        multiplier: 3
                    },
                    source_address: None,
                }],
            }
        );
        let config = check(
            "bgp:\n  local_as: 4200000001\n  router_id: 10.0.0.2\n  hold_time: 0s\n  connect_retry: 500ms\n  graceful_restart_time: 0s\n  withdraw_grace: 1m\n  communities: [\"65010:100\", \"0:65535\", \"65010:100\"]\n  med: 20\n  local_pref: 200\n  peers:\n    - address: fd00::1\n      remote_as: 4200000001\n      port: 1179\n      password: s3cret\n      source_address: fd00::2\n      bfd: { enabled: true, min_tx: 50ms, min_rx: 1s, multiplier: 5 }\n",
        )
        .unwrap();
        let bgp = config.bgp.unwrap();
        assert_eq!(
            (bgp.local_as, bgp.hold_time, bgp.connect_retry, bgp.graceful_restart_time, bgp.withdraw_grace),
            (4200000001, Duration::ZERO, Duration::from_millis(500), Duration::ZERO, Duration::from_secs(60))
        );
        assert_eq!(bgp.communities, vec![Community { asn: 65010, value: 100 }, Community { asn: 0, value: 65535 }]);
        assert_eq!(bgp.communities[0].to_u32(), 0xfdf2_0064);
        assert_eq!(bgp.communities[0].to_string(), "65010:100");
        assert_eq!((bgp.med, bgp.local_pref), (Some(20), Some(200)));
        let peer = &bgp.peers[0];
        assert_eq!((peer.port, peer.password.as_deref(), peer.is_ibgp(bgp.local_as)), (1179, Some("s3cret"), true));
        assert_eq!(peer.source_address, Some("fd00::2".parse().unwrap()));
        assert_eq!(
            peer.bfd,
            BfdConfig {
                enabled: true,
                min_tx: Duration::from_millis(50),
                min_rx: Duration::from_secs(1),
                multiplier: 5
            }
        );
        assert!(!format!("{peer:?}").contains("s3cret"), "the password stays out of Debug output");
        assert_eq!(check("vips: []\n").unwrap().bgp, None);
    }

    #[test]
    fn bad_bgp_sections_name_the_field_and_the_fix() {
        let peer = "  peers:\n    - { address: 10.0.0.1, remote_as: 65000 }\n";
        let with = |extra: &str| format!("{BGP}{extra}{peer}");
        let peer_with =
            |fields: &str| format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 65000, {fields} }}\n");
        let cases = [
            (
                format!("bgp:\n  router_id: 192.0.2.21\n{peer}"),
                "bgp.local_as",
                "required: this node's AS number (e.g. local_as: 65010)".to_string(),
            ),
            (
                format!("bgp:\n  local_as: 0\n  router_id: 192.0.2.21\n{peer}"),
                "bgp.local_as",
                "AS 0 is reserved (RFC 7607); use the real AS number (e.g. 65010)".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n{peer}"),
                "bgp.router_id",
                "required: an IPv4 address unique among the routers, usually the node's own (e.g. router_id: 192.0.2.21)".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n  router_id: fd00::1\n{peer}"),
                "bgp.router_id",
                "must be an IPv4 address (BGP identifiers are 32 bits, also on IPv6-only nodes), e.g. 192.0.2.21".into(),
            ),
            (
                format!("bgp:\n  local_as: 65010\n  router_id: 0.0.0.0\n{peer}"),
                "bgp.router_id",
                "0.0.0.0 is not a valid BGP identifier; use a unicast IPv4 address (e.g. the node's own)".into(),
            ),
            (
                with("  hold_time: 2s\n"),
                "bgp.hold_time",
                "2s is not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds".into(),
            ),
            (
                with("  hold_time: 3500ms\n"),
                "bgp.hold_time",
                "3500ms is not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds".into(),
            ),
            (
                with("  hold_time: 9\n"),
                "bgp.hold_time",
                "`9` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h".into(),
            ),
            (with("  connect_retry: 0s\n"), "bgp.connect_retry", "0ms is out of range; use 100ms to 1h".into()),
            (
                with("  graceful_restart_time: 2d\n"),
                "bgp.graceful_restart_time",
                "`2d` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h".into(),
            ),
            (
                with("  graceful_restart_time: 70m\n"),
                "bgp.graceful_restart_time",
                "70m is out of range; use 0 (no graceful restart) to 4095s, in whole seconds".into(),
            ),
            (with("  withdraw_grace: 11m\n"), "bgp.withdraw_grace", "11m is out of range; use 0 to 10m".into()),
            (
                with("  communities: [\"65010:1\", \"65010\"]\n"),
                "bgp.communities[1]",
                "`65010` is not a community; write AS:VALUE with both parts 0..=65535 (e.g. 65010:100)".into(),
            ),
            (
                with("  communities: [\"70000:1\"]\n"),
                "bgp.communities[0]",
                "`70000:1` is not a community; write AS:VALUE with both parts 0..=65535 (e.g. 65010:100)".into(),
            ),
            (
                with("  local_pref: 200\n"),
                "bgp.local_pref",
                "LOCAL_PREF is only sent to iBGP peers (remote_as 65010) and none is configured; remove it, or use med toward eBGP peers".into(),
            ),
            (
                format!("{BGP}  peers: []\n"),
                "bgp.peers",
                "list at least one peer (address and remote_as), or remove the bgp section".into(),
            ),
            (
                format!("{BGP}  peers:\n    - {{ address: 0.0.0.0, remote_as: 65000 }}\n"),
                "bgp.peers[0].address",
                "0.0.0.0 cannot be a BGP neighbour; use the router's unicast address on the link".into(),
            ),
            (
                format!("{BGP}{peer}    - {{ address: 10.0.0.1, remote_as: 65001 }}\n"),
                "bgp.peers[1].address",
                "10.0.0.1 is already bgp.peers[0]; list each neighbour once".into(),
            ),
            (
                format!("{BGP}  peers:\n    - {{ address: 10.0.0.1, remote_as: 23456 }}\n"),
                "bgp.peers[0].remote_as",
                "23456 is AS_TRANS, the stand-in for 4-octet AS numbers (RFC 6793); use the real AS number".into(),
            ),
            (
                peer_with("port: 0"),
                "bgp.peers[0].port",
                "must be 1..=65535; leave it out for BGP's port, 179".into(),
            ),
            (
                peer_with("password: \"\""),
                "bgp.peers[0].password",
                "an empty password signs nothing; remove it, or give the TCP MD5 key the router has".into(),
            ),
            (
                peer_with(&format!("password: {}", "x".repeat(81))),
                "bgp.peers[0].password",
                "81 bytes is longer than the 80 Linux takes for a TCP MD5 key".into(),
            ),
            (
                peer_with("source_address: fd00::2"),
                "bgp.peers[0].source_address",
                "fd00::2 is not of the peer's address family; use this node's IPv4 address on the link".into(),
            ),
            (
                peer_with("bfd: { enabled: true, min_tx: 5ms }"),
                "bgp.peers[0].bfd.min_tx",
                "5ms is out of range; use 10ms to 1m".into(),
            ),
            (
                peer_with("bfd: { min_rx: fast }"),
                "bgp.peers[0].bfd.min_rx",
                "`fast` is not a duration; write a whole number with a unit: 500ms, 2s, 1m or 1h".into(),
            ),
            (
                peer_with("bfd: { multiplier: 0 }"),
                "bgp.peers[0].bfd.multiplier",
                "0: use 1..=255, the packets the peer may miss before it counts us as down (3 is usual)".into(),
            ),
        ];
        for (text, want_field, want_message) in cases {
            match check(&text) {
                Err(ConfigError::Invalid { field, message, .. }) => {
                    assert_eq!((field.as_str(), message.as_str()), (want_field, want_message.as_str()), "{text}")
                }
                other => panic!("{want_field}: expected a validation error, got {other:?}\n{text}"),
            }
        }
    }

    #[test]
    fn bgp_errors_point_at_the_entry() {
        let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n      remote_as: 65000\n      port: 0\n"))
            .unwrap_err()
            .to_string();
        assert_eq!(err, "test.yaml:5:7: bgp.peers[0].port: must be 1..=65535; leave it out for BGP's port, 179");
        let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n      remote_as: 65000\n      md5: x\n"))
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("test.yaml:7:") && err.contains("md5"), "{err}");
        let err = check(&format!("{BGP}  peers:\n    - address: 10.0.0.1\n")).unwrap_err().to_string();
        assert!(err.starts_with("test.yaml:") && err.contains("remote_as"), "{err}");
    }

    #[test]
    fn the_example_file_is_valid() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config/example.yaml");
        let config = load(&path).unwrap_or_else(|e| panic!("{e}"));
        let bgp = config.bgp.expect("the example has a bgp section");
        assert!(!bgp.peers.is_empty());
    }

    #[test]
    fn empty_file_is_an_empty_config() {
        let config = check("vips: []\n").unwrap();
        assert_eq!(config.vips.len(), 0);
        assert_eq!(config.node.flow_table_size, lb_common::FLOW_TABLE_SIZE);
    }
}
