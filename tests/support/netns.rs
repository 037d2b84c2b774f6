//! Network namespaces, veth pairs and agent processes that are torn down on drop — also when a
//! test fails and unwinds.

use std::{
    fs::File,
    os::fd::AsRawFd,
    path::PathBuf,
    process::{Child, Command, Output, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

/// A name unique to this process and call: `xlbt-<role>-<pid>-<n>` (namespaces from an earlier
/// crashed run never collide with this one).
pub fn unique_name(role: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!("xlbt-{role}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs a command and panics with its output if it fails.
pub fn sh(program: &str, args: &[&str]) -> Output {
    let out = Command::new(program).args(args).output().unwrap_or_else(|e| panic!("spawning {program}: {e}"));
    assert!(
        out.status.success(),
        "{program} {} failed: {}\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(role: &str) -> Self {
        let name = unique_name(role);
        sh("ip", &["netns", "add", &name]);
        let ns = Self { name };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    /// `ip -n <ns> ...`
    pub fn ip(&self, args: &[&str]) -> Output {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        sh("ip", &all)
    }

    /// `sysctl -w` each `key=value` inside the namespace.
    pub fn sysctl(&self, settings: &[&str]) {
        for setting in settings {
            sh("ip", &["netns", "exec", &self.name, "sysctl", "-qw", setting]);
        }
    }

    /// A command to run inside the namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name, program]);
        cmd
    }

    /// Counter `name` of a `/proc/net/snmp`-style file (`/proc/net/netstat` too) as this
    /// namespace sees it: the value under `name` on the `prefix` lines (`Tcp:`, `TcpExt:`).
    /// None when the file cannot be read or has no such counter.
    pub fn net_counter(&self, file: &str, prefix: &str, name: &str) -> Option<u64> {
        let out = self.command("cat").arg(file).output().ok()?;
        counter_in(&String::from_utf8_lossy(&out.stdout), prefix, name)
    }

    /// A command that enters only this network namespace (setns before exec) and keeps the
    /// host's mounts — unlike `ip netns exec`, which remounts /sys and so hides /sys/fs/bpf,
    /// where the agent pins its data plane.
    pub fn command_keep_mounts(&self, program: &str) -> Command {
        use std::os::unix::process::CommandExt as _;
        let path = format!("/run/netns/{}", self.name);
        let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
        let mut cmd = Command::new(program);
        // SAFETY: the closure runs between fork and exec and only calls setns, which is
        // async-signal-safe; `ns` stays open (moved into the closure) until then.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd
    }

    /// Runs `f` on a thread that has entered this namespace: sockets it opens live there.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> std::thread::JoinHandle<T> {
        let path = format!("/run/netns/{}", self.name);
        std::thread::spawn(move || {
            let ns = File::open(&path).unwrap_or_else(|e| panic!("open {path}: {e}"));
            // SAFETY: `ns` is an open namespace file descriptor; setns only changes this
            // thread's network namespace.
            let rc = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns({path}): {}", std::io::Error::last_os_error());
            f()
        })
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also removes the veth ends inside it.
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}

/// Joins `a` and `b` with a veth pair named `a_if` / `b_if`.
pub fn veth(a: &Netns, a_if: &str, b: &Netns, b_if: &str) {
    a.ip(&["link", "add", a_if, "type", "veth", "peer", "name", b_if, "netns", &b.name]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

/// A value of `/proc/net/snmp`-style text: per prefix, a line of names, then a line of values.
fn counter_in(text: &str, prefix: &str, name: &str) -> Option<u64> {
    let mut lines = text.lines().filter(|l| l.starts_with(prefix));
    let (names, values) = (lines.next()?, lines.next()?);
    let at = names.split_whitespace().position(|n| n == name)?;
    values.split_whitespace().nth(at)?.parse().ok()
}

/// Path of the `xlb` binary built next to this test binary (`cargo build` puts it in
/// target/<profile>/), or `$XLB_BIN`.
pub fn xlb_bin() -> PathBuf {
    if let Some(path) = std::env::var_os("XLB_BIN") {
        return path.into();
    }
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).expect("test binary lives in target/<profile>/deps");
    let bin = profile_dir.join("xlb");
    assert!(
        bin.exists(),
        "{} not found: run `cargo build` first (scripts/test.sh does), or set XLB_BIN",
        bin.display()
    );
    bin
}

/// A child process killed (SIGKILL) on drop unless it already exited.
#[derive(Debug)]
pub struct Process {
    pub child: Child,
    pub what: String,
}

impl Process {
    pub fn spawn(mut cmd: Command, what: &str) -> Self {
        let child = cmd.stdin(Stdio::null()).spawn().unwrap_or_else(|e| panic!("spawning {what}: {e}"));
        Self { child, what: what.to_owned() }
    }

    /// Sends `signal` and waits up to `timeout` for the exit status.
    pub fn signal_and_wait(&mut self, signal: i32, timeout: Duration) -> std::process::ExitStatus {
        // Processes run under `ip netns exec` (which execs them) or enter the namespace before
        // exec: either way the pid is the process's own.
        // SAFETY: kill with a valid pid of our own child and a valid signal number.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(Instant::now() < deadline, "{} did not exit within {timeout:?} of signal {signal}", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Polls `f` every 50 ms until it returns `Some`, for at most `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A self-signed certificate and key (ECDSA P-256, PEM, one day) for `name`, made by openssl in
/// `dir` as `cert.pem` and `key.pem`.
pub fn self_signed_certificate(dir: &std::path::Path, name: &str) -> (PathBuf, PathBuf) {
    let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
    let out = Command::new("openssl")
        .args(["req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1"])
        .args(["-subj", &format!("/CN={name}"), "-addext", &format!("subjectAltName=DNS:{name}"), "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .unwrap_or_else(|e| panic!("spawning openssl: {e}"));
    assert!(out.status.success(), "openssl req: {}", String::from_utf8_lossy(&out.stderr));
    (cert, key)
}

#[cfg(test)]
mod tests {
    use super::counter_in;

    #[test]
    fn reads_a_counter_of_snmp_style_text() {
        let snmp = "Ip: Forwarding DefaultTTL\nIp: 1 64\nTcp: RtoAlgorithm RetransSegs InErrs\nTcp: 1 4321 7\nUdp: InDatagrams\nUdp: 9\n";
        assert_eq!(counter_in(snmp, "Tcp:", "RetransSegs"), Some(4321));
        assert_eq!(counter_in(snmp, "Tcp:", "InErrs"), Some(7));
        assert_eq!(counter_in(snmp, "Udp:", "InDatagrams"), Some(9));
        assert_eq!(counter_in(snmp, "Tcp:", "OutRsts"), None);
        assert_eq!(counter_in("Tcp: RetransSegs\n", "Tcp:", "RetransSegs"), None);
    }
}
