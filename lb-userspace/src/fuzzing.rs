//! Entry points for the fuzz targets in `fuzz/` (cargo-fuzz) and their regression tests: each
//! takes arbitrary bytes, runs them through one of the agent's parsers the way the agent does,
//! and panics only when an invariant breaks. Not part of the agent's API.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
    sync::{Arc, Mutex, OnceLock},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    runtime::Runtime,
    sync::{Semaphore, watch},
};

use crate::{
    announce::bgp::{
        Announce, BfdConfig, BgpPeer, Community, bfd,
        message::{self, TYPE_NOTIFICATION},
        session::{End, Live, PeerCtx, SessionParams, Shared, run_session},
    },
    config,
    config::memory,
    l7::proxy_protocol::{self, ProxyHeader},
    serve::admin,
};

/// One runtime for all inputs: building one per input would dominate the run time.
fn runtime() -> &'static Runtime {
    static RUNTIME: OnceLock<Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread().enable_time().build().expect("a current-thread runtime")
    })
}

/// `xlb check` on a file with these bytes: parse, validate, estimate the BPF memory.
pub fn config(data: &[u8]) {
    // `config::load` refuses non-UTF-8 before parsing.
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(config) = config::parse(Path::new("fuzz.yaml"), text) {
        let estimate = memory::memory_estimate(&config, 4);
        let _ = estimate.to_string();
        let _ = estimate.warning(&config);
    }
}

/// Framing and decoding of what a peer sends, in both AS-number modes, as the session does it.
pub fn bgp_message(data: &[u8]) {
    let mut buf = data.to_vec();
    loop {
        match message::next_frame(&mut buf) {
            Ok(None) => break,
            Err(n) => {
                let _ = n.to_string();
                let _ = message::encode(&n.to_message());
                break;
            }
            Ok(Some(frame)) => {
                assert!((message::HEADER_LEN..=message::MAX_MESSAGE_LEN).contains(&frame.len()));
                if frame[18] == TYPE_NOTIFICATION {
                    let _ = message::Notification::from_frame(&frame).to_string();
                    continue;
                }
                for asn4 in [false, true] {
                    match message::parse(&frame, &mut message::parsing_context(asn4)) {
                        // What decodes encodes again (the speaker never re-sends a peer's message,
                        // but the encoder must not panic on what the decoder accepts).
                        Ok(msg) => drop(message::encode(&msg)),
                        Err((n, why)) => drop((n.to_string(), why)),
                    }
                }
            }
        }
    }
}

/// The BGP session's state machine fed `data[1..]` as everything the peer sends, over an
/// in-memory stream; `data[0]` picks the session's settings. Returns whether the session was
/// established and why it ended.
pub fn bgp_session(data: &[u8]) -> Option<(bool, Option<String>)> {
    let (&flags, input) = data.split_first()?;
    let local_as = 65010;
    let (local, routes): (IpAddr, Announce) = if flags & 1 == 0 {
        let routes = ["192.0.2.10", "192.0.2.11", "2001:db8::10"].iter().map(|a| a.parse().unwrap()).collect();
        (IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)), routes)
    } else {
        let routes = ["2001:db8::10", "2001:db8::11", "192.0.2.10"].iter().map(|a| a.parse().unwrap()).collect();
        (IpAddr::V6(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 2)), routes)
    };
    let remote_as = if flags & 2 == 0 { 65001 } else { local_as };
    let (_routes_tx, routes_rx) = watch::channel(routes);
    let (_live_tx, live_rx) = watch::channel(Live {
        communities: vec![Community { asn: 65010, value: 7 }],
        med: (flags & 4 != 0).then_some(5),
        local_pref: None,
        connect_retry: Duration::from_secs(1),
        draining: flags & 8 != 0,
    });
    let (_stop_tx, stop_rx) = watch::channel(None);
    let (drained_tx, _drained_rx) = watch::channel(true);
    let mut ctx = PeerCtx {
        params: Arc::new(SessionParams {
            local_as,
            router_id: Ipv4Addr::new(10, 0, 0, 2),
            hold_time: if flags & 16 == 0 { 9 } else { 0 },
            restart_time: 120,
            peer: BgpPeer {
                address: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                remote_as,
                port: 179,
                password: None,
                bfd: BfdConfig::default(),
                source_address: None,
            },
        }),
        live: live_rx,
        stop: stop_rx,
        routes: routes_rx,
        bfd: None,
        shared: Arc::new(Mutex::new(Shared::default())),
        drained: drained_tx,
        restarted: flags & 32 != 0,
    };
    // A small buffer splits the peer's bytes over many reads, frames across them.
    let (ours, theirs) = tokio::io::duplex(512);
    let (mut peer_read, mut peer_write) = tokio::io::split(theirs);
    runtime().block_on(async {
        let session = run_session(&mut ctx, ours, local);
        // The peer writes its bytes and closes; the session then reads the end of the stream.
        let write = async {
            let _ = peer_write.write_all(input).await;
            let _ = peer_write.shutdown().await;
        };
        // Whatever the speaker sends is taken, so its writes never block.
        let read = async {
            let mut sink = [0u8; 4096];
            while let Ok(1..) = peer_read.read(&mut sink).await {}
        };
        let (end, (), ()): (End, _, _) = tokio::join!(session, write, read);
        Some((end.established_for.is_some(), end.error))
    })
}

