//! `xlb explain`'s answer as text for people.

use std::fmt::Write as _;

use crate::apply::explain::Explanation;

/// The explanation, one step per line: packet, VIP, tables, backend, verdict, headers.
pub fn render(e: &Explanation) -> String {
    let mut out = String::new();
    let mut line = |label: &str, text: &str| {
        let _ = writeln!(out, "{label:<10}{text}");
    };
    line("packet", &e.packet);
    match &e.vip {
        Some(vip) => line("vip", &format!("{} ({}, {})", vip.name, vip.endpoint, vip.mode)),
        None => line("vip", "none: no VIP serves this address, port and protocol"),
    }
    if e.vip.is_some() {
        match &e.known {
            Some(k) => {
                let source = k.source.as_deref().map(|s| format!(", source {s}")).unwrap_or_default();
                line("flow", &format!("hit in the {}: {} ({}{source})", k.table, k.backend, k.state));
            }
            None => line("flow", "miss: no live entry in the connection or NAT table"),
        }
    }
    if let Some(m) = &e.maglev {
        let backend = m.backend.as_deref().unwrap_or("no live backend");
        line("maglev", &format!("entry {} of {} (hash of the {}) → {backend}", m.entry, m.size, m.hashed_on));
    }
    if let Some(backend) = &e.backend {
        line("backend", backend);
    }
    // "drop: dropped: …" says it twice.
    let outcome = e
        .counters
        .first()
        .map(|c| format!(": {}", c.meaning.strip_prefix("dropped: ").unwrap_or(&c.meaning)))
        .unwrap_or_default();
    line("action", &format!("{}{outcome}", e.action));
    for c in e.counters.iter().skip(1) {
        line("", &format!("also {}", c.meaning));
    }
    if let Some(records) = &e.records {
        line("records", records);
    }
    line("counters", &e.counters.iter().map(|c| c.counter.as_str()).collect::<Vec<_>>().join(", "));
    for (i, h) in e.headers_in.iter().enumerate() {
        line(if i == 0 { "in" } else { "" }, h);
    }
    for (i, h) in e.headers_out.iter().enumerate() {
        line(if i == 0 { "out" } else { "" }, h);
    }
    for note in &e.notes {
        line("note", note);
    }
    out
}
