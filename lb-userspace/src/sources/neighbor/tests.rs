//! Unit tests of neighbour messages and of the resolver's tracker (on `lo`, which every
//! namespace has; the kernel's side is in tests/netlink.rs).

use std::{io, net::Ipv4Addr};

use rtnetlink::{
    packet_core::{NetlinkMessage, NetlinkPayload},
    packet_route::{
        AddressFamily, RouteNetlinkMessage,
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourFlags, NeighbourMessage, NeighbourState,
        },
        route::RouteProtocol,
    },
};

use super::tracker::{Managed, Tracker, format_mac};
use super::*;
use crate::sources::netlink::ifindex;

const MAC: [u8; 6] = [0x02, 0, 0, 0, 0x01, 0x02];

fn ip(text: &str) -> IpAddr {
    text.parse().unwrap()
}

fn message(ifindex: u32, addr: IpAddr, mac: Option<&[u8]>, state: NeighbourState) -> NeighbourMessage {
    let mut m = NeighbourMessage::default();
    m.header.family = if addr.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    m.header.ifindex = ifindex;
    m.header.state = state;
    m.attributes.push(NeighbourAttribute::Destination(match addr {
        IpAddr::V4(a) => NeighbourAddress::Inet(a),
        IpAddr::V6(a) => NeighbourAddress::Inet6(a),
    }));
    if let Some(mac) = mac {
        m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    }
    m
}

fn managed_by_xlb(mut m: NeighbourMessage) -> NeighbourMessage {
    m.attributes.push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
    m.attributes.push(NeighbourAttribute::Protocol(RouteProtocol::from(PROTOCOL)));
    m
}

fn new(m: NeighbourMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(m))
}

fn del(m: NeighbourMessage) -> NetlinkMessage<RouteNetlinkMessage> {
    NetlinkMessage::from(RouteNetlinkMessage::DelNeighbour(m))
}

fn lo() -> u32 {
    ifindex("lo").expect("every namespace has lo")
}

fn tracker(targets: &[&str]) -> (Tracker, watch::Receiver<MacMap>) {
    let (tx, rx) = watch::channel(MacMap::new());
    let mut tracker = Tracker::new(tx, true);
    tracker.set_targets(targets.iter().map(|a| (ip(a), "lo".to_owned())).collect(), std::time::Instant::now());
    (tracker, rx)
}

#[test]
fn messages_read_as_entries_through_the_wire_format() {
    // Emitted and parsed again the way the kernel's bytes are: what the resolver reads is what
    // the crate decodes, managed flag and protocol included.
    let mut m = new(managed_by_xlb(message(3, ip("10.213.0.2"), Some(&MAC), NeighbourState::Reachable)));
    m.finalize();
    let mut wire = vec![0; m.buffer_len()];
    m.serialize(&mut wire);
    let parsed = NetlinkMessage::<RouteNetlinkMessage>::deserialize(&wire).expect("parses");
    let NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(parsed)) = parsed.payload else {
        panic!("not a neighbour: {parsed:?}")
    };
    let n = Neighbor::from_message(&parsed).expect("an entry");
    assert_eq!((n.ifindex, n.addr, n.mac), (3, ip("10.213.0.2"), Some(MAC)));
    assert_eq!(n.state, libc::NUD_REACHABLE);
    assert!(n.managed && n.ours && !n.is_static());

    let v6 = Neighbor::from_message(&message(4, ip("fd00:213::2"), None, NeighbourState::Incomplete)).unwrap();
    assert_eq!((v6.mac, v6.managed, v6.ours), (None, false, false));
    let ib = Neighbor::from_message(&message(4, ip("10.0.0.1"), Some(&[1; 20]), NeighbourState::Reachable)).unwrap();
    assert_eq!(ib.mac, None, "a 20-byte link-layer address is not a MAC");
    let permanent = Neighbor::from_message(&message(4, ip("10.0.0.1"), Some(&MAC), NeighbourState::Permanent));
    assert!(permanent.unwrap().is_static());

    let mut proxy = message(3, ip("10.0.0.1"), None, NeighbourState::None);
    proxy.header.flags = NeighbourFlags::Proxy;
    assert_eq!(Neighbor::from_message(&proxy), None);
    let mut bridge = message(3, ip("10.0.0.1"), Some(&MAC), NeighbourState::Reachable);
    bridge.header.family = AddressFamily::Bridge;
    assert_eq!(Neighbor::from_message(&bridge), None);
    let mut no_destination = message(3, ip("10.0.0.1"), Some(&MAC), NeighbourState::Reachable);
    no_destination.attributes.remove(0);
    assert_eq!(Neighbor::from_message(&no_destination), None);
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
fn notifications_publish_changes_and_losses_of_targets_only() {
    let (mut t, mut rx) = tracker(&["10.213.0.2", "10.213.0.3"]);
    let (a, b) = (ip("10.213.0.2"), ip("10.213.0.3"));
    t.notified(new(message(lo(), a, None, NeighbourState::Incomplete)));
    t.notified(new(message(lo(), ip("10.213.0.9"), Some(&MAC), NeighbourState::Reachable)));
    t.notified(new(message(lo() + 1000, b, Some(&MAC), NeighbourState::Reachable))); // another interface
    t.publish();
    assert!(!rx.has_changed().unwrap(), "nothing usable yet");
    assert!(!t.entries.keys().any(|(_, addr)| *addr == ip("10.213.0.9")), "not a target: not kept");

    t.notified(new(message(lo(), a, Some(&MAC), NeighbourState::Reachable)));
    t.publish();
    assert!(rx.has_changed().unwrap());
    assert_eq!(*rx.borrow_and_update(), MacMap::from([(a, MAC)]));
    // The same again (a confirmation, stale, delay): no wake-up.
    for state in [NeighbourState::Reachable, NeighbourState::Stale, NeighbourState::Delay] {
        t.notified(new(message(lo(), a, Some(&MAC), state)));
        t.publish();
        assert!(!rx.has_changed().unwrap(), "{state:?}");
    }
    t.notified(new(message(lo(), a, Some(&[2; 6]), NeighbourState::Reachable)));
    t.publish();
    assert_eq!(*rx.borrow_and_update(), MacMap::from([(a, [2; 6])]), "a changed MAC follows");
    t.notified(new(message(lo(), a, Some(&[0; 6]), NeighbourState::Noarp)));
    t.publish();
    assert_eq!(*rx.borrow_and_update(), MacMap::new(), "an all-zero MAC is not usable");
    t.notified(new(message(lo(), a, Some(&MAC), NeighbourState::Reachable)));
    t.notified(del(message(lo(), a, None, NeighbourState::None)));
    t.publish();
    assert_eq!(*rx.borrow_and_update(), MacMap::new(), "a deleted entry is lost");
}

