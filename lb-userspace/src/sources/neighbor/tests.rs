//! Unit tests of neighbour-dump parsing and of the resolver's tracker.

use std::net::Ipv6Addr;

use super::table::{Batch, dump_request, parse_dump, parse_neighbor};
use super::*;
use crate::sources::netlink::{NLMSG_HDRLEN, RTA_HDRLEN, align4, u16_at, u32_at};

const SEQ: u32 = 7;
const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

fn attr(kind: u16, data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((RTA_HDRLEN + data.len()) as u16).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(data);
    out.resize(align4(out.len()), 0);
    out
}

fn ndmsg(family: i32, ifindex: i32, state: u16, flags: u8) -> Vec<u8> {
    let mut out = vec![family as u8, 0, 0, 0];
    out.extend_from_slice(&ifindex.to_ne_bytes());
    out.extend_from_slice(&state.to_ne_bytes());
    out.push(flags);
    out.push(1); // ndm_type: RTN_UNICAST
    out
}

fn message(kind: u16, flags: u16, seq: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    out.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
    out.extend_from_slice(&kind.to_ne_bytes());
    out.extend_from_slice(&(flags | libc::NLM_F_MULTI as u16).to_ne_bytes());
    out.extend_from_slice(&seq.to_ne_bytes());
    out.extend_from_slice(&1234u32.to_ne_bytes());
    out.extend_from_slice(payload);
    out.resize(align4(out.len()), 0);
    out
}

fn v4_neighbor() -> Vec<u8> {
    let mut payload = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
    payload.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
    payload.extend(attr(libc::NDA_LLADDR, &MAC));
    payload.extend(attr(libc::NDA_PROBES, &0u32.to_ne_bytes()));
    payload
}

fn v6_neighbor() -> Vec<u8> {
    let mut payload = ndmsg(libc::AF_INET6, 4, libc::NUD_STALE, 0);
    payload.extend(attr(libc::NDA_DST, &"fd00:213::2".parse::<Ipv6Addr>().unwrap().octets()));
    payload.extend(attr(libc::NDA_LLADDR, &MAC));
    payload
}

fn done(seq: u32) -> Vec<u8> {
    message(libc::NLMSG_DONE as u16, 0, seq, &0i32.to_ne_bytes())
}

#[test]
fn parses_v4_and_v6_entries_and_done() {
    let mut datagram = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
    datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, &v6_neighbor()));
    datagram.extend(done(SEQ));
    let mut out = Vec::new();
    let batch = parse_dump(&datagram, SEQ, &mut out).unwrap();
    assert_eq!(batch, Batch { done: true, interrupted: false });
    assert_eq!(
        out,
        [
            Neighbor { ifindex: 3, addr: "10.213.0.2".parse().unwrap(), mac: Some(MAC), state: libc::NUD_REACHABLE },
            Neighbor { ifindex: 4, addr: "fd00:213::2".parse().unwrap(), mac: Some(MAC), state: libc::NUD_STALE },
        ]
    );
}

#[test]
fn a_dump_spans_datagrams_until_done() {
    let mut out = Vec::new();
    let first = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
    assert_eq!(parse_dump(&first, SEQ, &mut out).unwrap(), Batch::default(), "not done yet");
    let mut second = message(libc::RTM_NEWNEIGH, libc::NLM_F_DUMP_INTR as u16, SEQ, &v6_neighbor());
    second.extend(done(SEQ));
    assert_eq!(parse_dump(&second, SEQ, &mut out).unwrap(), Batch { done: true, interrupted: true });
    assert_eq!(out.len(), 2);
}

#[test]
fn entries_without_mac_other_families_and_other_requests() {
    // Incomplete: a destination but no link-layer address.
    let mut incomplete = ndmsg(libc::AF_INET, 3, libc::NUD_INCOMPLETE, 0);
    incomplete.extend(attr(libc::NDA_DST, &[10, 213, 0, 99]));
    // A tunnel's empty link-layer address, flagged as nested/byte-order bits (masked off).
    let mut tunnel = ndmsg(libc::AF_INET, 5, libc::NUD_NOARP, 0);
    tunnel.extend(attr(libc::NDA_DST | 0x4000, &[10, 9, 0, 1]));
    tunnel.extend(attr(libc::NDA_LLADDR, &[]));
    // A bridge FDB entry, a proxy entry, an entry without destination: skipped.
    let mut bridge = ndmsg(libc::AF_BRIDGE, 3, libc::NUD_REACHABLE, 0);
    bridge.extend(attr(libc::NDA_LLADDR, &MAC));
    let mut proxy = ndmsg(libc::AF_INET, 3, libc::NUD_NONE, libc::NTF_PROXY);
    proxy.extend(attr(libc::NDA_DST, &[10, 213, 0, 3]));
    let mut no_dst = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
    no_dst.extend(attr(libc::NDA_LLADDR, &MAC));

    let mut datagram = Vec::new();
    for payload in [&incomplete, &tunnel, &bridge, &proxy, &no_dst] {
        datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, payload));
    }
    // Another request's messages (even its DONE) and other message types are ignored.
    datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ + 1, &v4_neighbor()));
    datagram.extend(done(SEQ + 1));
    datagram.extend(message(libc::RTM_NEWLINK, 0, SEQ, &[0; 16]));
    let mut out = Vec::new();
    assert_eq!(parse_dump(&datagram, SEQ, &mut out).unwrap(), Batch::default());
    assert_eq!(
        out,
        [
            Neighbor { ifindex: 3, addr: "10.213.0.99".parse().unwrap(), mac: None, state: libc::NUD_INCOMPLETE },
            Neighbor { ifindex: 5, addr: "10.9.0.1".parse().unwrap(), mac: None, state: libc::NUD_NOARP },
        ]
    );
}

