//! `xlb`: the agent binary and its CLI.

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use xlb::{agent, config, serve::admin};

const DEFAULT_PIN_DIR: &str = "/sys/fs/bpf/xlb";

#[derive(Parser)]
#[command(name = "xlb", version, about = "XDP L4 load balancer")]
struct Cli {
    /// Log format.
    #[arg(long, value_enum, default_value_t = LogFormat::Human, global = true)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Load the data plane, fill it from the config, attach XDP and serve until SIGTERM.
    /// SIGHUP reloads the config; an invalid file keeps the old one serving.
    Run {
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
    },
    /// The running agent at a glance: its configuration state, BGP peers, counts of VIPs and
    /// backends, and the VIPs not fully serving. With --vips: every VIP and backend (weight,
    /// health, drain, traffic), like `ipvsadm -Ln`.
    Status {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// Every VIP and backend with its counters (large at thousands of VIPs).
        #[arg(long)]
        vips: bool,
    },
    /// Show what loading FILE into the running agent would change: VIPs and backends added,
    /// removed and reweighted, and per VIP the share of new flows Maglev would send elsewhere.
    Plan {
        file: PathBuf,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
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
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
    },
    /// Detach xlb's XDP program from an interface. A running agent is told first: it withdraws
    /// the VIPs served through the interface, waits `bgp.withdraw_grace`, and does not
    /// re-attach (until it restarts). Without a running agent, it just detaches.
    Detach {
        #[arg(long, short)]
        iface: String,
        #[arg(long, default_value = DEFAULT_PIN_DIR)]
        pin_dir: PathBuf,
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Also remove the pinned maps: the next agent starts with an empty connection table.
        #[arg(long)]
        forget_flows: bool,
    },
    /// Backend side of dsr-ipip: strip IPIP / IP6IP6 / IPv4-in-IPv6 addressed to this host and
    /// pass the inner packet up the stack (for hosts without the ipip modules). Runs until
    /// SIGTERM.
    Decap {
        #[arg(long, short)]
        iface: String,
        /// Outer destination to accept (repeatable); default: every non-loopback address of
        /// this host.
        #[arg(long = "address")]
        addresses: Vec<std::net::IpAddr>,
    },
    /// Validate a config file; exit non-zero with the reason if it is invalid.
    Check { file: PathBuf },
    /// Print the running agent's counters.
    Stats {
        #[arg(long, default_value = admin::DEFAULT_SOCKET)]
        admin_socket: PathBuf,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_format);
    match dispatch(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xlb: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Check { file } => {
            let config = config::load(&file)?;
            println!("{}: ok, {} VIPs", file.display(), config.vips.len());
            // Per-CPU maps hold a value for every possible CPU of this machine.
            let cpus = aya::util::nr_cpus().map_or(1, |n| n.get());
            let estimate = xlb::config::memory::memory_estimate(&config, cpus);
            println!("{estimate}");
            if let Some(warning) = estimate.warning(&config) {
                eprintln!("xlb: warning: {warning}");
            }
            Ok(())
        }
        Command::Run { config, iface, admin_socket, pin_dir, detach_on_exit, no_watch, metrics_listen, state_dir } => {
            runtime()?.block_on(agent::run(agent::RunOptions {
                config,
                iface: iface[0].clone(),
                other_ifaces: iface[1..].to_vec(),
                admin_socket,
                pin_dir,
                detach_on_exit,
                watch_config: !no_watch,
                metrics_listen,
                state_dir,
            }))
        }
        Command::Status { admin_socket, json, vips } => {
            let request = if vips { admin::Request::Status } else { admin::Request::Summary };
            match ask(&admin_socket, request)? {
                admin::Reply::Status(status) => show(json, &status, admin::Status::render),
                admin::Reply::Summary(summary) => show(json, &summary, xlb::serve::summary::Summary::render),
                reply => anyhow::bail!("the agent answered a status request with {reply:?}"),
            }
        }
        Command::Plan { file, admin_socket, json } => {
            // Checked here first: a file the agent would reject gets the same message, locally.
            config::load(&file)?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let request = admin::Request::Plan { path: file.display().to_string(), config: text };
            match ask(&admin_socket, request)? {
                admin::Reply::Plan(plan) => show(json, &plan, xlb::apply::plan::Plan::render),
                reply => anyhow::bail!("the agent answered a plan request with {reply:?}"),
            }
        }
        Command::Drain { vip, backend, undo, admin_socket } => {
            let request = match backend {
                None if vip == "node" => admin::Request::DrainNode { undo },
                None => anyhow::bail!(
                    "say which backend of `{vip}` to drain: xlb drain {vip} ADDRESS (or `xlb drain node`)"
                ),
                Some(backend) => admin::Request::Drain { vip, backend, undo },
            };
            match ask(&admin_socket, request)? {
                admin::Reply::Done(message) => {
                    println!("{message}");
                    Ok(())
                }
                reply => anyhow::bail!("the agent answered a drain request with {reply:?}"),
            }
        }
        Command::Detach { iface, pin_dir, admin_socket, forget_flows } => {
            let handed_over = tell_the_agent(&admin_socket, &iface)?;
            let dir = pin_dir.join(&iface);
            // Not under a running agent that did not hear of it: it would go on without XDP, or
            // re-create the pins. (One that answered has withdrawn and stopped watching; it holds
            // the lock.)
            let _lock = if dir.is_dir() && !handed_over {
                let owner = agent::instance_lock::Owner::this_process("xlb detach", None);
                Some(agent::instance_lock::InstanceLock::acquire([(iface.as_str(), dir.as_path())], &owner)?)
            } else {
                None
            };
            let mut detached = false;
            for link in agent::link_pins(&dir) {
                detached |= xlb::apply::dataplane::detach_pinned(&link)?;
            }
            println!("{iface}: {}", if detached { "XDP detached" } else { "no pinned xlb link" });
            if forget_flows && dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                println!("{iface}: removed the pinned maps under {}", dir.display());
            }
            Ok(())
        }
        Command::Decap { iface, addresses } => runtime()?.block_on(agent::decap(&iface, addresses)),
        Command::Stats { admin_socket, json } => match ask(&admin_socket, admin::Request::Stats)? {
            admin::Reply::Stats(snapshot) => show(json, &snapshot, xlb::serve::stats::Snapshot::render),
            reply => anyhow::bail!("the agent answered a stats request with {reply:?}"),
        },
    }
}

