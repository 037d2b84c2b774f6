//! The client's side: requests through the VIP from the client namespace, and their replies.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use xlb_tests::topology::Topology;

use crate::{VIP, origin::header};

#[derive(Debug, Clone)]
pub(crate) struct Reply {
    pub(crate) status: u16,
    pub(crate) head: Vec<String>,
    pub(crate) body: String,
}

impl Reply {
    pub(crate) fn backend(&self) -> &str {
        self.body.split(' ').next().unwrap_or("")
    }
}

/// One request on a new connection (`Connection: close`), with `prefix` bytes (a PROXY header)
/// before it.
pub(crate) fn request_with(
    addr: SocketAddr,
    prefix: &[u8],
    method: &str,
    host: &str,
    path: &str,
    headers: &str,
) -> std::io::Result<Reply> {
    let mut conn = TcpStream::connect_timeout(&addr, Duration::from_secs(4))?;
    conn.set_read_timeout(Some(Duration::from_secs(5)))?;
    let mut bytes = prefix.to_vec();
    bytes.extend_from_slice(
        format!("{method} {path} HTTP/1.1\r\nHost: {host}\r\n{headers}Connection: close\r\nContent-Length: 0\r\n\r\n")
            .as_bytes(),
    );
    conn.write_all(&bytes)?;
    let mut raw = Vec::new();
    conn.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (head, body) =
        text.split_once("\r\n\r\n").ok_or_else(|| std::io::Error::other(format!("no head in {text:?}")))?;
    let head: Vec<String> = head.split("\r\n").map(str::to_owned).collect();
    let status =
        head[0].split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or_else(|| std::io::Error::other("no status"))?;
    Ok(Reply { status, head, body: body.to_owned() })
}

/// One response with a Content-Length body: its status and body.
pub(crate) fn read_response(reader: &mut BufReader<TcpStream>) -> std::io::Result<(u16, String)> {
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::other(format!("closed after {head:?}")));
        }
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        head.push(line);
    }
    let status = head.first().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).unwrap_or(0);
    let length: usize = header(&head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    let mut body = vec![0u8; length];
    reader.read_exact(&mut body)?;
    Ok((status, String::from_utf8_lossy(&body).into_owned()))
}

pub(crate) fn vip_addr(port: u16) -> SocketAddr {
    SocketAddr::new(VIP.parse().unwrap(), port)
}

/// `requests` (method, host, path, headers) from the client namespace, in order.
pub(crate) fn requests(
    topo: &Topology,
    port: u16,
    list: Vec<(&'static str, String, String, String)>,
) -> Vec<std::io::Result<Reply>> {
    topo.client()
        .run(move || list.iter().map(|(m, h, p, x)| request_with(vip_addr(port), &[], m, h, p, x)).collect())
        .join()
        .expect("client thread")
}

pub(crate) fn get(topo: &Topology, host: &str, path: &str) -> Reply {
    requests(topo, 80, vec![("GET", host.into(), path.into(), String::new())]).remove(0).expect("request")
}
