//! The BGP messages the speaker sends and the checks on what it receives, on top of the
//! netgauze codec: framing and header checks (RFC 4271 §6.1) here, bodies by netgauze.

use std::{
    collections::HashMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use netgauze_bgp_pkt::{
    BgpMessage,
    capabilities::{
        BgpCapability, FourOctetAsCapability, GracefulRestartAddressFamily, GracefulRestartCapability,
        MultiProtocolExtensionsCapability,
    },
    community::Community as NgCommunity,
    nlri::{Ipv4Unicast, Ipv4UnicastAddress, Ipv6Unicast, Ipv6UnicastAddress},
    notification::{
        BgpNotificationMessage, CeaseError, FiniteStateMachineError, HoldTimerExpiredError, MessageHeaderError,
        OpenMessageError, RouteRefreshError, UpdateMessageError,
    },
    open::{BgpOpenMessage, BgpOpenMessageParameter},
    path_attribute::{
        As2PathSegment, As4Path, As4PathSegment, AsPath, AsPathSegmentType, Communities, LocalPreference, MpReach,
        MpUnreach, MultiExitDiscriminator, NextHop, Origin, PathAttribute, PathAttributeValue,
    },
    update::BgpUpdateMessage,
    wire::deserializer::BgpParsingContext,
};
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::{WritablePdu, reader::SliceReader, traits::ParseFromWithOneInput};

use crate::config::Community;

pub(crate) const HEADER_LEN: usize = 19;
/// RFC 4271's maximum; we do not advertise extended messages (RFC 8654).
pub(crate) const MAX_MESSAGE_LEN: usize = 4096;
/// Stands in for a 4-octet AS in 2-octet fields (RFC 6793).
pub(crate) const AS_TRANS: u16 = 23456;

pub(crate) const TYPE_OPEN: u8 = 1;
pub(crate) const TYPE_UPDATE: u8 = 2;
pub(crate) const TYPE_NOTIFICATION: u8 = 3;
pub(crate) const TYPE_KEEPALIVE: u8 = 4;
pub(crate) const TYPE_ROUTE_REFRESH: u8 = 5;

/// NOTIFICATION error codes (RFC 4271 §4.5, RFC 7313).
pub(crate) const MESSAGE_HEADER_ERROR: u8 = 1;
pub(crate) const OPEN_MESSAGE_ERROR: u8 = 2;
pub(crate) const UPDATE_MESSAGE_ERROR: u8 = 3;
pub(crate) const HOLD_TIMER_EXPIRED: u8 = 4;
pub(crate) const FSM_ERROR: u8 = 5;
pub(crate) const CEASE: u8 = 6;
pub(crate) const ROUTE_REFRESH_ERROR: u8 = 7;

/// Cease subcodes (RFC 4486, RFC 9384).
pub(crate) const CEASE_ADMIN_SHUTDOWN: u8 = 2;
pub(crate) const CEASE_PEER_DECONFIGURED: u8 = 3;
pub(crate) const CEASE_OTHER_CONFIG_CHANGE: u8 = 6;
pub(crate) const CEASE_BFD_DOWN: u8 = 10;

/// A NOTIFICATION: code, subcode and data, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Notification {
    pub code: u8,
    pub subcode: u8,
    pub data: Vec<u8>,
}

impl Notification {
    pub fn new(code: u8, subcode: u8, data: impl Into<Vec<u8>>) -> Self {
        Notification { code, subcode, data: data.into() }
    }