/// Tells a running agent that `iface` is being detached, so that it withdraws and does not
/// re-attach. Returns whether an agent answered; no agent listening is fine.
fn tell_the_agent(admin_socket: &std::path::Path, iface: &str) -> anyhow::Result<bool> {
    let request = admin::Request::Detach { iface: iface.to_owned() };
    match runtime()?.block_on(admin::request(admin_socket, request)) {
        Ok(admin::Reply::Done(message)) => {
            println!("{message}");
            Ok(true)
        }
        Ok(reply) => anyhow::bail!("the agent answered a detach request with {reply:?}"),
        Err(admin::AdminError::Io { source, .. })
            if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused) =>
        {
            Ok(false)
        }
        Err(e) => anyhow::bail!(
            "{e}\nthe agent must hear of the detach first, or it re-attaches: stop it (it keeps XDP attached on exit unless run with --detach-on-exit), then run `xlb detach` again"
        ),
    }
}

/// One request to the running agent.
fn ask(admin_socket: &std::path::Path, request: admin::Request) -> anyhow::Result<admin::Reply> {
    Ok(runtime()?.block_on(admin::request(admin_socket, request))?)
}

/// Prints `value` as one JSON line, or as `render` makes it for people.
fn show<T: serde::Serialize>(json: bool, value: &T, render: impl FnOnce(&T) -> String) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(value)?);
    } else {
        print!("{}", render(value));
    }
    Ok(())
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("XLB_LOG").unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Human => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}
