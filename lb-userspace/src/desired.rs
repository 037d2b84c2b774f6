//! Desired state: what the data plane should contain, derived from the configuration alone.
//!
//! Sources (today the YAML file; later health checks) write this table; the reconciler turns it
//! into map writes. Keys are exactly the keys of the XDP program's VIP map.

use std::{collections::BTreeMap, net::IpAddr};

use lb_common::{PROTO_ICMP, PROTO_ICMPV6, PROTO_TCP, PROTO_UDP, VipKey};

use crate::config::{Config, Protocol, Vip};

/// One VIP as the data plane should serve it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredVip {
    pub name: String,
    pub endpoint: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesiredState {
    pub vips: BTreeMap<VipKey, DesiredVip>,
}

impl DesiredState {
    pub fn from_config(config: &Config) -> Self {
        let vips = config
            .vips
            .iter()
            .map(|vip| {
                (
                    vip_key(vip),
                    DesiredVip {
                        name: vip.name.clone(),
                        endpoint: vip.endpoint(),
                    },
                )
            })
            .collect();
        Self { vips }
    }
}

/// The VIP map key for a configured VIP (address and port in network byte order).
pub fn vip_key(vip: &Vip) -> VipKey {
    let port = vip.port.to_be();
    match vip.address {
        IpAddr::V4(a) => VipKey::v4(
            u32::from_ne_bytes(a.octets()),
            port,
            ip_proto(vip.protocol, false),
        ),
        IpAddr::V6(a) => {
            let o = a.octets();
            let word = |i: usize| u32::from_ne_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            VipKey::v6(
                [word(0), word(4), word(8), word(12)],
                port,
                ip_proto(vip.protocol, true),
            )
        }
    }
}

fn ip_proto(protocol: Protocol, v6: bool) -> u8 {
    match (protocol, v6) {
        (Protocol::Tcp, _) => PROTO_TCP,
        (Protocol::Udp, _) => PROTO_UDP,
        (Protocol::Icmp, false) => PROTO_ICMP,
        (Protocol::Icmp, true) => PROTO_ICMPV6,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_in_network_byte_order() {
        let vip = Vip {
            name: "w".into(),
            address: "192.0.2.10".parse().unwrap(),
            port: 80,
            protocol: Protocol::Tcp,
        };
        let key = vip_key(&vip);
        assert_eq!(key.addr[0].to_ne_bytes(), [192, 0, 2, 10]);
        assert_eq!(key.port.to_ne_bytes(), [0, 80]);
        assert_eq!((key.proto, key.family), (PROTO_TCP, lb_common::FAMILY_V4));
        let vip = Vip {
            name: "p".into(),
            address: "2001:db8::1".parse().unwrap(),
            port: 0,
            protocol: Protocol::Icmp,
        };
        let key = vip_key(&vip);
        assert_eq!(key.addr[0].to_ne_bytes(), [0x20, 0x01, 0x0d, 0xb8]);
        assert_eq!(key.addr[3].to_ne_bytes(), [0, 0, 0, 1]);
        assert_eq!(
            (key.proto, key.family),
            (PROTO_ICMPV6, lb_common::FAMILY_V6)
        );
    }
}
