//! The messages the speaker builds: its OPEN, and UPDATEs that announce or withdraw host routes
//! with their path attributes, End-of-RIB, and how many prefixes fit one UPDATE.

use super::*;

/// Our OPEN: multiprotocol IPv4 and IPv6 unicast, route refresh, 4-octet AS, and graceful
/// restart when `restart_time` is set (forwarding preserved for both families: the data plane
/// keeps forwarding while the agent is away; `restarted` sets the R bit).
pub(crate) fn open(
    local_as: u32,
    hold_time: u16,
    router_id: Ipv4Addr,
    restart_time: u16,
    restarted: bool,
) -> BgpMessage {
    let mut caps: Vec<BgpCapability> = FAMILIES
        .iter()
        .map(|f| BgpCapability::MultiProtocolExtensions(MultiProtocolExtensionsCapability::new(*f)))
        .collect();
    caps.push(BgpCapability::RouteRefresh);
    caps.push(BgpCapability::FourOctetAs(FourOctetAsCapability::new(local_as)));
    if restart_time > 0 {
        let families: Vec<_> = FAMILIES.iter().map(|f| GracefulRestartAddressFamily::new(true, *f)).collect();
        caps.push(BgpCapability::GracefulRestartCapability(GracefulRestartCapability::new(
            restarted,
            false,
            restart_time,
            families,
        )));
    }
    let my_as = u16::try_from(local_as).unwrap_or(AS_TRANS);
    BgpMessage::Open(BgpOpenMessage::new(
        my_as,
        hold_time,
        router_id,
        vec![BgpOpenMessageParameter::Capabilities(caps.into_boxed_slice())],
    ))
}

/// The path attributes every announcement carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RouteAttrs {
    /// Our AS toward eBGP peers; empty toward iBGP peers.
    pub as_path: Vec<u32>,
    /// Whether both sides speak 4-octet AS numbers.
    pub asn4: bool,
    pub med: Option<u32>,
    /// iBGP only.
    pub local_pref: Option<u32>,
    pub communities: Vec<Community>,
}

/// An attribute with the flags RFC 4271 gives it. netgauze checks the flags against the
/// attribute; with these fixed, correct flags the check passes (the unit tests build every
/// attribute), and a failure leaves the attribute out rather than panicking.
pub(super) fn attr(
    optional: bool,
    transitive: bool,
    extended: bool,
    value: PathAttributeValue,
) -> Option<PathAttribute> {
    PathAttribute::from(optional, transitive, false, extended, value)
        .map_err(|(value, e)| tracing::error!(?value, ?e, "BGP: attribute flags rejected"))
        .ok()
}

impl RouteAttrs {
    fn common(&self) -> Vec<PathAttribute> {
        let mut attrs: Vec<PathAttribute> =
            attr(false, true, false, PathAttributeValue::Origin(Origin::IGP)).into_iter().collect();
        let seq = |asns: &[u32]| {
            if asns.is_empty() {
                vec![]
            } else {
                vec![As4PathSegment::new(AsPathSegmentType::AsSequence, asns.to_vec())]
            }
        };
        if self.asn4 {
            attrs.extend(attr(
                false,
                true,
                false,
                PathAttributeValue::AsPath(AsPath::As4PathSegments(seq(&self.as_path).into())),
            ));
        } else {
            let two: Vec<u16> = self.as_path.iter().map(|a| u16::try_from(*a).unwrap_or(AS_TRANS)).collect();
            let segments =
                if two.is_empty() { vec![] } else { vec![As2PathSegment::new(AsPathSegmentType::AsSequence, two)] };
            attrs.extend(attr(
                false,
                true,
                false,
                PathAttributeValue::AsPath(AsPath::As2PathSegments(segments.into())),
            ));
            if self.as_path.iter().any(|a| *a > u32::from(u16::MAX)) {
                attrs.extend(attr(true, true, false, PathAttributeValue::As4Path(As4Path::new(seq(&self.as_path)))));
            }
        }
        if let Some(med) = self.med {
            attrs.extend(attr(
                true,
                false,
                false,
                PathAttributeValue::MultiExitDiscriminator(MultiExitDiscriminator::new(med)),
            ));
        }
        if let Some(pref) = self.local_pref {
            attrs.extend(attr(false, true, false, PathAttributeValue::LocalPreference(LocalPreference::new(pref))));
        }
        if !self.communities.is_empty() {
            let list: Vec<NgCommunity> = self.communities.iter().map(|c| NgCommunity::new(c.to_u32())).collect();
            let extended = list.len() * 4 > 255;
            attrs.extend(attr(true, true, extended, PathAttributeValue::Communities(Communities::new(list))));
        }
        attrs
    }
}

