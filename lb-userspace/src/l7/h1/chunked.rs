//! Finds where a chunked body ends (RFC 9112 §7.1) while its bytes pass through unchanged: the
//! direct path relays a backend's chunks as they came and needs only to know when the last one
//! (and its trailers) has gone by, to give the connection back.

/// Where in the chunked framing the next byte falls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum At {
    /// Hex digits of a chunk's size (`digits` read so far).
    Size {
        size: u64,
        digits: u8,
    },
    /// Blanks after the size, before an extension's `;` or the CR.
    SizeBlank {
        size: u64,
    },
    /// A chunk extension, up to the line's CR.
    Extension {
        size: u64,
    },
    /// The LF ending a size line.
    SizeLf {
        size: u64,
    },
    /// Chunk data still to pass.
    Data {
        left: u64,
    },
    DataCr,
    DataLf,
    /// The start of a trailer line, or the final empty line.
    TrailerStart,
    /// Inside a trailer field line, up to its CR.
    Trailer,
    /// The LF ending a trailer field line.
    TrailerLf,
    /// The LF of the final empty line.
    EndLf,
    Done,
}

/// A chunked body's framing is broken: the connection cannot be trusted past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid chunked framing from the backend: {0}")]
pub struct ChunkError(&'static str);

/// Tracks a chunked body's framing, fed its bytes in order.
#[derive(Debug, Clone)]
pub struct Chunked {
    at: At,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked { at: At::Size { size: 0, digits: 0 } }
    }
}

/// A size has at most 16 hex digits (2^64 bytes).
const MAX_DIGITS: u8 = 16;

impl Chunked {
    /// Whether the last chunk and the trailers have passed.
    pub fn done(&self) -> bool {
        self.at == At::Done
    }

    /// Reads `bytes`; returns how many belong to the body (all of them, unless it ends within).
    pub fn feed(&mut self, bytes: &[u8]) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < bytes.len() {
            if let At::Data { left } = self.at {
                // Data passes in one step, however long.
                let take = left.min((bytes.len() - i) as u64);
                i += take as usize;
                self.at = if take == left { At::DataCr } else { At::Data { left: left - take } };
                continue;
            }
            let b = bytes[i];
            self.at = match self.at {
                At::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < MAX_DIGITS => At::Size { size: size << 4 | u64::from(d), digits: digits + 1 },
                    Some(_) => return Err(ChunkError("a chunk size of more than 16 hex digits")),
                    None if digits == 0 => return Err(ChunkError("a chunk size line without a size")),
                    None => match b {
                        b'\r' => At::SizeLf { size },
                        b';' => At::Extension { size },
                        b' ' | b'\t' => At::SizeBlank { size },
                        _ => return Err(ChunkError("a byte that is not a hex digit in a chunk size")),
                    },
                },
                At::SizeBlank { size } => match b {
                    b'\r' => At::SizeLf { size },
                    b';' => At::Extension { size },
                    b' ' | b'\t' => At::SizeBlank { size },
                    _ => return Err(ChunkError("text after a chunk size that is not an extension")),
                },
                At::Extension { size } => match b {
                    b'\r' => At::SizeLf { size },
                    b'\n' => return Err(ChunkError("a bare LF in a chunk extension")),
                    _ => At::Extension { size },
                },
                At::SizeLf { size } => match (b, size) {
                    (b'\n', 0) => At::TrailerStart,
                    (b'\n', left) => At::Data { left },
                    _ => return Err(ChunkError("a chunk size line not ended by CRLF")),
                },
                At::DataCr if b == b'\r' => At::DataLf,
                At::DataLf if b == b'\n' => At::Size { size: 0, digits: 0 },
                At::DataCr | At::DataLf => return Err(ChunkError("chunk data not followed by CRLF")),
                At::TrailerStart => match b {
                    b'\r' => At::EndLf,
                    b'\n' => return Err(ChunkError("a bare LF after the last chunk")),
                    _ => At::Trailer,
                },
                At::Trailer => match b {
                    b'\r' => At::TrailerLf,
                    b'\n' => return Err(ChunkError("a trailer line ended by a bare LF")),
                    _ => At::Trailer,
                },
                At::TrailerLf if b == b'\n' => At::TrailerStart,
                At::TrailerLf => return Err(ChunkError("a CR without LF in a trailer line")),
                At::EndLf if b == b'\n' => At::Done,
                At::EndLf => return Err(ChunkError("the final CRLF is missing")),
                At::Done => return Ok(i),
                At::Data { .. } => unreachable!("handled above"),
            };
            i += 1;
            if self.at == At::Done {
                return Ok(i);
            }
        }
        Ok(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BODY: &[u8] =
        b"5\r\nhello\r\n1a ;name=value\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nx-sum: 7\r\nx-n: 1\r\n\r\n";

    #[test]
    fn finds_the_end_of_a_body_fed_whole_or_byte_by_byte() {
        let mut whole = Chunked::default();
        let mut with_next = BODY.to_vec();
        with_next.extend_from_slice(b"HTTP/1.1 200 OK\r\n");
        assert_eq!(whole.feed(&with_next), Ok(BODY.len()), "stops where the body ends");
        assert!(whole.done());
        for split in 1..BODY.len() {
            let mut parts = Chunked::default();
            let first = parts.feed(&BODY[..split]).unwrap();
            assert_eq!(first, split);
            assert!(!parts.done(), "not done after {split} bytes");
            assert_eq!(parts.feed(&BODY[split..]), Ok(BODY.len() - split));
            assert!(parts.done());
        }
        let mut bytewise = Chunked::default();
        for (i, b) in BODY.iter().enumerate() {
            assert_eq!(bytewise.feed(std::slice::from_ref(b)), Ok(1), "byte {i}");
        }
        assert!(bytewise.done());
        let mut empty = Chunked::default();
        assert_eq!(empty.feed(b"0\r\n\r\n"), Ok(5));
        assert!(empty.done());
    }

    #[test]
    fn broken_framing_is_an_error() {
        for broken in
            [&b"x\r\n"[..], b"\r\n", b"5\r\nhelloXX", b"5\nhello", b"0\r\n\n", b"11111111111111111\r\n", b"3;ext\n"]
        {
            let result = Chunked::default().feed(broken);
            assert!(result.is_err(), "{:?} gave {result:?}", String::from_utf8_lossy(broken));
        }
        let mut big = Chunked::default();
        assert_eq!(big.feed(b"ffffffffffffffff\r\n"), Ok(18), "the largest size is accepted");
        assert!(!big.done());
    }
}