/// BFD: `data[..3]` the local settings, then records of a time step (2 bytes, ms), a jitter byte
/// and a control packet (24 bytes) through decoding, the session and its timers.
pub fn bfd(data: &[u8]) {
    let _ = bfd::Packet::decode(data).map_err(|e| e.to_string());
    let Some((settings, records)) = data.split_first_chunk::<3>() else { return };
    // Within what the config accepts: 10 ms..60 s, multiplier 1..=255.
    let interval = |b: u8| Duration::from_millis(10 + u64::from(b) * 235);
    let config = BfdConfig {
        enabled: true,
        min_tx: interval(settings[0]),
        min_rx: interval(settings[1]),
        multiplier: settings[2].max(1),
    };
    let mut now = tokio::time::Instant::now();
    let mut session = bfd::Session::new(config, 0x1234_5678, now);
    for record in records.chunks(27) {
        let step = u64::from(u16::from_be_bytes([record[0], *record.get(1).unwrap_or(&0)]));
        now += Duration::from_millis(step);
        let rand = f64::from(*record.get(2).unwrap_or(&0)) / 255.0;
        let packet = record.get(3..).unwrap_or_default();
        match bfd::Packet::decode(packet) {
            Ok(p) => {
                assert_eq!(bfd::Packet::decode(&p.encode()), Ok(p), "a decoded packet encodes to itself");
                if let Some(answer) = session.receive(&p, now) {
                    assert!(answer.fin && !answer.poll, "the answer to a Poll is a Final");
                }
            }
            Err(e) => drop(e.to_string()),
        }
        // Now and then the local side goes administratively down.
        if record.get(2) == Some(&0xad) {
            session.admin_down(now);
        }
        if let Some(p) = session.tick(now, rand) {
            assert_eq!(bfd::Packet::decode(&p.encode()), Ok(p), "what the session sends decodes");
        }
        let _ = (session.next_deadline(), session.status());
    }
}

/// A PROXY protocol v2 header at the start of a connection's bytes.
pub fn proxy_protocol(data: &[u8]) {
    let mut rest = data;
    let read = runtime().block_on(proxy_protocol::read(&mut rest));
    let consumed = data.len() - rest.len();
    if let Ok(fixed) = <&[u8; 16]>::try_from(data.get(..16).unwrap_or_default()) {
        // The reader is the two-step parse over the stream.
        if let Ok((command, family, len)) = proxy_protocol::parse_fixed(fixed) {
            if let Some(body) = data.get(16..16 + len) {
                assert_eq!(read, proxy_protocol::parse_rest(command, family, body));
            }
        } else {
            assert!(read.is_err());
        }
    }
    match read {
        Ok(header) => {
            assert_eq!(
                consumed,
                16 + usize::from(u16::from_be_bytes([data[14], data[15]])),
                "nothing past the header is read"
            );
            if let ProxyHeader::Proxied { source, destination } = header {
                assert_eq!(source.is_ipv4(), destination.is_ipv4());
                let mut again = proxy_protocol::encode(source, destination);
                assert_eq!(runtime().block_on(proxy_protocol::read(&mut again.as_slice())), Ok(header));
                again.truncate(again.len() - 1);
                assert!(runtime().block_on(proxy_protocol::read(&mut again.as_slice())).is_err());
            }
        }
        Err(e) => drop(e.to_string()),
    }
}

