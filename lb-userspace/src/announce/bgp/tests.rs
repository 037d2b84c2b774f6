//! The session state machine against a scripted peer over an in-memory stream.

use std::{net::Ipv4Addr, time::Duration};

use netgauze_bgp_pkt::{BgpMessage, capabilities::BgpCapability, path_attribute::PathAttributeValue};
use netgauze_iana::address_family::AddressType;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::{
    message::{self, Notification},
    session::{End, Live, PeerCtx, SessionParams, Shared, Stop, run_session},
    *,
};

const VIP: &str = "192.0.2.10";
const VIP2: &str = "192.0.2.11";
const VIP6: &str = "2001:db8::10";
const LOCAL: &str = "10.0.0.2";

fn peer_config(remote_as: u32) -> BgpPeer {
    BgpPeer {
        address: "10.0.0.1".parse().unwrap(),
        remote_as,
        port: 179,
        password: None,
        bfd: BfdConfig::default(),
        source_address: None,
    }
}

struct Harness {
    routes: watch::Sender<Announce>,
    live: watch::Sender<Live>,
    stop: watch::Sender<Option<Stop>>,
    drained: watch::Receiver<bool>,
    shared: Arc<Mutex<Shared>>,
    session: tokio::task::JoinHandle<End>,
    peer: DuplexStream,
    buf: Vec<u8>,
}

fn start(remote_as: u32, routes: &[&str]) -> Harness {
    let (routes_tx, routes_rx) = watch::channel(routes.iter().map(|r| r.parse().unwrap()).collect::<Announce>());
    let (live_tx, live_rx) = watch::channel(Live {
        communities: vec![Community { asn: 65010, value: 7 }],
        med: Some(5),
        local_pref: None,
        connect_retry: Duration::from_secs(1),
        draining: false,
    });
    let (stop_tx, stop_rx) = watch::channel(None);
    let (drained_tx, drained_rx) = watch::channel(true);
    let shared = Arc::new(Mutex::new(Shared::default()));
    let mut ctx = PeerCtx {
        params: Arc::new(SessionParams {
            local_as: 65010,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            hold_time: 9,
            restart_time: 120,
            peer: peer_config(remote_as),
        }),
        live: live_rx,
        stop: stop_rx,
        routes: routes_rx,
        bfd: None,
        shared: Arc::clone(&shared),
        drained: drained_tx,
        restarted: true,
    };
    let (ours, theirs) = tokio::io::duplex(1 << 16);
    let session = tokio::spawn(async move { run_session(&mut ctx, ours, LOCAL.parse().unwrap()).await });
    Harness {
        routes: routes_tx,
        live: live_tx,
        stop: stop_tx,
        drained: drained_rx,
        shared,
        session,
        peer: theirs,
        buf: Vec::new(),
    }
}

