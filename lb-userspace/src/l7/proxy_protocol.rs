//! PROXY protocol v2 (haproxy's proxy-protocol.txt §2.2), read by hand: the binary header an
//! L4 tier in front (an xlb L4 VIP, haproxy, a cloud balancer) puts before the client's bytes,
//! so the proxy sees the client's address instead of the tier's.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt as _};

pub const SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
/// Longest address block + TLVs accepted (the addresses take at most 216 bytes; TLVs such as
/// AWS's VPC endpoint id are small).
pub const MAX_LEN: usize = 4096;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyHeaderError {
    #[error("no PROXY protocol v2 signature")]
    Signature,
    #[error("PROXY protocol version {0}, only 2 is accepted")]
    Version(u8),
    #[error("unknown PROXY protocol command {0}")]
    Command(u8),
    #[error("PROXY header of {0} bytes is longer than {MAX_LEN}")]
    TooLong(usize),
    #[error("PROXY address block of {got} bytes is shorter than its family's {need}")]
    Short { got: usize, need: usize },
    #[error("reading the PROXY header: {0}")]
    Io(String),
}

/// What the header says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProxyHeader {
    /// A connection of the tier itself (health checks): use the real peer.
    Local,
    /// Relayed for this client, to this destination.
    Proxied { source: SocketAddr, destination: SocketAddr },
    /// Relayed, but of a family without addresses we use (UNIX, UNSPEC): use the real peer.
    Unknown,
}

impl ProxyHeader {
    /// The client's address, if the header gives one.
    pub fn source(&self) -> Option<SocketAddr> {
        match self {
            ProxyHeader::Proxied { source, .. } => Some(*source),
            _ => None,
        }
    }
}

/// The fixed 16 bytes: the command and family byte, and how many bytes follow.
pub fn parse_fixed(fixed: &[u8; 16]) -> Result<(u8, u8, usize), ProxyHeaderError> {
    if fixed[..12] != SIGNATURE {
        return Err(ProxyHeaderError::Signature);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyHeaderError::Version(version));
    }
    let command = fixed[12] & 0x0f;
    if command > 1 {
        return Err(ProxyHeaderError::Command(command));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_LEN {
        return Err(ProxyHeaderError::TooLong(len));
    }
    Ok((command, fixed[13], len))
}

/// The header from its command, family byte and the `len` bytes after the fixed part.
pub fn parse_rest(command: u8, family: u8, rest: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
    if command == 0 {
        return Ok(ProxyHeader::Local);
    }
    // High nibble: address family (1 INET, 2 INET6); low: transport (1 STREAM, 2 DGRAM).
    let need = match family >> 4 {
        1 => 12,
        2 => 36,
        _ => return Ok(ProxyHeader::Unknown),
    };
    if rest.len() < need {
        return Err(ProxyHeaderError::Short { got: rest.len(), need });
    }
    let (source, destination) = if need == 12 {
        let ip = |at: usize| IpAddr::V4(Ipv4Addr::new(rest[at], rest[at + 1], rest[at + 2], rest[at + 3]));
        let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
        (SocketAddr::new(ip(0), port(8)), SocketAddr::new(ip(4), port(10)))
    } else {
        let ip = |at: usize| {
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&rest[at..at + 16]);
            IpAddr::V6(Ipv6Addr::from(octets))
        };
        let port = |at: usize| u16::from_be_bytes([rest[at], rest[at + 1]]);
        (SocketAddr::new(ip(0), port(32)), SocketAddr::new(ip(16), port(34)))
    };
    Ok(ProxyHeader::Proxied { source, destination })
}

/// Reads exactly the header from `io` (nothing of the client's data after it). The caller
/// bounds it in time.
pub async fn read<R: AsyncRead + Unpin>(io: &mut R) -> Result<ProxyHeader, ProxyHeaderError> {
    let io_err = |e: std::io::Error| ProxyHeaderError::Io(e.to_string());
    let mut fixed = [0u8; 16];
    io.read_exact(&mut fixed).await.map_err(io_err)?;
    let (command, family, len) = parse_fixed(&fixed)?;
    let mut rest = vec![0u8; len];
    io.read_exact(&mut rest).await.map_err(io_err)?;
    parse_rest(command, family, &rest)
}