pub(super) fn v4_nlri(prefixes: &[Ipv4Addr]) -> Vec<Ipv4UnicastAddress> {
    prefixes
        .iter()
        .filter_map(|a| Ipv4Unicast::from_net(ipnet::Ipv4Net::from(*a)).ok())
        .map(Ipv4UnicastAddress::new_no_path_id)
        .collect()
}

pub(super) fn v6_nlri(prefixes: &[Ipv6Addr]) -> Vec<Ipv6UnicastAddress> {
    prefixes
        .iter()
        .filter_map(|a| Ipv6Unicast::from_net(ipnet::Ipv6Net::from(*a)).ok())
        .map(|n| Ipv6UnicastAddress::new(None, n))
        .collect()
}

/// Host routes (/32) in the classic NLRI field with NEXT_HOP `next_hop`.
pub(crate) fn announce_v4(prefixes: &[Ipv4Addr], next_hop: Ipv4Addr, attrs: &RouteAttrs) -> BgpMessage {
    let mut path = attrs.common();
    if let Some(next_hop) = attr(false, true, false, PathAttributeValue::NextHop(NextHop::new(next_hop))) {
        path.insert(2.min(path.len()), next_hop);
    }
    BgpMessage::Update(BgpUpdateMessage::new(vec![], path, v4_nlri(prefixes)))
}

/// Host routes (/128) in MP_REACH_NLRI with global next hop `next_hop`.
pub(crate) fn announce_v6(prefixes: &[Ipv6Addr], next_hop: Ipv6Addr, attrs: &RouteAttrs) -> BgpMessage {
    let mut path = attrs.common();
    let reach =
        MpReach::Ipv6Unicast { next_hop_global: next_hop, next_hop_local: None, nlri: v6_nlri(prefixes).into() };
    path.extend(attr(true, false, true, PathAttributeValue::MpReach(reach)));
    BgpMessage::Update(BgpUpdateMessage::new(vec![], path, vec![]))
}

pub(crate) fn withdraw_v4(prefixes: &[Ipv4Addr]) -> BgpMessage {
    BgpMessage::Update(BgpUpdateMessage::new(v4_nlri(prefixes), vec![], vec![]))
}

pub(crate) fn withdraw_v6(prefixes: &[Ipv6Addr]) -> BgpMessage {
    let unreach = MpUnreach::Ipv6Unicast { nlri: v6_nlri(prefixes).into() };
    BgpMessage::Update(BgpUpdateMessage::new(
        vec![],
        attr(true, false, true, PathAttributeValue::MpUnreach(unreach)).into_iter().collect::<Vec<_>>(),
        vec![],
    ))
}

/// The End-of-RIB marker (RFC 4724): an empty UPDATE for IPv4 unicast, an empty MP_UNREACH for
/// the others.
pub(crate) fn end_of_rib(family: AddressType) -> BgpMessage {
    match family {
        AddressType::Ipv6Unicast => withdraw_v6(&[]),
        _ => BgpMessage::Update(BgpUpdateMessage::new(vec![], vec![], vec![])),
    }
}

/// How many prefixes of `family` fit one UPDATE next to `attrs` (each /32 takes 5 bytes of
/// NLRI, each /128 17).
pub(crate) fn prefixes_per_update(family: AddressType, attrs: &RouteAttrs) -> usize {
    let (base, per) = match family {
        AddressType::Ipv6Unicast => (announce_v6(&[], Ipv6Addr::UNSPECIFIED, attrs), 17),
        _ => (announce_v4(&[], Ipv4Addr::UNSPECIFIED, attrs), 5),
    };
    (MAX_MESSAGE_LEN.saturating_sub(base.len()) / per).max(1)
}

/// Withdrawals per UPDATE (classic withdrawn routes for IPv4, MP_UNREACH for IPv6).
pub(crate) fn withdrawals_per_update(family: AddressType) -> usize {
    let (base, per) = match family {
        AddressType::Ipv6Unicast => (withdraw_v6(&[]), 17),
        _ => (withdraw_v4(&[]), 5),
    };
    (MAX_MESSAGE_LEN - base.len()) / per
}
