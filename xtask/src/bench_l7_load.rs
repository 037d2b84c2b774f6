//! The L7 bench's load generators (wrk for HTTP/1.1, h2load for HTTP/2), what they print, and
//! the CPU time a proxy's processes spent, read from /proc.

use std::{
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use xlb_tests::netns::{Netns, Process};

/// One load run's results.
#[derive(Debug, Clone, Copy)]
pub struct Run {
    pub rps: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub errors: u64,
    /// Requests answered in the run.
    pub requests: u64,
    /// CPU seconds the proxy's processes used during the run.
    pub cpu_seconds: f64,
    /// What the lab lost during the run.
    pub lost: Lost,
}

/// The lab's own losses in a run, summed over its namespaces: frames a veth dropped (its peer's
/// 256-frame ring full: charged to the sending end, so each drop counts once) and TCP segments
/// sent again. A tail made of retransmission timeouts shows here, not in the proxy.
#[derive(Debug, Clone, Copy, Default)]
pub struct Lost {
    pub frames_dropped: u64,
    pub segments_retransmitted: u64,
}

impl Lost {
    /// The counters of `namespaces` now.
    pub fn read(namespaces: &[&Netns]) -> Lost {
        let mut lost = Lost::default();
        for ns in namespaces {
            // `ip netns exec` mounts the namespace's own /sys.
            let dropped = ns
                .command("sh")
                .args(["-c", "cat /sys/class/net/*/statistics/tx_dropped"])
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            lost.frames_dropped += dropped.split_whitespace().filter_map(|n| n.parse::<u64>().ok()).sum::<u64>();
            lost.segments_retransmitted += ns.net_counter("/proc/net/snmp", "Tcp:", "RetransSegs").unwrap_or(0);
        }
        lost
    }

    fn since(self, before: Lost) -> Lost {
        Lost {
            frames_dropped: self.frames_dropped.saturating_sub(before.frames_dropped),
            segments_retransmitted: self.segments_retransmitted.saturating_sub(before.segments_retransmitted),
        }
    }
}

impl Run {
    /// The proxy's CPU seconds per 10 000 requests.
    pub fn cpu_per_10k(&self) -> f64 {
        if self.requests == 0 { f64::NAN } else { self.cpu_seconds * 10_000.0 / self.requests as f64 }
    }
}

/// How a case loads the proxy.
#[derive(Debug, Clone, Copy)]
pub enum Tool {
    /// wrk over HTTP/1.1 keep-alive connections.
    Wrk,
    /// wrk with `Connection: close`: a new connection per request.
    WrkClose,
    /// h2load over TLS with ALPN h2, 10 streams at once per connection.
    H2load,
}

/// The bounds of one run.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub seconds: u64,
    pub connections: u32,
    pub threads: u32,
}

/// Runs `tool` at `url` from `client`, timing the CPU of `pids` (and their children) and
/// counting what the `lab` namespaces lost meanwhile.
pub fn run(
    client: &Netns,
    tool: Tool,
    load: Load,
    url: &str,
    pids: &[u32],
    lab: &[&Netns],
    scratch: &std::path::Path,
) -> anyhow::Result<Run> {
    let lost_before = Lost::read(lab);
    let before = cpu_seconds(pids);
    let mut cmd = client.command("timeout");
    cmd.arg((load.seconds + 30).to_string());
    let log = scratch.join("h2load.log");
    match tool {
        Tool::Wrk | Tool::WrkClose => {
            cmd.args(["wrk", &format!("-t{}", load.threads), &format!("-c{}", load.connections)])
                .args([&format!("-d{}s", load.seconds), "--latency"]);
            if matches!(tool, Tool::WrkClose) {
                cmd.args(["-H", "Connection: close"]);
            }
        }
        Tool::H2load => {
            let _ = std::fs::remove_file(&log);
            cmd.args(["h2load", "-t", &load.threads.to_string(), "-c", &load.connections.to_string(), "-m", "10"])
                .args(["-D", &load.seconds.to_string(), "--log-file"])
                .arg(&log);
        }
    }
    let out = cmd.arg(url).stderr(Stdio::piped()).output()?;
    let cpu = cpu_seconds(pids) - before;
    let lost = Lost::read(lab).since(lost_before);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        bail!("load on {url} failed: {text}{}", String::from_utf8_lossy(&out.stderr));
    }
    let run = match tool {
        Tool::Wrk | Tool::WrkClose => parse_wrk(&text),
        Tool::H2load => {
            let durations = std::fs::read_to_string(&log).with_context(|| format!("reading {}", log.display()))?;
            parse_h2load(&text, &durations)
        }
    };
    let mut run = run.with_context(|| format!("reading the load tool's output:\n{text}"))?;
    run.cpu_seconds = cpu;
    run.lost = lost;
    Ok(run)
}

/// Requests/sec, the 99% latency, the request and error counts from wrk's text.
fn parse_wrk(text: &str) -> Option<Run> {
    let rps = text.lines().find_map(|l| l.trim().strip_prefix("Requests/sec:"))?.trim().parse().ok()?;
    let percentile = |label: &str| -> Option<f64> {
        let value = text.lines().find_map(|l| l.trim().strip_prefix(label))?.trim();
        if let Some(us) = value.strip_suffix("us") {
            Some(us.parse::<f64>().ok()? / 1000.0)
        } else if let Some(ms) = value.strip_suffix("ms") {
            ms.parse().ok()
        } else {
            Some(value.strip_suffix('s')?.parse::<f64>().ok()? * 1000.0)
        }
    };
    let (p50_ms, p99_ms) = (percentile("50%")?, percentile("99%")?);
    // "  4000 requests in 2.00s, 1MB read"
    let requests = text.lines().find_map(|l| l.trim().split_once(" requests in ")?.0.trim().parse().ok())?;
    let mut errors = 0;
    for line in text.lines() {
        if let Some(rest) = line.trim().strip_prefix("Non-2xx or 3xx responses:") {
            errors += rest.trim().parse::<u64>().unwrap_or(0);
        }
        if let Some(rest) = line.trim().strip_prefix("Socket errors:") {
            errors += rest.split(',').filter_map(|p| p.split_whitespace().last()?.parse::<u64>().ok()).sum::<u64>();
        }
    }
    Some(Run { rps, p50_ms, p99_ms, errors, requests, cpu_seconds: 0.0, lost: Lost::default() })
}