/// The admin socket's reading of a connection's bytes: request lines, bounded, then decoded;
/// each line is also decoded as a reply, as the CLI reads the agent's. `data[0]` sets the read
/// buffer's size, so lines split across reads.
pub fn admin(data: &[u8]) {
    let Some((&capacity, stream)) = data.split_first() else { return };
    // A small bound as well as the agent's, so lines longer than it are common.
    let small = 1 + usize::from(capacity) / 4;
    let plans = Arc::new(Semaphore::new(1));
    runtime().block_on(async {
        let mut reader = BufReader::with_capacity(1 + usize::from(capacity), stream);
        let mut line = Vec::new();
        loop {
            let (read, _permit) = admin::read_request(&mut reader, &mut line, &plans).await.expect("a slice reads");
            assert!(line.len() <= admin::request_max(&line));
            assert!(!line.contains(&b'\n'));
            match read {
                admin::Line::End => break,
                admin::Line::TooLong => {
                    assert_eq!(line.len(), admin::request_max(&line));
                    break;
                }
                admin::Line::Complete => request(&line),
            }
            line.clear();
        }
        let mut reader = BufReader::with_capacity(1 + usize::from(capacity), stream);
        let mut line = Vec::new();
        loop {
            line.clear();
            match admin::read_line(&mut reader, &mut line, small).await.expect("a slice reads") {
                admin::Line::End => break,
                admin::Line::TooLong => assert_eq!(line.len(), small),
                admin::Line::Complete => assert!(line.len() <= small && !line.contains(&b'\n')),
            }
            assert!(line.capacity() <= small, "a line of at most {small} bytes holds {} of buffer", line.capacity());
        }
    });
}

fn request(line: &[u8]) {
    match admin::parse(line) {
        Ok(request) => {
            let text = serde_json::to_vec(&request).expect("a request encodes");
            assert_eq!(admin::parse(&text), Ok(request), "a request survives encoding");
        }
        Err(message) => assert!(message.len() < 512, "the error does not quote the request"),
    }
    let _ = serde_json::from_slice::<admin::Reply>(line);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every committed corpus input through its target, as `scripts/fuzz.sh` starts each run:
    /// a crash the fuzzer found stays found under `cargo test`.
    #[test]
    fn corpus_inputs_run_clean() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        type Run = fn(&[u8]);
        let targets: [(&str, Run); 6] = [
            ("config", config),
            ("bgp_message", bgp_message),
            ("bgp_session", |d| drop(bgp_session(d))),
            ("bfd", bfd),
            ("proxy_protocol", proxy_protocol),
            ("admin", admin),
        ];
        for (target, run) in targets {
            let mut inputs = 0;
            for entry in std::fs::read_dir(corpus.join(target)).unwrap() {
                let path = entry.unwrap().path();
                run(&std::fs::read(&path).unwrap());
                inputs += 1;
            }
            assert!(inputs > 0, "{target} has a corpus");
        }
    }

    #[test]
    fn seeds_reach_the_states_they_were_made_for() {
        // An eBGP peer's OPEN and KEEPALIVE, then its close: established, then "closed".
        let mut input = vec![0u8];
        input.extend(message::encode(&message::open(65001, 9, Ipv4Addr::new(10, 0, 0, 1), 120, false)).unwrap());
        input.extend(message::encode(&netgauze_bgp_pkt::BgpMessage::KeepAlive).unwrap());
        assert_eq!(bgp_session(&input), Some((true, Some("the peer closed the connection".into()))));
        // A broken marker: a NOTIFICATION before anything is established.
        input[1] ^= 1;
        let (established, error) = bgp_session(&input).unwrap();
        assert!(!established && error.unwrap().contains("NOTIFICATION 1/1"));
    }
}