impl Harness {
    /// The next message the speaker sent, as a frame.
    async fn frame(&mut self) -> Vec<u8> {
        loop {
            if let Some(frame) = message::next_frame(&mut self.buf).expect("the speaker sends valid headers") {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(30), self.peer.read(&mut chunk))
                .await
                .expect("the speaker sends within 30 s")
                .unwrap();
            assert!(n > 0, "the speaker closed the connection");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn message(&mut self) -> BgpMessage {
        let frame = self.frame().await;
        message::parse(&frame, &mut message::parsing_context(true)).unwrap_or_else(|(n, why)| panic!("{n}: {why}"))
    }

    async fn notification(&mut self) -> Notification {
        let frame = self.frame().await;
        assert_eq!(frame[18], message::TYPE_NOTIFICATION, "expected a NOTIFICATION, got {frame:02x?}");
        Notification::from_frame(&frame)
    }

    async fn send(&mut self, bytes: &[u8]) {
        self.peer.write_all(bytes).await.unwrap();
    }

    async fn send_message(&mut self, m: &BgpMessage) {
        let bytes = message::encode(m).unwrap();
        self.send(&bytes).await;
    }

    /// Reads our OPEN, answers with the peer's OPEN and KEEPALIVE, reads our KEEPALIVE.
    async fn establish(&mut self, peer_open: &BgpMessage) {
        let BgpMessage::Open(open) = self.message().await else { panic!("OPEN first") };
        assert_eq!((open.my_asn4(), open.hold_time(), open.bgp_id()), (65010, 9, Ipv4Addr::new(10, 0, 0, 2)));
        let gr = open.capabilities().into_iter().find_map(|c| match c {
            BgpCapability::GracefulRestartCapability(gr) => Some(gr.clone()),
            _ => None,
        });
        let gr = gr.expect("graceful restart advertised");
        assert!(gr.restart() && gr.time() == 120 && gr.address_families().iter().all(|f| f.forwarding_state()));
        self.send_message(peer_open).await;
        assert_eq!(self.message().await, BgpMessage::KeepAlive);
        self.send_message(&BgpMessage::KeepAlive).await;
    }

    async fn end(self) -> End {
        tokio::time::timeout(Duration::from_secs(30), self.session).await.expect("the session ends").unwrap()
    }

    fn state(&self) -> FsmState {
        self.shared.lock().unwrap().state
    }
}

fn bird_open() -> BgpMessage {
    message::open(65000, 9, Ipv4Addr::new(10, 0, 0, 1), 120, false)
}

fn nlri(m: &BgpMessage) -> (Vec<String>, Vec<String>) {
    let BgpMessage::Update(u) = m else { panic!("expected an UPDATE, got {m:?}") };
    (
        u.nlri().iter().map(|n| n.network().address().to_string()).collect(),
        u.withdraw_routes().iter().map(|n| n.network().address().to_string()).collect(),
    )
}

#[tokio::test]
async fn establishes_announces_follows_and_stops_with_cease() {
    let mut h = start(65000, &[VIP, VIP6]);
    h.establish(&bird_open()).await;
    // The IPv4 VIP on this IPv4 session, then End-of-RIB for both families.
    let update = h.message().await;
    assert_eq!(nlri(&update), (vec![format!("{VIP}/32")], vec![]));
    let BgpMessage::Update(u) = &update else { unreachable!() };
    let values: Vec<&PathAttributeValue> = u.path_attributes().iter().map(|a| a.value()).collect();
    assert!(values.iter().any(|v| matches!(v, PathAttributeValue::NextHop(n) if n.next_hop().to_string() == LOCAL)));
    assert!(values.iter().any(|v| matches!(v, PathAttributeValue::MultiExitDiscriminator(m) if m.metric() == 5)));
    assert!(!values.iter().any(|v| matches!(v, PathAttributeValue::LocalPreference(_))), "no LOCAL_PREF over eBGP");
    for family in [AddressType::Ipv4Unicast, AddressType::Ipv6Unicast] {
        let BgpMessage::Update(eor) = h.message().await else { panic!("End-of-RIB") };
        assert_eq!(eor.end_of_rib(), Some(family));
    }
    assert_eq!(h.state(), FsmState::Established);
    assert_eq!(h.shared.lock().unwrap().prefixes_sent, 1);
    assert!(!*h.drained.borrow());

    // Only the difference goes out.
    h.routes.send_modify(|r| {
        r.insert(VIP2.parse().unwrap());
    });
    assert_eq!(nlri(&h.message().await), (vec![format!("{VIP2}/32")], vec![]));
    h.routes.send_modify(|r| {
        r.remove(&VIP.parse::<IpAddr>().unwrap());
    });
    assert_eq!(nlri(&h.message().await), (vec![], vec![format!("{VIP}/32")]));
    // New attributes: everything again.
    h.live.send_modify(|l| l.med = Some(6));
    assert_eq!(nlri(&h.message().await), (vec![format!("{VIP2}/32")], vec![]));
    // The peer's KEEPALIVEs, UPDATEs and ROUTE-REFRESH are fine.
    h.send_message(&BgpMessage::KeepAlive).await;
    h.send_message(&message::announce_v4(
        &[Ipv4Addr::new(198, 51, 100, 0)],
        Ipv4Addr::new(10, 0, 0, 1),
        &message::RouteAttrs { as_path: vec![65000], asn4: true, med: None, local_pref: None, communities: vec![] },
    ))
    .await;
    h.send(&hex("ffffffffffffffffffffffffffffffff 0017 05 0001 00 01")).await;
    assert_eq!(nlri(&h.message().await), (vec![format!("{VIP2}/32")], vec![]), "route refresh: sent again");
    // Drain: everything withdrawn, drained reported.
    h.live.send_modify(|l| l.draining = true);
    assert_eq!(nlri(&h.message().await), (vec![], vec![format!("{VIP2}/32")]));
    let mut drained = h.drained.clone();
    tokio::time::timeout(Duration::from_secs(5), drained.wait_for(|d| *d)).await.unwrap().unwrap();
    h.stop.send_replace(Some(Stop::Shutdown));
    assert_eq!(h.notification().await, Notification::new(6, 2, []));
    let end = h.end().await;
    assert!(end.stopped && end.established_for.is_some() && end.error.is_none(), "{end:?}");
}

fn hex(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
}

#[tokio::test]
async fn bad_input_gets_the_right_notification() {
    let marker = "ffffffffffffffffffffffffffffffff";
    let open = |peer_as: u16, version: u8| format!("{marker} 001d 01 {version:02x} {peer_as:04x} 0009 0a000001 00");
    let keepalive = format!("{marker} 0013 04");
    let bad_origin = format!("{marker} 001e 02 0000 0007 40 01 01 05 40 02 00");
    // (what the peer sends after our OPEN, the NOTIFICATION we must answer with, whether the
    // peer first completes the OPEN exchange)
    let cases: Vec<(String, Notification, bool)> = vec![
        ("00".repeat(19), Notification::new(1, 1, []), false),
        (format!("{marker} 0012 04"), Notification::new(1, 2, [0, 0x12]), false),
        (format!("{marker} 0014 04 00"), Notification::new(1, 2, [0, 0x14]), false),
        (format!("{marker} 0013 09"), Notification::new(1, 3, [9]), false),
        (open(65000, 3), Notification::new(2, 1, [0, 4]), false),
        (open(65001, 4), Notification::new(2, 2, [0xfd, 0xe9]), false),
        (format!("{marker} 001d 01 04 fde8 0002 0a000001 00"), Notification::new(2, 6, [0, 2]), false),
        (format!("{marker} 001f 01 04 fde8 0009 0a000001 02 0900"), Notification::new(2, 4, [9]), false),
        (keepalive.clone(), Notification::new(5, 1, []), false),
        (format!("{}{}", open(65000, 4), open(65000, 4)), Notification::new(5, 2, []), false),
        (bad_origin.clone(), Notification::new(3, 6, []), true),
        (open(65000, 4), Notification::new(5, 3, []), true),
    ];
    for (script, want, establish) in cases {
        let mut h = start(65000, &[VIP]);
        if establish {
            h.establish(&bird_open()).await;
            while h.state() != FsmState::Established || *h.drained.borrow() {
                h.frame().await;
            }
        } else {
            let BgpMessage::Open(_) = h.message().await else { panic!("OPEN first") };
        }
        h.send(&hex(&script)).await;
        // Whatever came before (our KEEPALIVE, UPDATEs), then the NOTIFICATION.
        let got = loop {
            let frame = h.frame().await;
            if frame[18] == message::TYPE_NOTIFICATION {
                break Notification::from_frame(&frame);
            }
        };
        assert_eq!(got, want, "after {script}");
        let end = h.end().await;
        let error = end.error.expect("an error is reported");
        assert!(error.contains(&want.to_string()), "{error}");
        assert!(!end.stopped);
    }
}

#[tokio::test]
async fn openconfirm_rejects_updates_and_peer_notifications_end_quietly() {
    let mut h = start(65000, &[VIP]);
    let BgpMessage::Open(_) = h.message().await else { panic!() };
    h.send_message(&bird_open()).await;
    assert_eq!(h.message().await, BgpMessage::KeepAlive);
    assert_eq!(h.state(), FsmState::OpenConfirm);
    h.send_message(&message::end_of_rib(AddressType::Ipv4Unicast)).await;
    assert_eq!(h.notification().await, Notification::new(5, 2, []));
    h.end().await;

    let mut h = start(65000, &[VIP]);
    let BgpMessage::Open(_) = h.message().await else { panic!() };
    h.send_message(&Notification::new(6, 4, []).to_message()).await;
    let end = h.end().await;
    assert_eq!(end.error.as_deref(), Some("the peer sent NOTIFICATION 6/4 (cease: administrative reset)"));

    let mut h = start(65000, &[VIP]);
    let BgpMessage::Open(_) = h.message().await else { panic!() };
    drop(h.peer);
    h.peer = tokio::io::duplex(1).0;
    let end = h.session.await.unwrap();
    assert!(end.error.unwrap().contains("closed"));
}

#[tokio::test]
async fn ibgp_sends_local_pref_and_an_empty_as_path_and_rejects_our_own_id() {
    let mut h = start(65010, &[VIP]);
    h.establish(&message::open(65010, 9, Ipv4Addr::new(10, 0, 0, 1), 0, false)).await;
    let BgpMessage::Update(u) = h.message().await else { panic!() };
    let values: Vec<&PathAttributeValue> = u.path_attributes().iter().map(|a| a.value()).collect();
    assert!(values.iter().any(|v| matches!(v, PathAttributeValue::LocalPreference(l) if l.metric() == 100)));
    assert!(values.iter().any(|v| matches!(v, PathAttributeValue::AsPath(p) if format!("{p:?}").contains("[]"))));
    h.stop.send_replace(Some(Stop::Deconfigured));
    loop {
        let frame = h.frame().await;
        if frame[18] == message::TYPE_NOTIFICATION {
            assert_eq!(Notification::from_frame(&frame), Notification::new(6, 3, []));
            break;
        }
    }

    let mut h = start(65010, &[VIP]);
    let BgpMessage::Open(_) = h.message().await else { panic!() };
    h.send_message(&message::open(65010, 9, Ipv4Addr::new(10, 0, 0, 2), 0, false)).await;
    assert_eq!(h.notification().await, Notification::new(2, 3, [10, 0, 0, 2]));
}

#[tokio::test(start_paused = true)]
async fn keepalives_then_hold_timer_expiry() {
    let mut h = start(65000, &[]);
    h.establish(&message::open(65000, 3, Ipv4Addr::new(10, 0, 0, 1), 0, false)).await;
    // Negotiated hold 3 s: KEEPALIVEs every second, NOTIFICATION 4/0 after 3 s of silence.
    let t0 = tokio::time::Instant::now();
    let mut keepalives = 0;
    let got = loop {
        let frame = h.frame().await;
        match frame[18] {
            message::TYPE_KEEPALIVE => keepalives += 1,
            message::TYPE_NOTIFICATION => break Notification::from_frame(&frame),
            _ => {}
        }
    };
    assert_eq!(got, Notification::new(4, 0, []));
    assert!(keepalives >= 2, "{keepalives} keepalives");
    let waited = t0.elapsed();
    assert!(waited >= Duration::from_secs(3) && waited < Duration::from_millis(3100), "{waited:?}");
    assert!(h.end().await.error.unwrap().contains("hold timer expired"));
}

#[tokio::test]
async fn a_peer_that_does_not_speak_multiprotocol_gets_ipv4_only() {
    let mut h = start(65000, &[VIP, VIP6]);
    // An OPEN with no capabilities at all.
    h.establish(&BgpMessage::Open(netgauze_bgp_pkt::open::BgpOpenMessage::new(
        65000,
        9,
        Ipv4Addr::new(10, 0, 0, 1),
        vec![],
    )))
    .await;
    // 2-octet AS path now.
    let frame = h.frame().await;
    let update = message::parse(&frame, &mut message::parsing_context(false)).unwrap();
    assert_eq!(nlri(&update).0, vec![format!("{VIP}/32")]);
    let frame = h.frame().await;
    let Ok(BgpMessage::Update(eor)) = message::parse(&frame, &mut message::parsing_context(false)) else { panic!() };
    assert_eq!(eor.end_of_rib(), Some(AddressType::Ipv4Unicast));
    h.stop.send_replace(Some(Stop::Reconfigured));
    assert_eq!(h.notification().await, Notification::new(6, 6, []));
}

/// A scripted peer on a loopback address (127.0.0.0/8), for the speaker as a whole.
struct FakePeer {
    listener: tokio::net::TcpListener,
}

struct FakeConn {
    stream: tokio::net::TcpStream,
    buf: Vec<u8>,
}

impl FakePeer {
    async fn bind(address: &str) -> FakePeer {
        FakePeer { listener: tokio::net::TcpListener::bind((address, 0)).await.unwrap() }
    }

    fn peer(&self) -> BgpPeer {
        let addr = self.listener.local_addr().unwrap();
        BgpPeer { address: addr.ip(), port: addr.port(), ..peer_config(65000) }
    }

    /// Accepts the speaker's connection and completes the OPEN exchange.
    async fn accept(&self) -> (FakeConn, netgauze_bgp_pkt::open::BgpOpenMessage) {
        let (stream, _) =
            tokio::time::timeout(Duration::from_secs(10), self.listener.accept()).await.expect("a connection").unwrap();
        let mut conn = FakeConn { stream, buf: Vec::new() };
        let BgpMessage::Open(open) = conn.message().await else { panic!("OPEN first") };
        let mut bytes = message::encode(&bird_open()).unwrap();
        bytes.extend(message::encode(&BgpMessage::KeepAlive).unwrap());
        conn.stream.write_all(&bytes).await.unwrap();
        assert_eq!(conn.message().await, BgpMessage::KeepAlive);
        (conn, open)
    }
}

impl FakeConn {
    async fn frame(&mut self) -> Vec<u8> {
        loop {
            if let Some(frame) = message::next_frame(&mut self.buf).unwrap() {
                return frame;
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(Duration::from_secs(10), self.stream.read(&mut chunk))
                .await
                .expect("the speaker sends within 10 s")
                .unwrap();
            assert!(n > 0, "closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    async fn message(&mut self) -> BgpMessage {
        let frame = self.frame().await;
        if frame[18] == message::TYPE_NOTIFICATION {
            return Notification::from_frame(&frame).to_message();
        }
        message::parse(&frame, &mut message::parsing_context(true)).unwrap()
    }

    /// The next message that is not a KEEPALIVE or an End-of-RIB.
    async fn next(&mut self) -> BgpMessage {
        loop {
            match self.message().await {
                BgpMessage::KeepAlive => {}
                BgpMessage::Update(u) if u.end_of_rib().is_some() => {}
                other => return other,
            }
        }
    }
}

fn notification_of(m: &BgpMessage) -> (u8, u8) {
    let bytes = message::encode(m).unwrap();
    assert_eq!(bytes[18], message::TYPE_NOTIFICATION, "expected a NOTIFICATION, got {m:?}");
    (bytes[19], bytes[20])
}

fn speaker_config(peers: Vec<BgpPeer>) -> BgpConfig {
    BgpConfig {
        local_as: 65010,
        router_id: Ipv4Addr::new(10, 0, 0, 2),
        hold_time: Duration::from_secs(9),
        connect_retry: Duration::from_millis(200),
        graceful_restart_time: Duration::from_secs(120),
        withdraw_grace: Duration::from_millis(300),
        communities: vec![],
        med: None,
        local_pref: None,
        peers,
    }
}

fn med_of(m: &BgpMessage) -> Option<u32> {
    let BgpMessage::Update(u) = m else { panic!("expected an UPDATE, got {m:?}") };
    u.path_attributes().iter().find_map(|a| match a.value() {
        PathAttributeValue::MultiExitDiscriminator(m) => Some(m.metric()),
        _ => None,
    })
}

#[tokio::test]
async fn replace_keeps_unchanged_sessions_and_replaces_changed_ones() {
    let a = FakePeer::bind("127.0.0.1").await;
    let b = FakePeer::bind("127.0.0.2").await;
    let (routes_tx, routes) = watch::channel([VIP.parse().unwrap()].into_iter().collect::<Announce>());
    let mut speaker = Speaker::start(speaker_config(vec![a.peer()]), routes);
    let (mut conn, open) = a.accept().await;
    assert_eq!(open.hold_time(), 9);
    assert_eq!(nlri(&conn.next().await).0, vec![format!("{VIP}/32")]);
    let status = speaker.status();
    assert_eq!((status.len(), status[0].state.as_str(), status[0].prefixes_sent), (1, "established", 1));

    // New MED and a new peer: the same session sends the route again; B gets a session.
    let mut config = speaker_config(vec![a.peer(), b.peer()]);
    config.med = Some(42);
    speaker.replace(config.clone());
    assert_eq!(med_of(&conn.next().await), Some(42));
    let (mut conn_b, _) = b.accept().await;
    assert_eq!(med_of(&conn_b.next().await), Some(42));
    assert_eq!(speaker.status().len(), 2);

    // A's own settings change (a source address now): its session is replaced — Cease "other
    // configuration change", then a new one; B keeps its session.
    let mut a_peer = a.peer();
    a_peer.source_address = Some("127.0.0.1".parse().unwrap());
    config.peers = vec![a_peer.clone(), b.peer()];
    speaker.replace(config.clone());
    assert_eq!(notification_of(&conn.next().await), (6, 6));
    let (mut conn, _) = a.accept().await;
    assert_eq!(nlri(&conn.next().await).0, vec![format!("{VIP}/32")]);
    // B saw nothing but keepalives: its next message is the route change below.
    routes_tx.send_replace(Announce::new());
    assert_eq!(nlri(&conn_b.next().await).1, vec![format!("{VIP}/32")]);
    assert_eq!(nlri(&conn.next().await).1, vec![format!("{VIP}/32")]);
    // A session-wide change (hold time) replaces every session.
    config.hold_time = Duration::from_secs(30);
    speaker.replace(config.clone());
    assert_eq!(notification_of(&conn.next().await), (6, 6));
    assert_eq!(notification_of(&conn_b.next().await), (6, 6));
    let (mut conn, open) = a.accept().await;
    assert_eq!(open.hold_time(), 30);
    let (_conn_b, _) = b.accept().await;

    // A removed: Cease "peer de-configured".
    config.peers = vec![b.peer()];
    speaker.replace(config);
    assert_eq!(notification_of(&conn.next().await), (6, 3));
    let status = speaker.status();
    assert_eq!(status.iter().map(|s| s.address).collect::<Vec<_>>(), [b.peer().address]);
    assert_eq!(status[0].flaps, 0);
    speaker.abort();
}

#[tokio::test]
async fn shutdown_withdraws_waits_the_grace_then_ceases() {
    let a = FakePeer::bind("127.0.0.1").await;
    let (_routes_tx, routes) = watch::channel([VIP.parse().unwrap()].into_iter().collect::<Announce>());
    let speaker = Speaker::start(speaker_config(vec![a.peer()]), routes);
    let (mut conn, _) = a.accept().await;
    assert_eq!(nlri(&conn.next().await).0, vec![format!("{VIP}/32")]);
    let shutdown = tokio::spawn(speaker.shutdown());
    assert_eq!(nlri(&conn.next().await).1, vec![format!("{VIP}/32")]);
    let withdrawn = tokio::time::Instant::now();
    assert_eq!(notification_of(&conn.next().await), (6, 2));
    assert!(withdrawn.elapsed() >= Duration::from_millis(250), "the grace is waited: {:?}", withdrawn.elapsed());
    tokio::time::timeout(Duration::from_secs(5), shutdown).await.expect("shutdown returns").unwrap();
}

#[tokio::test]
async fn reconnects_with_backoff_and_counts_flaps() {
    let a = FakePeer::bind("127.0.0.1").await;
    let (_routes_tx, routes) = watch::channel(Announce::new());
    let speaker = Speaker::start(speaker_config(vec![a.peer()]), routes);
    for round in 1..=3u64 {
        let (mut conn, open) = a.accept().await;
        if round == 1 {
            let BgpCapability::GracefulRestartCapability(gr) = open
                .capabilities()
                .into_iter()
                .find(|c| matches!(c, BgpCapability::GracefulRestartCapability(_)))
                .unwrap()
            else {
                unreachable!()
            };
            assert!(gr.restart(), "a speaker fresh from start() sets the Restart State bit");
        }
        drop(conn.stream.shutdown().await);
        drop(conn);
        // The flap is counted once the speaker has seen the close.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while speaker.status()[0].flaps < round {
            assert!(tokio::time::Instant::now() < deadline, "{:?}", speaker.status());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    let (_, open) = a.accept().await;
    let gr = open.capabilities().into_iter().find_map(|c| match c {
        BgpCapability::GracefulRestartCapability(gr) => Some(gr.clone()),
        _ => None,
    });
    assert!(!gr.unwrap().restart(), "after a session was established, no Restart State bit");
    let s = &speaker.status()[0];
    assert_eq!(s.flaps, 3);
    assert_eq!(s.last_error.as_deref(), Some("the peer closed the connection"));
}
