//! Value types written in the file and their parsing: communities, port ranges, MACs,
//! prefixes, percentages and durations.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer};

/// A standard community (RFC 1997), written `AS:VALUE`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Community {
    pub asn: u16,
    pub value: u16,
}

impl Community {
    /// The 32-bit wire value.
    pub fn to_u32(self) -> u32 {
        (u32::from(self.asn) << 16) | u32::from(self.value)
    }
}

impl fmt::Display for Community {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.asn, self.value)
    }
}

impl FromStr for Community {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a community; write AS:VALUE with both parts 0..=65535 (e.g. 65010:100)");
        let (asn, value) = s.split_once(':').ok_or_else(bad)?;
        let part = |p: &str| {
            if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(bad());
            }
            p.parse::<u16>().map_err(|_| bad())
        };
        Ok(Community { asn: part(asn)?, value: part(value)? })
    }
}

/// `port:` as written: one port (`443`) or an inclusive range (`8000-8099`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Ports(pub(super) u16, pub(super) u16);

impl<'de> Deserialize<'de> for Ports {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Written {
            One(u16),
            Range(String),
        }
        let bad = |s: &str| format!("`{s}` is not a port or a port range; write 443 or 8000-8099");
        match Written::deserialize(d)? {
            Written::One(p) => Ok(Ports(p, p)),
            Written::Range(s) => {
                let (a, b) = s.split_once('-').ok_or_else(|| serde::de::Error::custom(bad(&s)))?;
                let port = |t: &str| t.trim().parse::<u16>().map_err(|_| serde::de::Error::custom(bad(&s)));
                Ok(Ports(port(a)?, port(b)?))
            }
        }
    }
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// An address with a prefix length (`10.0.0.0/24`); a bare address is a full-length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prefix {
    pub address: IpAddr,
    pub len: u8,
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl FromStr for Mac {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("`{s}` is not a MAC address; write it as 02:00:5e:00:53:01");
        let mut mac = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(bad)?;
            if part.len() != 2 {
                return Err(bad());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        }
        if parts.next().is_some() {
            return Err(bad());
        }
        Ok(Mac(mac))
    }
}

impl<'de> Deserialize<'de> for Mac {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

impl FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (addr, len) = match s.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (s, None),
        };
        let address: IpAddr =
            addr.parse().map_err(|_| format!("`{s}` is not an address or prefix (e.g. 10.0.0.0/24)"))?;
        let max = if address.is_ipv4() { 32 } else { 128 };
        let len = match len {
            None => max,
            Some(l) => l
                .parse::<u8>()
                .ok()
                .filter(|l| *l <= max)
                .ok_or_else(|| format!("`{s}`: prefix length must be 0..={max}"))?,
        };
        Ok(Prefix { address, len })
    }
}

impl<'de> Deserialize<'de> for Prefix {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

/// The accepted duration forms, for error messages.
pub(super) const DURATION_FORMS: &str = "write a whole number with a unit: 500ms, 2s, 1m or 1h";

/// Parses `500ms`, `2s` or `1m`.
/// A whole percentage, `50%` or `50`, from 0 to 100.
pub(super) fn parse_percent(text: &str) -> Result<u32, String> {
    let number = text.trim().strip_suffix('%').unwrap_or(text.trim()).trim();
    match number.parse::<u32>() {
        Ok(p) if p <= 100 => Ok(p),
        _ => Err(format!(
            "`{text}` is not a percentage; write a whole number from 0 to 100 such as `50%` (0 turns panic mode off)"
        )),
    }
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = || format!("`{s}` is not a duration; {DURATION_FORMS}");
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let n: u64 = number.parse().map_err(|_| bad())?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs).ok_or_else(bad),
        "h" => n.checked_mul(3600).map(Duration::from_secs).ok_or_else(bad),
        _ => Err(bad()),
    }
}

/// Writes a duration the way [`parse_duration`] reads it (`1m`, `2s`, `500ms`).
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if !d.subsec_nanos().is_multiple_of(1_000_000) {
        format!("{d:?}")
    } else if ms != 0 && ms.is_multiple_of(3_600_000) {
        format!("{}h", ms / 3_600_000)
    } else if ms != 0 && ms.is_multiple_of(60_000) {
        format!("{}m", ms / 60_000)
    } else if ms != 0 && ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}
