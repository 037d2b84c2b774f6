//! Unit tests of the BFD packet codec and session state machine.

use super::packet::Invalid;
use super::*;

fn config() -> BfdConfig {
    BfdConfig { enabled: true, min_tx: Duration::from_millis(100), min_rx: Duration::from_millis(100), multiplier: 3 }
}

/// A packet BIRD 2.0.12 sent to a speaker here (`bfd on`, 100 ms × 3): Down, no
/// diagnostic, multiplier 3, Your Discriminator 0, desired TX 1 s (the slow rate while
/// down), required RX 100 ms.
const BIRD_DOWN: [u8; 24] = [
    0x20, 0x40, 0x03, 0x18, 0x67, 0x95, 0x1b, 0x4c, 0x00, 0x00, 0x00, 0x00, 0x00, 0x0f, 0x42, 0x40, 0x00, 0x01, 0x86,
    0xa0, 0x00, 0x00, 0x00, 0x00,
];

#[test]
fn packets_round_trip() {
    let p = Packet::decode(&BIRD_DOWN).unwrap();
    assert_eq!(
        p,
        Packet {
            diag: 0,
            state: State::Down,
            poll: false,
            fin: false,
            demand: false,
            detect_mult: 3,
            my_disc: 0x6795_1b4c,
            your_disc: 0,
            desired_min_tx: 1_000_000,
            required_min_rx: 100_000,
            required_min_echo_rx: 0,
        }
    );
    assert_eq!(p.encode(), BIRD_DOWN);
    let up = Packet { state: State::Up, poll: true, your_disc: 7, diag: 3, ..p };
    assert_eq!(Packet::decode(&up.encode()), Ok(up));
}

#[test]
fn invalid_packets_are_dropped() {
    let good = BIRD_DOWN;
    let with = |i: usize, v: u8| {
        let mut b = good;
        b[i] = v;
        b
    };
    assert_eq!(Packet::decode(&good[..23]), Err(Invalid::Short));
    assert_eq!(Packet::decode(&with(0, 0x40)), Err(Invalid::Version(2)));
    assert_eq!(Packet::decode(&with(3, 30)), Err(Invalid::Length(30)));
    assert_eq!(Packet::decode(&with(3, 20)), Err(Invalid::Length(20)));
    assert_eq!(Packet::decode(&with(2, 0)), Err(Invalid::ZeroMultiplier));
    assert_eq!(Packet::decode(&with(1, 0x41)), Err(Invalid::Multipoint));
    assert_eq!(Packet::decode(&with(1, 0xc0)), Err(Invalid::NoYourDiscriminator));
    let mut auth = [0u8; 28];
    auth[..24].copy_from_slice(&with(1, 0x44));
    auth[3] = 28;
    assert_eq!(Packet::decode(&auth), Err(Invalid::Authenticated));
    let mut zero = good;
    zero[4..8].copy_from_slice(&[0; 4]);
    assert_eq!(Packet::decode(&zero), Err(Invalid::ZeroDiscriminator));
}

fn peer(state: State, my: u32, your: u32) -> Packet {
    Packet {
        diag: 0,
        state,
        poll: false,
        fin: false,
        demand: false,
        detect_mult: 3,
        my_disc: my,
        your_disc: your,
        desired_min_tx: 100_000,
        required_min_rx: 100_000,
        required_min_echo_rx: 0,
    }
}