    /// The netgauze message for this code and subcode; combinations netgauze has no name for
    /// become the code's unspecific subcode.
    pub fn to_message(&self) -> BgpMessage {
        let value: Box<[u8]> = self.data.clone().into_boxed_slice();
        let n = match (self.code, self.subcode) {
            (MESSAGE_HEADER_ERROR, 1) => {
                BgpNotificationMessage::MessageHeaderError(MessageHeaderError::ConnectionNotSynchronized { value })
            }
            (MESSAGE_HEADER_ERROR, 2) => {
                BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageLength { value })
            }
            (MESSAGE_HEADER_ERROR, 3) => {
                BgpNotificationMessage::MessageHeaderError(MessageHeaderError::BadMessageType { value })
            }
            (MESSAGE_HEADER_ERROR, _) => {
                BgpNotificationMessage::MessageHeaderError(MessageHeaderError::Unspecific { value })
            }
            (OPEN_MESSAGE_ERROR, 1) => {
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedVersionNumber { value })
            }
            (OPEN_MESSAGE_ERROR, 2) => BgpNotificationMessage::OpenMessageError(OpenMessageError::BadPeerAs { value }),
            (OPEN_MESSAGE_ERROR, 3) => {
                BgpNotificationMessage::OpenMessageError(OpenMessageError::BadBgpIdentifier { value })
            }
            (OPEN_MESSAGE_ERROR, 4) => {
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedOptionalParameter { value })
            }
            (OPEN_MESSAGE_ERROR, 6) => {
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnacceptableHoldTime { value })
            }
            (OPEN_MESSAGE_ERROR, 7) => {
                BgpNotificationMessage::OpenMessageError(OpenMessageError::UnsupportedCapability { value })
            }
            (OPEN_MESSAGE_ERROR, _) => BgpNotificationMessage::OpenMessageError(OpenMessageError::Unspecific { value }),
            (UPDATE_MESSAGE_ERROR, sub) => BgpNotificationMessage::UpdateMessageError(match sub {
                1 => UpdateMessageError::MalformedAttributeList { value },
                2 => UpdateMessageError::UnrecognizedWellKnownAttribute { value },
                3 => UpdateMessageError::MissingWellKnownAttribute { value },
                4 => UpdateMessageError::AttributeFlagsError { value },
                5 => UpdateMessageError::AttributeLengthError { value },
                6 => UpdateMessageError::InvalidOriginAttribute { value },
                8 => UpdateMessageError::InvalidNextHopAttribute { value },
                9 => UpdateMessageError::OptionalAttributeError { value },
                10 => UpdateMessageError::InvalidNetworkField { value },
                11 => UpdateMessageError::MalformedAsPath { value },
                _ => UpdateMessageError::Unspecific { value },
            }),
            (HOLD_TIMER_EXPIRED, sub) => {
                BgpNotificationMessage::HoldTimerExpiredError(HoldTimerExpiredError::Unspecific {
                    sub_code: sub,
                    value,
                })
            }
            (FSM_ERROR, sub) => BgpNotificationMessage::FiniteStateMachineError(match sub {
                1 => FiniteStateMachineError::ReceiveUnexpectedMessageInOpenSentState { value },
                2 => FiniteStateMachineError::ReceiveUnexpectedMessageInOpenConfirmState { value },
                3 => FiniteStateMachineError::ReceiveUnexpectedMessageInEstablishedState { value },
                _ => FiniteStateMachineError::Unspecific { value },
            }),
            (ROUTE_REFRESH_ERROR, _) => {
                BgpNotificationMessage::RouteRefreshError(RouteRefreshError::InvalidMessageLength { value })
            }
            (_, sub) => BgpNotificationMessage::CeaseError(match sub {
                1 => CeaseError::MaximumNumberOfPrefixesReached { value },
                3 => CeaseError::PeerDeConfigured { value },
                4 => CeaseError::AdministrativeReset { value },
                5 => CeaseError::ConnectionRejected { value },
                6 => CeaseError::OtherConfigurationChange { value },
                7 => CeaseError::ConnectionCollisionResolution { value },
                8 => CeaseError::OutOfResources { value },
                9 => CeaseError::HardReset { value },
                10 => CeaseError::BfdDown { value },
                _ => CeaseError::AdministrativeShutdown { value },
            }),
        };
        BgpMessage::Notification(n)
    }

    /// Reads code and subcode from a NOTIFICATION frame (header included).
    pub fn from_frame(frame: &[u8]) -> Notification {
        Notification {
            code: frame.get(HEADER_LEN).copied().unwrap_or(0),
            subcode: frame.get(HEADER_LEN + 1).copied().unwrap_or(0),
            data: frame.get(HEADER_LEN + 2..).unwrap_or_default().to_vec(),
        }
    }
}

