//! The server's validated configuration: a plain struct with no clap inside, built from the
//! command line by `cli.rs` or directly by tests (`Config::for_tests`).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::admission::AdmissionConfig;
use crate::auth::{Keys, TlsFiles};
use crate::inline::ExecutorChoice;
use crate::validate::Limits;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for log pipelines.
    Json,
}

/// Everything `server::run` needs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Where gRPC listens (when the caller does not pass a listener).
    pub grpc_addr: SocketAddr,
    /// The model repository.
    pub model_dir: PathBuf,
    /// Log format.
    pub log_format: LogFormat,
    /// Log filter (`info`, `torchwire=debug`, ...).
    pub log_level: String,
    /// Deadline of a request that sent no `grpc-timeout`.
    pub default_timeout: Duration,
    /// Cap on any request's deadline.
    pub max_timeout: Duration,
    /// Jobs each (model, device) queue holds; 0 = sixteen batches' worth.
    pub queue_capacity: usize,
    /// Overrides every device's default tokens per text (CPU 256, GPU 512).
    pub max_text_length: Option<usize>,
    /// libtorch intra-op threads per worker; 0 = cores / workers.
    pub intra_op_threads: usize,
    /// How long a failed load is remembered before a request retries it.
    pub load_retry_backoff: Duration,
    /// Request size limits.
    pub limits: Limits,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Ignore GPUs even when libtorch sees them.
    pub cpu_only: bool,
    /// Concurrent HTTP/2 streams per client connection.
    pub max_concurrent_streams: u32,
    /// Global in-flight limit and per-client rate limit.
    pub admission: AdmissionConfig,
    /// Overrides every model's largest batch; `Some(1)` turns batching off.
    pub max_batch_size: Option<usize>,
    /// Most (model, device) pairs resident at once.
    pub max_loaded_models: usize,
    /// Parameter and buffer bytes allowed across resident models; 0 = no budget.
    pub model_memory_budget_bytes: u64,
    /// Warm-up forward passes after each load.
    pub warmup_runs: usize,
    /// Unload models unused this long; `None` = never.
    pub idle_unload: Option<Duration>,
    /// Rescan the model repository this often; `None` = only on Admin.ReloadRepository.
    pub repository_poll: Option<Duration>,
    /// The response cache.
    pub cache: crate::cache::CacheConfig,
    /// Models loaded (and pinned) at start-up, in the background: `name` or `name@device`.
    pub preload: Vec<String>,
    /// Keep health `""` NOT_SERVING until every preloaded model is ready.
    pub ready_after_preload: bool,
    /// Where HTTP `/metrics`, `/healthz`, `/readyz` listen; `None` = off.
    pub metrics_addr: Option<SocketAddr>,
    /// How often process memory is sampled into the Stats history.
    pub memory_sample_interval: Duration,
    /// Also write logs to this file.
    pub log_file: Option<PathBuf>,
    /// Record per-request metrics and statistics (off only to measure their cost).
    pub metrics_recording: bool,
    /// Largest gRPC request message decoded by the inference services.
    pub max_message_bytes: usize,
    /// Bearer keys for inference and admin RPCs (none = open).
    pub keys: Keys,
    /// TLS certificate, key and optional client CA; `None` = plaintext HTTP/2.
    pub tls: Option<TlsFiles>,
    /// Serve gRPC server reflection (v1 and v1alpha).
    pub reflection: bool,
    /// Serve the status page at `GET /` on the gRPC port.
    pub ui: bool,
    /// HTTP/2 keep-alive: PING an open connection after this long without frames.
    pub keepalive_interval: Option<Duration>,
    /// HTTP/2 keep-alive: close the connection when a PING is not acknowledged in time.
    pub keepalive_timeout: Duration,
    /// Close a connection with no request open for this long (GOAWAY); `None` = never.
    pub idle_timeout: Option<Duration>,
    /// Most bytes of request headers (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE).
    pub max_header_bytes: u32,
    /// p99 (µs) of the largest batch's pass, timed at load, under which a model runs on the
    /// fast path (the calling runtime thread); 0 = never.
    pub inline_max_us: u64,
    /// Forces one executor for every model (tests run the same cases on both paths); the
    /// default chooses by `inline_max_us`.
    pub executor: ExecutorChoice,
}

impl Config {
    /// A configuration for tests: the given model directory, CPU only, small queues.
    pub fn for_tests(model_dir: impl Into<PathBuf>) -> Self {
        Config {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            model_dir: model_dir.into(),
            log_format: LogFormat::Text,
            log_level: "warn".into(),
            default_timeout: Duration::from_secs(30),
            max_timeout: Duration::from_secs(300),
            queue_capacity: 64,
            max_text_length: None,
            intra_op_threads: 1,
            load_retry_backoff: Duration::from_secs(5),
            limits: Limits { max_tensor_elements: 1 << 24, max_rows: 4096, max_texts: 256, max_text_bytes: 64 * 1024 },
            shutdown_grace: Duration::from_secs(5),
            cpu_only: true,
            max_concurrent_streams: 256,
            admission: AdmissionConfig { max_inflight: 1024, rate_limit_rps: 0.0, rate_limit_burst: 0.0 },
            max_batch_size: None,
            max_loaded_models: 16,
            model_memory_budget_bytes: 0,
            warmup_runs: 1,
            idle_unload: None,
            repository_poll: None,
            cache: crate::cache::CacheConfig::default(),
            preload: Vec::new(),
            ready_after_preload: false,
            metrics_addr: None,
            memory_sample_interval: Duration::from_secs(5),
            log_file: None,
            metrics_recording: true,
            max_message_bytes: 64 * 1024 * 1024,
            keys: Keys::default(),
            tls: None,
            reflection: true,
            ui: true,
            keepalive_interval: Some(Duration::from_secs(60)),
            keepalive_timeout: Duration::from_secs(20),
            idle_timeout: None,
            max_header_bytes: 16 * 1024,
            inline_max_us: 100,
            executor: ExecutorChoice::Measured,
        }
    }

    /// Intra-op threads per worker: the configured value, or the cores shared among the
    /// workers that can run at once, so that workers x threads <= cores.
    pub fn threads_per_worker(&self, workers: usize) -> usize {
        if self.intra_op_threads > 0 {
            return self.intra_op_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        (cores / workers.max(1)).max(1)
    }
}

/// A flag value the server cannot start with: which flag, and what it must be.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

impl From<&str> for ConfigError {
    fn from(s: &str) -> Self {
        ConfigError(s.to_owned())
    }
}

impl From<String> for ConfigError {
    fn from(s: String) -> Self {
        ConfigError(s)
    }
}
