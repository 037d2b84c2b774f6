//! The validated configuration: `Config` and the node, VIP, backend, health-check, NAT-pool and
//! BGP types it holds, as the rest of the agent reads them.

use std::fmt;
use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::{Community, Mac, Prefix, endpoint, l7, vip_key};

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
    /// How `scope: global` limits are shared among the nodes; none without the section.
    pub global_limits: Option<super::GlobalLimits>,
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
    /// Log drops from the XDP program (reason and packet, rate-limited) under `xlb::bpf`;
    /// switched on a reload without reloading the program. `xlb run --bpf-log` forces it on.
    pub bpf_log: bool,
    /// Node-wide source policy: applies to every VIP beside the VIP's own.
    pub sources: SourcePolicy,
}

/// `sources:` of the node or a VIP: allow and deny lists (the longest matching entry decides,
/// the VIP's lists before the node's) and a new-flow limit per source prefix.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SourcePolicy {
    /// Never refused and never limited.
    pub allow: Vec<Prefix>,
    /// Refused: every packet that is not of an established flow is dropped.
    pub deny: Vec<Prefix>,
    /// Only sources an allow entry (the VIP's or the node's) names are served.
    pub allow_only: bool,
    pub new_flows: Option<NewFlowLimit>,
}

/// New flows per second one source prefix may open; a VIP's replaces the node's for it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NewFlowLimit {
    pub rate: u32,
    /// New flows that may come at once (after a quiet period).
    pub burst: u32,
    /// The prefix one bucket counts: /24 and /64 by default.
    pub prefix_v4: u8,
    pub prefix_v6: u8,
}

impl SourcePolicy {
    pub fn is_empty(&self) -> bool {
        self.allow.is_empty() && self.deny.is_empty() && !self.allow_only && self.new_flows.is_none()
    }
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
    /// The VIP's own source policy (the node's applies too).
    pub sources: SourcePolicy,
    /// `mode: nat`, TCP: whether the data plane answers SYNs with cookies.
    pub syn_cookies: SynCookies,
    /// New flows per second over the whole VIP (the XDP program enforces it).
    pub connection_limit: Option<super::ConnLimit>,
}

/// `syn_cookies:` of a NAT VIP: SYNs answered by the data plane with a cookie, a pool port
/// claimed only for a client that returns it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SynCookies {
    #[default]
    Off,
    Always,
    /// While more than this many new TCP flows per second arrive at the VIP.
    Above(u32),
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
    /// An HTTP request (HTTP/1.1 or h2, over TLS for `https`): succeeds on a status of
    /// `expect_status` with a body containing `expect_body`, if set.
    Http(Box<HttpCheck>),
    /// `grpc.health.v1.Health/Check` over h2 (TLS optional): succeeds when the service is
    /// SERVING.
    Grpc(Box<GrpcCheck>),
    /// Sends `send` on a connected UDP socket: succeeds on a reply containing `expect` (any reply
    /// without it); an ICMP port-unreachable fails.
    Udp { port: u16, send: Vec<u8>, expect: Option<Vec<u8>> },
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct HttpCheck {
    pub port: u16,
    pub method: String,
    pub path: String,
    pub host: Option<String>,
    /// Accepted statuses: inclusive ranges (a single code is a range of one).
    pub expect_status: Vec<(u16, u16)>,
    pub expect_body: Option<String>,
    /// Extra request headers, validated names and values.
    pub headers: Vec<(String, String)>,
    /// h2 (over TLS by ALPN, in cleartext with prior knowledge) instead of HTTP/1.1.
    pub http2: bool,
    /// `https`: how the server's certificate is checked.
    pub tls: Option<TlsCheck>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct GrpcCheck {
    pub port: u16,
    /// The service asked about; empty: the server as a whole.
    pub service: String,
    pub tls: Option<TlsCheck>,
}

/// TLS of a health check.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TlsCheck {
    /// The name sent (SNI) and checked against the certificate; default: the `host`, else the
    /// backend's address.
    pub sni: Option<String>,
    pub roots: TlsRoots,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TlsRoots {
    /// The system's CA bundle.
    System,
    /// The CA certificates of a PEM file, read when the configuration is loaded.
    File { path: String, certificates: Vec<Vec<u8>> },
    /// Any certificate (`insecure_skip_verify: true`): the check still needs TLS to work.
    Insecure,
}

impl CheckKind {
    pub fn port(&self) -> u16 {
        match self {
            CheckKind::Tcp { port } | CheckKind::Udp { port, .. } => *port,
            CheckKind::Http(http) => http.port,
            CheckKind::Grpc(grpc) => grpc.port,
        }
    }

    pub fn set_port(&mut self, to: u16) {
        match self {
            CheckKind::Tcp { port } | CheckKind::Udp { port, .. } => *port = to,
            CheckKind::Http(http) => http.port = to,
            CheckKind::Grpc(grpc) => grpc.port = to,
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

impl Vip {
    /// Its backends' identities, in order (see `keys::backend_identity`).
    pub fn backend_identities(&self) -> Vec<String> {
        super::keys::backend_identities(self.backends.iter().map(|b| (b.address, b.port)))
    }

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

/// A VIP's panic threshold unless it sets one (Envoy's default).
pub const DEFAULT_PANIC_THRESHOLD: u32 = 50;
