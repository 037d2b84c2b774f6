//! BGP checks: AS numbers, the `bgp:` section, its peers and their BFD settings.

use std::net::IpAddr;
use std::time::Duration;

use super::{
    AS_TRANS, BGP_PORT, Checker, DEFAULT_CONNECT_RETRY, DEFAULT_HOLD_TIME, DEFAULT_RESTART_TIME,
    DEFAULT_WITHDRAW_GRACE, MAX_BFD_INTERVAL, MAX_CONNECT_RETRY, MAX_MD5_KEY, MAX_RESTART_TIME, MAX_WITHDRAW_GRACE,
    MIN_BFD_INTERVAL, MIN_CONNECT_RETRY,
};
use crate::config::{
    BfdConfig, BgpConfig, BgpPeer, Community, ConfigError, RawBfd, RawBgp, RawPeer, RawScalar, format_duration,
    parse_duration,
};

impl Checker<'_> {
    pub(in crate::config) fn check_as(
        &self,
        at: &serde_saphyr::Location,
        field: &str,
        asn: u32,
    ) -> Result<u32, ConfigError> {
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

    pub(in crate::config) fn check_bgp(
        &self,
        raw: RawBgp,
        at: &serde_saphyr::Location,
    ) -> Result<BgpConfig, ConfigError> {
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
                "not a usable hold time; use 0 (no keepalives) or 3s to 65535s, in whole seconds",
            ));
        }
        let connect_retry = duration("connect_retry", raw.connect_retry, DEFAULT_CONNECT_RETRY)?;
        if !(MIN_CONNECT_RETRY..=MAX_CONNECT_RETRY).contains(&connect_retry) {
            return Err(self.err(
                at,
                "bgp.connect_retry",
                format!(
                    "out of range; use {} to {}",
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
                "out of range; use 0 (no graceful restart) to 4095s, in whole seconds",
            ));
        }
        let withdraw_grace = duration("withdraw_grace", raw.withdraw_grace, DEFAULT_WITHDRAW_GRACE)?;
        if withdraw_grace > MAX_WITHDRAW_GRACE {
            return Err(self.err(
                at,
                "bgp.withdraw_grace",
                format!("out of range; use 0 to {}", format_duration(MAX_WITHDRAW_GRACE)),
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

    pub(in crate::config) fn check_peer(
        &self,
        i: usize,
        raw: RawPeer,
        at: &serde_saphyr::Location,
    ) -> Result<BgpPeer, ConfigError> {
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
            return Err(self.err(at, field("port"), "must be 1 to 65535; leave it out for BGP's port, 179"));
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

    pub(in crate::config) fn check_bfd(
        &self,
        prefix: &str,
        raw: RawBfd,
        at: &serde_saphyr::Location,
    ) -> Result<BfdConfig, ConfigError> {
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
                        "out of range; use {} to {}",
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
                    "use 1 to 255, the packets the peer may miss before it counts us as down (3 is usual)",
                )
            })?,
        };
        Ok(BfdConfig { enabled: raw.enabled.unwrap_or(defaults.enabled), min_tx, min_rx, multiplier })
    }
}
