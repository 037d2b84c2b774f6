//! Desired state: what the data plane should contain, derived from the configuration and the
//! facts of the node it runs on (interface MAC and MTU).
//!
//! Sources write this table — the YAML file, health checks and operator drains
//! (`BackendStates`) — and the reconciler turns it into map writes. Keys are exactly the keys of
//! the XDP program's maps.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use lb_common::{
    ADDR_FLAG_DROP_UNHASHABLE, BACKEND_FLAG_IPIP, FILTER_NAT_BACKEND, FILTER_NAT_POOL, FILTER_NAT_VIP, FILTER_VIP,
    Iface, MAX_POOL_ADDRS, NAT_NO_POOL, NODE_FLAG_DNAT_ONLY, NODE_FLAG_MULTI_IFACE, NODE_FLAG_TUNNEL_V4,
    NODE_FLAG_TUNNEL_V6, NatPool, NodeConfig, VIP_FLAG_HASH_SOURCE_ONLY, VIP_FLAG_NAT, VIP_FLAG_SYN_COOKIES,
    VIP_FLAG_SYN_COOKIES_AUTO, VipAddrKey, VipAddrPolicy, VipKey, addr_bucket,
};

use crate::config::{Backend, Config, HashFields, Mode, Prefix, SynCookies, Unhashable, Vip, ip_words, vip_key};

/// What the agent learns from the interface it attaches to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    pub iface_mac: [u8; 6],
    /// The interface's MTU; `node.mtu` in the config overrides it.
    pub mtu: u32,
    /// The interface's index (0 when unknown).
    pub ifindex: u32,
    /// Every interface the agent runs on, the first one included, in `--iface` order: entry `i`
    /// is index `i + 1` of `maps::IFACES`. Empty or one: xlb is one-armed.
    pub interfaces: Vec<(String, Iface)>,
}

impl NodeFacts {
    /// The `maps::IFACES` index of interface `name` (from 1), if the agent runs on it.
    pub fn iface_index(&self, name: &str) -> Option<u16> {
        self.interfaces.iter().position(|(n, _)| n == name).map(|i| i as u16 + 1)
    }
}

/// A backend as its VIP and health name it: (VIP name, backend identity).
pub type BackendRef = (String, String);

/// What sources other than the file say about backends.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BackendStates {
    /// Failing their health check (a backend without a check is never here).
    pub down: BTreeSet<BackendRef>,
    /// Drained by the operator (`xlb drain`): no new flows, established ones finish.
    pub drained: BTreeSet<BackendRef>,
    /// Runtime weights set by the operator (`xlb weight`): they replace the config file's weight
    /// until reset, so a backend can be reweighted without editing the YAML.
    pub weights: BTreeMap<BackendRef, u32>,
    /// MACs learned from the kernel's neighbour table (last known: a MAC that stops resolving
    /// is kept, since its established flows have nowhere better to go).
    pub neighbors: BTreeMap<IpAddr, [u8; 6]>,
}

/// One backend of one VIP as the data plane should see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredBackend {
    /// Stable identity: the address as text. Maglev hashes it; slots are kept per identity.
    pub identity: String,
    pub addr: [u32; 4],
    pub family: u8,
    /// Where frames for it go at L2: its own MAC, or the node's next hop (dsr-ipip).
    pub mac: [u8; 6],
    /// Its share of new flows: the configured weight, or 0 while down or drained. A slot with
    /// weight 0 stays live, so its established flows keep going to it.
    pub weight: u32,
    /// The weight it takes while healthy and undrained: the runtime weight (`xlb weight`) if one
    /// is set, else the config file's.
    pub configured_weight: u32,
    /// Under a runtime weight: the config file's weight it replaces (`None`: no runtime weight).
    pub file_weight: Option<u32>,
    pub up: bool,
    pub drained: bool,
    /// Whether `mac` is known (configured or resolved); a backend without one takes no flows.
    pub mac_known: bool,
    /// NAT: the port at the backend (network order); 0 keeps the client's destination port.
    pub port: u16,
    /// NAT: the `maps::IFACES` index of its interface; 0: the one packets come in on.
    pub egress: u16,
}