impl fmt::Display for Notification {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match (self.code, self.subcode) {
            (1, 1) => "message header error: connection not synchronized",
            (1, 2) => "message header error: bad message length",
            (1, 3) => "message header error: bad message type",
            (1, _) => "message header error",
            (2, 1) => "OPEN error: unsupported version number",
            (2, 2) => "OPEN error: bad peer AS",
            (2, 3) => "OPEN error: bad BGP identifier",
            (2, 4) => "OPEN error: unsupported optional parameter",
            (2, 6) => "OPEN error: unacceptable hold time",
            (2, 7) => "OPEN error: unsupported capability",
            (2, _) => "OPEN error",
            (3, 1) => "UPDATE error: malformed attribute list",
            (3, 2) => "UPDATE error: unrecognized well-known attribute",
            (3, 3) => "UPDATE error: missing well-known attribute",
            (3, 4) => "UPDATE error: attribute flags error",
            (3, 5) => "UPDATE error: attribute length error",
            (3, 6) => "UPDATE error: invalid ORIGIN attribute",
            (3, 8) => "UPDATE error: invalid NEXT_HOP attribute",
            (3, 9) => "UPDATE error: optional attribute error",
            (3, 10) => "UPDATE error: invalid network field",
            (3, 11) => "UPDATE error: malformed AS_PATH",
            (3, _) => "UPDATE error",
            (4, _) => "hold timer expired",
            (5, 1) => "FSM error: unexpected message in OpenSent",
            (5, 2) => "FSM error: unexpected message in OpenConfirm",
            (5, 3) => "FSM error: unexpected message in Established",
            (5, _) => "FSM error",
            (6, 1) => "cease: maximum number of prefixes reached",
            (6, 2) => "cease: administrative shutdown",
            (6, 3) => "cease: peer de-configured",
            (6, 4) => "cease: administrative reset",
            (6, 5) => "cease: connection rejected",
            (6, 6) => "cease: other configuration change",
            (6, 7) => "cease: connection collision resolution",
            (6, 8) => "cease: out of resources",
            (6, 9) => "cease: hard reset",
            (6, 10) => "cease: BFD down",
            (6, _) => "cease",
            (7, _) => "ROUTE-REFRESH error",
            _ => "unknown error",
        };
        write!(f, "{}/{} ({name})", self.code, self.subcode)
    }
}

/// Splits the next whole message off the front of `buf`, after the header checks of RFC 4271
/// §6.1: `Ok(None)` until a whole message is buffered, `Err` with the NOTIFICATION to send
/// when the header is bad.
pub(crate) fn next_frame(buf: &mut Vec<u8>) -> Result<Option<Vec<u8>>, Notification> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    if buf[..16].iter().any(|b| *b != 0xff) {
        return Err(Notification::new(MESSAGE_HEADER_ERROR, 1, []));
    }
    let len_bytes = [buf[16], buf[17]];
    let len = usize::from(u16::from_be_bytes(len_bytes));
    let kind = buf[18];
    let bad_length = || Notification::new(MESSAGE_HEADER_ERROR, 2, len_bytes);
    if !(HEADER_LEN..=MAX_MESSAGE_LEN).contains(&len) {
        return Err(bad_length());
    }
    let fits = match kind {
        TYPE_OPEN => len >= 29,
        TYPE_UPDATE => len >= 23,
        TYPE_NOTIFICATION => len >= 21,
        TYPE_KEEPALIVE => len == HEADER_LEN,
        // RFC 7313 gives ROUTE-REFRESH of a bad length its own error.
        TYPE_ROUTE_REFRESH => {
            if len != 23 {
                let start = buf.len().min(len);
                return Err(Notification::new(ROUTE_REFRESH_ERROR, 1, buf[..start].to_vec()));
            }
            true
        }
        other => return Err(Notification::new(MESSAGE_HEADER_ERROR, 3, [other])),
    };
    if !fits {
        return Err(bad_length());
    }
    if buf.len() < len {
        return Ok(None);
    }
    let rest = buf.split_off(len);
    Ok(Some(std::mem::replace(buf, rest)))
}

/// A parsing context for messages from a peer. Only malformed path attributes fail a message
/// (RFC 4271); unknown capabilities are ignored (RFC 5492).
pub(crate) fn parsing_context(asn4: bool) -> BgpParsingContext {
    BgpParsingContext::new(asn4, HashMap::new(), HashMap::new(), false, false, false, true)
}

