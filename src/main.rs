//! The `torchwire` binary: parse the command line, then serve or run a client command.

use clap::Parser;
use torchwire::cli::{Cli, Command};
use torchwire::config::{Config, LogFormat};

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // As many async workers as cores this process may use (affinity and cgroup quota
    // included); tokio's own default counts every online core, and extra workers on a pinned
    // server only add context switches.
    let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(cores).enable_all().build()?;
    match cli.command {
        Command::Serve(args) => {
            let config = Config::try_from(*args).map_err(anyhow::Error::msg)?;
            torchwire::telemetry::init(config.log_format, &config.log_level, config.log_file.as_deref())?;
            runtime.block_on(async {
                let listeners = torchwire::server::Listeners::bind(&config).await?;
                let shutdown = torchwire::shutdown::on_signals();
                torchwire::server::run(config, listeners, shutdown).await
            })
        }
        Command::Models(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime.block_on(torchwire::client::models(args))
        }
        Command::Predict(args) => {
            torchwire::telemetry::init(LogFormat::Text, "warn", None)?;
            runtime.block_on(torchwire::client::predict(args))
        }
    }
}