#[test]
fn truncated_neighbor_messages_are_skipped() {
    let full = v4_neighbor();
    // Attributes: DST at 12..20, LLADDR at 20..30 (padded to 32), PROBES at 32..40. Every
    // prefix: a cut ndmsg or a cut attribute body is never a wrong entry and never a panic.
    assert_eq!(full.len(), 40);
    for cut in 0..full.len() {
        let parsed = parse_neighbor(&full[..cut]);
        let body_cut = (24..30).contains(&cut) || (36..40).contains(&cut);
        if cut < 20 || body_cut {
            assert_eq!(parsed, None, "cut at {cut}");
        } else {
            // Cut between attributes or inside a header (trailing padding): what came
            // before is whole.
            let n = parsed.unwrap_or_else(|| panic!("cut at {cut}"));
            assert_eq!(n.addr, "10.213.0.2".parse::<IpAddr>().unwrap());
            assert_eq!(n.mac, (cut >= 30).then_some(MAC), "cut at {cut}");
        }
    }
    assert!(parse_neighbor(&full).is_some());
}

#[test]
fn bad_attribute_lengths_and_wrong_address_sizes_are_skipped() {
    // An attribute shorter than its own header.
    let mut short = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
    short.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
    short.extend_from_slice(&2u16.to_ne_bytes());
    short.extend_from_slice(&libc::NDA_LLADDR.to_ne_bytes());
    assert_eq!(parse_neighbor(&short), None);
    // An attribute longer than the message.
    let mut long = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
    long.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
    long.extend_from_slice(&200u16.to_ne_bytes());
    long.extend_from_slice(&libc::NDA_LLADDR.to_ne_bytes());
    long.extend_from_slice(&MAC);
    assert_eq!(parse_neighbor(&long), None);
    // An IPv6-sized destination in an IPv4 entry.
    let mut mixed = ndmsg(libc::AF_INET, 3, libc::NUD_REACHABLE, 0);
    mixed.extend(attr(libc::NDA_DST, &[0; 16]));
    assert_eq!(parse_neighbor(&mixed), None);
    // A negative ifindex.
    let mut negative = ndmsg(libc::AF_INET, -1, libc::NUD_REACHABLE, 0);
    negative.extend(attr(libc::NDA_DST, &[10, 213, 0, 2]));
    assert_eq!(parse_neighbor(&negative), None);
    // A MAC of another size is no MAC.
    let mut odd_mac = ndmsg(libc::AF_INET6, 3, libc::NUD_REACHABLE, 0);
    odd_mac.extend(attr(libc::NDA_DST, &[0xfd; 16]));
    odd_mac.extend(attr(libc::NDA_LLADDR, &[1, 2, 3, 4, 5, 6, 7, 8]));
    assert_eq!(parse_neighbor(&odd_mac).map(|n| n.mac), Some(None));

    // Inside a dump, such a message is skipped and the next one still parsed.
    let mut datagram = message(libc::RTM_NEWNEIGH, 0, SEQ, &long);
    datagram.extend(message(libc::RTM_NEWNEIGH, 0, SEQ, &v6_neighbor()));
    datagram.extend(done(SEQ));
    let mut out = Vec::new();
    assert!(parse_dump(&datagram, SEQ, &mut out).unwrap().done);
    assert_eq!(out.iter().map(|n| n.addr).collect::<Vec<_>>(), ["fd00:213::2".parse::<IpAddr>().unwrap()]);
}

