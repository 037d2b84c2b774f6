//! `cargo xtask`: project automation that is not plain cargo.

mod bench;
mod bench_l7;
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
    /// Kernel-measured ns per packet of the XDP program under BPF_PROG_TEST_RUN (needs root).
    Bench(bench::Options),
    /// Requests/s and p99 through the L7 tier against nginx as a reverse proxy (needs root,
    /// wrk and nginx).
    BenchL7(bench_l7::Options),
    /// The lab: an edge in namespaces with xlb doing its job (needs root).
    Lab(lab::Options),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Bench(opts) => bench::run(&opts),
        Command::BenchL7(opts) => bench_l7::run(&opts),
        Command::Lab(opts) => lab::run(&opts),
    }
}
