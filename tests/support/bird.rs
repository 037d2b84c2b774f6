//! BIRD 2 as the router in BGP tests: a config file, `bird -f` inside a namespace, `birdc`
//! queries over its control socket; killed on drop (also when a test fails).

use std::{
    fmt::Write as _,
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use crate::netns::{Netns, Process, unique_name, wait_for};

/// One `protocol bgp` block: a session to one speaker.
#[derive(Debug, Clone)]
pub struct Neighbor {
    /// The protocol's name in BIRD (`birdc show protocols NAME`).
    pub name: String,
    /// BIRD's own address on the link.
    pub local: String,
    pub local_as: u32,
    /// The speaker's address.
    pub address: String,
    pub remote_as: u32,
    /// More statements for the block: `bfd on;`, `graceful restart on;`, `password "x";`.
    pub extra: String,
    /// Hold and keepalive timers, seconds (9 and 3 unless [`Neighbor::timers`] says otherwise).
    pub hold: u32,
    pub keepalive: u32,
}

impl Neighbor {
    pub fn new(name: &str, local: &str, address: &str, remote_as: u32) -> Self {
        Neighbor {
            name: name.to_owned(),
            local: local.to_owned(),
            local_as: 65000,
            address: address.to_owned(),
            remote_as,
            extra: String::new(),
            hold: 9,
            keepalive: 3,
        }
    }

    /// Hold time and keepalive interval, seconds.
    pub fn timers(mut self, hold: u32, keepalive: u32) -> Self {
        (self.hold, self.keepalive) = (hold, keepalive);
        self
    }

    pub fn with(mut self, statements: &str) -> Self {
        self.extra.push_str(statements);
        self.extra.push('\n');
        self
    }
}

/// A BIRD configuration: device and kernel protocols that install BGP routes (ECMP merged, up to
/// 16 paths) into the namespace's IPv4 and IPv6 tables, BFD when asked, one BGP protocol per
/// neighbor with short timers (connect delay 1 s; hold 9 s, keepalive 3 s unless the neighbor
/// says otherwise).
pub fn config(router_id: &str, neighbors: &[Neighbor], bfd: bool, log: &std::path::Path) -> String {
    let mut c = format!(
        "log \"{}\" all;\nrouter id {router_id};\nprotocol device {{ scan time 1; }}\n\
         protocol kernel k4 {{ ipv4 {{ export where source = RTS_BGP; }}; merge paths yes limit 16; }}\n\
         protocol kernel k6 {{ ipv6 {{ export where source = RTS_BGP; }}; merge paths yes limit 16; }}\n",
        log.display()
    );
    if bfd {
        c.push_str(
            "protocol bfd { interface \"*\" { min rx interval 100 ms; min tx interval 100 ms; multiplier 3; }; }\n",
        );
    }
    for n in neighbors {
        let family = if n.address.contains(':') { "ipv6" } else { "ipv4" };
        let _ = write!(
            c,
            "protocol bgp {} {{\n  local {} as {};\n  neighbor {} as {};\n  connect delay time 1;\n  \
             connect retry time 2;\n  error wait time 1, 2;\n  hold time {};\n  keepalive time {};\n  \
             {family} {{ import all; export none; }};\n{}}}\n",
            n.name, n.local, n.local_as, n.address, n.remote_as, n.hold, n.keepalive, n.extra
        );
    }
    c
}

/// A running BIRD.
#[derive(Debug)]
pub struct Bird {
    pub dir: PathBuf,
    pub socket: PathBuf,
    process: Process,
}

impl Bird {
    /// Writes `config` (from [`config`], logging to [`Bird::log_path`]) and starts BIRD in
    /// `ns`; returns once birdc answers (at most 5 s).
    pub fn start(ns: &Netns, dir: PathBuf, config: &str) -> Bird {
        std::fs::create_dir_all(&dir).expect("BIRD dir");
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, config).expect("write bird.conf");
        let socket = dir.join("bird.ctl");
        let mut cmd = ns.command("bird");
        cmd.arg("-f").arg("-c").arg(&conf).arg("-s").arg(&socket).arg("-P").arg(dir.join("bird.pid"));
        let process = Process::spawn(cmd, "bird");
        let bird = Bird { dir, socket, process };
        wait_for("birdc to answer", Duration::from_secs(5), || bird.try_birdc(&["show", "status"]));
        bird
    }

    /// A fresh directory for a BIRD's files under the system temp dir.
    pub fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(unique_name("bird"))
    }

    pub fn log_path(dir: &std::path::Path) -> PathBuf {
        dir.join("bird.log")
    }

    /// The log so far (for failure messages).
    pub fn log(&self) -> String {
        std::fs::read_to_string(Self::log_path(&self.dir)).unwrap_or_default()
    }

    fn try_birdc(&self, args: &[&str]) -> Option<String> {
        let out = Command::new("birdc").arg("-s").arg(&self.socket).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `birdc -s SOCKET ARGS...`; panics if birdc fails.
    pub fn birdc(&self, args: &[&str]) -> String {
        self.try_birdc(args).unwrap_or_else(|| panic!("birdc {} failed; BIRD log:\n{}", args.join(" "), self.log()))
    }

    /// `show protocols all NAME`.
    pub fn protocol(&self, name: &str) -> String {
        self.birdc(&["show", "protocols", "all", name])
    }

    /// The BGP state of protocol `name` ("Established", "Active", "Connect", ...).
    pub fn bgp_state(&self, name: &str) -> Option<String> {
        let text = self.protocol(name);
        text.lines().find_map(|l| l.trim().strip_prefix("BGP state:").map(|s| s.trim().to_owned()))
    }

    /// Waits until protocol `name` is Established.
    pub fn wait_established(&self, name: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if self.bgp_state(name).as_deref() == Some("Established") {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "BIRD protocol {name} not Established within {timeout:?}:\n{}\nlog:\n{}",
            self.protocol(name),
            self.log()
        );
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        // The process first (Process's own drop kills it), then its files.
        if let Ok(None) = self.process.child.try_wait() {
            let _ = self.process.child.kill();
            let _ = self.process.child.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
