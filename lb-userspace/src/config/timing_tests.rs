//! Durations as written (one unit, a whole number), and the health-check timing defaults, which
//! follow what the operator wrote: a default never contradicts a written value.

use std::path::Path;
use std::time::Duration;

use super::{ConfigError, HealthCheck, format_duration, parse, parse_duration};

/// The VIP check that `body` (the lines of a `health_check:` block) makes.
fn vip_check(body: &str) -> Result<HealthCheck, ConfigError> {
    let text = format!(
        "vips:\n  - name: web\n    address: 192.0.2.10\n    port: 80\n    protocol: tcp\n    mode: dsr-l2\n    backends: [{{ address: 10.0.0.1 }}]\n    health_check:\n      type: tcp\n{body}"
    );
    let config = parse(Path::new("defaults.yaml"), &text)?;
    Ok(config.vips[0].health_check.clone().expect("a health check"))
}

fn timing(check: &HealthCheck) -> (Duration, Duration) {
    (check.interval, check.timeout)
}

const MS: fn(u64) -> Duration = Duration::from_millis;

#[test]
fn nothing_written_takes_both_defaults() {
    assert_eq!(timing(&vip_check("").unwrap()), (MS(2000), MS(1000)));
}

#[test]
fn a_written_interval_keeps_the_default_timeout_below_it() {
    // `interval: 1s` alone was refused: the 1s default timeout is not below it.
    for (interval, timeout) in [("1s", 500), ("100ms", 50), ("1500ms", 750), ("2s", 1000), ("1m", 1000)] {
        let check = vip_check(&format!("      interval: {interval}\n")).unwrap_or_else(|e| panic!("{interval}: {e}"));
        assert_eq!(check.timeout, MS(timeout), "interval {interval}");
        assert!(check.timeout < check.interval, "interval {interval}");
    }
}

#[test]
fn a_written_timeout_stretches_the_default_interval() {
    for (timeout, interval) in [("500ms", 2000), ("1s", 2000), ("3s", 6000), ("10m", 1_200_000)] {
        let check = vip_check(&format!("      timeout: {timeout}\n")).unwrap_or_else(|e| panic!("{timeout}: {e}"));
        assert_eq!(check.interval, MS(interval), "timeout {timeout}");
    }
    // No interval is long enough for a timeout of the longest interval: refused at the timeout.
    let err = vip_check("      timeout: 1h\n").unwrap_err().to_string();
    assert!(err.starts_with("defaults.yaml:10:16: vips[0].health_check.timeout: `1h`:"), "{err}");
}

#[test]
fn both_written_are_taken_as_written_or_refused() {
    assert_eq!(timing(&vip_check("      interval: 1s\n      timeout: 900ms\n").unwrap()), (MS(1000), MS(900)));
    let err = vip_check("      interval: 1s\n      timeout: 1s\n").unwrap_err().to_string();
    assert!(err.starts_with("defaults.yaml:11:16: vips[0].health_check.timeout: `1s`: must be above 0 and shorter than the interval (1s)"), "{err}");
}

#[test]
fn durations_parse_and_print() {
    assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
    assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
    assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
    assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
    // Each refusal quotes the text; the ones that are durations written otherwise say how to write them.
    for (bad, advice) in [
        ("", "is not a duration"),
        ("s", "is not a duration"),
        ("2 s", "is not a duration"),
        ("5us", "is not a duration"),
        ("2", "has no unit; write `2s`"),
        ("1.5s", "has a fraction; write a whole number with one unit: 500ms, 2s, 1m or 1h: write `1500ms`"),
        ("0.25m", "write `15s`"),
        ("-1s", "is negative"),
        ("1m30s", "mixes units; a duration takes one unit: write `90s`"),
        ("1h1ms", "write `3600001ms`"),
        ("1d", "the units are ms, s, m and h; write `24h`"),
        // Too many days to convert: said plainly, not a panic on overflow.
        ("9999999999999999999999999999999999d", "is not a duration"),
    ] {
        let message = parse_duration(bad).unwrap_err();
        assert!(message.starts_with(&format!("`{bad}`")) && message.contains(advice), "{bad}: {message}");
    }
    for text in ["0ms", "1ms", "1500ms", "2s", "90s", "1m", "90m", "1h"] {
        assert_eq!(format_duration(parse_duration(text).unwrap()), text);
    }
}