/// Requests/sec, requests and errors from h2load's summary; the 99th percentile from its
/// per-request log (start µs, status, duration µs per line).
fn parse_h2load(text: &str, log: &str) -> Option<Run> {
    // "finished in 8.00s, 12345.67 req/s, 1.2MB/s"
    let rps = text.lines().find_map(|l| {
        l.trim().strip_prefix("finished in ")?.split(", ").nth(1)?.strip_suffix(" req/s")?.parse().ok()
    })?;
    // "requests: 100 total, 100 started, 100 done, 98 succeeded, 2 failed, 0 errored, 0 timeout"
    let counts = text.lines().find_map(|l| l.trim().strip_prefix("requests: "))?;
    let count =
        |what: &str| -> Option<u64> { counts.split(", ").find_map(|p| p.strip_suffix(what)?.trim().parse().ok()) };
    let requests = count(" succeeded")?;
    let errors = count(" failed")? + count(" errored")? + count(" timeout")?;
    let mut durations: Vec<u64> = log.lines().filter_map(|l| l.split_whitespace().nth(2)?.parse().ok()).collect();
    if durations.is_empty() {
        return None;
    }
    durations.sort_unstable();
    let at = |percent: usize| durations[(durations.len() * percent / 100).min(durations.len() - 1)] as f64 / 1000.0;
    Some(Run { rps, p50_ms: at(50), p99_ms: at(99), errors, requests, cpu_seconds: 0.0, lost: Lost::default() })
}

/// User + system CPU seconds of `pids` and their child processes (nginx's workers).
fn cpu_seconds(pids: &[u32]) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    let Ok(dir) = std::fs::read_dir("/proc") else { return 0.0 };
    for entry in dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { continue };
        // Fields after the command's closing parenthesis: state, ppid, ..., utime (14), stime (15).
        let Some(rest) = stat.rsplit_once(") ").map(|(_, r)| r) else { continue };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let ppid: u32 = fields.get(1).and_then(|f| f.parse().ok()).unwrap_or(0);
        if pids.contains(&pid) || pids.contains(&ppid) {
            let field = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            total += field(11) + field(12);
        }
    }
    total as f64 / ticks
}

/// An nginx master whose drop stops it with SIGTERM, so that it takes its workers along (the
/// SIGKILL of `Process`'s drop would leave them running without it).
pub struct Nginx(pub Process);

impl Nginx {
    /// Starts nginx in `ns` with `conf`; fails if it exits at start.
    pub fn start(ns: &Netns, conf: &std::path::Path, what: &str) -> anyhow::Result<Nginx> {
        let mut cmd = ns.command("nginx");
        cmd.arg("-c").arg(conf).args(["-g", "daemon off;"]).stdout(Stdio::null());
        let mut nginx = Nginx(Process::spawn(cmd, what));
        std::thread::sleep(Duration::from_millis(300));
        if let Some(status) = nginx.0.child.try_wait()? {
            bail!("{what} exited at start ({status}); see {}", conf.with_file_name("error.log").display());
        }
        Ok(nginx)
    }

    pub fn pid(&self) -> u32 {
        self.0.child.id()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        if !matches!(self.0.child.try_wait(), Ok(None)) {
            return;
        }
        // SAFETY: kill with our own child's pid (`ip netns exec` execs nginx) and a valid signal.
        unsafe { libc::kill(self.0.child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_wrk_output() {
        let text = "Running 2s test @ http://x/\n  2 threads and 8 connections\n  Latency Distribution\n     50%  300.00us\n     99%    2.50ms\n  4000 requests in 2.00s, 1MB read\n  Socket errors: connect 0, read 1, write 0, timeout 2\n  Non-2xx or 3xx responses: 3\nRequests/sec:   2000.50\nTransfer/sec:    100KB\n";
        let run = parse_wrk(text).unwrap();
        assert_eq!((run.rps, run.p50_ms, run.p99_ms, run.errors, run.requests), (2000.5, 0.3, 2.5, 6, 4000));
        let text = "     50%  1.00ms\n     99%  1.20s\n  7 requests in 1.00s, 1KB read\nRequests/sec: 1\n";
        assert_eq!(parse_wrk(text).unwrap().p99_ms, 1200.0);
        assert!(parse_wrk("nothing").is_none());
    }

    #[test]
    fn reads_h2load_output_and_log() {
        let text = "finished in 8.00s, 12345.67 req/s, 1.20MB/s\nrequests: 100 total, 100 started, 100 done, 97 succeeded, 2 failed, 1 errored, 0 timeout\n";
        let log: String = (1..=100).map(|i| format!("1700000000000\t200\t{}\n", i * 10)).collect();
        let run = parse_h2load(text, &log).unwrap();
        assert_eq!((run.rps, run.requests, run.errors), (12345.67, 97, 3));
        assert_eq!(run.p99_ms, 1.0, "the 100th of 100 sorted durations (10 µs steps)");
        assert_eq!(run.p50_ms, 0.51, "the 51st");
        assert!(parse_h2load(text, "").is_none(), "no durations, no p99");
    }
}
