//! The file as written (`Raw*` serde types), before the semantic checks.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};
use serde_saphyr::Spanned;

use super::{AgentListeners, DURATION_FORMS, HashFields, Mac, Mode, Ports, Prefix, Protocol, Unhashable, l7};

// The file as written, before the semantic checks.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    #[serde(default)]
    pub(super) node: Option<Spanned<RawNode>>,
    #[serde(default)]
    pub(super) vips: Vec<Spanned<RawVip>>,
    #[serde(default)]
    pub(super) bgp: Option<Spanned<RawBgp>>,
    #[serde(default)]
    pub(super) agent: AgentListeners,
    #[serde(default)]
    pub(super) nat_pools: Vec<Spanned<RawNatPool>>,
    #[serde(default)]
    pub(super) global_limits: Option<Spanned<super::limits::RawGlobalLimits>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNatPool {
    pub(super) name: String,
    #[serde(default)]
    pub(super) addresses: Vec<IpAddr>,
    pub(super) ports: Option<Ports>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBgp {
    pub(super) local_as: Option<u32>,
    pub(super) router_id: Option<IpAddr>,
    pub(super) hold_time: Option<RawScalar>,
    pub(super) connect_retry: Option<RawScalar>,
    pub(super) graceful_restart_time: Option<RawScalar>,
    pub(super) withdraw_grace: Option<RawScalar>,
    #[serde(default)]
    pub(super) communities: Vec<Spanned<RawScalar>>,
    pub(super) med: Option<u32>,
    pub(super) local_pref: Option<u32>,
    #[serde(default)]
    pub(super) peers: Vec<Spanned<RawPeer>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPeer {
    pub(super) address: IpAddr,
    pub(super) remote_as: u32,
    pub(super) port: Option<u16>,
    pub(super) password: Option<String>,
    pub(super) bfd: Option<Spanned<RawBfd>>,
    pub(super) source_address: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBfd {
    pub(super) enabled: Option<bool>,
    pub(super) min_tx: Option<RawScalar>,
    pub(super) min_rx: Option<RawScalar>,
    pub(super) multiplier: Option<u32>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNode {
    pub(super) next_hop_mac: Option<Mac>,
    pub(super) next_hop_v4: Option<IpAddr>,
    pub(super) next_hop_v6: Option<IpAddr>,
    pub(super) tunnel_source_v4: Option<Prefix>,
    pub(super) tunnel_source_v6: Option<Prefix>,
    pub(super) mtu: Option<u32>,
    pub(super) flow_table_size: Option<u32>,
    pub(super) nat_table_size: Option<u32>,
    pub(super) nat_tcp_timeout: Option<RawScalar>,
    pub(super) nat_closing_timeout: Option<RawScalar>,
    pub(super) nat_udp_timeout: Option<RawScalar>,
    pub(super) bpf_log: Option<bool>,
    pub(super) sources: Option<Spanned<RawSources>>,
}

/// `sources:` of the node or of a VIP: who may open flows, and how fast.
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSources {
    #[serde(default)]
    pub(super) allow: Vec<Prefix>,
    #[serde(default)]
    pub(super) deny: Vec<Prefix>,
    pub(super) allow_only: Option<bool>,
    pub(super) new_flows: Option<Spanned<RawNewFlows>>,
}

/// `sources.new_flows:` the per-prefix limit.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawNewFlows {
    pub(super) rate: Option<u64>,
    pub(super) burst: Option<u64>,
    pub(super) prefix_v4: Option<u8>,
    pub(super) prefix_v6: Option<u8>,
}

impl RawVip {
    /// The VIP-level backends as written (none when the key is absent).
    pub(super) fn backend_list(&self) -> &[Spanned<RawBackend>] {
        self.backends.as_ref().map_or(&[], |list| &list.value)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVip {
    pub(super) name: String,
    pub(super) address: IpAddr,
    #[serde(default)]
    pub(super) port: Ports,
    pub(super) protocol: Protocol,
    pub(super) mode: Mode,
    #[serde(default)]
    pub(super) hash: HashFields,
    pub(super) maglev_table_size: Option<u32>,
    #[serde(default)]
    pub(super) unhashable: Unhashable,
    /// Spanned as a whole, so that an empty list is refused at its own line.
    pub(super) backends: Option<Spanned<Vec<Spanned<RawBackend>>>>,
    pub(super) health_check: Option<Spanned<RawHealthCheck>>,
    pub(super) min_healthy: Option<u32>,
    pub(super) panic_threshold: Option<Spanned<RawScalar>>,
    pub(super) snat_pool: Option<String>,
    pub(super) l7: Option<Spanned<l7::RawL7>>,
    pub(super) sources: Option<Spanned<RawSources>>,
    pub(super) syn_cookies: Option<Spanned<RawSynCookies>>,
    pub(super) connection_limit: Option<Spanned<super::limits::RawConnLimit>>,
}

/// `syn_cookies:` as written: a word (`off`, `always`), or a mapping (`{ above: N }`); any
/// scalar is taken as text and any mapping key kept, so that the check words every mistake.
#[derive(Debug, Clone)]
pub(super) enum RawSynCookies {
    Word(String),
    Mapping { above: Option<String>, unknown: Option<String> },
}

impl<'de> Deserialize<'de> for RawSynCookies {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawSynCookies;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "off, always or {{ above: N }}")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawSynCookies, E> {
                Ok(RawSynCookies::Word(v.to_owned()))
            }
            fn visit_bool<E: serde::de::Error>(self, v: bool) -> Result<RawSynCookies, E> {
                Ok(RawSynCookies::Word(v.to_string()))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawSynCookies, E> {
                Ok(RawSynCookies::Word(v.to_string()))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawSynCookies, E> {
                Ok(RawSynCookies::Word(v.to_string()))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<RawSynCookies, A::Error> {
                let (mut above, mut unknown) = (None, None);
                while let Some(key) = map.next_key::<String>()? {
                    let value = map.next_value::<RawScalar>()?;
                    if key == "above" {
                        above = Some(value.0);
                    } else {
                        unknown.get_or_insert(key);
                    }
                }
                Ok(RawSynCookies::Mapping { above, unknown })
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackend {
    pub(super) address: IpAddr,
    pub(super) port: Option<u16>,
    pub(super) interface: Option<String>,
    pub(super) weight: Option<u32>,
    pub(super) mac: Option<Mac>,
    // Boxed: a backend's own check is rare, and inline it would triple every backend's size
    // (100 000 of them at the limit, more in a file the YAML budget stops).
    pub(super) health_check: Option<Box<Spanned<RawHealthCheck>>>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHealthCheck {
    #[serde(rename = "type")]
    pub(super) kind: CheckType,
    pub(super) port: Option<u16>,
    pub(super) interval: Option<RawScalar>,
    pub(super) timeout: Option<RawScalar>,
    pub(super) rise: Option<u32>,
    pub(super) fall: Option<u32>,
    pub(super) method: Option<String>,
    pub(super) path: Option<String>,
    pub(super) host: Option<String>,
    pub(super) expect_status: Option<RawStatuses>,
    pub(super) expect_body: Option<String>,
    pub(super) headers: Option<std::collections::BTreeMap<String, String>>,
    pub(super) http_version: Option<RawScalar>,
    pub(super) tls: Option<RawCheckTls>,
    pub(super) service: Option<String>,
    pub(super) send: Option<String>,
    pub(super) expect: Option<String>,
}

/// `tls:` of an https or grpc check.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCheckTls {
    pub(super) sni: Option<String>,
    pub(super) ca_file: Option<String>,
    pub(super) insecure_skip_verify: Option<bool>,
}

/// `expect_status`: a code (`200`), a range (`200-399`), or a list of them, each as text.
#[derive(Debug, Clone)]
pub(super) struct RawStatuses(pub(super) Vec<String>);

impl<'de> Deserialize<'de> for RawStatuses {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = RawStatuses;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "an HTTP status (200), a range (200-399) or a list of them")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<RawStatuses, E> {
                Ok(RawStatuses(vec![v.to_owned()]))
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<RawStatuses, E> {
                Ok(RawStatuses(vec![v.to_string()]))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<RawStatuses, E> {
                Ok(RawStatuses(vec![v.to_string()]))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<RawStatuses, A::Error> {
                let mut out = Vec::new();
                while let Some(RawScalar(item)) = seq.next_element()? {
                    out.push(item);
                }
                Ok(RawStatuses(out))
            }
        }
        d.deserialize_any(Visitor)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub(super) enum CheckType {
    Tcp,
    Http,
    Https,
    Grpc,
    Udp,
}

/// Any scalar as text, so that `interval: 2` gets the duration message (with the accepted
/// forms) rather than a type error.
#[derive(Debug, Clone)]
pub(super) struct RawScalar(pub(super) String);

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
