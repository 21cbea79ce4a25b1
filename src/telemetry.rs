//! Logging set-up: human-readable text by default, JSON lines with `--log-format json`, filtered
//! by `--log-level` (or `RUST_LOG` when set), to stderr and optionally also to a file.

use std::path::Path;
use std::sync::Mutex;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::fmt::writer::MakeWriterExt;

use crate::config::LogFormat;

/// Installs the global tracing subscriber. Call once, from `main`.
pub fn init(format: LogFormat, level: &str, file: Option<&Path>) -> anyhow::Result<()> {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    let file = match file {
        Some(p) => Some(
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(p)
                .map_err(|e| anyhow::anyhow!("opening --log-file {}: {e}", p.display()))?,
        ),
        None => None,
    };
    // With no file, the second writer is disabled; one code path either way.
    let has_file = file.is_some();
    let writer = std::io::stderr.and(Mutex::new(file.map_or_else(
        || Box::new(std::io::sink()) as Box<dyn std::io::Write + Send>,
        |f| Box::new(f) as Box<dyn std::io::Write + Send>,
    )));
    // Colours only for a person at a terminal: never into a file or a pipe (log collectors,
    // `2> server.log`).
    let ansi = !has_file && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(writer).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
    }
    Ok(())
}
