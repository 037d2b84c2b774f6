//! VIP checks: one `vips:` entry with its backends, and what `mode: nat` needs.

use std::collections::HashSet;

use super::{Checker, MAX_WEIGHT};
use crate::config::{
    Backend, ConfigError, DEFAULT_PANIC_THRESHOLD, DEFAULT_TABLE_SIZE, Mode, NatPool, Node, Ports, Protocol, RawVip,
    SourcePolicy, SynCookies, Vip, parse_percent,
};

impl Checker<'_> {
    pub(in crate::config) fn check_vip(
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
            return Err(self.err(at, field("port"), "the range is empty; write the lower port first (e.g. 8000-8099)"));
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
        // Where an empty list is refused, once every other field had its say.
        let (backends_at, backends_missing) = match &raw.backends {
            Some(list) => (list.referenced, "the list is empty"),
            None => (*at, "no backends listed"),
        };
        let listed = raw.backends.map(|list| list.value).unwrap_or_default();
        let mut backends: Vec<Backend> = Vec::with_capacity(listed.len());
        // A set, not a scan of `backends`: a VIP may have tens of thousands.
        let mut endpoints = HashSet::with_capacity(listed.len());
        for (j, spanned) in listed.into_iter().enumerate() {
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
            // One entry per address, except in NAT, which may send to several ports of one host:
            // there one per (address, port at the backend); an entry without `port` keeps the
            // VIP's port.
            let endpoint = match raw.mode {
                Mode::Nat => b.port.or((port_last <= port).then_some(port)),
                _ => None,
            };
            if !endpoints.insert((b.address, endpoint)) {
                let why = match (raw.mode, b.port) {
                    (Mode::Nat, None) => format!(
                        "{} without `port` sends to the VIP's port, as an earlier entry of this address does; give each entry of one address its own `port`",
                        b.address
                    ),
                    (Mode::Nat, Some(p)) => format!(
                        "{} port {p} is listed twice for this VIP (an entry without `port` sends to the VIP's port); give each entry of one address another port",
                        b.address
                    ),
                    _ => format!(
                        "{} is listed twice for this VIP; direct server return sends to the address itself, so list it once (mode: nat can send to several ports of one address)",
                        b.address
                    ),
                };
                return Err(self.err(&bat, bfield("address"), why));
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
                    "must be 1 to 65535 (or absent: the client's destination port)",
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
        if raw.mode != Mode::L7 && backends.is_empty() {
            return Err(self.err(
                &backends_at,
                field("backends"),
                format!("{backends_missing}; a VIP needs at least one backend: list them, or remove the VIP"),
            ));
        }
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
        let syn_cookies = match &raw.syn_cookies {
            None => SynCookies::Off,
            Some(cookies) => {
                let vip = (raw.mode, raw.protocol, raw.snat_pool.is_some());
                self.check_syn_cookies(&field("syn_cookies"), vip, &cookies.value, &cookies.referenced)?
            }
        };
        let connection_limit = match raw.connection_limit {
            None => None,
            Some(limit) => Some(self.check_conn_limit(
                limit.value,
                &limit.referenced,
                &field("connection_limit"),
                (raw.mode, raw.protocol),
            )?),
        };
        let sources = match raw.sources {
            None => SourcePolicy::default(),
            Some(sources) if raw.mode == Mode::L7 => {
                return Err(self.err(
                    &sources.referenced,
                    field("sources"),
                    "applies to VIPs the XDP program serves (dsr-l2, dsr-ipip, nat); an l7 VIP's connections \
                     go to the proxy, whose routes have rate limits of their own: remove it",
                ));
            }
            Some(sources) => {
                self.check_sources(&field("sources"), sources.value, &sources.referenced, Some(&node.sources))?
            }
        };
        if raw.mode != Mode::L7
            && (sources.allow_only || node.sources.allow_only)
            && sources.allow.is_empty()
            && node.sources.allow.is_empty()
        {
            let at_field =
                if sources.allow_only { field("sources.allow_only") } else { "node.sources.allow_only".into() };
            return Err(self.err(
                at,
                at_field,
                format!(
                    "refuses every source of VIP `{}`: neither the VIP nor the node has an allow entry; list the \
                     sources it serves under `sources.allow`, or remove `allow_only`",
                    raw.name
                ),
            ));
        }
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
            sources,
            syn_cookies,
            connection_limit,
        })
    }

    /// `mode: nat` needs TCP or UDP; `snat_pool` needs `mode: nat` and a pool of that name.
    pub(in crate::config) fn check_nat_mode<'p>(
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
}
