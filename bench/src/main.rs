//! The `torchwire-bench` binary: parse the command line, then run one benchmark tool.

use clap::Parser;
use torchwire::config::LogFormat;
use torchwire_bench::cli::{Cli, Command};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        // Blocking by design: the forward pass runs on this thread, outside any runtime.
        Command::Raw(args) => torchwire_bench::raw::run_raw(&args),
        Command::Chart(args) => torchwire_bench::chart::run_chart(&args),
        Command::Load(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime()?.block_on(torchwire_bench::load::run(args))
        }
        // Blocking by design: the scan runs on this thread, whose CPU time is what is measured.
        Command::Poll(args) => torchwire_bench::poll::run_poll(&args),
        Command::Swap(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime()?.block_on(torchwire_bench::swap::run_swap(args))
        }
        Command::Canary(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime()?.block_on(torchwire_bench::swap::run_canary(args))
        }
        Command::Cache(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime()?.block_on(torchwire_bench::cache::run(args))
        }
        Command::Floor(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime()?.block_on(torchwire_bench::floor::run_floor(args))
        }
    }
}

/// As many async workers as cores this process may use (affinity and cgroup quota included):
/// the suite pins the load generator and the floor to one core each, and tokio's default would
/// count every online core.
fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()
}
