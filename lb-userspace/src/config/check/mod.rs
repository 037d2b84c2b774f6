//! The checks that turn the file as written into a validated `Config`: `Checker`, its error
//! constructor and the top-level walk; one file per rule family.

use std::cell::OnceCell;
use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use super::positions::PositionTree;
use super::{Config, ConfigError, Mode, Protocol, RawConfig, RawNode, Unhashable};

mod bgp;
mod health;
pub(crate) use health::read_certificates;
mod node;
mod pools;
mod sources;
mod syn_cookies;
pub(crate) use sources::network;
mod vips;

/// Most connection-table entries (the LRU map is preallocated: ~100 bytes each).
const MAX_FLOW_TABLE_SIZE: u32 = 1 << 24;
/// Largest backend weight; weights are relative, so this only bounds arithmetic.
pub const MAX_WEIGHT: u32 = 65535;
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

pub(super) struct Checker<'a> {
    pub(super) path: &'a Path,
    /// The file's text, read again for the positions of fields once there is an error to place.
    text: &'a str,
    positions: OnceCell<Option<PositionTree>>,
}

impl<'a> Checker<'a> {
    pub(super) fn new(path: &'a Path, text: &'a str) -> Self {
        Checker { path, text, positions: OnceCell::new() }
    }

    /// The error of `field` (a path such as `vips[0].backends[1].weight`), at the field's value
    /// when the file has it, else at `at` (the block it is missing from). The value as written
    /// is quoted at the head of the message unless the message quotes it already.
    pub(super) fn err(
        &self,
        at: &serde_saphyr::Location,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        let (field, mut message) = (field.into(), message.into());
        let (mut line, mut column) = (at.line(), at.column());
        let positions = self.positions.get_or_init(|| PositionTree::read(self.text));
        if let Some((found, value)) = positions.as_ref().and_then(|tree| tree.value_at(&field)) {
            (line, column) = (found.line(), found.column());
            // A key is never repeated in a message.
            let secret = field.ends_with("password");
            if let Some(value) = value.filter(|v| !v.is_empty() && !secret && !message.contains(&format!("`{v}`"))) {
                message = match message.strip_prefix(&format!("{value} ")) {
                    Some(rest) => format!("`{value}` {rest}"),
                    None => format!("`{value}`: {message}"),
                };
            }
        }
        ConfigError::Invalid { path: self.path.to_owned(), line, column, field, message }
    }

    pub(super) fn check(&self, raw: RawConfig) -> Result<Config, ConfigError> {
        let (raw_node, node_at) = match raw.node {
            Some(n) => (n.value, n.referenced),
            None => (RawNode::default(), serde_saphyr::Location::UNKNOWN),
        };
        let node = self.check_node(raw_node, &node_at)?;
        let pool_order: Vec<(String, serde_saphyr::Location)> =
            raw.nat_pools.iter().map(|p| (p.value.name.clone(), p.referenced)).collect();
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
                if let Some(over) = spanned.value.backend_list().get(room) {
                    return Err(self.err(
                        &over.referenced,
                        format!("vips[{i}].backends[{room}]"),
                        format!(
                            "more than {max} backends over all VIPs (the per-node limit); split the VIPs over more nodes"
                        ),
                    ));
                }
                backend_slots += spanned.value.backend_list().len();
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
        self.check_pool_addresses(&nat_pools, &pool_order, &vips)?;
        let global_limits = match raw.global_limits {
            Some(g) => Some(self.check_global_limits(
                g.value,
                &g.referenced,
                bgp.as_ref().map(|b| std::net::IpAddr::V4(b.router_id)),
            )?),
            None => None,
        };
        let config = Config { node, vips, bgp, agent: raw.agent, nat_pools, global_limits };
        self.check_global_scopes(&config)?;
        Ok(config)
    }
}