/// Parses one frame from [`next_frame`]; `Err` carries the NOTIFICATION to send and why.
pub(crate) fn parse(frame: &[u8], ctx: &mut BgpParsingContext) -> Result<BgpMessage, (Notification, String)> {
    let mut reader = SliceReader::new(frame);
    match BgpMessage::parse(&mut reader, ctx) {
        Ok(msg) => {
            if let BgpMessage::Update(update) = &msg {
                check_update(update)?;
            }
            Ok(msg)
        }
        Err(e) => {
            let why = e.to_string();
            let message: BgpMessage = BgpMessage::Notification(e.into());
            let bytes = encode(&message).unwrap_or_default();
            Err((Notification::from_frame(&bytes), why))
        }
    }
}

/// What netgauze leaves to the speaker: an UPDATE that carries routes has ORIGIN and AS_PATH
/// (and NEXT_HOP for classic NLRI).
fn check_update(update: &BgpUpdateMessage) -> Result<(), (Notification, String)> {
    let has = |f: &dyn Fn(&PathAttributeValue) -> bool| update.path_attributes().iter().any(|a| f(a.value()));
    let reach = has(&|v| matches!(v, PathAttributeValue::MpReach(_)));
    if update.nlri().is_empty() && !reach {
        return Ok(());
    }
    let missing = |code: u8, name: &str| {
        Err((Notification::new(UPDATE_MESSAGE_ERROR, 3, [code]), format!("UPDATE with routes but no {name}")))
    };
    if !has(&|v| matches!(v, PathAttributeValue::Origin(_))) {
        return missing(1, "ORIGIN");
    }
    if !has(&|v| matches!(v, PathAttributeValue::AsPath(_))) {
        return missing(2, "AS_PATH");
    }
    if !update.nlri().is_empty() && !has(&|v| matches!(v, PathAttributeValue::NextHop(_))) {
        return missing(3, "NEXT_HOP");
    }
    Ok(())
}

/// The wire bytes of `message`.
pub(crate) fn encode(message: &BgpMessage) -> Result<Vec<u8>, String> {
    let mut out = Vec::with_capacity(message.len());
    message.write(&mut out).map_err(|e| e.to_string())?;
    if out.len() > MAX_MESSAGE_LEN {
        return Err(format!("a {}-byte message exceeds BGP's {MAX_MESSAGE_LEN}", out.len()));
    }
    Ok(out)
}

/// The address families the speaker negotiates.
pub(crate) const FAMILIES: [AddressType; 2] = [AddressType::Ipv4Unicast, AddressType::Ipv6Unicast];

