//! Closed-loop load well above a rate limit: threads in each client's namespace send `GET /`
//! (or, for an L4 VIP, a line a TCP server answers) on a fresh connection each time (so an
//! ECMP router spreads them over the nodes), as fast as answers come, for a set time; what came
//! back is counted: answered, limited (429, or a connection reset), or anything else.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// What the clients got.
#[derive(Debug, Default, Clone)]
pub struct HttpLoadOutcome {
    /// Answers (200s) after the settling time, per second.
    pub ok_per_second: f64,
    pub ok: usize,
    /// 429s or connections reset.
    pub limited: usize,
    /// Anything else (refused, timed out, other statuses).
    pub other: usize,
    pub attempts: usize,
}

/// How one request went.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attempt {
    Answered,
    Limited,
    Other,
}

/// Requests from `threads` threads in each of `clients` for `duration` (at most 100 000 each);
/// answers in the first `settle` are left out of the rate.
pub fn http_load(
    clients: &[Netns],
    vip: SocketAddr,
    threads: usize,
    duration: Duration,
    settle: Duration,
) -> HttpLoadOutcome {
    load(clients, vip, threads, duration, settle, |vip| match get_status(vip, "/", Duration::from_secs(2)) {
        Some(200) => Attempt::Answered,
        Some(429) => Attempt::Limited,
        _ => Attempt::Other,
    })
}

/// `http_load` for an L4 VIP: each connection sends a line and waits for the server's answer;
/// a connection the load balancer refuses with a RST counts as limited.
pub fn tcp_load(
    clients: &[Netns],
    vip: SocketAddr,
    threads: usize,
    duration: Duration,
    settle: Duration,
) -> HttpLoadOutcome {
    load(clients, vip, threads, duration, settle, |vip| {
        let mut stream = match TcpStream::connect_timeout(&vip, Duration::from_secs(1)) {
            Ok(stream) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                // A RST comes back in microseconds: pause, so that a thread's attempts stay far
                // below its cap for the whole run (and still far above the limit).
                std::thread::sleep(Duration::from_micros(200));
                return Attempt::Limited;
            }
            Err(_) => return Attempt::Other,
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let mut answer = [0u8; 16];
        match stream.write_all(b"hello\n").and_then(|()| stream.read(&mut answer)) {
            Ok(n) if n > 0 => Attempt::Answered,
            _ => Attempt::Other,
        }
    })
}

fn load(
    clients: &[Netns],
    vip: SocketAddr,
    threads: usize,
    duration: Duration,
    settle: Duration,
    request: fn(SocketAddr) -> Attempt,
) -> HttpLoadOutcome {
    let started = Instant::now();
    let handles: Vec<_> = clients
        .iter()
        .flat_map(|client| {
            (0..threads).map(|_| client.run(move || one_thread(vip, started, duration, request))).collect::<Vec<_>>()
        })
        .collect();
    let mut outcome = HttpLoadOutcome::default();
    for handle in handles {
        let (answers, limited, other) = handle.join().expect("load thread");
        outcome.ok += answers.iter().filter(|at| **at >= settle).count();
        outcome.attempts += answers.len() + limited + other;
        outcome.limited += limited;
        outcome.other += other;
    }
    outcome.ok_per_second = outcome.ok as f64 / duration.saturating_sub(settle).as_secs_f64().max(1e-3);
    outcome
}

/// The answers' times since `started`, the limited, and the rest.
fn one_thread(
    vip: SocketAddr,
    started: Instant,
    duration: Duration,
    request: fn(SocketAddr) -> Attempt,
) -> (Vec<Duration>, usize, usize) {
    let (mut ok, mut limited, mut other) = (Vec::new(), 0, 0);
    for _ in 0..100_000 {
        if started.elapsed() >= duration {
            break;
        }
        match request(vip) {
            Attempt::Answered => ok.push(started.elapsed()),
            Attempt::Limited => limited += 1,
            Attempt::Other => other += 1,
        }
    }
    (ok, limited, other)
}

/// `GET path` (Host: web) on a fresh connection, waiting at most `patience` for each read; the
/// response's status.
pub fn get_status(vip: SocketAddr, path: &str, patience: Duration) -> Option<u16> {
    let mut stream = TcpStream::connect_timeout(&vip, Duration::from_secs(1)).ok()?;
    stream.set_read_timeout(Some(patience)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: web\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::with_capacity(256);
    stream.read_to_end(&mut response).ok()?;
    let text = std::str::from_utf8(response.get(..12)?).ok()?;
    text.strip_prefix("HTTP/1.1 ")?.get(..3)?.parse().ok()
}

/// A Redis server on `address:6379` in `ns`, without persistence (a test's or the lab's).
pub fn redis_server(ns: &Netns, address: &str) -> std::process::Command {
    let mut cmd = ns.command("redis-server");
    cmd.args(["--bind", address, "--port", "6379", "--save", "", "--appendonly", "no", "--protected-mode", "no"]);
    cmd.stdout(std::process::Stdio::null());
    cmd
}

/// Opens connections to `vip` one after another from `client` (ECMP spreads their ports over
/// the nodes), holding every one accepted, until `enough` are held, `attempts` were made or
/// `within` has passed; the held ones (a concurrent limit's places taken).
pub fn hold_connections(
    client: &Netns,
    vip: SocketAddr,
    enough: usize,
    attempts: usize,
    within: Duration,
) -> Vec<TcpStream> {
    client
        .run(move || {
            let mut held = Vec::new();
            let deadline = Instant::now() + within;
            for _ in 0..attempts {
                if held.len() >= enough || Instant::now() > deadline {
                    break;
                }
                match TcpStream::connect_timeout(&vip, Duration::from_secs(2)) {
                    Ok(conn) => held.push(conn),
                    // Refused (a RST): the places are taken; a node's share may grow.
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
            held
        })
        .join()
        .expect("client thread")
}
