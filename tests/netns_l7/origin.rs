//! The backends' HTTP servers: `be<i>` answers every request with its name, method, path and
//! forwarding headers, `/big/N` with N bytes that say where they are, and an upgrade request
//! switches to a line echo.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use xlb_tests::topology::{Topology, backend_v4};

use crate::BACKEND_PORT;

/// HTTP servers on the backends (`be<i>` answers every request with its name, method, path
/// and forwarding headers; an upgrade request switches to a line echo). Stopped on drop.
pub(crate) struct Servers {
    stop: Arc<AtomicBool>,
    /// Per backend: while false the listener is closed (connects refused) and open
    /// connections are closed.
    pub(crate) alive: Arc<Vec<AtomicBool>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Drop for Servers {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

impl Servers {
    pub(crate) fn start(topo: &Topology) -> Servers {
        let stop = Arc::new(AtomicBool::new(false));
        let alive: Arc<Vec<AtomicBool>> = Arc::new((0..topo.backends.len()).map(|_| AtomicBool::new(true)).collect());
        let mut threads = Vec::new();
        for (i, ns) in topo.backends.iter().enumerate() {
            let (stop, alive) = (Arc::clone(&stop), Arc::clone(&alive));
            let addr = SocketAddr::new(backend_v4(i).parse().unwrap(), BACKEND_PORT);
            let (ready_tx, ready_rx) = std::sync::mpsc::channel();
            threads.push(ns.run(move || {
                let mut listener: Option<TcpListener> = None;
                let mut conns = Vec::new();
                let _ = ready_tx.send(());
                while !stop.load(Ordering::Relaxed) {
                    if !alive[i].load(Ordering::Relaxed) {
                        listener = None;
                    } else if listener.is_none() {
                        let l = TcpListener::bind(addr).unwrap_or_else(|e| panic!("bind {addr}: {e}"));
                        l.set_nonblocking(true).unwrap();
                        listener = Some(l);
                    }
                    match listener.as_ref().map(TcpListener::accept) {
                        Some(Ok((conn, _))) => {
                            let (stop, alive) = (Arc::clone(&stop), Arc::clone(&alive));
                            conns.push(std::thread::spawn(move || serve_http(conn, i, &stop, &alive[i])));
                        }
                        _ => std::thread::sleep(Duration::from_millis(1)),
                    }
                    conns.retain(|c: &std::thread::JoinHandle<()>| !c.is_finished());
                }
                for c in conns {
                    let _ = c.join();
                }
            }));
            ready_rx.recv_timeout(Duration::from_secs(5)).expect("server started");
        }
        Servers { stop, alive, threads }
    }

    pub(crate) fn set_alive(&self, backend: usize, alive: bool) {
        self.alive[backend].store(alive, Ordering::Relaxed);
    }
}

/// Reads a request head; `None` at EOF, on timeout while stopping, or on garbage.
pub(crate) fn read_head(
    reader: &mut BufReader<TcpStream>,
    stop: &AtomicBool,
    alive: &AtomicBool,
) -> Option<Vec<String>> {
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        match reader.read_line(&mut line) {
            Ok(0) => return None,
            Ok(_) => {
                let line = line.trim_end().to_owned();
                if line.is_empty() {
                    if lines.is_empty() {
                        continue;
                    }
                    return Some(lines);
                }
                lines.push(line);
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                if stop.load(Ordering::Relaxed) || !alive.load(Ordering::Relaxed) || !line.is_empty() {
                    return None;
                }
            }
            Err(_) => return None,
        }
    }
}

pub(crate) fn header<'a>(head: &'a [String], name: &str) -> Option<&'a str> {
    head.iter().skip(1).find_map(|l| {
        let (n, v) = l.split_once(':')?;
        n.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

pub(crate) fn serve_http(conn: TcpStream, i: usize, stop: &AtomicBool, alive: &AtomicBool) {
    conn.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
    let mut writer = conn.try_clone().unwrap();
    let mut reader = BufReader::new(conn);
    while let Some(head) = read_head(&mut reader, stop, alive) {
        if !alive.load(Ordering::Relaxed) {
            return;
        }
        let mut parts = head[0].split(' ');
        let (method, path) = (parts.next().unwrap_or("").to_owned(), parts.next().unwrap_or("").to_owned());
        let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
        let mut body = vec![0u8; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        if header(&head, "upgrade").is_some() {
            let _ = writer
                .write_all(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n");
            // Echo lines until the client closes (or the test ends).
            loop {
                let mut line = String::new();
                match reader.read_line(&mut line) {
                    Ok(0) => return,
                    Ok(_) => {
                        if writer.write_all(format!("be{i}: {line}").as_bytes()).is_err() {
                            return;
                        }
                    }
                    Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        }
        // `/big/N`: N bytes that say where they are (a large body passes in several reads and writes).
        if let Some(n) = path.strip_prefix("/big/").and_then(|n| n.parse::<usize>().ok()) {
            let head = format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            if writer.write_all(head.as_bytes()).and_then(|()| writer.write_all(&big_body(n))).is_err() {
                return;
            }
            continue;
        }
        let text = format!(
            "be{i} {method} {path} xff={} fwd={} host={}\n",
            header(&head, "x-forwarded-for").unwrap_or("-"),
            header(&head, "forwarded").unwrap_or("-"),
            header(&head, "host").unwrap_or("-"),
        );
        let response =
            format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\nContent-Type: text/plain\r\n\r\n{text}", text.len());
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

/// A body of `n` bytes whose bytes say where they are: a lost, doubled or shifted stretch shows.
pub(crate) fn big_body(n: usize) -> Vec<u8> {
    (0..n).map(|k| b"0123456789abcdef"[(k / 61) % 16]).collect()
}
