//! `syn_cookies:` of a VIP: off, always, or above a rate of new TCP flows.

use super::Checker;
use crate::config::{ConfigError, Mode, Protocol, RawSynCookies, SynCookies};

/// Highest threshold: far above what one node's XDP program sees (its meter counts per 134 ms
/// window in 32 bits).
const MAX_ABOVE: u64 = 100_000_000;
const FORMS: &str = "`off`, `always`, or `{ above: N }` (cookies while more than N new TCP flows per second arrive)";

impl Checker<'_> {
    /// `field` is `vips[i].syn_cookies` of a VIP of `mode` and `protocol`, with a source pool
    /// if `pooled`.
    pub(in crate::config) fn check_syn_cookies(
        &self,
        field: &str,
        (mode, protocol, pooled): (Mode, Protocol, bool),
        raw: &RawSynCookies,
        at: &serde_saphyr::Location,
    ) -> Result<SynCookies, ConfigError> {
        let cookies = match raw {
            RawSynCookies::Word(word) => match word.as_str() {
                "off" | "false" => SynCookies::Off,
                "always" => SynCookies::Always,
                other => {
                    return Err(self.err(at, field.to_owned(), format!("`{other}` is not a setting; write {FORMS}")));
                }
            },
            RawSynCookies::Mapping { unknown: Some(key), .. } => {
                return Err(self.err(
                    at,
                    format!("{field}.{key}"),
                    "is not a setting of syn_cookies; the mapping takes `above` only (new TCP flows per second)",
                ));
            }
            RawSynCookies::Mapping { above: None, .. } => {
                return Err(self.err(
                    at,
                    format!("{field}.above"),
                    "is missing: new TCP flows per second above which SYNs are answered with cookies (e.g. 5000)",
                ));
            }
            RawSynCookies::Mapping { above: Some(above), .. } => match above.parse::<u64>() {
                Ok(rate) if (1..=MAX_ABOVE).contains(&rate) => SynCookies::Above(rate as u32),
                _ => {
                    return Err(self.err(
                        at,
                        format!("{field}.above"),
                        format!("`{above}` is not a rate; write new TCP flows per second, 1 to {MAX_ABOVE}"),
                    ));
                }
            },
        };
        if cookies == SynCookies::Off {
            return Ok(cookies);
        }
        let refusal = if mode == Mode::L7 {
            Some(
                "applies to mode: nat VIPs only: an l7 VIP's connections end at the proxy, whose kernel answers \
                 floods with SYN cookies of its own; remove it"
                    .to_owned(),
            )
        } else if mode != Mode::Nat {
            Some(format!(
                "applies to mode: nat VIPs only: a {} VIP's backends answer their own handshakes (with their \
                 kernels' SYN cookies); remove it",
                mode
            ))
        } else if protocol != Protocol::Tcp {
            Some("applies to TCP VIPs only (only TCP has a handshake to answer); remove it".to_owned())
        } else if !pooled {
            Some(
                "needs a source pool (`snat_pool`): a DNAT-only VIP's replies are routed by the client's own \
                 address, which the cookie handshake does not follow; add a pool or remove it"
                    .to_owned(),
            )
        } else {
            None
        };
        match refusal {
            Some(message) => Err(self.err(at, field.to_owned(), message)),
            None => Ok(cookies),
        }
    }
}