/// One VIP as the data plane should serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVip {
    pub name: String,
    pub endpoint: String,
    pub flags: u32,
    /// Flags every backend slot of this VIP carries (the mode: `BACKEND_FLAG_IPIP` or none).
    pub backend_flags: u8,
    pub table_size: u32,
    /// First and last destination port served (equal for one port).
    pub ports: (u16, u16),
    pub backends: Vec<DesiredBackend>,
    /// Healthy, undrained backends below this count make the VIP down (withdrawn from BGP);
    /// the data plane keeps serving it with whatever is left.
    pub min_healthy: u32,
    /// Percent of its eligible backends (undrained, weight above 0) that must be healthy; below
    /// it the VIP panics. 0: never.
    pub panic_threshold: u32,
    /// In panic: health is ignored and every eligible backend with a known MAC takes new flows.
    pub panic: bool,
    /// NAT: the id of its source pool (`NAT_NO_POOL`: DNAT only, or not NAT).
    pub pool: u32,
}

impl DesiredVip {
    /// Backends taking new flows.
    pub fn serving(&self) -> usize {
        self.backends.iter().filter(|b| b.weight > 0).count()
    }

    /// Backends that would take new flows on their own merit: healthy, undrained, with a MAC
    /// and a weight. Outside panic these are the serving ones.
    pub fn healthy(&self) -> usize {
        self.backends.iter().filter(|b| b.is_healthy()).count()
    }

    /// Backends that count for the panic threshold: undrained, with a weight.
    pub fn eligible(&self) -> usize {
        self.backends.iter().filter(|b| b.is_eligible()).count()
    }

    /// Whether the VIP should be announced: at least one healthy backend and `min_healthy` of
    /// them. Panic does not change it: a VIP whose backends are all down is withdrawn (routers
    /// move its traffic to other nodes) even while it forwards what still arrives to them all.
    pub fn is_up(&self) -> bool {
        let healthy = self.healthy();
        healthy > 0 && healthy >= self.min_healthy as usize
    }
}

impl DesiredBackend {
    fn is_eligible(&self) -> bool {
        !self.drained && self.configured_weight > 0
    }

    fn is_healthy(&self) -> bool {
        self.is_eligible() && self.up && self.mac_known
    }
}

