//! The kernel's jiffies, the clock the connection table stamps its entries with
//! (`bpf_jiffies64`). User space has no call for it: `/proc/timer_list` (root only, which the
//! agent is) prints it, and HZ — which the kernel does not publish either (`_SC_CLK_TCK` is
//! USER_HZ, always 100) — is measured from two readings against the monotonic clock.

use std::{
    io::{self, BufRead as _},
    time::{Duration, Instant},
};

const TIMER_LIST: &str = "/proc/timer_list";

/// The HZ values Linux is built with.
const KNOWN_HZ: [u32; 4] = [100, 250, 300, 1000];

/// How long apart calibration reads jiffies: at HZ 250 and 300, 25 and 30 ticks, far enough
/// apart that a tick of error on either side cannot swap them.
const CALIBRATION: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum JiffiesError {
    #[error("reading {TIMER_LIST}: {0}")]
    Read(#[from] io::Error),
    #[error("{TIMER_LIST} has no `jiffies:` line")]
    Missing,
}

/// The `jiffies: N` value of `/proc/timer_list`'s text (the first; every CPU's is the same).
pub fn parse_jiffies<'a>(mut lines: impl Iterator<Item = &'a str>) -> Option<u64> {
    lines.find_map(|line| line.trim_start().strip_prefix("jiffies:")?.trim().parse().ok())
}

/// The kernel's jiffies now. Reads `/proc/timer_list` only as far as the line (~100 lines in).
pub fn read_jiffies() -> Result<u64, JiffiesError> {
    let file = io::BufReader::new(std::fs::File::open(TIMER_LIST)?);
    for line in file.lines() {
        if let Some(jiffies) = parse_jiffies(std::iter::once(line?.as_str())) {
            return Ok(jiffies);
        }
    }
    Err(JiffiesError::Missing)
}

/// The known HZ closest to `ticks` counted over `elapsed`.
pub fn nearest_hz(ticks: u64, elapsed: Duration) -> u32 {
    let measured = ticks as f64 / elapsed.as_secs_f64().max(1e-9);
    KNOWN_HZ
        .into_iter()
        .min_by(|a, b| (f64::from(*a) - measured).abs().total_cmp(&(f64::from(*b) - measured).abs()))
        .unwrap_or(1000)
}

/// The jiffies clock with its rate, measured once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelClock {
    pub hz: u32,
}

impl KernelClock {
    /// Measures HZ: reads jiffies twice `CALIBRATION` apart (blocks that long).
    pub fn calibrate() -> Result<Self, JiffiesError> {
        let (first, start) = (read_jiffies()?, Instant::now());
        std::thread::sleep(CALIBRATION);
        let (second, end) = (read_jiffies()?, Instant::now());
        Ok(Self { hz: nearest_hz(second.saturating_sub(first), end - start) })
    }

    /// Jiffies now, in the connection table's form (the low 32 bits).
    pub fn now(&self) -> Result<u32, JiffiesError> {
        Ok(read_jiffies()? as u32)
    }

    /// `jiffies` as a duration at this clock's rate.
    pub fn duration(&self, jiffies: u32) -> Duration {
        Duration::from_millis(u64::from(jiffies) * 1000 / u64::from(self.hz.max(1)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_jiffies_line_is_found_among_the_timer_list() {
        let text = "Timer List Version: v0.9\n  .idle_jiffies   : 4305481899\n  .last_jiffies   : 4305482853\njiffies: 4305482917\njiffies: 1\n";
        assert_eq!(parse_jiffies(text.lines()), Some(4_305_482_917));
        assert_eq!(parse_jiffies("  .last_jiffies   : 5\nnothing\n".lines()), None);
        assert_eq!(parse_jiffies("jiffies: not-a-number\n".lines()), None);
    }

    #[test]
    fn hz_is_the_nearest_known_rate() {
        let tenth = Duration::from_millis(100);
        assert_eq!(nearest_hz(26, tenth), 250);
        assert_eq!(nearest_hz(29, tenth), 300);
        assert_eq!(nearest_hz(97, tenth), 1000);
        assert_eq!(nearest_hz(11, tenth), 100);
        assert_eq!(nearest_hz(0, Duration::ZERO), 100);
    }

    #[test]
    fn ages_convert_at_the_measured_rate() {
        assert_eq!(KernelClock { hz: 250 }.duration(750), Duration::from_secs(3));
        assert_eq!(KernelClock { hz: 1000 }.duration(1500), Duration::from_millis(1500));
    }

    /// On a machine where the agent runs (as root): the clock is readable and advances at a
    /// known rate.
    #[test]
    fn the_kernel_clock_reads_as_root() {
        if !nix_is_root() {
            assert!(std::env::var("CI").as_deref() != Ok("true"), "needs root under CI");
            return;
        }
        let clock = KernelClock::calibrate().expect("calibrating as root");
        assert!(KNOWN_HZ.contains(&clock.hz));
        let (a, b) = (clock.now().unwrap(), {
            std::thread::sleep(Duration::from_millis(50));
            clock.now().unwrap()
        });
        assert!(b.wrapping_sub(a) > 0 && b.wrapping_sub(a) < clock.hz, "{a} then {b}");
    }

    fn nix_is_root() -> bool {
        // SAFETY: geteuid has no preconditions and cannot fail.
        unsafe { libc::geteuid() == 0 }
    }
}
