//! Command line of `torchwire-bench`: one subcommand per tool (`load`, `raw`, `floor`, `chart`),
//! each tool's flags defined next to it. Parsing only; the tools live in their own modules.

use clap::{Parser, Subcommand};

use crate::chart::ChartArgs;
use crate::floor::FloorArgs;
use crate::load::BenchArgs;
use crate::raw::RawBenchArgs;

/// torchwire-bench: load generator, gRPC floor, raw forward timing and charts for torchwire.
#[derive(Debug, Parser)]
#[command(name = "torchwire-bench", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Load-test a running server (torchwire, the python-grpc peer or TorchServe): closed loop
    /// at a fixed concurrency or open loop at a fixed rate; report throughput and latency.
    Load(BenchArgs),
    /// Time a model's forward pass in-process through libtorch (the floor for `load`).
    Raw(RawBenchArgs),
    /// Serve torchwire.v1.Inference with constant answers and no model (the gRPC floor for `load`).
    Floor(FloorArgs),
    /// Draw throughput against concurrency from a results file into a PNG.
    Chart(ChartArgs),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_parses_with_its_old_flags() {
        let cli = Cli::try_parse_from(["torchwire-bench", "load", "--rpc", "sentiment", "--concurrency", "4"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Load(a)) if a.concurrency == 4));
        let cli = Cli::try_parse_from(["torchwire-bench", "raw", "--model", "m", "--batch", "1,8", "--json"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Raw(a)) if a.batch == vec![1, 8] && a.json));
        let cli = Cli::try_parse_from(["torchwire-bench", "floor", "--grpc-addr", "127.0.0.1:0"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Floor(_))));
        let cli = Cli::try_parse_from(["torchwire-bench", "chart", "--results", "r.json", "--out", "r.png"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Chart(_))));
        assert!(Cli::try_parse_from(["torchwire-bench", "bench"]).is_err());
    }
}
