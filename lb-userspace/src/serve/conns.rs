//! `xlb conns VIP`: a VIP's live flows as the agent found them in the connection table, and
//! their text for people.

use serde::{Deserialize, Serialize};

use crate::serve::human;

/// Flows `xlb conns` lists unless told otherwise, and the most it lists.
pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 10_000;

/// One flow of the VIP.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnEntry {
    /// The client's address and port (`[v6]:port` for IPv6).
    pub client: String,
    /// The backend's address (as in the config).
    pub backend: String,
    /// `confirmed`, `embryonic` (handshake not finished), `closed` (the client sent a FIN or a
    /// RST), or `nat`.
    pub state: String,
    /// NAT: the source address and port toward the backend (a pool's; the client's for DNAT).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nat_source: Option<String>,
    /// Since the flow's last packet (the table records last use, to 8 jiffies, not the start).
    pub idle_ms: u64,
}

/// A VIP's live flows: the totals, and the most recently active ones up to `limit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnsReport {
    pub vip: String,
    pub endpoint: String,
    pub mode: String,
    pub confirmed: u64,
    pub embryonic: u64,
    /// Entries whose client closed, until they idle out.
    #[serde(default)]
    pub closed: u64,
    /// NAT flows (nat VIPs: they live in the NAT tables instead).
    pub nat: u64,
    pub limit: u32,
    /// Most recently active first.
    pub flows: Vec<ConnEntry>,
}

impl ConnsReport {
    /// Live flows (what `flows` lists from).
    pub fn total(&self) -> u64 {
        self.confirmed + self.embryonic + self.closed + self.nat
    }

    /// Flows counted but not listed.
    pub fn not_shown(&self) -> u64 {
        self.total().saturating_sub(self.flows.len() as u64)
    }

    pub fn render(&self) -> String {
        let (vip, endpoint, mode) = (&self.vip, &self.endpoint, &self.mode);
        let mut out = if mode == "nat" {
            format!("{vip} {endpoint} ({mode}): {} NAT flows\n", self.nat)
        } else {
            let (confirmed, embryonic, closed) = (self.confirmed, self.embryonic, self.closed);
            format!(
                "{vip} {endpoint} ({mode}): {} connections ({confirmed} confirmed, {embryonic} embryonic, {closed} \
                 closed)\n",
                self.total()
            )
        };
        let nat = mode == "nat";
        if !self.flows.is_empty() {
            let source = if nat { "source at the backend" } else { "" };
            let header = format!("{:<48} {:<40} {:<10} {:<12} {source}", "client", "backend", "state", "last packet");
            out.push_str(header.trim_end());
            out.push('\n');
        }
        for f in &self.flows {
            let last = human::ago(f.idle_ms / 1000);
            let source = f.nat_source.as_deref().unwrap_or("");
            let line = format!("{:<48} {:<40} {:<10} {last:<12} {source}", f.client, f.backend, f.state);
            out.push_str(line.trim_end());
            out.push('\n');
        }
        let more = self.not_shown();
        if more > 0 {
            out.push_str(&format!("{more} more not shown (--limit, at most {MAX_LIMIT})\n"));
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(listed: usize, confirmed: u64, embryonic: u64) -> ConnsReport {
        ConnsReport {
            vip: "web".into(),
            endpoint: "192.0.2.1:80/tcp".into(),
            mode: "dsr-l2".into(),
            confirmed,
            embryonic,
            closed: 0,
            nat: 0,
            limit: 2,
            flows: (0..listed)
                .map(|i| ConnEntry {
                    client: format!("10.0.0.{i}:4000{i}"),
                    backend: "10.0.2.1".into(),
                    state: "confirmed".into(),
                    nat_source: None,
                    idle_ms: 3_400 + 60_000 * i as u64,
                })
                .collect(),
        }
    }

    #[test]
    fn the_listing_says_how_many_it_left_out() {
        let text = report(2, 5, 1).render();
        assert!(
            text.starts_with("web 192.0.2.1:80/tcp (dsr-l2): 6 connections (5 confirmed, 1 embryonic, 0 closed)\n"),
            "{text}"
        );
        assert!(text.contains("10.0.0.0:40000"), "{text}");
        assert!(text.contains("3s ago"), "{text}");
        assert!(text.contains("1m3s ago"), "{text}");
        assert!(text.ends_with("4 more not shown (--limit, at most 10000)\n"), "{text}");
        let mut nat = report(1, 0, 0);
        (nat.mode, nat.nat) = ("nat".into(), 7);
        nat.flows[0].state = "nat".into();
        nat.flows[0].nat_source = Some("198.51.100.1:30001".into());
        let text = nat.render();
        assert!(text.starts_with("web 192.0.2.1:80/tcp (nat): 7 NAT flows\n"), "{text}");
        assert!(text.contains("source at the backend") && text.contains("198.51.100.1:30001"), "{text}");
        assert!(text.ends_with("6 more not shown (--limit, at most 10000)\n"), "{text}");
        let all = report(3, 3, 0).render();
        assert!(!all.contains("more not shown"), "{all}");
        assert_eq!(all.lines().count(), 5, "{all}");
    }
}
