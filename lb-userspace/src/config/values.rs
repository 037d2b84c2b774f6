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
        let bad = || format!("`{s}` is not a community; write AS:VALUE with both parts 0 to 65535 (e.g. 65010:100)");
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
        struct Visitor;
        impl<'de> serde::de::Visitor<'de> for Visitor {
            type Value = Ports;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port or a port range")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Ports, E> {
                let port = u16::try_from(v).map_err(|_| E::custom(bad_ports(&v.to_string())))?;
                Ok(Ports(port, port))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Ports, E> {
                Err(E::custom(bad_ports(&v.to_string())))
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Ports, E> {
                Err(E::custom(bad_ports(&v.to_string())))
            }
            // A list or mapping is read whole before it is refused, so that the reader's budgets
            // judge it first.
            fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Ports, A::Error> {
                while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
                Err(serde::de::Error::invalid_type(serde::de::Unexpected::Seq, &self))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Ports, A::Error> {
                while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
                Err(serde::de::Error::invalid_type(serde::de::Unexpected::Map, &self))
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<Ports, E> {
                let port = |t: &str| t.trim().parse::<u16>().map_err(|_| E::custom(bad_ports(s)));
                match s.split_once('-') {
                    Some((a, b)) => Ok(Ports(port(a)?, port(b)?)),
                    None => port(s).map(|p| Ports(p, p)),
                }
            }
        }
        d.deserialize_any(Visitor)
    }
}

fn bad_ports(written: &str) -> String {
    format!("`{written}` is not a port or a port range; write 1 to 65535, or a range such as 8000-8099")
}

/// An Ethernet address, written `02:00:00:00:00:01`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, PartialOrd, Ord)]
pub struct Mac(pub [u8; 6]);

/// An address with a prefix length (`10.0.0.0/24`); a bare address is a full-length prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
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
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0 to {max}"))?,
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
pub(super) const DURATION_FORMS: &str = "write a whole number with one unit: 500ms, 2s, 1m or 1h";

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

/// Milliseconds in one of each unit a duration may take.
const UNITS: [(&str, u64); 4] = [("ms", 1), ("s", 1000), ("m", 60_000), ("h", 3_600_000)];

/// Parses `500ms`, `2s`, `1m` or `1h`: a whole number and one unit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let unit_ms = UNITS.iter().find(|(name, _)| *name == unit).map(|(_, ms)| *ms);
    if let (Ok(n), Some(ms)) = (number.parse::<u64>(), unit_ms) {
        return n
            .checked_mul(ms)
            .map(Duration::from_millis)
            .ok_or_else(|| format!("`{s}` is too long; {DURATION_FORMS}"));
    }
    Err(duration_advice(s))
}

/// Why `s` is not a duration, and what to write instead when it is one written another way.
fn duration_advice(s: &str) -> String {
    let instead = |ms: u128| format_duration(Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX)));
    if s.starts_with('-') {
        return format!("`{s}` is negative; a duration is 0 or more: {DURATION_FORMS}");
    }
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return format!("`{s}` has no unit; write `{s}s` for seconds (or {s}ms, {s}m, {s}h)");
    }
    if let Some(ms) = fractional_ms(s) {
        return format!("`{s}` has a fraction; {DURATION_FORMS}: write `{}`", instead(ms));
    }
    if let Some(ms) = compound_ms(s) {
        return format!("`{s}` mixes units; a duration takes one unit: write `{}`", instead(ms));
    }
    if let Some(ms) = s.strip_suffix('d').and_then(|n| n.parse::<u128>().ok()).and_then(|d| d.checked_mul(86_400_000)) {
        return format!("`{s}`: the units are ms, s, m and h; write `{}`", instead(ms));
    }
    format!("`{s}` is not a duration; {DURATION_FORMS}")
}

/// `1.5s` in milliseconds, when it is a whole number of them.
fn fractional_ms(s: &str) -> Option<u128> {
    let (number, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.')?);
    let (whole, fraction) = number.split_once('.')?;
    let ms = UNITS.iter().find(|(name, _)| *name == unit)?.1 as u128;
    let scale = 10u128.checked_pow(u32::try_from(fraction.len()).ok()?)?;
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    let fraction: u128 = fraction.parse().ok()?;
    let total = (whole.checked_mul(scale)?.checked_add(fraction)?).checked_mul(ms)?;
    total.is_multiple_of(scale).then_some(total / scale)
}

/// `1m30s` in milliseconds: two or more whole numbers, each with a unit.
fn compound_ms(s: &str) -> Option<u128> {
    let (mut rest, mut total, mut parts) = (s, 0u128, 0);
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        let number: u128 = rest[..digits].parse().ok()?;
        // `ms` before `m`: the longest unit name that fits.
        let (name, ms) =
            UNITS.iter().filter(|(name, _)| rest[digits..].starts_with(name)).max_by_key(|(name, _)| name.len())?;
        total = total.checked_add(number.checked_mul(u128::from(*ms))?)?;
        rest = &rest[digits + name.len()..];
        parts += 1;
    }
    (parts > 1).then_some(total)
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
