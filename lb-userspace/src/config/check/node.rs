//! Node checks: the `node:` section (next hop, tunnel sources, routers, interface).

use std::time::Duration;

use super::{
    Checker, DEFAULT_NAT_CLOSING_TIMEOUT, DEFAULT_NAT_TCP_TIMEOUT, DEFAULT_NAT_UDP_TIMEOUT, MAX_FLOW_TABLE_SIZE,
};
use crate::config::{ConfigError, Node, RawNode, RawScalar, parse_duration};

impl Checker<'_> {
    pub(in crate::config) fn check_node(&self, raw: RawNode, at: &serde_saphyr::Location) -> Result<Node, ConfigError> {
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
                    format!("{mtu} is not a usable IP MTU; use 576 to 65535 or leave it out to use the interface's"),
                ));
            }
        }
        let flow_table_size = raw.flow_table_size.unwrap_or(lb_common::FLOW_TABLE_SIZE);
        if !(1024..=MAX_FLOW_TABLE_SIZE).contains(&flow_table_size) {
            return Err(self.err(at, "node.flow_table_size", format!("must be 1024 to {MAX_FLOW_TABLE_SIZE}")));
        }
        let nat_table_size = raw.nat_table_size.unwrap_or(lb_common::NAT_TABLE_SIZE);
        if !(1024..=MAX_FLOW_TABLE_SIZE).contains(&nat_table_size) {
            return Err(self.err(at, "node.nat_table_size", format!("must be 1024 to {MAX_FLOW_TABLE_SIZE}")));
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
            bpf_log: raw.bpf_log.unwrap_or(false),
            sources: match raw.sources {
                Some(sources) => self.check_sources("node.sources", sources.value, &sources.referenced, None)?,
                None => super::super::SourcePolicy::default(),
            },
        })
    }
}
