//! Source-policy checks: `sources:` of the node or a VIP (allow and deny lists, new-flow limit).

use std::collections::BTreeMap;

use super::Checker;
use crate::config::{ConfigError, NewFlowLimit, Prefix, RawNewFlows, RawSources, SourcePolicy};

/// Fastest new-flow rate a limit may name: beyond it a bucket's interval is under 100 ns, finer
/// than the clock the data plane counts with.
const MAX_RATE: u64 = 10_000_000;
/// Default bucket prefixes: a customer's IPv4 /24, an IPv6 /64 (one LAN).
const DEFAULT_PREFIX_V4: u8 = 24;
const DEFAULT_PREFIX_V6: u8 = 64;

impl Checker<'_> {
    /// `field` is `node.sources` or `vips[i].sources`; `node` is the node's policy when checking
    /// a VIP's.
    pub(in crate::config) fn check_sources(
        &self,
        field: &str,
        raw: RawSources,
        at: &serde_saphyr::Location,
        node: Option<&SourcePolicy>,
    ) -> Result<SourcePolicy, ConfigError> {
        let mut seen: BTreeMap<Prefix, &str> = BTreeMap::new();
        for (list, prefixes) in [("allow", &raw.allow), ("deny", &raw.deny)] {
            for (i, prefix) in prefixes.iter().enumerate() {
                let here = format!("{field}.{list}[{i}]");
                let network = network(prefix);
                if network != *prefix {
                    return Err(self.err(
                        at,
                        here,
                        format!(
                            "{}/{} has host bits set; write the prefix as {}/{}",
                            prefix.address, prefix.len, network.address, network.len
                        ),
                    ));
                }
                if let Some(other) = seen.insert(*prefix, list) {
                    let message = if other == list {
                        format!("{}/{} is listed twice under `{list}`; remove one", prefix.address, prefix.len)
                    } else {
                        format!(
                            "{}/{} is under both `allow` and `deny`; keep it in one list (a longer prefix in the \
                             other list makes an exception)",
                            prefix.address, prefix.len
                        )
                    };
                    return Err(self.err(at, here, message));
                }
            }
        }
        let rules = raw.allow.len() + raw.deny.len() + node.map_or(0, |n| n.allow.len() + n.deny.len());
        if rules > lb_common::MAX_SOURCE_RULES as usize {
            return Err(self.err(
                at,
                field.to_owned(),
                format!(
                    "{rules} allow and deny entries with the node's; the data plane holds {} in all: merge \
                     neighbouring prefixes",
                    lb_common::MAX_SOURCE_RULES
                ),
            ));
        }
        let new_flows = match raw.new_flows {
            None => None,
            Some(limit) => Some(self.check_new_flows(&format!("{field}.new_flows"), limit.value, &limit.referenced)?),
        };
        Ok(SourcePolicy { allow: raw.allow, deny: raw.deny, allow_only: raw.allow_only.unwrap_or(false), new_flows })
    }

    fn check_new_flows(
        &self,
        field: &str,
        raw: RawNewFlows,
        at: &serde_saphyr::Location,
    ) -> Result<NewFlowLimit, ConfigError> {
        let rate = raw.rate.ok_or_else(|| {
            self.err(
                at,
                format!("{field}.rate"),
                "is missing: new flows per second one source prefix may open (e.g. 200)",
            )
        })?;
        if !(1..=MAX_RATE).contains(&rate) {
            return Err(self.err(
                at,
                format!("{field}.rate"),
                format!("{rate} new flows per second is out of range; use 1 to {MAX_RATE}"),
            ));
        }
        let burst = raw.burst.unwrap_or(rate);
        if !(1..=MAX_RATE).contains(&burst) {
            return Err(self.err(
                at,
                format!("{field}.burst"),
                format!(
                    "{burst} is out of range: new flows that may come at once, 1 to {MAX_RATE} (default: the rate)"
                ),
            ));
        }
        let prefix_v4 = raw.prefix_v4.unwrap_or(DEFAULT_PREFIX_V4);
        if !(1..=32).contains(&prefix_v4) {
            return Err(self.err(
                at,
                format!("{field}.prefix_v4"),
                format!("/{prefix_v4} is not an IPv4 prefix length; use 1 to 32 (/32: each address alone)"),
            ));
        }
        let prefix_v6 = raw.prefix_v6.unwrap_or(DEFAULT_PREFIX_V6);
        if !(1..=128).contains(&prefix_v6) {
            return Err(self.err(
                at,
                format!("{field}.prefix_v6"),
                format!("/{prefix_v6} is not an IPv6 prefix length; use 1 to 128 (/64: one LAN)"),
            ));
        }
        // In range, so these fit.
        Ok(NewFlowLimit { rate: rate as u32, burst: burst as u32, prefix_v4, prefix_v6 })
    }
}

/// `prefix` with its host bits cleared.
pub(crate) fn network(prefix: &Prefix) -> Prefix {
    let address = match prefix.address {
        std::net::IpAddr::V4(a) => {
            let mask = u32::MAX.checked_shl(32 - u32::from(prefix.len)).unwrap_or(0);
            std::net::IpAddr::V4((u32::from(a) & mask).into())
        }
        std::net::IpAddr::V6(a) => {
            let mask = u128::MAX.checked_shl(128 - u32::from(prefix.len)).unwrap_or(0);
            std::net::IpAddr::V6((u128::from(a) & mask).into())
        }
    };
    Prefix { address, len: prefix.len }
}
