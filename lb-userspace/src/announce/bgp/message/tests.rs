//! Unit tests of framing, parsing and the messages the speaker builds.

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
    assert_eq!(parse_hex("ffffffffffffffffffffffffffffffff 001d 01 03 fde8 0009 0a000001 00"), Err((2, 1, vec![0, 4])));
    // Hold time 1.
    assert_eq!(parse_hex("ffffffffffffffffffffffffffffffff 001d 01 04 fde8 0001 0a000001 00"), Err((2, 6, vec![0, 1])));
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
