//! Closed-loop HTTP load well above a rate limit: threads in each client's namespace send
//! `GET /` on a fresh connection each time (so an ECMP router spreads them over the nodes),
//! as fast as answers come, for a set time; what came back is counted by status.

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use crate::netns::Netns;

/// What the clients got.
#[derive(Debug, Default, Clone)]
pub struct HttpLoadOutcome {
    /// 200s after the settling time, per second.
    pub ok_per_second: f64,
    pub ok: usize,
    /// 429s.
    pub limited: usize,
    /// Anything else (refused, timed out, other statuses).
    pub other: usize,
    pub attempts: usize,
}

/// Requests from `threads` threads in each of `clients` for `duration` (at most 100 000 each);
/// 200s in the first `settle` are left out of the rate.
pub fn http_load(
    clients: &[Netns],
    vip: SocketAddr,
    threads: usize,
    duration: Duration,
    settle: Duration,
) -> HttpLoadOutcome {
    let started = Instant::now();
    let handles: Vec<_> = clients
        .iter()
        .flat_map(|client| {
            (0..threads).map(|_| client.run(move || one_thread(vip, started, duration))).collect::<Vec<_>>()
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

/// The 200s' times since `started`, the 429s, and the rest.
fn one_thread(vip: SocketAddr, started: Instant, duration: Duration) -> (Vec<Duration>, usize, usize) {
    let (mut ok, mut limited, mut other) = (Vec::new(), 0, 0);
    for _ in 0..100_000 {
        if started.elapsed() >= duration {
            break;
        }
        match get_status(vip, "/", Duration::from_secs(2)) {
            Some(200) => ok.push(started.elapsed()),
            Some(429) => limited += 1,
            _ => other += 1,
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