#[test]
fn managed_state_follows_the_table() {
    let (mut t, _rx) = tracker(&["10.213.0.2", "10.213.0.3"]);
    let (a, b) = (ip("10.213.0.2"), ip("10.213.0.3"));
    let managed = |t: &Tracker, addr| t.targets[&addr].managed;
    assert_eq!((managed(&t, a), managed(&t, b)), (Managed::Pending, Managed::Pending));
    assert!(t.reread_wanted(), "new targets read the table first");
    t.set_entries(vec![
        Neighbor::from_message(&managed_by_xlb(message(lo(), a, Some(&MAC), NeighbourState::Reachable))).unwrap(),
        Neighbor::from_message(&message(lo(), b, Some(&MAC), NeighbourState::Permanent)).unwrap(),
    ]);
    assert!(!t.reread_wanted());
    assert_eq!((managed(&t, a), managed(&t, b)), (Managed::Yes, Managed::Static), "the operator's entry is left alone");
    // Flushed behind xlb's back: asked for again.
    t.notified(del(message(lo(), a, None, NeighbourState::None)));
    assert_eq!(managed(&t, a), Managed::Pending);
    let mut overrun = NetlinkMessage::from(RouteNetlinkMessage::NewNeighbour(NeighbourMessage::default()));
    overrun.payload = NetlinkPayload::Overrun(Vec::new());
    t.notified(overrun);
    assert!(t.reread_wanted(), "lost notifications: the table is read again");
}

#[test]
fn dropped_targets_release_only_xlbs_managed_entries() {
    let (mut t, mut rx) = tracker(&["10.213.0.2", "10.213.0.3", "10.213.0.4"]);
    let (a, b, c) = (ip("10.213.0.2"), ip("10.213.0.3"), ip("10.213.0.4"));
    t.set_entries(vec![
        Neighbor::from_message(&managed_by_xlb(message(lo(), a, Some(&MAC), NeighbourState::Reachable))).unwrap(),
        Neighbor::from_message(&message(lo(), b, Some(&MAC), NeighbourState::Reachable)).unwrap(),
        Neighbor::from_message(&managed_by_xlb(message(lo(), c, Some(&MAC), NeighbourState::Reachable))).unwrap(),
    ]);
    t.publish();
    assert_eq!(rx.borrow_and_update().len(), 3);
    t.set_targets(BTreeMap::from([(c, "lo".to_owned())]), std::time::Instant::now());
    t.publish();
    assert_eq!(*rx.borrow_and_update(), MacMap::from([(c, MAC)]), "dropped targets leave the map at once");
    let queued: Vec<IpAddr> = t.dropped.iter().map(|n| n.addr).collect();
    assert_eq!(queued, vec![a], "b is not xlb's entry: never removed");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let (handle, _notifications) = crate::sources::netlink::subscribe(&[]).expect("a netlink socket");
        // a is not in this namespace's table: the kernel's ENOENT is not an error.
        t.release_dropped(&handle).await;
    });
    assert!(t.dropped.is_empty());
    assert!(t.entries.contains_key(&(lo(), c)));
}

#[test]
fn interface_names_are_checked() {
    for name in ["", "a-name-longer-than-ifnamsiz", "nul\0"] {
        let e = ifindex(name).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{name:?}");
    }
    let e = ifindex("xlb-no-such-if").unwrap_err();
    assert!(e.to_string().contains("xlb-no-such-if"), "{e}");
    assert!(solicit("", IpAddr::V4(Ipv4Addr::new(10, 213, 0, 2))).is_err());
}

#[test]
fn macs_format_like_ip_link() {
    assert_eq!(format_mac(&[0x02, 0xab, 0, 1, 0x10, 0xff]), "02:ab:00:01:10:ff");
}