/// A v2 PROXY header for a TCP connection from `source` to `destination` (tests, benches).
pub fn encode(source: SocketAddr, destination: SocketAddr) -> Vec<u8> {
    let mut out = SIGNATURE.to_vec();
    out.push(0x21);
    match (source.ip(), destination.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            out.push(0x11);
            out.extend_from_slice(&12u16.to_be_bytes());
            out.extend_from_slice(&s.octets());
            out.extend_from_slice(&d.octets());
        }
        (s, d) => {
            let v6 = |a: IpAddr| match a {
                IpAddr::V4(a) => a.to_ipv6_mapped(),
                IpAddr::V6(a) => a,
            };
            out.push(0x21);
            out.extend_from_slice(&36u16.to_be_bytes());
            out.extend_from_slice(&v6(s).octets());
            out.extend_from_slice(&v6(d).octets());
        }
    }
    out.extend_from_slice(&source.port().to_be_bytes());
    out.extend_from_slice(&destination.port().to_be_bytes());
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn parse(bytes: &[u8]) -> Result<ProxyHeader, ProxyHeaderError> {
        let mut io = bytes;
        read(&mut io).await
    }

    #[tokio::test]
    async fn v4_and_v6_headers_and_nothing_more_is_read() {
        let (s, d): (SocketAddr, SocketAddr) =
            ("198.51.100.7:40000".parse().unwrap(), "192.0.2.10:80".parse().unwrap());
        let mut bytes = encode(s, d);
        bytes.extend_from_slice(b"GET / HTTP/1.1\r\n");
        let mut io = bytes.as_slice();
        assert_eq!(read(&mut io).await, Ok(ProxyHeader::Proxied { source: s, destination: d }));
        assert_eq!(io, b"GET / HTTP/1.1\r\n", "the client's bytes stay unread");
        let (s, d): (SocketAddr, SocketAddr) =
            ("[2001:db8::7]:1234".parse().unwrap(), "[2001:db8::10]:443".parse().unwrap());
        assert_eq!(parse(&encode(s, d)).await.unwrap().source(), Some(s));
    }

    #[tokio::test]
    async fn local_unknown_families_and_tlvs() {
        let mut local = SIGNATURE.to_vec();
        local.extend_from_slice(&[0x20, 0x00, 0, 0]);
        assert_eq!(parse(&local).await, Ok(ProxyHeader::Local));
        let mut unix = SIGNATURE.to_vec();
        unix.extend_from_slice(&[0x21, 0x31, 0, 4, 1, 2, 3, 4]);
        assert_eq!(parse(&unix).await, Ok(ProxyHeader::Unknown));
        // TLVs after the addresses are skipped.
        let mut with_tlv = encode("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        with_tlv[15] += 5;
        with_tlv.extend_from_slice(&[0x04, 0, 2, b'h', b'i']);
        assert_eq!(parse(&with_tlv).await.unwrap().source(), Some("10.0.0.1:1".parse().unwrap()));
    }

    #[tokio::test]
    async fn malformed_headers_are_errors() {
        let good = encode("10.0.0.1:1".parse().unwrap(), "10.0.0.2:2".parse().unwrap());
        assert_eq!(parse(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await, Err(ProxyHeaderError::Signature));
        let mut v1 = good.clone();
        v1[12] = 0x11;
        assert_eq!(parse(&v1).await, Err(ProxyHeaderError::Version(1)));
        let mut cmd = good.clone();
        cmd[12] = 0x2f;
        assert_eq!(parse(&cmd).await, Err(ProxyHeaderError::Command(15)));
        let mut long = good.clone();
        long[14..16].copy_from_slice(&65535u16.to_be_bytes());
        assert_eq!(parse(&long).await, Err(ProxyHeaderError::TooLong(65535)));
        let mut short = good.clone();
        short[15] = 4;
        short.truncate(20);
        assert_eq!(parse(&short).await, Err(ProxyHeaderError::Short { got: 4, need: 12 }));
        // Truncated streams are I/O errors, at every length.
        for n in 0..good.len() {
            assert!(matches!(parse(&good[..n]).await, Err(ProxyHeaderError::Io(_))), "{n} bytes");
        }
    }
}
