//! The heads the direct path reads and writes: which requests it serves itself, the request
//! head it sends a backend (hop-by-hop headers gone, X-Forwarded-* and Forwarded added) and the
//! response head it gives the client (with how the body that follows is framed).

use std::io::Write as _;

use httparse::{Header, Status};

use crate::l7::{
    config::Balance,
    proxy::{Conn, cookie_value, forwarded_for, forwarded_value},
};

/// Header lines a response head may have (as hyper allows).
pub const MAX_HEADERS: usize = 100;
/// Header lines of a request the direct path serves (browsers send ~20); a request with more
/// goes to the general path. Kept small: the parsed headers live in each connection's future.
pub const REQUEST_HEADERS: usize = 40;

/// A request the direct path serves: HTTP/1.1, a method safe to send twice, no body, no
/// upgrade or `Expect`, an origin-form target of visible ASCII, one Host. Anything else goes
/// to the general path, which knows every corner of HTTP.
#[derive(Debug)]
pub struct Simple<'b, 'h> {
    pub line: RequestLine<'b>,
    /// Borrowed from the parse's own array, which is not kept across a wait (it would make
    /// every connection's future larger): what needs the headers is done before the first.
    pub headers: &'h [Header<'b>],
}

/// What of a request outlives its parsed headers: its line, Host and framing.
#[derive(Debug, Clone, Copy)]
pub struct RequestLine<'b> {
    pub method: &'b str,
    /// The path and query, as sent.
    pub target: &'b str,
    /// The target up to its `?`.
    pub path: &'b str,
    pub host: &'b str,
    /// The client asked to close the connection after this response.
    pub close: bool,
    pub head_only: bool,
    /// The head's length in bytes.
    pub len: usize,
}

/// What the bytes read so far hold.
#[derive(Debug)]
pub enum Parsed<'b, 'h> {
    /// Not yet a whole head.
    Partial,
    Simple(Simple<'b, 'h>),
    /// A request for the general path (or bytes it will refuse with the right status).
    Other,
}

/// Hop-by-hop headers (RFC 9110 §7.6.1), which a proxy does not forward.
const HOP_BY_HOP: [&str; 7] =
    ["connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"];

fn is_hop_by_hop(name: &str) -> bool {
    HOP_BY_HOP.iter().any(|h| h.eq_ignore_ascii_case(name))
}

/// The comma-separated tokens of every `Connection` header.
fn connection_tokens<'a>(headers: &'a [Header<'a>]) -> impl Iterator<Item = &'a [u8]> {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|b| *b == b','))
        .map(<[u8]>::trim_ascii)
}

/// Named by a `Connection` header of `headers` (and so hop-by-hop).
fn named_in_connection(headers: &[Header<'_>], name: &str) -> bool {
    connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(name.as_bytes()))
}

