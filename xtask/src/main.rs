//! `cargo xtask`: project automation that is not plain cargo.

mod bench;
mod bench_control;
mod bench_flows;
mod bench_l7;
mod bench_l7_load;
mod bench_live;
mod bench_live_chart;
mod bench_packets;
mod deb;
mod lab;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Kernel-measured ns per packet of the XDP program under BPF_PROG_TEST_RUN (needs root);
    /// `bench control-plane`: the agent's start, reloads, health checks and BGP with many VIPs.
    Bench(BenchArgs),
    /// Requests/s and p99 through the L7 tier against nginx as a reverse proxy (needs root,
    /// wrk and nginx).
    BenchL7(bench_l7::Options),
    /// The lab: an edge in namespaces with xlb doing its job (needs root).
    Lab(lab::Options),
    /// A Debian package (target/deb/xlb_VERSION_ARCH.deb): the release binary, the systemd unit,
    /// man pages, shell completions, docs (dpkg-deb from a staged tree).
    Deb(deb::DebOptions),
    /// The man pages and shell completions alone (target/docs).
    Docs(deb::DocsOptions),
}

#[derive(clap::Args)]
#[command(args_conflicts_with_subcommands = true)]
struct BenchArgs {
    #[command(subcommand)]
    target: Option<BenchTarget>,
    #[command(flatten)]
    packet: bench::Options,
}

#[derive(Subcommand)]
enum BenchTarget {
    /// The agent with many VIPs in namespaces: time to start and to apply reloads, how soon a dead
    /// backend stops getting new flows, status latency and BGP keepalives meanwhile, memory
    /// (needs root and BIRD).
    ControlPlane(bench_control::Options),
    /// The peer benchmark on live frames: xlb (dsr-l2, dsr-ipip, nat), nftables DNAT and plain
    /// routing in one topology; LB CPU ns per forwarded packet and Mpps, for 1 flow, 64 Ki flows
    /// and a new flow per packet (needs root and nft).
    Live(bench_live::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(BenchArgs { target: Some(BenchTarget::ControlPlane(opts)), .. }) => bench_control::run(&opts),
        Command::Bench(BenchArgs { target: Some(BenchTarget::Live(opts)), .. }) => bench_live::run(&opts),
        Command::Bench(BenchArgs { target: None, packet }) => bench::run(&packet),
        Command::BenchL7(opts) => bench_l7::run(&opts),
        Command::Lab(opts) => lab::run(&opts),
        Command::Deb(opts) => deb::deb(&opts),
        Command::Docs(opts) => deb::docs(&opts),
    }
}