/// Whether `healthy` of `eligible` backends is below `threshold` percent (0: never).
pub fn below_panic_threshold(healthy: usize, eligible: usize, threshold: u32) -> bool {
    threshold > 0 && eligible > 0 && healthy * 100 < threshold as usize * eligible
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredState {
    pub node: NodeConfig,
    pub vips: BTreeMap<VipKey, DesiredVip>,
    pub addrs: BTreeMap<VipAddrKey, VipAddrPolicy>,
    /// NAT pools by id (the index in `Config::nat_pools`).
    pub pools: BTreeMap<u32, NatPool>,
    /// Pre-filter buckets and their `FILTER_*` bits.
    pub filter: BTreeMap<u32, u32>,
    /// `maps::IFACES` from index 1 (the interfaces the agent runs on, when more than one).
    pub ifaces: Vec<Iface>,
    /// Allow/deny entries and per-VIP source policies.
    pub sources: super::sources::DesiredSources,
    /// VIPs with SYN cookies in the automatic mode: their thresholds (new flows per second).
    pub syn_cookie_rates: BTreeMap<VipKey, u32>,
}

impl DesiredState {
    /// The configuration alone: every backend up and undrained.
    pub fn new(config: &Config, facts: &NodeFacts) -> Self {
        Self::with_states(config, facts, &BackendStates::default())
    }

    pub fn with_states(config: &Config, facts: &NodeFacts, states: &BackendStates) -> Self {
        // `mode: l7` VIPs are not the data plane's: their packets pass to the local stack, where
        // the agent's proxy listens (see `l7`), and they are announced from there.
        let l4 = || config.vips.iter().filter(|vip| vip.mode != Mode::L7);
        let vips = l4().map(|vip| (vip_key(vip), desired_vip(vip, config, facts, states))).collect();
        let addrs = l4()
            .map(|vip| {
                let (addr, family) = ip_words(vip.address);
                let flags = if vip.unhashable == Unhashable::Drop { ADDR_FLAG_DROP_UNHASHABLE } else { 0 };
                (VipAddrKey { addr, family, pad: [0; 3] }, VipAddrPolicy { flags })
            })
            .collect();
        let pools = config.nat_pools.iter().enumerate().map(|(id, pool)| (id as u32, nat_pool(pool))).collect();
        let ifaces =
            if facts.interfaces.len() > 1 { facts.interfaces.iter().map(|(_, i)| *i).collect() } else { Vec::new() };
        let sources = super::sources::DesiredSources::new(config);
        let syn_cookie_rates = l4()
            .filter_map(|vip| match vip.syn_cookies {
                SynCookies::Above(rate) => Some((vip_key(vip), rate)),
                SynCookies::Off | SynCookies::Always => None,
            })
            .collect();
        Self {
            node: node_config(config, facts),
            vips,
            addrs,
            pools,
            filter: filter(config),
            ifaces,
            sources,
            syn_cookie_rates,
        }
    }
}

/// Every backend `interface:` must be one the agent runs on.
pub fn check_interfaces(config: &Config, facts: &NodeFacts) -> Result<(), String> {
    let most = lb_common::MAX_IFACES as usize - 1;
    if facts.interfaces.len() > most {
        return Err(format!("xlb runs on at most {most} interfaces; give fewer `--iface`"));
    }
    for vip in &config.vips {
        for b in &vip.backends {
            if let Some(name) = &b.interface
                && facts.iface_index(name).is_none()
            {
                let running: Vec<String> = facts.interfaces.iter().map(|(n, _)| format!("--iface {n}")).collect();
                return Err(format!(
                    "VIP `{}`, backend {}: interface `{name}` is not one the agent runs on ({}); add `--iface {name}` to `xlb run` or fix the name",
                    vip.name,
                    b.address,
                    running.join(" ")
                ));
            }
        }
    }
    Ok(())
}

/// A configured pool as the data plane keeps it.
fn nat_pool(pool: &crate::config::NatPool) -> NatPool {
    let mut out = NatPool {
        addr_count: pool.addresses.len().min(MAX_POOL_ADDRS) as u32,
        port_first: u32::from(pool.port_first),
        port_count: u32::from(pool.port_last) - u32::from(pool.port_first) + 1,
        ..Default::default()
    };
    for (slot, addr) in out.addrs.iter_mut().zip(&pool.addresses) {
        let (words, family) = ip_words(*addr);
        *slot = words;
        out.family = u32::from(family);
    }
    out
}

/// The pre-filter: which kinds of address fall in each bucket.
fn filter(config: &Config) -> BTreeMap<u32, u32> {
    let mut filter = BTreeMap::new();
    let mut mark = |addr: IpAddr, bit: u32| *filter.entry(addr_bucket(&ip_words(addr).0)).or_insert(0) |= bit;
    // l7 VIPs are the kernel's (the proxy listens on them): not in the filter.
    for vip in config.vips.iter().filter(|vip| vip.mode != Mode::L7) {
        mark(vip.address, if vip.mode == Mode::Nat { FILTER_NAT_VIP } else { FILTER_VIP });
        if vip.mode == Mode::Nat && vip.snat_pool.is_none() {
            for backend in &vip.backends {
                mark(backend.address, FILTER_NAT_BACKEND);
            }
        }
    }
    for pool in &config.nat_pools {
        for addr in &pool.addresses {
            mark(*addr, FILTER_NAT_POOL);
        }
    }
    filter
}

/// Where frames for `backend` go at L2, when it has no `mac` of its own: the address whose
/// MAC the agent resolves (the backend itself on-link, or the configured router), or `None`
/// when `node.next_hop_mac` says it outright.
pub fn mac_source(vip: &Vip, backend: &Backend, config: &Config) -> Option<IpAddr> {
    if backend.mac.is_some() {
        return None;
    }
    match vip.mode {
        Mode::DsrL2 => Some(backend.address),
        // The proxy connects through the kernel's stack.
        Mode::L7 => None,
        Mode::DsrIpip | Mode::Nat if config.node.next_hop_mac.is_some() => None,
        Mode::DsrIpip | Mode::Nat => {
            let router = if backend.address.is_ipv4() { config.node.next_hop_v4 } else { config.node.next_hop_v6 };
            Some(router.unwrap_or(backend.address))
        }
    }
}

/// Every address whose MAC the configuration leaves to neighbour resolution, with the interface
/// to resolve it on: the backend's `interface`, else `first` (the agent's first `--iface`).
pub fn neighbor_targets(config: &Config, first: &str) -> BTreeMap<IpAddr, String> {
    config
        .vips
        .iter()
        .flat_map(|vip| {
            vip.backends.iter().filter_map(|b| {
                let iface = b.interface.clone().unwrap_or_else(|| first.to_owned());
                mac_source(vip, b, config).map(|addr| (addr, iface))
            })
        })
        .collect()
}

fn desired_vip(vip: &Vip, config: &Config, facts: &NodeFacts, states: &BackendStates) -> DesiredVip {
    let mut backends: Vec<DesiredBackend> = vip
        .backends
        .iter()
        .zip(vip.backend_identities())
        .map(|(b, identity)| {
            let (addr, family) = ip_words(b.address);
            let at = (vip.name.clone(), identity.clone());
            let (up, drained) = (!states.down.contains(&at), states.drained.contains(&at));
            let runtime = states.weights.get(&at).copied();
            let configured = runtime.unwrap_or(b.weight);
            let mac = match (b.mac, mac_source(vip, b, config)) {
                (Some(mac), _) => Some(mac.0),
                (None, Some(source)) => states.neighbors.get(&source).copied(),
                (None, None) => config.node.next_hop_mac.map(|m| m.0),
            };
            DesiredBackend {
                identity,
                addr,
                family,
                mac: mac.unwrap_or_default(),
                weight: if up && !drained && mac.is_some() { configured } else { 0 },
                configured_weight: configured,
                file_weight: runtime.map(|_| b.weight),
                up,
                drained,
                mac_known: mac.is_some(),
                port: b.port.unwrap_or(0).to_be(),
                egress: b.interface.as_deref().and_then(|name| facts.iface_index(name)).unwrap_or(0),
            }
        })
        .collect();
    let healthy = backends.iter().filter(|b| b.is_healthy()).count();
    let eligible = backends.iter().filter(|b| b.is_eligible()).count();
    let panic = below_panic_threshold(healthy, eligible, vip.panic_threshold);
    if panic {
        for b in backends.iter_mut().filter(|b| b.is_eligible() && b.mac_known) {
            b.weight = b.configured_weight;
        }
    }
    DesiredVip {
        name: vip.name.clone(),
        endpoint: vip.endpoint(),
        ports: (vip.port, vip.port_last),
        flags: if vip.hash == HashFields::SourceIp { VIP_FLAG_HASH_SOURCE_ONLY } else { 0 }
            | if vip.mode == Mode::Nat { VIP_FLAG_NAT } else { 0 }
            | match vip.syn_cookies {
                SynCookies::Off => 0,
                SynCookies::Always => VIP_FLAG_SYN_COOKIES,
                SynCookies::Above(_) => VIP_FLAG_SYN_COOKIES_AUTO,
            }
            | if vip.connection_limit.is_some() { lb_common::VIP_FLAG_CONN_LIMIT } else { 0 },
        backend_flags: match vip.mode {
            Mode::DsrL2 | Mode::Nat | Mode::L7 => 0,
            Mode::DsrIpip => BACKEND_FLAG_IPIP,
        },
        pool: vip
            .snat_pool
            .as_ref()
            .and_then(|name| config.nat_pools.iter().position(|p| &p.name == name))
            .map_or(NAT_NO_POOL, |id| id as u32),
        table_size: vip.table_size,
        backends,
        min_healthy: vip.min_healthy,
        panic_threshold: vip.panic_threshold,
        panic,
    }
}

fn node_config(config: &Config, facts: &NodeFacts) -> NodeConfig {
    let seconds = |d: std::time::Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
    let mut node = NodeConfig {
        iface_mac: facts.iface_mac,
        ifindex: facts.ifindex,
        mtu: config.node.mtu.unwrap_or(facts.mtu),
        nat_tcp_timeout: seconds(config.node.nat_tcp_timeout),
        nat_closing_timeout: seconds(config.node.nat_closing_timeout),
        nat_udp_timeout: seconds(config.node.nat_udp_timeout),
        ..Default::default()
    };
    if config.vips.iter().any(|v| v.mode == Mode::Nat && v.snat_pool.is_none()) {
        node.flags |= NODE_FLAG_DNAT_ONLY;
    }
    if facts.interfaces.len() > 1 {
        node.flags |= NODE_FLAG_MULTI_IFACE;
    }
    if let Some(Prefix { address, len }) = config.node.tunnel_source_v4 {
        let (addr, _) = ip_words(address);
        node.tunnel_v4 = addr[0];
        node.tunnel_v4_mask = prefix_mask(u32::from(len));
        node.flags |= NODE_FLAG_TUNNEL_V4;
    }
    if let Some(Prefix { address, len }) = config.node.tunnel_source_v6 {
        let (addr, _) = ip_words(address);
        node.tunnel_v6 = addr;
        // Only the last word varies per flow (the config asks for /96 or longer).
        node.tunnel_v6_mask = prefix_mask(u32::from(len).saturating_sub(96));
        node.flags |= NODE_FLAG_TUNNEL_V6;
    }
    // The data plane ORs the per-flow bits into the host part: keep only the network bits.
    node.tunnel_v4 &= node.tunnel_v4_mask;
    node.tunnel_v6[3] &= node.tunnel_v6_mask;
    node
}

/// Network-order mask of the first `len` bits of a 32-bit word.
fn prefix_mask(len: u32) -> u32 {
    if len == 0 { 0 } else { (u32::MAX << (32 - len.min(32))).to_be() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{Protocol, endpoint, ip_from_words};
    use lb_common::{FAMILY_V4, FAMILY_V6, PROTO_ICMPV6, PROTO_TCP};

    fn vip(address: &str, protocol: Protocol, port: u16) -> Vip {
        Vip {
            name: "v".into(),
            address: address.parse().unwrap(),
            port,
            protocol,
            mode: Mode::DsrL2,
            hash: HashFields::FiveTuple,
            table_size: 7,
            unhashable: Unhashable::Pass,
            port_last: port,
            snat_pool: None,
            backends: vec![],
            health_check: None,
            min_healthy: 1,
            panic_threshold: 0,
            l7: None,
            sources: Default::default(),
            syn_cookies: SynCookies::Off,
            connection_limit: None,
        }
    }

    #[test]
    fn keys_are_in_network_byte_order() {
        let key = vip_key(&vip("192.0.2.10", Protocol::Tcp, 80));
        assert_eq!(key.addr[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!((key.proto, key.family), (PROTO_TCP, FAMILY_V4));
        let key = vip_key(&vip("2001:db8::1", Protocol::Icmp, 0));
        assert_eq!(key.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(key.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!((key.proto, key.family), (PROTO_ICMPV6, FAMILY_V6));
    }

    #[test]
    fn node_config_from_prefixes_and_facts() {
        let mut config = Config { node: Default::default(), vips: vec![], ..Default::default() };
        config.node.tunnel_source_v4 = Some("172.16.5.77/24".parse().unwrap());
        config.node.tunnel_source_v6 = Some("fd00::1:0/112".parse().unwrap());
        let facts = NodeFacts { iface_mac: [2, 0, 0, 0, 0, 1], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
        let node = DesiredState::new(&config, &facts).node;
        assert_eq!(node.tunnel_v4.to_ne_bytes(), [172, 16, 5, 0]);
        assert_eq!(node.tunnel_v4_mask.to_ne_bytes(), [255, 255, 255, 0]);
        assert_eq!(node.tunnel_v6_mask.to_ne_bytes(), [255, 255, 0, 0]);
        assert_eq!(node.tunnel_v6[3].to_ne_bytes(), [0, 1, 0, 0]);
        assert_eq!((node.mtu, node.flags), (1500, NODE_FLAG_TUNNEL_V4 | NODE_FLAG_TUNNEL_V6));
        config.node.mtu = Some(9000);
        config.node.tunnel_source_v4 = Some("172.16.5.77".parse().unwrap());
        let node = DesiredState::new(&config, &facts).node;
        assert_eq!((node.mtu, node.tunnel_v4_mask), (9000, u32::MAX));
        assert_eq!(node.tunnel_v4.to_ne_bytes(), [172, 16, 5, 77]);
    }

    #[test]
    fn backends_use_their_mac_or_the_next_hop() {
        let mut config =
            Config { node: Default::default(), vips: vec![vip("192.0.2.1", Protocol::Udp, 53)], ..Default::default() };
        config.vips[0].mode = Mode::DsrIpip;
        config.node.next_hop_mac = Some("02:00:00:00:00:fe".parse().unwrap());
        config.vips[0].backends = vec![
            Backend {
                address: "10.0.0.1".parse().unwrap(),
                weight: 2,
                mac: None,
                health_check: None,
                port: None,
                interface: None,
            },
            Backend {
                address: "10.0.0.2".parse().unwrap(),
                port: None,
                interface: None,
                weight: 1,
                mac: Some("02:00:00:00:00:02".parse().unwrap()),
                health_check: None,
            },
        ];
        let state =
            DesiredState::new(&config, &NodeFacts { iface_mac: [0; 6], mtu: 1500, ifindex: 0, interfaces: Vec::new() });
        let v = state.vips.values().next().unwrap();
        assert_eq!(v.backends[0].mac, [2, 0, 0, 0, 0, 0xfe]);
        assert_eq!(v.backends[1].mac, [2, 0, 0, 0, 0, 2]);
        assert_eq!(v.backends[0].identity, "10.0.0.1");
    }

    #[test]
    fn down_and_drained_backends_take_no_new_flows_and_min_healthy_decides_up() {
        let mut config =
            Config { node: Default::default(), vips: vec![vip("192.0.2.1", Protocol::Tcp, 80)], ..Default::default() };
        let backend = |a: &str, weight| Backend {
            address: a.parse().unwrap(),
            port: None,
            interface: None,
            weight,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            health_check: None,
        };
        config.vips[0].backends = vec![backend("10.0.0.1", 2), backend("10.0.0.2", 1), backend("10.0.0.3", 1)];
        config.vips[0].min_healthy = 2;
        let facts = NodeFacts { iface_mac: [0; 6], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
        let at = |a: &str| ("v".to_owned(), a.to_owned());
        let weights = |states: &BackendStates| {
            let state = DesiredState::with_states(&config, &facts, states);
            let v = state.vips.values().next().unwrap().clone();
            (v.backends.iter().map(|b| b.weight).collect::<Vec<_>>(), v.is_up())
        };
        assert_eq!(weights(&BackendStates::default()), (vec![2, 1, 1], true));
        let mut states = BackendStates::default();
        states.down.insert(at("10.0.0.1"));
        assert_eq!(weights(&states), (vec![0, 1, 1], true), "down: weight 0, two still serve");
        states.drained.insert(at("10.0.0.2"));
        assert_eq!(weights(&states), (vec![0, 0, 1], false), "one left: below min_healthy");
        states.down.insert(at("10.0.0.3"));
        assert_eq!(weights(&states), (vec![0, 0, 0], false));
        let state = DesiredState::with_states(&config, &facts, &states);
        let b = &state.vips.values().next().unwrap().backends[1];
        assert_eq!((b.configured_weight, b.up, b.drained), (1, true, true));

        // Runtime weights replace the file's (0 included: eligible no more); down or drained
        // still means 0.
        let mut states = BackendStates::default();
        states.weights.insert(at("10.0.0.1"), 5);
        states.weights.insert(at("10.0.0.3"), 0);
        assert_eq!(weights(&states), (vec![5, 1, 0], true));
        let state = DesiredState::with_states(&config, &facts, &states);
        let v = state.vips.values().next().unwrap();
        let of = |b: &DesiredBackend| (b.configured_weight, b.file_weight);
        assert_eq!(v.backends.iter().map(of).collect::<Vec<_>>(), [(5, Some(2)), (1, None), (0, Some(1))]);
        assert_eq!((v.eligible(), v.healthy()), (2, 2), "a runtime weight 0 is not eligible");
        states.drained.insert(at("10.0.0.1"));
        assert_eq!(weights(&states), (vec![0, 1, 0], false), "drained beats the runtime weight");
        states.drained.clear();
        states.down.insert(at("10.0.0.1"));
        assert_eq!(weights(&states), (vec![0, 1, 0], false), "down beats the runtime weight");
    }

    #[test]
    fn endpoints_and_addresses_read_back_from_keys() {
        for (address, protocol, port, text) in [
            ("192.0.2.10", Protocol::Tcp, 443, "192.0.2.10:443/tcp"),
            ("2001:db8::53", Protocol::Udp, 53, "[2001:db8::53]:53/udp"),
            ("192.0.2.1", Protocol::Icmp, 0, "192.0.2.1/icmp"),
            ("2001:db8::1", Protocol::Icmp, 0, "2001:db8::1/icmp"),
        ] {
            let key = vip_key(&vip(address, protocol, port));
            assert_eq!(endpoint(&key, port, port), text);
            assert_eq!(ip_from_words(key.addr, key.family), address.parse::<IpAddr>().unwrap());
        }
    }

    #[test]
    fn backends_without_a_mac_take_the_resolved_one_or_no_flows() {
        let backend = |a: &str| Backend {
            address: a.parse().unwrap(),
            weight: 1,
            mac: None,
            health_check: None,
            port: None,
            interface: None,
        };
        let mut l2 = vip("192.0.2.1", Protocol::Tcp, 80);
        l2.backends = vec![backend("10.0.0.1"), backend("10.0.0.2")];
        let mut ipip = vip("192.0.2.2", Protocol::Tcp, 80);
        ipip.name = "t".into();
        ipip.mode = Mode::DsrIpip;
        ipip.backends = vec![backend("10.1.0.1"), backend("fd00:1::1")];
        let mut config = Config { node: Default::default(), vips: vec![l2, ipip], ..Default::default() };
        config.node.next_hop_v4 = Some("10.0.0.254".parse().unwrap());
        let targets: Vec<String> =
            neighbor_targets(&config, "eth0").iter().map(|(a, iface)| format!("{a}@{iface}")).collect();
        assert_eq!(
            targets,
            ["10.0.0.1@eth0", "10.0.0.2@eth0", "10.0.0.254@eth0", "fd00:1::1@eth0"],
            "router for v4, the backend for v6"
        );

        let mut states = BackendStates::default();
        states.neighbors.insert("10.0.0.1".parse().unwrap(), [2, 0, 0, 0, 0, 1]);
        states.neighbors.insert("10.0.0.254".parse().unwrap(), [2, 0, 0, 0, 0, 0xfe]);
        let facts = NodeFacts { iface_mac: [0; 6], mtu: 1500, ifindex: 0, interfaces: Vec::new() };
        let state = DesiredState::with_states(&config, &facts, &states);
        let backends: Vec<([u8; 6], u32, bool)> =
            state.vips.values().flat_map(|v| v.backends.iter().map(|b| (b.mac, b.weight, b.mac_known))).collect();
        assert_eq!(
            backends,
            [([2, 0, 0, 0, 0, 1], 1, true), ([0; 6], 0, false), ([2, 0, 0, 0, 0, 0xfe], 1, true), ([0; 6], 0, false),]
        );
        config.node.next_hop_mac = Some("02:00:00:00:00:aa".parse().unwrap());
        assert_eq!(neighbor_targets(&config, "eth0").len(), 2, "a configured next-hop MAC needs no resolution");
    }

    #[test]
    fn nat_backends_leave_by_their_interface_and_unknown_interfaces_are_refused() {
        let mut config = Config {
            node: Default::default(),
            vips: vec![vip("192.0.2.1", Protocol::Tcp, 80), vip("192.0.2.2", Protocol::Tcp, 80)],
            ..Default::default()
        };
        config.vips[1].name = "near".into();
        for v in &mut config.vips {
            v.mode = Mode::Nat;
        }
        let backend = |a: &str, interface: Option<&str>| Backend {
            address: a.parse().unwrap(),
            port: None,
            interface: interface.map(str::to_owned),
            weight: 1,
            mac: Some("02:00:00:00:00:01".parse().unwrap()),
            health_check: None,
        };
        config.vips[0].backends = vec![backend("10.1.0.1", Some("eth1"))];
        config.vips[1].backends = vec![backend("10.0.0.1", None)];
        let iface = |ifindex, last| Iface { ifindex, mac: [2, 0, 0, 0, 0, last], pad: 0 };
        let mut facts = NodeFacts {
            iface_mac: [2, 0, 0, 0, 0, 1],
            mtu: 1500,
            ifindex: 4,
            interfaces: vec![("eth0".into(), iface(4, 1)), ("eth1".into(), iface(7, 2))],
        };
        assert_eq!(check_interfaces(&config, &facts), Ok(()));
        let state = DesiredState::new(&config, &facts);
        let egress: Vec<u16> = state.vips.values().map(|v| v.backends[0].egress).collect();
        assert_eq!(egress, [2, 0], "eth1 is index 2; no interface: the one packets come in on");
        assert_eq!(state.ifaces, [iface(4, 1), iface(7, 2)]);
        assert_ne!(state.node.flags & NODE_FLAG_MULTI_IFACE, 0);
        assert_eq!(state.node.ifindex, 4);
        let targets = neighbor_targets(&config, "eth0");
        assert_eq!(targets.get(&"10.1.0.1".parse().unwrap()), None, "configured MACs need no resolution");

        facts.interfaces.truncate(1);
        let err = check_interfaces(&config, &facts).unwrap_err();
        assert_eq!(
            err,
            "VIP `v`, backend 10.1.0.1: interface `eth1` is not one the agent runs on (--iface eth0); add `--iface eth1` to `xlb run` or fix the name"
        );
        let one_armed = DesiredState::new(&config, &facts);
        assert!(one_armed.ifaces.is_empty());
        assert_eq!(one_armed.node.flags & NODE_FLAG_MULTI_IFACE, 0);
    }
}
