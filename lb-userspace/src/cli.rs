//! The `xlb` command line: every subcommand and flag, with its help. A module of the library so
//! that `cargo xtask` can render the man page and shell completions from the same definition
//! the binary parses with.

use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

use crate::serve::admin;

/// xlb's version, as `xlb --version` says it.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Where `xlb run` pins maps and links, one subdirectory per interface.
pub const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";

#[derive(Debug, Parser)]
#[command(
    name = "xlb",
    version,
    about = "XDP L4 load balancer",
    long_about = "xlb balances VIP traffic at the NIC with XDP (direct server return or NAT), announces \
its VIPs over BGP and serves `mode: l7` VIPs with its own HTTP proxy. `xlb run` is the agent; the \
other commands validate configs or talk to a running agent over its admin socket.\n\n\
Logs go to stderr; XLB_LOG sets the filter (a level such as `debug` applies to xlb's own lines, \
targets such as `xlb=debug,aya_obj=debug` are taken as written)."
)]
pub struct Cli {
    /// Log format on stderr: `human` lines or one JSON object per line (errors and warnings of
    /// every command included).
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Lines for people.
    Human,
    /// One JSON object per line.
    Json,
}

/// The protocol of a flow `xlb explain` runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExplainProtocol {
    Tcp,
    Udp,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load the data plane, fill it from the config, attach XDP and serve until SIGTERM.
    /// SIGHUP reloads the config; an invalid file keeps the old one serving.
    Run {
        /// The YAML config file (see config/example.yaml).
        #[arg(long, short)]
        config: PathBuf,
        /// Interface to attach XDP to. Repeat it to run one data plane on several interfaces
        /// (NAT backends then name theirs with `interface:`); the first names the pin directory.
        #[arg(long, short, required = true)]
        iface: Vec<String>,
        /// Admin socket [default: `agent.admin_socket` from the config, else /run/xlb/admin.sock].
        #[arg(long)]
        admin_socket: Option<PathBuf>,
        /// bpffs directory for the pinned maps and link (one subdirectory per interface).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        /// Detach XDP when the agent exits on SIGTERM/SIGINT. Without it XDP keeps forwarding
        /// and the next `xlb run` adopts the pinned maps (connection table included).
        #[arg(long)]
        detach_on_exit: bool,
        /// Reload only on SIGHUP, not when the config file changes.
        #[arg(long)]
        no_watch: bool,
        /// Serve Prometheus metrics at http://ADDR/metrics (e.g. 127.0.0.1:9842) [default:
        /// `agent.metrics_listen` from the config].
        #[arg(long)]
        metrics_listen: Option<std::net::SocketAddr>,
        /// Directory of the state file, where drains survive restarts [default:
        /// `agent.state_dir` from the config, else /var/lib/xlb/IFACE].
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Log drops from the XDP program (reason and packet, at most 10 a second per CPU) under
        /// the target `xlb::bpf` [default: `node.bpf_log` from the config, else off].
        #[arg(long)]
        bpf_log: bool,
    },
    /// The running agent at a glance: its configuration state, BGP peers, counts of VIPs and
    /// backends, and the VIPs not fully serving. With --vips: every VIP and backend (weight,
    /// health, drain, traffic, live connections), like `ipvsadm -Ln`.
    Status {
        #[command(flatten)]
        agent: AgentSocket,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every VIP and backend with its counters (large at thousands of VIPs).
        #[arg(long)]
        vips: bool,
    },
    /// The live flows of a VIP from the connection table: client, backend, state (confirmed, or
    /// embryonic while the handshake is unfinished) and when its last packet passed, most
    /// recently active first, with the totals. For NAT VIPs, from the NAT tables, with each
    /// flow's source address and port at the backend.
    Conns {
        /// VIP name (as in the config).
        vip: String,
        /// List at most N flows (the totals count them all).
        #[arg(long, default_value_t = crate::serve::conns::DEFAULT_LIMIT,
              value_parser = clap::value_parser!(u32).range(0..=i64::from(crate::serve::conns::MAX_LIMIT)))]
        limit: u32,
        #[command(flatten)]
        agent: AgentSocket,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Show what loading FILE into the running agent would change: VIPs and backends added,
    /// removed and reweighted, and per VIP the share of new flows Maglev would send elsewhere.
    Plan {
        /// The config file to compare with the running one (it is checked first).
        file: PathBuf,
        #[command(flatten)]
        agent: AgentSocket,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
    /// Stop sending new flows of VIP to BACKEND; its established flows finish there. `xlb drain
    /// node` withdraws every VIP from BGP instead (the routers send new flows to other nodes).
    Drain {
        /// VIP name (as in the config), or `node`.
        vip: String,
        /// Backend address (as in the config); none for `node`.
        backend: Option<String>,
        /// Take new flows again.
        #[arg(long)]
        undo: bool,
        #[command(flatten)]
        agent: AgentSocket,
    },
    /// Give BACKEND of VIP the runtime weight N in place of the config's (kept across restarts
    /// until --reset), as `ipvsadm -e -w` does. Weight 0 takes no new flows, like `xlb drain`.
    Weight {
        /// VIP name (as in the config).
        vip: String,
        /// Backend address (as in the config).
        backend: String,
        /// The new weight (0 up to the highest a config allows); none with --reset.
        #[arg(required_unless_present = "reset", conflicts_with = "reset")]
        weight: Option<u32>,
        /// Return to the weight in the config file.
        #[arg(long)]
        reset: bool,
        #[command(flatten)]
        agent: AgentSocket,
    },
    /// Run one packet of a flow through the live XDP program with the live maps and tell what
    /// happened: the VIP, connection-table hit or miss, the Maglev entry, the backend, the
    /// action and the rewritten headers. Nothing live changes: the run uses private copies of
    /// the connection and NAT tables and counters.
    Explain {
        /// The flow's protocol.
        #[arg(value_enum)]
        protocol: ExplainProtocol,
        /// The client's address and port (IPv6 in brackets: `[2001:db8::7]:40000`).
        client: std::net::SocketAddr,
        /// The VIP's address and port.
        vip: std::net::SocketAddr,
        /// Which TCP packet to run; by default the one the flow sends next (ACK when the live
        /// tables hold the flow, else SYN).
        #[arg(long, value_enum)]
        packet: Option<crate::apply::explain::Segment>,
        /// Print JSON instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        agent: AgentSocket,
    },
    /// Detach xlb's XDP program from an interface. A running agent is told first: it withdraws
    /// the VIPs served through the interface, waits `bgp.withdraw_grace`, and does not
    /// re-attach (until it restarts). Without a running agent, it just detaches.
    Detach {
        /// The interface to take xlb off.
        #[arg(long, short)]
        iface: String,
        /// bpffs directory the agent pinned under (as given to `xlb run`).
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[command(flatten)]
        agent: AgentSocket,
        /// Also remove the pinned maps: the next agent starts with an empty connection table.
        #[arg(long)]
        forget_flows: bool,
    },
    /// Backend side of dsr-ipip: strip IPIP / IP6IP6 / IPv4-in-IPv6 addressed to this host and
    /// pass the inner packet up the stack (for hosts without the ipip modules). Runs until
    /// SIGTERM.
    Decap {
        /// The backend's interface the tunnelled packets arrive on.
        #[arg(long, short)]
        iface: String,
        /// Outer destination to accept (repeatable); default: every non-loopback address of
        /// this host.
        #[arg(long = "address")]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Validate a config file; exit non-zero with the reason if it is invalid.
    Check {
        /// The YAML config file.
        file: PathBuf,
    },
    /// Print the running agent's counters.
    Stats {
        #[command(flatten)]
        agent: AgentSocket,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

/// Which running agent a command talks to: the admin socket as the agent chose it.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentSocket {
    /// The running agent's admin socket [default: `agent.admin_socket` of --config, else
    /// /run/xlb/admin.sock].
    #[arg(long, value_name = "PATH")]
    pub admin_socket: Option<PathBuf>,
    /// The running agent's config file: its `agent.admin_socket` is the socket to use (as
    /// `xlb run --config` chose it).
    #[arg(long = "config", short = 'c', value_name = "FILE")]
    pub agent_config: Option<PathBuf>,
}

impl AgentSocket {
    /// The socket the agent listens on, found the way `xlb run` chose it: --admin-socket, else
    /// `agent.admin_socket` of --config, else the well-known path.
    pub fn path(&self) -> Result<PathBuf, crate::config::ConfigError> {
        if let Some(path) = &self.admin_socket {
            return Ok(path.clone());
        }
        let from_config = match &self.agent_config {
            Some(file) => crate::config::load(file)?.agent.admin_socket,
            None => None,
        };
        Ok(from_config.unwrap_or_else(|| PathBuf::from(admin::DEFAULT_SOCKET)))
    }
}

/// The clap command tree (for the man page, completions and the tests).
pub fn command() -> clap::Command {
    <Cli as clap::CommandFactory>::command()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every subcommand and every argument of `cmd` and below without help, by path.
    fn without_help(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
        for arg in cmd.get_arguments() {
            // clap's own --help and --version have theirs.
            if matches!(arg.get_id().as_str(), "help" | "version") {
                continue;
            }
            if arg.get_help().is_none() && arg.get_long_help().is_none() {
                missing.push(format!("{path} {}", arg.get_id()));
            }
        }
        for sub in cmd.get_subcommands() {
            let sub_path = format!("{path} {}", sub.get_name());
            if sub.get_name() != "help" && sub.get_about().is_none() && sub.get_long_about().is_none() {
                missing.push(sub_path.clone());
            }
            without_help(sub, &sub_path, missing);
        }
    }

    #[test]
    fn every_flag_and_subcommand_has_help() {
        let mut cmd = command();
        cmd.build();
        cmd.clone().debug_assert();
        let mut missing = Vec::new();
        without_help(&cmd, "xlb", &mut missing);
        assert!(missing.is_empty(), "without help text: {missing:?}");
        // The walk does reach every level.
        let run = cmd.find_subcommand("run").unwrap();
        assert!(run.get_arguments().any(|a| a.get_id() == "config" && a.get_help().is_some()));
        assert!(cmd.get_subcommands().count() >= 8);
    }

    #[test]
    fn the_cli_finds_the_socket_the_agent_chose() {
        let dir = std::env::temp_dir().join(format!("xlb-cli-socket-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let with = dir.join("with.yaml");
        std::fs::write(&with, "agent:\n  admin_socket: /run/xlb/eth1/admin.sock\n").unwrap();
        let without = dir.join("without.yaml");
        std::fs::write(&without, "vips: []\n").unwrap();
        let socket = |args: &[&str]| -> Result<PathBuf, String> {
            let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
            match cli.command {
                Command::Status { agent, .. } => agent.path().map_err(|e| e.to_string()),
                other => panic!("{other:?}"),
            }
        };
        let (with, without) = (with.to_str().unwrap(), without.to_str().unwrap());
        assert_eq!(socket(&["xlb", "status"]).unwrap(), PathBuf::from(admin::DEFAULT_SOCKET));
        assert_eq!(socket(&["xlb", "status", "--config", with]).unwrap(), PathBuf::from("/run/xlb/eth1/admin.sock"));
        assert_eq!(socket(&["xlb", "status", "-c", without]).unwrap(), PathBuf::from(admin::DEFAULT_SOCKET));
        assert_eq!(
            socket(&["xlb", "status", "-c", with, "--admin-socket", "/tmp/x.sock"]).unwrap(),
            PathBuf::from("/tmp/x.sock")
        );
        let missing = socket(&["xlb", "status", "-c", "/nonexistent/xlb.yaml"]).unwrap_err();
        assert!(missing.contains("/nonexistent/xlb.yaml") && missing.contains("cannot read"), "{missing}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