#[test]
fn three_way_handshake_then_detection_timeout() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), 42, t0);
    // Down and slow (1 s) until up.
    let first = s.tick(t0, 0.0).unwrap();
    assert_eq!((first.state, first.desired_min_tx, first.your_disc), (State::Down, 1_000_000, 0));
    assert!(s.tick(t0 + Duration::from_millis(10), 0.0).is_none(), "not before the interval");
    // Peer Down → Init; peer Init → Up.
    assert_eq!(s.receive(&peer(State::Down, 9, 0), t0), None);
    assert_eq!(s.state, State::Init);
    let p = s.tick(t0, 0.5).unwrap();
    assert_eq!((p.state, p.your_disc), (State::Init, 9), "sent at once on a state change");
    s.receive(&peer(State::Up, 9, 42), t0);
    assert_eq!(s.state, State::Up);
    // Up: the fast rate, announced with a Poll until the peer answers Final.
    let p = s.tick(t0, 0.0).unwrap();
    assert_eq!((p.state, p.poll, p.desired_min_tx), (State::Up, true, 100_000));
    assert!(s.next_deadline() <= t0 + Duration::from_millis(100));
    s.receive(&Packet { fin: true, ..peer(State::Up, 9, 42) }, t0);
    assert!(!s.tick(t0 + Duration::from_millis(100), 0.0).unwrap().poll);
    // A Poll from the peer is answered with Final at once.
    let reply = s.receive(&Packet { poll: true, ..peer(State::Up, 9, 42) }, t0 + Duration::from_millis(100));
    assert!(reply.is_some_and(|r| r.fin && !r.poll));
    // Silence for 3 × 100 ms: down, detection time expired.
    assert_eq!(s.detection_time(), Duration::from_millis(300));
    assert!(s.tick(t0 + Duration::from_millis(399), 0.0).is_none_or(|p| p.state == State::Up));
    assert_eq!(s.state, State::Up);
    let p = s.tick(t0 + Duration::from_millis(400), 0.0).unwrap();
    assert_eq!((s.state, s.diag, p.state, p.your_disc), (State::Down, DIAG_DETECTION_TIME_EXPIRED, State::Down, 0));
    assert_eq!(p.desired_min_tx, 1_000_000, "back to the slow rate");
}

#[test]
fn peer_signals_and_foreign_discriminators() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), 42, t0);
    s.receive(&peer(State::Init, 9, 42), t0);
    assert_eq!(s.state, State::Up, "Down + peer Init → Up");
    // A packet for another session is ignored.
    s.receive(&peer(State::Down, 9, 43), t0);
    assert_eq!(s.state, State::Up);
    s.receive(&peer(State::Down, 9, 42), t0);
    assert_eq!((s.state, s.diag), (State::Down, DIAG_NEIGHBOR_DOWN));
    s.receive(&peer(State::Down, 9, 42), t0);
    s.receive(&peer(State::Up, 9, 42), t0);
    assert_eq!(s.state, State::Up);
    s.receive(&peer(State::AdminDown, 9, 42), t0);
    assert_eq!((s.state, s.diag), (State::Down, DIAG_NEIGHBOR_DOWN));
    // Init does not go up on the peer's Down.
    let mut s = Session::new(config(), 42, t0);
    s.receive(&peer(State::Down, 9, 0), t0);
    s.receive(&peer(State::Down, 9, 42), t0);
    assert_eq!(s.state, State::Init);
    s.admin_down(t0);
    s.receive(&peer(State::Up, 9, 42), t0);
    assert_eq!(s.packet(false).state, State::AdminDown);
}

#[test]
fn transmit_interval_follows_the_slower_side_with_jitter() {
    let t0 = Instant::now();
    let mut s = Session::new(config(), 42, t0);
    s.receive(&peer(State::Init, 9, 42), t0);
    // The peer accepts no faster than 250 ms.
    s.receive(&Packet { required_min_rx: 250_000, ..peer(State::Up, 9, 42) }, t0);
    s.tick(t0, 1.0).unwrap();
    assert_eq!(s.next_deadline(), t0 + Duration::from_millis(250));
    let at = t0 + Duration::from_millis(250);
    s.receive(&Packet { required_min_rx: 250_000, ..peer(State::Up, 9, 42) }, at);
    s.tick(at, 0.0).unwrap();
    assert_eq!(s.next_deadline(), at + Duration::from_micros(187_500), "75 % at the low end");
    // Required Min RX 0: the peer wants no packets.
    s.receive(&Packet { required_min_rx: 0, ..peer(State::Up, 9, 42) }, at);
    assert!(s.tick(at + Duration::from_secs(1), 0.0).is_none());
}
