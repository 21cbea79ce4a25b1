//! Command line of `torchwire-bench`: one subcommand per tool (`load`, `raw`, `floor`, `chart`,
//! the model-version benchmarks `swap`, `canary`, `poll`, and the response cache's `cache`),
//! each tool's flags defined next to it. Parsing only; the tools live in their own modules.

use clap::{Parser, Subcommand};

use crate::cache::CacheArgs;
use crate::chart::ChartArgs;
use crate::floor::FloorArgs;
use crate::load::BenchArgs;
use crate::poll::PollArgs;
use crate::raw::RawBenchArgs;
use crate::swap::{CanaryArgs, SwapArgs};

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
    /// Publish a new model version under closed-loop load and report failed requests and
    /// latency before, during and after the swap (starts a server over a temp repository copy).
    Swap(SwapArgs),
    /// Split a model's default between versions 1 and 2 (a `canary` label) and count which
    /// version answers requests that each carry their own x-request-id.
    Canary(CanaryArgs),
    /// Time rescans (`Repository::scan`) of an unchanged temp repository of many models: CPU
    /// and wall time per poll.
    Poll(PollArgs),
    /// The response cache's targets: interleaved pairs (cache off, cache on) of fresh servers
    /// under a Zipf workload, a workload with no repeats, and a replica answering from Redis.
    Cache(CacheArgs),
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
        let cli = Cli::try_parse_from([
            "torchwire-bench",
            "swap",
            "--workload",
            "sentiment",
            "--server-arg=--max-batch-size=1",
        ]);
        assert!(
            matches!(cli.map(|c| c.command), Ok(Command::Swap(a)) if a.concurrency == 16 && a.server.server_args.len() == 1)
        );
        let cli = Cli::try_parse_from(["torchwire-bench", "canary", "--requests", "100"]);
        assert!(
            matches!(cli.map(|c| c.command), Ok(Command::Canary(a)) if a.requests == 100 && a.canary_percent == 10)
        );
        let cli = Cli::try_parse_from(["torchwire-bench", "poll", "--models", "3", "--json"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Poll(a)) if a.models == 3 && a.json));
        let cli = Cli::try_parse_from(["torchwire-bench", "cache", "--scenarios", "zipf,redis", "--pairs", "7"]);
        assert!(matches!(cli.map(|c| c.command), Ok(Command::Cache(a)) if a.pairs == 7 && a.scenarios.len() == 2));
        assert!(
            Cli::try_parse_from(["torchwire-bench", "swap", "--addr", "127.0.0.1:1"]).is_err(),
            "--addr needs --repo"
        );
        assert!(Cli::try_parse_from(["torchwire-bench", "bench"]).is_err());
    }
}
