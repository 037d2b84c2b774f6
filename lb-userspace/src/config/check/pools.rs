//! NAT pool checks: the `nat_pools:` section, and pool addresses against the VIPs.

use serde_saphyr::Spanned;

use super::Checker;
use crate::config::{ConfigError, NatPool, Ports, RawNatPool, Vip};

impl Checker<'_> {
    pub(in crate::config) fn check_pools(&self, raw: Vec<Spanned<RawNatPool>>) -> Result<Vec<NatPool>, ConfigError> {
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
            if let Some(k) = p.addresses.iter().position(|a| a.is_ipv4() != p.addresses[0].is_ipv4()) {
                return Err(self.err(
                    &at,
                    field(&format!("addresses[{k}]")),
                    format!(
                        "{} is of the other family than the pool's first address; make one pool per family",
                        p.addresses[k]
                    ),
                ));
            }
            if let Some(k) = (0..p.addresses.len()).find(|&k| p.addresses[..k].contains(&p.addresses[k])) {
                return Err(self.err(
                    &at,
                    field(&format!("addresses[{k}]")),
                    format!("{} is listed twice; list each address once", p.addresses[k]),
                ));
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
                    format!("{port_first}-{port_last} is not a usable range; write first-last within 1 to 65535, e.g. 20000-59999"),
                ));
            }
            pools.push(NatPool { name: p.name, addresses: p.addresses, port_first, port_last });
        }
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// A pool address must not be a VIP's: replies to it are looked up as NAT replies first.
    /// `order` names the pools as the file lists them (`pools` is sorted by name).
    pub(in crate::config) fn check_pool_addresses(
        &self,
        pools: &[NatPool],
        order: &[(String, serde_saphyr::Location)],
        vips: &[Vip],
    ) -> Result<(), ConfigError> {
        for (i, (name, at)) in order.iter().enumerate() {
            let Some(pool) = pools.iter().find(|p| &p.name == name) else { continue };
            for (k, address) in pool.addresses.iter().enumerate() {
                if let Some(vip) = vips.iter().find(|v| v.address == *address) {
                    return Err(self.err(
                        at,
                        format!("nat_pools[{i}].addresses[{k}]"),
                        format!(
                            "{address} is also the address of VIP `{}`; give the pool addresses of its own",
                            vip.name
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
