//! The log filter from `XLB_LOG`, and the subscriber every `xlb` command logs through.
//!
//! A bare level above `info` (`XLB_LOG=debug`) turns up xlb's own lines only: aya and the other
//! libraries log at debug by the thousand (every relocation of the BPF object), which buries
//! xlb's. Naming targets (`XLB_LOG=xlb=debug,aya_obj=debug`) is taken as written.

use tracing_subscriber::{EnvFilter, filter::LevelFilter};

/// The variable the filter is read from.
pub const ENV: &str = "XLB_LOG";

/// The filter with nothing set.
const DEFAULT: &str = "info";

/// Whether [`init`] chose JSON lines (the L7 access log writes its own lines alike).
static JSON_LINES: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// The log is JSON lines (`--log-format json`).
pub fn json_lines() -> bool {
    JSON_LINES.load(std::sync::atomic::Ordering::Relaxed)
}

#[derive(Debug, thiserror::Error)]
#[error(
    "{ENV}={spec}: not a log filter ({reason}); logging at info. Give a level (`{ENV}=debug`: xlb's own debug lines) or targets (`{ENV}=xlb=debug,aya_obj=debug`)"
)]
pub struct LogFilterError {
    spec: String,
    reason: String,
}

/// The filter directives `spec` (the value of `XLB_LOG`) stands for: a bare level above
/// `info` applies to xlb's targets, the rest stay at `info`; anything else is kept as it is.
pub fn directives(spec: Option<&str>) -> String {
    let spec = spec.map(str::trim).unwrap_or_default();
    if spec.is_empty() {
        return DEFAULT.to_owned();
    }
    match spec.parse::<LevelFilter>() {
        Ok(level) if level > LevelFilter::INFO => format!("{DEFAULT},xlb={}", level.to_string().to_lowercase()),
        _ => spec.to_owned(),
    }
}

/// The filter for `spec` (the value of `XLB_LOG`).
pub fn filter(spec: Option<&str>) -> Result<EnvFilter, LogFilterError> {
    let directives = directives(spec);
    EnvFilter::try_new(&directives)
        .map_err(|e| LogFilterError { spec: spec.unwrap_or_default().to_owned(), reason: e.to_string() })
}

/// Logs to stderr, as JSON lines when `json`, filtered by `XLB_LOG` (an invalid one is said
/// once, at warn, and `info` used).
pub fn init(json: bool) {
    JSON_LINES.store(json, std::sync::atomic::Ordering::Relaxed);
    let spec = std::env::var(ENV).ok();
    let (filter, error) = match filter(spec.as_deref()) {
        Ok(filter) => (filter, None),
        Err(e) => (EnvFilter::new(DEFAULT), Some(e)),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(!json && std::io::IsTerminal::is_terminal(&std::io::stderr()));
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    if let Some(e) = error {
        tracing::warn!("{e}");
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::Write,
        sync::{Arc, Mutex},
    };

    use super::*;

    #[test]
    fn a_bare_level_above_info_is_xlb_s_own() {
        assert_eq!(directives(None), "info");
        assert_eq!(directives(Some("")), "info");
        assert_eq!(directives(Some("debug")), "info,xlb=debug");
        assert_eq!(directives(Some("TRACE")), "info,xlb=trace");
        assert_eq!(directives(Some("warn")), "warn");
        assert_eq!(directives(Some("info")), "info");
        assert_eq!(directives(Some("xlb=debug,aya_obj=debug")), "xlb=debug,aya_obj=debug");
        assert_eq!(directives(Some("debug,aya=trace")), "debug,aya=trace");
    }

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().map_err(|_| std::io::Error::other("poisoned"))?.extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What a subscriber filtered by `spec` writes of a debug line from xlb and one from aya.
    fn logged(spec: &str) -> String {
        let capture = Capture::default();
        let writer = capture.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_env_filter(filter(Some(spec)).unwrap())
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            tracing::debug!(target: "aya_obj::relocation", "relocating a map");
            tracing::debug!(target: "xlb::agent::control", "pass done");
            tracing::info!(target: "aya", "loaded");
        });
        let text = capture.0.lock().unwrap().clone();
        String::from_utf8(text).unwrap()
    }

    #[test]
    fn xlb_log_debug_shows_xlb_s_debug_lines_and_not_aya_s() {
        let text = logged("debug");
        assert!(text.contains("pass done"), "{text}");
        assert!(!text.contains("relocating"), "{text}");
        assert!(text.contains("loaded"), "other targets stay at info: {text}");

        let text = logged("xlb=debug,aya_obj=debug");
        assert!(text.contains("pass done") && text.contains("relocating"), "targets named are taken: {text}");
    }

    #[test]
    fn an_invalid_filter_is_explained() {
        let e = filter(Some("xlb=loud")).unwrap_err().to_string();
        assert!(e.starts_with("XLB_LOG=xlb=loud: not a log filter ("), "{e}");
        assert!(e.contains("XLB_LOG=debug"), "{e}");
    }
}