pub(crate) fn family_of(address: IpAddr) -> AddressType {
    if address.is_ipv4() { AddressType::Ipv4Unicast } else { AddressType::Ipv6Unicast }
}

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
fn attr(optional: bool, transitive: bool, extended: bool, value: PathAttributeValue) -> Option<PathAttribute> {
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

fn v4_nlri(prefixes: &[Ipv4Addr]) -> Vec<Ipv4UnicastAddress> {
    prefixes
        .iter()
        .filter_map(|a| Ipv4Unicast::from_net(ipnet::Ipv4Net::from(*a)).ok())
        .map(Ipv4UnicastAddress::new_no_path_id)
        .collect()
}

fn v6_nlri(prefixes: &[Ipv6Addr]) -> Vec<Ipv6UnicastAddress> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    fn roundtrip(message: &BgpMessage, asn4: bool) -> Vec<u8> {
        let bytes = encode(message).unwrap();
        let mut buf = bytes.clone();
        let frame = next_frame(&mut buf).unwrap().expect("a whole frame");
        assert!(buf.is_empty());
        let parsed = parse(&frame, &mut parsing_context(asn4)).unwrap_or_else(|(n, why)| panic!("{n}: {why}"));
        assert_eq!(&parsed, message);
        bytes
    }

    fn attrs() -> RouteAttrs {
        RouteAttrs {
            as_path: vec![65010],
            asn4: true,
            med: Some(20),
            local_pref: None,
            communities: vec![Community { asn: 65010, value: 100 }],
        }
    }

    #[test]
    fn open_carries_our_capabilities() {
        let message = open(4_200_000_001, 9, Ipv4Addr::new(192, 0, 2, 21), 120, true);
        let bytes = roundtrip(&message, true);
        assert_eq!(
            bytes,
            hex("ffffffffffffffffffffffffffffffff 003f 01 04 5ba0 0009 c0000215 22
                 02 20 0104 0001 00 01 0104 0002 00 01 0200 4104 fa56ea01 400a 8078 0001 01 80 0002 01 80")
        );
        let BgpMessage::Open(o) = message else { unreachable!() };
        assert_eq!((o.my_as(), o.my_asn4(), o.hold_time()), (AS_TRANS, 4_200_000_001, 9));
        // No graceful restart capability with restart time 0, and a 2-octet AS in the field.
        let BgpMessage::Open(o) = open(65010, 0, Ipv4Addr::new(10, 0, 0, 2), 0, false) else { unreachable!() };
        assert_eq!(o.my_as(), 65010);
        assert!(!o.capabilities().iter().any(|c| matches!(c, BgpCapability::GracefulRestartCapability(_))));
    }

    /// The OPEN BIRD 2.0.12 sent to a speaker here (`local 10.0.0.1 as 65000`, hold time 9,
    /// graceful restart on): multiprotocol IPv4 unicast, route refresh, graceful restart (120 s,
    /// IPv4 unicast), 4-octet AS, enhanced route refresh, long-lived graceful restart (empty).
    const BIRD_OPEN: &str = "ffffffffffffffffffffffffffffffff00390104fde800090a0000011c021a0104000100010200400600780001010041040000fde846004700";

    #[test]
    fn parses_what_bird_sends() {
        let mut buf = hex(BIRD_OPEN);
        buf.extend(hex("ffffffffffffffffffffffffffffffff 0013 04"));
        let open = next_frame(&mut buf).unwrap().unwrap();
        let keepalive = next_frame(&mut buf).unwrap().unwrap();
        assert_eq!(next_frame(&mut buf), Ok(None));
        let Ok(BgpMessage::Open(o)) = parse(&open, &mut parsing_context(false)) else { panic!("OPEN") };
        assert_eq!((o.my_asn4(), o.hold_time(), o.bgp_id()), (65000, 9, Ipv4Addr::new(10, 0, 0, 1)));
        let caps = o.capabilities();
        assert!(caps.iter().any(|c| matches!(c, BgpCapability::FourOctetAs(a) if a.asn4() == 65000)));
        assert!(caps.iter().any(
            |c| matches!(c, BgpCapability::MultiProtocolExtensions(m) if m.address_type() == AddressType::Ipv4Unicast)
        ));
        assert!(caps.iter().any(|c| matches!(c, BgpCapability::GracefulRestartCapability(g) if g.time() == 120)));
        // Re-encoded by netgauze, the same bytes.
        assert_eq!(encode(&BgpMessage::Open(o)).unwrap(), hex(BIRD_OPEN));
        assert_eq!(parse(&keepalive, &mut parsing_context(true)), Ok(BgpMessage::KeepAlive));
    }

    #[test]
    fn updates_round_trip() {
        let a = attrs();
        let v4 = [Ipv4Addr::new(192, 0, 2, 10), Ipv4Addr::new(192, 0, 2, 11)];
        let bytes = roundtrip(&announce_v4(&v4, Ipv4Addr::new(10, 0, 0, 2), &a), true);
        assert_eq!(
            bytes,
            hex("ffffffffffffffffffffffffffffffff 0043 02 0000 0022
                 40 01 01 00  40 02 06 02 01 0000fdf2  40 03 04 0a000002  80 04 04 00000014  c0 08 04 fdf20064
                 20 c000020a 20 c000020b")
        );
        let v6: [Ipv6Addr; 1] = ["2001:db8::10".parse().unwrap()];
        let bytes = roundtrip(&announce_v6(&v6, "fd00::2".parse().unwrap(), &a), true);
        assert_eq!(
            bytes,
            hex("ffffffffffffffffffffffffffffffff 005c 02 0000 0045
                 40 01 01 00  40 02 06 02 01 0000fdf2  80 04 04 00000014  c0 08 04 fdf20064
                 90 0e 0026 0002 01 10 fd000000000000000000000000000002 00 80 20010db8000000000000000000000010")
        );
        roundtrip(&withdraw_v4(&v4), true);
        let bytes = roundtrip(&withdraw_v6(&v6), true);
        assert_eq!(
            bytes,
            hex(
                "ffffffffffffffffffffffffffffffff 002f 02 0000 0018 90 0f 0014 0002 01 80 20010db8000000000000000000000010"
            )
        );
        // iBGP: empty AS_PATH, LOCAL_PREF. 2-octet peers: AS_TRANS and AS4_PATH.
        let ibgp = RouteAttrs { as_path: vec![], local_pref: Some(200), ..a.clone() };
        roundtrip(&announce_v4(&v4, Ipv4Addr::new(10, 0, 0, 2), &ibgp), true);
        let two = RouteAttrs { as_path: vec![4_200_000_001], asn4: false, ..a };
        let message = announce_v4(&v4, Ipv4Addr::new(10, 0, 0, 2), &two);
        roundtrip(&message, false);
        let BgpMessage::Update(u) = &message else { unreachable!() };
        assert!(u.path_attributes().iter().any(|p| matches!(p.value(), PathAttributeValue::As4Path(_))));
    }

    #[test]
    fn end_of_rib_markers() {
        for family in FAMILIES {
            let message = end_of_rib(family);
            roundtrip(&message, true);
            let BgpMessage::Update(u) = message else { unreachable!() };
            assert_eq!(u.end_of_rib(), Some(family));
        }
        assert_eq!(
            encode(&end_of_rib(AddressType::Ipv4Unicast)).unwrap(),
            hex("ffffffffffffffffffffffffffffffff 0017 02 0000 0000")
        );
    }

    #[test]
    fn keepalive_and_notifications_round_trip() {
        assert_eq!(roundtrip(&BgpMessage::KeepAlive, true), hex("ffffffffffffffffffffffffffffffff 0013 04"));
        for (code, subcode, data) in [
            (1u8, 1u8, vec![]),
            (1, 2, vec![0x10, 0x01]),
            (1, 3, vec![9]),
            (2, 1, vec![0, 4]),
            (2, 2, vec![0xfd, 0xe8]),
            (2, 6, vec![0, 1]),
            (3, 6, vec![]),
            (4, 0, vec![]),
            (5, 1, vec![]),
            (6, 2, vec![]),
            (6, 10, vec![]),
        ] {
            let n = Notification::new(code, subcode, data.clone());
            let bytes = roundtrip(&n.to_message(), true);
            assert_eq!(Notification::from_frame(&bytes), n);
            assert_eq!(&bytes[18..21], &[3, code, subcode]);
        }
        assert_eq!(Notification::new(6, 2, []).to_string(), "6/2 (cease: administrative shutdown)");
    }

    #[test]
    fn header_checks_name_the_error() {
        let header = |len: u16, kind: u8| {
            let mut b = vec![0xff; 16];
            b.extend(len.to_be_bytes());
            b.push(kind);
            b
        };
        let mut garbage = vec![0u8; 19];
        assert_eq!(next_frame(&mut garbage), Err(Notification::new(1, 1, [])));
        assert_eq!(next_frame(&mut header(18, 4)), Err(Notification::new(1, 2, [0, 18])));
        assert_eq!(next_frame(&mut header(5000, 2)), Err(Notification::new(1, 2, [0x13, 0x88])));
        assert_eq!(next_frame(&mut header(20, 4)), Err(Notification::new(1, 2, [0, 20])));
        assert_eq!(next_frame(&mut header(25, 1)), Err(Notification::new(1, 2, [0, 25])));
        assert_eq!(next_frame(&mut header(19, 9)), Err(Notification::new(1, 3, [9])));
        assert_eq!(next_frame(&mut header(23, 2)), Ok(None), "waits for the body");
        assert!(matches!(next_frame(&mut header(24, 5)), Err(Notification { code: 7, subcode: 1, .. })));
    }

    #[test]
    fn bad_bodies_map_to_their_notification() {
        let parse_hex = |s: &str| {
            let mut buf = hex(s);
            let frame = next_frame(&mut buf).unwrap().unwrap();
            parse(&frame, &mut parsing_context(true)).map(|_| ()).map_err(|(n, _)| (n.code, n.subcode, n.data))
        };
        // OPEN version 3: unsupported version, data = the version we speak.
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff 001d 01 03 fde8 0009 0a000001 00"),
            Err((2, 1, vec![0, 4]))
        );
        // Hold time 1.
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 0001 0a000001 00"),
            Err((2, 6, vec![0, 1]))
        );
        // BGP identifier 0.0.0.0.
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 0009 00000000 00"),
            Err((2, 3, vec![0, 0, 0, 0]))
        );
        // ORIGIN 5.
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff 001e 02 0000 0007 40 01 01 05 40 02 00"),
            Err((3, 6, vec![]))
        );
        // Routes without ORIGIN.
        assert_eq!(
            parse_hex("ffffffffffffffffffffffffffffffff 0023 02 0000 0007 40 03 04 0a000001 20 c000020a"),
            Err((3, 3, vec![1]))
        );
        // A withdrawal-only UPDATE needs no attributes.
        assert_eq!(parse_hex("ffffffffffffffffffffffffffffffff 001c 02 0005 20 c000020a 0000"), Ok(()));
    }

    #[test]
    fn many_prefixes_fit_the_message_size() {
        let a = attrs();
        let n = prefixes_per_update(AddressType::Ipv4Unicast, &a);
        let many: Vec<Ipv4Addr> = (0..n as u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i)).collect();
        assert!(encode(&announce_v4(&many, Ipv4Addr::new(10, 0, 0, 2), &a)).is_ok());
        let more: Vec<Ipv4Addr> = (0..=n as u32).map(|i| Ipv4Addr::from(0x0a00_0000 + i)).collect();
        assert!(encode(&announce_v4(&more, Ipv4Addr::new(10, 0, 0, 2), &a)).is_err());
        let n = prefixes_per_update(AddressType::Ipv6Unicast, &a);
        let many: Vec<Ipv6Addr> = (0..n as u128).map(|i| Ipv6Addr::from(0x2001_0db8 << 96 | i)).collect();
        assert!(encode(&announce_v6(&many, "fd00::2".parse().unwrap(), &a)).is_ok());
        for family in FAMILIES {
            assert!(withdrawals_per_update(family) > 200);
        }
    }

    #[test]
    fn mutated_messages_never_panic_the_parser() {
        // Valid messages with random bytes changed, inserted and cut, through framing and parsing
        // (as the session runs them): errors only, never a panic.
        let a = attrs();
        let seeds: Vec<Vec<u8>> = [
            hex(BIRD_OPEN),
            encode(&open(4_200_000_001, 9, Ipv4Addr::new(192, 0, 2, 21), 120, true)).unwrap(),
            encode(&announce_v4(&[Ipv4Addr::new(192, 0, 2, 10)], Ipv4Addr::new(10, 0, 0, 2), &a)).unwrap(),
            encode(&announce_v6(&["2001:db8::10".parse().unwrap()], "fd00::2".parse().unwrap(), &a)).unwrap(),
            encode(&withdraw_v6(&["2001:db8::10".parse().unwrap()])).unwrap(),
            encode(&Notification::new(6, 2, [1, 2, 3]).to_message()).unwrap(),
            hex("ffffffffffffffffffffffffffffffff 0017 05 0001 00 01"),
        ]
        .into();
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let mut parsed = 0;
        for i in 0..20_000 {
            let mut m = seeds[i % seeds.len()].clone();
            for _ in 0..1 + next() % 4 {
                let at = 16 + (next() as usize) % (m.len() - 16);
                match next() % 3 {
                    0 => m[at] = next() as u8,
                    1 => m.insert(at, next() as u8),
                    _ => m[at] ^= 1 << (next() % 8),
                }
            }
            if next() % 8 == 0 {
                m.truncate(19 + (next() as usize) % (m.len() - 18));
            }
            let mut buf = m;
            while let Ok(Some(frame)) = next_frame(&mut buf) {
                if parse(&frame, &mut parsing_context(next() % 2 == 0)).is_ok() {
                    parsed += 1;
                }
            }
        }
        assert!(parsed > 0, "some mutations stay valid");
    }
}
