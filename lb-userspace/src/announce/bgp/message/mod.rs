//! The BGP messages the speaker sends and the checks on what it receives, on top of the
//! netgauze codec: framing and header checks (RFC 4271 §6.1) here, bodies by netgauze.

mod build;
#[cfg(test)]
mod tests;

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

pub(crate) use build::{
    RouteAttrs, announce_v4, announce_v6, end_of_rib, open, prefixes_per_update, withdraw_v4, withdraw_v6,
    withdrawals_per_update,
};