/// Reads a request head from `buf` into `headers`.
pub fn parse_request<'b, 'h>(buf: &'b [u8], headers: &'h mut [Header<'b>]) -> Parsed<'b, 'h> {
    let mut request = httparse::Request::new(headers);
    let len = match request.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Other,
    };
    let (Some(method), Some(target), Some(1)) = (request.method, request.path, request.version) else {
        return Parsed::Other;
    };
    if !matches!(method, "GET" | "HEAD" | "OPTIONS" | "DELETE")
        || !target.starts_with('/')
        || !target.bytes().all(|b| b.is_ascii_graphic() && b != b'#')
    {
        return Parsed::Other;
    }
    let headers: &'h [Header<'b>] = request.headers;
    let mut host = None;
    let mut hosts = 0;
    for h in headers {
        let name = h.name;
        if name.eq_ignore_ascii_case("host") {
            hosts += 1;
            host = std::str::from_utf8(h.value).ok().filter(|v| v.bytes().all(|b| b.is_ascii_graphic()));
        } else if name.eq_ignore_ascii_case("content-length") {
            if h.value.trim_ascii() != b"0" {
                return Parsed::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding")
            || name.eq_ignore_ascii_case("upgrade")
            || name.eq_ignore_ascii_case("expect")
        {
            return Parsed::Other;
        }
    }
    let (Some(host), 1) = (host, hosts) else { return Parsed::Other };
    let mut close = false;
    for token in connection_tokens(headers) {
        if token.eq_ignore_ascii_case(b"upgrade") {
            return Parsed::Other;
        }
        close |= token.eq_ignore_ascii_case(b"close");
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    let line = RequestLine { method, target, path, host, close, head_only: method == "HEAD", len };
    Parsed::Simple(Simple { line, headers })
}

impl<'b> Simple<'b, '_> {
    /// The values of header `name`, in order.
    fn values<'s>(&'s self, name: &'s str) -> impl Iterator<Item = &'b [u8]> + 's {
        self.headers.iter().filter(move |h| h.name.eq_ignore_ascii_case(name)).map(|h| h.value)
    }

    /// The value a consistent-hash route hashes.
    pub fn hash_key(&self, balance: &Balance) -> Option<&'b [u8]> {
        match balance {
            Balance::HashHeader(name) => self.values(name).next(),
            Balance::HashCookie(name) => self.values("cookie").find_map(|v| cookie_value(v, name.as_str())),
            _ => None,
        }
    }

    /// Writes the head a backend gets into `out`: the request line and headers as they came,
    /// less the hop-by-hop ones, with X-Forwarded-For and Forwarded appended to, and
    /// X-Forwarded-Proto (and X-Forwarded-Host when absent) set.
    pub fn upstream_head(&self, out: &mut Vec<u8>, conn: &Conn) {
        let RequestLine { method, target, host, .. } = self.line;
        out.clear();
        // Writing to a Vec cannot fail.
        let _ = write!(out, "{method} {target} HTTP/1.1\r\n");
        let mut forwarded_host = false;
        let has_connection = self.headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection"));
        for h in self.headers {
            let name = h.name;
            if is_hop_by_hop(name)
                || name.eq_ignore_ascii_case("x-forwarded-for")
                || name.eq_ignore_ascii_case("forwarded")
                || name.eq_ignore_ascii_case("x-forwarded-proto")
                // Host stays whatever Connection says: the request was routed on it.
                || (has_connection && named_in_connection(self.headers, name) && !name.eq_ignore_ascii_case("host"))
            {
                continue;
            }
            forwarded_host |= name.eq_ignore_ascii_case("x-forwarded-host");
            line(out, name.as_bytes(), h.value);
        }
        let joined = |name: &'static str| -> Option<Vec<u8>> {
            let mut values = self.values(name).peekable();
            values.peek()?;
            let mut all = Vec::new();
            for (i, v) in values.enumerate() {
                if i > 0 {
                    all.extend_from_slice(b", ");
                }
                all.extend_from_slice(v);
            }
            Some(all)
        };
        let (xff, forwarded) = (joined("x-forwarded-for"), joined("forwarded"));
        out.extend_from_slice(b"x-forwarded-for: ");
        forwarded_for(out, xff.as_deref(), conn);
        out.extend_from_slice(b"\r\nforwarded: ");
        forwarded_value(out, forwarded.as_deref(), conn, Some(host));
        out.extend_from_slice(b"\r\nx-forwarded-proto: ");
        out.extend_from_slice(conn.proto().as_bytes());
        out.extend_from_slice(b"\r\n");
        if !forwarded_host {
            line(out, b"x-forwarded-host", host.as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
}

fn line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// How a response's body is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body (HEAD, 204, 304).
    Empty,
    Length(u64),
    Chunked,
    /// Until the backend closes.
    UntilClose,
}

/// A backend's final response head, and the head the client gets for it.
#[derive(Debug)]
pub struct ResponseHead {
    pub status: u16,
    /// The backend's head's length in bytes.
    pub len: usize,
    pub framing: Framing,
    /// The backend keeps the connection open after the body.
    pub backend_keeps_open: bool,
    /// The client's connection closes after the body (asked by the client, or the body ends
    /// only when the backend closes).
    pub close: bool,
}

