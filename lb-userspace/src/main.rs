//! `xlb`: the agent binary and its CLI.

use std::{io::Write as _, process::ExitCode};

use anyhow::Context as _;
use clap::Parser as _;
use xlb::{
    agent,
    cli::{Cli, Command, LogFormat},
    config,
    serve::admin,
};

/// mimalloc instead of glibc's malloc: the L7 tier allocates per request and per connection
/// (tasks, hyper's and h2's buffers), and glibc spent up to 8 % of the h2 bench's CPU in its
/// bins (`_int_malloc`, `unlink_chunk`, `malloc_consolidate`).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let format = cli.log_format;
    xlb::logging::init(format == LogFormat::Json);
    match dispatch(cli.command, format) {
        Ok(()) => ExitCode::SUCCESS,
        // `xlb status | head`: the reader has what it wanted.
        Err(e) if e.is::<StdoutClosed>() => ExitCode::SUCCESS,
        Err(e) => {
            complain(format, Severity::Error, &describe(&e));
            ExitCode::FAILURE
        }
    }
}

/// `e` with its causes, each said once: xlb's errors mostly quote their cause already
/// (`admin socket PATH: No such file or directory`), and `{e:#}` would say it twice.
fn describe(e: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in e.chain().map(ToString::to_string) {
        if !text.contains(&cause) {
            if !text.is_empty() {
                text.push_str(": ");
            }
            text.push_str(&cause);
        }
    }
    text
}

/// How bad what [`complain`] says is.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Severity {
    Error,
    Warning,
}

/// Says `message` on stderr as `--log-format` asks: `xlb: …` for people, or a JSON log line.
/// Never fails: with stderr gone there is nobody to tell.
fn complain(format: LogFormat, severity: Severity, message: &str) {
    match (format, severity) {
        (LogFormat::Json, Severity::Error) => tracing::error!("{message}"),
        (LogFormat::Json, Severity::Warning) => tracing::warn!("{message}"),
        (LogFormat::Human, Severity::Error) => {
            let _ = writeln!(std::io::stderr(), "xlb: {message}");
        }
        (LogFormat::Human, Severity::Warning) => {
            let _ = writeln!(std::io::stderr(), "xlb: warning: {message}");
        }
    }
}

/// Standard output was closed under the CLI (`xlb status | head`): not an error.
#[derive(Debug, thiserror::Error)]
#[error("standard output closed")]
struct StdoutClosed;

/// Writes `text` to standard output. A closed pipe ends the command cleanly ([`StdoutClosed`]);
/// every output of the CLI goes through here, never through `print!` (which panics on it).
fn emit(text: &str) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(StdoutClosed.into()),
        Err(e) => Err(e).context("writing to standard output"),
    }
}

fn dispatch(command: Command, format: LogFormat) -> anyhow::Result<()> {
    match command {
        Command::Check { file } => {
            let config = config::load(&file)?;
            emit(&format!("{}: ok, {} VIPs\n", file.display(), config.vips.len()))?;
            // Per-CPU maps hold a value for every possible CPU of this machine.
            let cpus = aya::util::nr_cpus().map_or(1, |n| n.get());
            let estimate = xlb::config::memory::memory_estimate(&config, cpus);
            emit(&format!("{estimate}\n"))?;
            if let Some(warning) = estimate.warning(&config) {
                complain(format, Severity::Warning, &warning);
            }
            Ok(())
        }
        Command::Run {
            config,
            iface,
            admin_socket,
            pin_dir,
            detach_on_exit,
            no_watch,
            metrics_listen,
            state_dir,
            bpf_log,
        } => runtime()?.block_on(agent::run(agent::RunOptions {
            config,
            iface: iface[0].clone(),
            other_ifaces: iface[1..].to_vec(),
            admin_socket,
            pin_dir,
            detach_on_exit,
            watch_config: !no_watch,
            metrics_listen,
            state_dir,
            bpf_log,
        })),
        Command::Status { agent: socket, json, vips } => {
            let admin_socket = socket.path()?;
            let request = if vips { admin::Request::Status } else { admin::Request::Summary };
            match ask(&admin_socket, request)? {
                admin::Reply::Status(status) => show(json, &status, admin::Status::render),
                admin::Reply::Summary(summary) => show(json, &summary, xlb::serve::summary::Summary::render),
                reply => anyhow::bail!("the agent answered a status request with {reply:?}"),
            }
        }
        Command::Conns { vip, limit, agent: socket, json } => {
            match ask(&socket.path()?, admin::Request::Conns { vip, limit })? {
                admin::Reply::Conns(report) => show(json, &report, xlb::serve::conns::ConnsReport::render),
                reply => anyhow::bail!("the agent answered a conns request with {reply:?}"),
            }
        }
        Command::Plan { file, agent: socket, json } => {
            let admin_socket = socket.path()?;
            // Checked here first: a file the agent would reject gets the same message, locally.
            config::load(&file)?;
            let text = std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
            let request = admin::Request::Plan { path: file.display().to_string(), config: text };
            match ask(&admin_socket, request)? {
                admin::Reply::Plan(plan) => show(json, &plan, xlb::apply::plan::Plan::render),
                reply => anyhow::bail!("the agent answered a plan request with {reply:?}"),
            }
        }
        Command::Drain { vip, backend, undo, agent: socket } => {
            let admin_socket = socket.path()?;
            let request = match backend {
                None if vip == "node" => admin::Request::DrainNode { undo },
                None => anyhow::bail!(
                    "say which backend of `{vip}` to drain: xlb drain {vip} ADDRESS (or `xlb drain node`)"
                ),
                Some(backend) => admin::Request::Drain { vip, backend, undo },
            };
            match ask(&admin_socket, request)? {
                admin::Reply::Done(message) => emit(&format!("{message}\n")),
                reply => anyhow::bail!("the agent answered a drain request with {reply:?}"),
            }
        }
        Command::Weight { vip, backend, weight, reset, agent: socket } => {
            let admin_socket = socket.path()?;
            let request = admin::Request::Weight { vip, backend, weight: weight.filter(|_| !reset) };
            match ask(&admin_socket, request)? {
                admin::Reply::Done(message) => emit(&format!("{message}\n")),
                reply => anyhow::bail!("the agent answered a weight request with {reply:?}"),
            }
        }
        Command::Explain { protocol, client, vip, packet, json, agent: socket } => {
            let udp = protocol == xlb::cli::ExplainProtocol::Udp;
            let request = admin::Request::Explain(xlb::apply::explain::Probe { udp, client, vip, segment: packet });
            match ask(&socket.path()?, request)? {
                admin::Reply::Explain(explanation) => show(json, &explanation, xlb::serve::explain::render),
                reply => anyhow::bail!("the agent answered an explain request with {reply:?}"),
            }
        }
        Command::Detach { iface, pin_dir, agent: socket, forget_flows } => {
            let admin_socket = socket.path()?;
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
            emit(&format!("{iface}: {}\n", if detached { "XDP detached" } else { "no pinned xlb link" }))?;
            if forget_flows && dir.exists() {
                std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
                emit(&format!("{iface}: removed the pinned maps under {}\n", dir.display()))?;
            }
            Ok(())
        }
        Command::Decap { iface, addresses } => runtime()?.block_on(agent::decap(&iface, addresses)),
        Command::Stats { agent: socket, json } => match ask(&socket.path()?, admin::Request::Stats)? {
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
            emit(&format!("{message}\n"))?;
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
        let mut line = serde_json::to_string(value)?;
        line.push('\n');
        emit(&line)
    } else {
        emit(&render(value))
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}