#[test]
fn unframeable_datagrams_and_kernel_errors_are_errors() {
    let mut out = Vec::new();
    let whole = message(libc::RTM_NEWNEIGH, 0, SEQ, &v4_neighbor());
    for cut in [1, NLMSG_HDRLEN - 1, NLMSG_HDRLEN, whole.len() - 1] {
        let e = parse_dump(&whole[..cut], SEQ, &mut out).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData, "cut at {cut}: {e}");
    }
    // nlmsg_len smaller than the header.
    let mut tiny = whole.clone();
    tiny[0..4].copy_from_slice(&4u32.to_ne_bytes());
    assert_eq!(parse_dump(&tiny, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
    assert!(out.is_empty());

    let mut error = (-libc::EPERM).to_ne_bytes().to_vec();
    error.extend_from_slice(&[0; NLMSG_HDRLEN]);
    let e = parse_dump(&message(libc::NLMSG_ERROR as u16, 0, SEQ, &error), SEQ, &mut out).unwrap_err();
    assert_eq!(e.raw_os_error(), None, "wrapped with context");
    assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{e}");
    // An ACK (error 0) is not an error; a short NLMSG_ERROR is malformed.
    let ack = message(libc::NLMSG_ERROR as u16, 0, SEQ, &[0; 4 + NLMSG_HDRLEN]);
    assert_eq!(parse_dump(&ack, SEQ, &mut out).unwrap(), Batch::default());
    let short = message(libc::NLMSG_ERROR as u16, 0, SEQ, &[0; 2]);
    assert_eq!(parse_dump(&short, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::InvalidData);
    // DONE carrying an error (e.g. the dump was interrupted by a signal in the kernel).
    let failed_done = message(libc::NLMSG_DONE as u16, 0, SEQ, &(-libc::EINTR).to_ne_bytes());
    assert_eq!(parse_dump(&failed_done, SEQ, &mut out).unwrap_err().kind(), io::ErrorKind::Interrupted);
    // DONE without payload (old kernels) ends the dump; i32::MIN does not overflow.
    assert!(parse_dump(&message(libc::NLMSG_DONE as u16, 0, SEQ, &[]), SEQ, &mut out).unwrap().done);
    let min = message(libc::NLMSG_ERROR as u16, 0, SEQ, &i32::MIN.to_ne_bytes());
    assert!(parse_dump(&min, SEQ, &mut out).is_err());
}

#[test]
fn usable_states() {
    for state in
        [libc::NUD_REACHABLE, libc::NUD_STALE, libc::NUD_DELAY, libc::NUD_PROBE, libc::NUD_PERMANENT, libc::NUD_NOARP]
    {
        assert!(is_usable(state), "{state:#x}");
    }
    for state in [libc::NUD_NONE, libc::NUD_INCOMPLETE, libc::NUD_FAILED] {
        assert!(!is_usable(state), "{state:#x}");
    }
}

#[test]
fn usable_entries_keep_targets_on_the_interface_with_a_mac() {
    let a: IpAddr = "10.213.0.2".parse().unwrap();
    let b: IpAddr = "10.213.0.3".parse().unwrap();
    let c: IpAddr = "10.213.0.4".parse().unwrap();
    let d: IpAddr = "10.213.0.5".parse().unwrap();
    let e: IpAddr = "10.213.0.6".parse().unwrap();
    let mut targets: BTreeMap<IpAddr, u32> = [a, b, c, d].into_iter().map(|x| (x, 3)).collect();
    targets.insert(e, 4);
    let n = |ifindex, addr, mac, state| Neighbor { ifindex, addr, mac, state };
    let neighbors = [
        n(3, a, Some(MAC), libc::NUD_STALE),
        n(4, b, Some(MAC), libc::NUD_REACHABLE), // another interface
        n(3, b, None, libc::NUD_INCOMPLETE),
        n(3, c, Some(MAC), libc::NUD_FAILED),
        n(3, d, Some([0; 6]), libc::NUD_NOARP),
        n(3, "10.213.0.9".parse().unwrap(), Some(MAC), libc::NUD_REACHABLE), // not a target
        n(3, e, Some(MAC), libc::NUD_REACHABLE),                             // e is a target on interface 4
        n(4, e, Some([2; 6]), libc::NUD_REACHABLE),
    ];
    let usable = usable_entries(&neighbors, &targets);
    assert_eq!(usable, BTreeMap::from([(a, (MAC, libc::NUD_STALE)), (e, ([2; 6], libc::NUD_REACHABLE))]));
}

#[test]
fn the_request_is_a_dump_of_all_families() {
    let request = dump_request(42);
    assert_eq!(u32_at(&request, 0), Some(28));
    assert_eq!(u16_at(&request, 4), Some(libc::RTM_GETNEIGH));
    assert_eq!(u16_at(&request, 6), Some((libc::NLM_F_REQUEST | libc::NLM_F_DUMP) as u16));
    assert_eq!(u32_at(&request, 8), Some(42));
    assert_eq!(request[NLMSG_HDRLEN], libc::AF_UNSPEC as u8);
}

#[test]
fn interface_names_are_checked() {
    for name in ["", "a-name-longer-than-ifnamsiz", "nul\0"] {
        let e = ifindex(name).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
    }
    let e = ifindex("xlb-no-such-if").unwrap_err();
    assert!(e.to_string().contains("xlb-no-such-if"), "{e}");
    assert!(solicit("", "10.213.0.2".parse().unwrap()).is_err());
}

#[test]
fn macs_format_like_ip_link() {
    assert_eq!(format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]), "02:ab:00:01:10:ff");
}