/// What a backend's bytes hold.
#[derive(Debug)]
pub enum ParsedResponse {
    Partial,
    /// An interim (1xx) response of `len` bytes, which the client does not get.
    Interim(usize),
    /// A final head; the client's head is in the `out` given.
    Final(ResponseHead),
    Invalid(&'static str),
}

/// Reads a backend's response head to a request that `head_only` (HEAD) or not, from a client
/// that asked to `close` or not; writes the client's head into `out`.
pub fn parse_response(buf: &[u8], head_only: bool, close: bool, out: &mut Vec<u8>) -> ParsedResponse {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(Status::Complete(len)) => len,
        Ok(Status::Partial) => return ParsedResponse::Partial,
        Err(_) => return ParsedResponse::Invalid("a response head that is not HTTP/1.x"),
    };
    let (Some(status @ 100..), Some(version)) = (response.code, response.version) else {
        return ParsedResponse::Invalid("a response head without a valid status");
    };
    match status {
        101 => return ParsedResponse::Invalid("101 Switching Protocols to a request without Upgrade"),
        100..=199 => return ParsedResponse::Interim(len),
        _ => {}
    }
    let headers: &[Header<'_>] = response.headers;
    let mut chunked = None;
    let mut length: Option<u64> = None;
    for h in headers {
        if h.name.eq_ignore_ascii_case("transfer-encoding") {
            // The last coding says how the body ends.
            let last = h.value.rsplit(|b| *b == b',').next().map(<[u8]>::trim_ascii);
            chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case(b"chunked")));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            for value in h.value.split(|b| *b == b',') {
                let digits = value.trim_ascii();
                let parsed = (!digits.is_empty() && digits.len() <= 19 && digits.iter().all(u8::is_ascii_digit))
                    .then(|| digits.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0')));
                match (parsed, length) {
                    (None, _) => return ParsedResponse::Invalid("an invalid Content-Length"),
                    (Some(a), Some(b)) if a != b => return ParsedResponse::Invalid("differing Content-Lengths"),
                    (Some(a), _) => length = Some(a),
                }
            }
        }
    }
    if chunked.is_some() && version == 0 {
        return ParsedResponse::Invalid("Transfer-Encoding in an HTTP/1.0 response");
    }
    let framing = if head_only || status == 204 || status == 304 {
        Framing::Empty
    } else {
        match (chunked, length) {
            (Some(true), _) => Framing::Chunked,
            (Some(false), _) => Framing::UntilClose,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => Framing::UntilClose,
        }
    };
    // Both Transfer-Encoding and Content-Length: the body ends as the encoding says, but a
    // backend that sends both is not trusted with another request (RFC 9112 §6.3).
    let backend_keeps_open = version == 1
        && !(chunked.is_some() && length.is_some())
        && !connection_tokens(headers).any(|t| t.eq_ignore_ascii_case(b"close"));
    let close = close || framing == Framing::UntilClose;
    out.clear();
    let reason = match response.reason {
        Some(reason) if !reason.is_empty() => reason,
        _ => http::StatusCode::from_u16(status).ok().and_then(|s| s.canonical_reason()).unwrap_or(""),
    };
    let _ = write!(out, "HTTP/1.1 {status} {reason}\r\n");
    if let (Some(length), None) = (length, chunked) {
        // One value, however the backend repeated it.
        let _ = write!(out, "content-length: {length}\r\n");
    }
    let has_connection = headers.iter().any(|h| h.name.eq_ignore_ascii_case("connection"));
    for h in headers {
        let name = h.name;
        // The body passes as it came, in its codings: Transfer-Encoding stays. Content-Length
        // is written above (a Transfer-Encoding overrides it, RFC 9112 §6.3).
        let keep = if name.eq_ignore_ascii_case("transfer-encoding") {
            true
        } else if name.eq_ignore_ascii_case("content-length") {
            false
        } else {
            !is_hop_by_hop(name) && !(has_connection && named_in_connection(headers, name))
        };
        if keep {
            line(out, name.as_bytes(), h.value);
        }
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    ParsedResponse::Final(ResponseHead { status, len, framing, backend_keeps_open, close })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn simple(raw: &[u8], check: impl FnOnce(&Simple<'_, '_>)) {
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS];
        match parse_request(raw, &mut headers) {
            Parsed::Simple(s) => check(&s),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(raw)),
        }
    }

    fn kind(raw: &[u8]) -> &'static str {
        let mut headers = [httparse::EMPTY_HEADER; REQUEST_HEADERS];
        match parse_request(raw, &mut headers) {
            Parsed::Partial => "partial",
            Parsed::Simple(_) => "simple",
            Parsed::Other => "other",
        }
    }

    #[test]
    fn simple_requests_and_what_goes_to_the_general_path() {
        let conn = Conn::new("198.51.100.7:4000".parse().unwrap(), false);
        let raw = b"GET /a/b?x=1 HTTP/1.1\r\nHost: api.test\r\nConnection: keep-alive, x-secret\r\nX-Secret: 1\r\n\
X-Forwarded-For: 203.0.113.1\r\nCookie: a=1; sid=abc\r\nX-User: alice\r\nContent-Length: 0\r\n\r\nGET /next";
        simple(raw, |s| {
            assert_eq!(
                (s.line.method, s.line.target, s.line.path, s.line.host, s.line.close),
                ("GET", "/a/b?x=1", "/a/b", "api.test", false)
            );
            assert_eq!(s.line.len, raw.len() - b"GET /next".len());
            assert_eq!(s.hash_key(&Balance::HashHeader("x-user".into())), Some(&b"alice"[..]));
            assert_eq!(s.hash_key(&Balance::HashCookie("sid".into())), Some(&b"abc"[..]));
            let mut out = Vec::new();
            s.upstream_head(&mut out, &conn);
            assert_eq!(
                String::from_utf8(out).unwrap(),
                "GET /a/b?x=1 HTTP/1.1\r\nHost: api.test\r\nCookie: a=1; sid=abc\r\nX-User: alice\r\nContent-Length: 0\r\n\
x-forwarded-for: 203.0.113.1, 198.51.100.7\r\nforwarded: for=198.51.100.7;proto=http;host=\"api.test\"\r\n\
x-forwarded-proto: http\r\nx-forwarded-host: api.test\r\n\r\n"
            );
        });
        simple(b"HEAD / HTTP/1.1\r\nhost: h\r\nconnection: Close, host\r\n\r\n", |s| {
            assert!(s.line.close && s.line.head_only);
            let mut out = Vec::new();
            s.upstream_head(&mut out, &conn);
            assert!(out.starts_with(b"HEAD / HTTP/1.1\r\nhost: h\r\n"), "Host stays though Connection names it");
        });
        assert_eq!(kind(b"GET / HTTP/1.1\r\nHost: h\r\n"), "partial");
        for other in [
            &b"POST / HTTP/1.1\r\nHost: h\r\n\r\n"[..],
            b"GET / HTTP/1.0\r\nHost: h\r\n\r\n",
            b"GET / HTTP/1.1\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n\r\nabc",
            b"GET / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n",
            b"GET http://h/ HTTP/1.1\r\nHost: h\r\n\r\n",
            b"GET /#frag HTTP/1.1\r\nHost: h\r\n\r\n",
            b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
            b"GET / HTTP/1.1\r\nHost: h\r\nbad header\r\n\r\n",
        ] {
            assert_eq!(kind(other), "other", "{:?}", String::from_utf8_lossy(other));
        }
    }

    fn response(raw: &[u8], head_only: bool, close: bool) -> (ParsedResponse, String) {
        let mut out = Vec::new();
        let parsed = parse_response(raw, head_only, close, &mut out);
        (parsed, String::from_utf8(out).unwrap())
    }

    #[test]
    fn response_heads_say_how_the_body_ends_and_lose_hop_by_hop_headers() {
        let (parsed, head) = response(
            b"HTTP/1.1 200 OK\r\nContent-Length: 5, 5\r\nConnection: keep-alive, x-hop\r\nX-Hop: 1\r\nKeep-Alive: timeout=5\r\nX-Kept: y\r\n\r\nhello",
            false,
            false,
        );
        let ParsedResponse::Final(r) = parsed else { panic!("{parsed:?}") };
        assert_eq!((r.status, r.framing, r.backend_keeps_open, r.close), (200, Framing::Length(5), true, false));
        assert_eq!(head, "HTTP/1.1 200 OK\r\ncontent-length: 5\r\nX-Kept: y\r\n\r\n");

        let (parsed, head) =
            response(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 9\r\n\r\n", false, true);
        let ParsedResponse::Final(r) = parsed else { panic!("{parsed:?}") };
        assert_eq!((r.framing, r.close, r.backend_keeps_open), (Framing::Chunked, true, false));
        assert_eq!(head, "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nconnection: close\r\n\r\n");

        let (parsed, head) = response(b"HTTP/1.0 200 OK\r\n\r\nuntil close", false, false);
        let ParsedResponse::Final(r) = parsed else { panic!("{parsed:?}") };
        assert_eq!((r.framing, r.backend_keeps_open, r.close), (Framing::UntilClose, false, true));
        assert_eq!(head, "HTTP/1.1 200 OK\r\nconnection: close\r\n\r\n");

        let (parsed, _) = response(b"HTTP/1.1 200 OK\r\nContent-Length: 7\r\n\r\n", true, false);
        assert!(matches!(parsed, ParsedResponse::Final(ResponseHead { framing: Framing::Empty, .. })));
        let (parsed, head) = response(b"HTTP/1.1 304 \r\nConnection: close\r\n\r\n", false, false);
        let ParsedResponse::Final(r) = parsed else { panic!("{parsed:?}") };
        assert_eq!((r.framing, r.backend_keeps_open), (Framing::Empty, false));
        assert_eq!(head, "HTTP/1.1 304 Not Modified\r\n\r\n");
        assert!(matches!(
            response(b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1", false, false).0,
            ParsedResponse::Interim(25)
        ));
        assert!(matches!(response(b"HTTP/1.1 200 OK\r\nContent-", false, false).0, ParsedResponse::Partial));
        for invalid in [
            &b"HTTP/1.1 101 Switching Protocols\r\n\r\n"[..],
            b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: +5\r\n\r\n",
            b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
            b"HTTP/1.1 042 Odd\r\n\r\n",
            b"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"SSH-2.0-OpenSSH\r\n\r\n",
        ] {
            let (parsed, _) = response(invalid, false, false);
            assert!(matches!(parsed, ParsedResponse::Invalid(_)), "{:?}: {parsed:?}", String::from_utf8_lossy(invalid));
        }
    }
}
