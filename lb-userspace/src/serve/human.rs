//! Text for people: relative ages instead of epoch seconds, and long lists cut to a few names.

use std::fmt::Display;

/// Names a log line or status line lists at most; the rest are counted.
pub const NAMES_LISTED: usize = 5;

/// `secs` as a span in its largest two units: `12s`, `4m7s`, `3h4m`, `2d5h`.
pub fn span(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86_400, secs / 3_600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s}s"),
        (0, _, _) => format!("{h}h{m}m"),
        _ => format!("{d}d{h}h"),
    }
}

/// `secs` as an age: `12s ago`, `4m7s ago`, `3h4m ago`, `2d5h ago`.
pub fn ago(secs: u64) -> String {
    format!("{} ago", span(secs))
}

/// Seconds since the Unix epoch, now (0 if the clock is before it).
pub fn now_epoch() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

/// The age of an instant given in seconds since the Unix epoch, as of `now` (also epoch
/// seconds). An instant after `now` (the clocks of agent and CLI differ) is `just now`.
pub fn age_of(at: u64, now: u64) -> String {
    match now.checked_sub(at) {
        Some(secs) => ago(secs),
        None => "just now".to_owned(),
    }
}

/// At most `max` of `items`, comma-separated, then `and N more`; `none` when empty.
pub fn brief_list<T: Display>(items: &[T], max: usize) -> String {
    if items.is_empty() {
        return "none".to_owned();
    }
    let listed: Vec<String> = items.iter().take(max).map(ToString::to_string).collect();
    let mut out = listed.join(", ");
    if items.len() > max {
        out.push_str(&format!(" and {} more", items.len() - max));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_the_largest_two_units() {
        assert_eq!(ago(0), "0s ago");
        assert_eq!(ago(12), "12s ago");
        assert_eq!(ago(60), "1m0s ago");
        assert_eq!(ago(247), "4m7s ago");
        assert_eq!(ago(3 * 3600 + 4 * 60 + 59), "3h4m ago");
        assert_eq!(ago(2 * 86_400 + 5 * 3600 + 7), "2d5h ago");
        assert_eq!(age_of(100, 112), "12s ago");
        assert_eq!(age_of(200, 100), "just now");
        assert_eq!(span(3 * 3600 + 4 * 60), "3h4m");
    }

    #[test]
    fn long_lists_are_cut_and_counted() {
        assert_eq!(brief_list::<String>(&[], 5), "none");
        assert_eq!(brief_list(&["a", "b"], 5), "a, b");
        let many: Vec<String> = (0..1000).map(|i| format!("vip{i}")).collect();
        assert_eq!(brief_list(&many, 3), "vip0, vip1, vip2 and 997 more");
        assert_eq!(brief_list(&many[..3], 3), "vip0, vip1, vip2");
    }
}
