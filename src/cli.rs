//! Command line: `torchwire serve` and the client commands. Every flag can also come from a
//! `TORCHWIRE_*` environment variable; `--help` text is the `///` comment on each field.
//! `ServeArgs` converts into a validated [`Config`].

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::admission::AdmissionConfig;
use crate::auth::{Keys, Secret, TlsFiles, read_key_file, validate_keys};
use crate::config::{Config, ConfigError, LogFormat};
use crate::validate::Limits;

/// torchwire: a gRPC server for TorchScript models.
#[derive(Debug, Parser)]
#[command(name = "torchwire", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the models in a model directory over gRPC.
    Serve(Box<ServeArgs>),
    /// List the models a running server has, with their per-device state.
    Models(ClientArgs),
    /// Run a Predict against a running server with rows of named features.
    Predict(PredictArgs),
}

/// Flags of `torchwire serve`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address the server listens on: gRPC, and on the same port HTTP/JSON (KServe v2 REST under
    /// /v2, torchwire JSON under /v1) and the status page at /.
    #[arg(long, env = "TORCHWIRE_GRPC_ADDR", default_value = "127.0.0.1:50051")]
    pub grpc_addr: SocketAddr,
    /// Model repository: one folder per model with model.toml and one numbered folder per
    /// version (`<N>/model.pt`, and/or `<N>/model.pt2` served with `format = "pt2"`), or the
    /// model file beside model.toml for a single version 1.
    #[arg(long, env = "TORCHWIRE_MODEL_DIR", default_value = "./models")]
    pub model_dir: PathBuf,
    /// Address of the HTTP listener for /metrics (Prometheus), /healthz and /readyz; `off`
    /// disables it.
    #[arg(long, env = "TORCHWIRE_METRICS_ADDR", default_value = "127.0.0.1:9464")]
    pub metrics_addr: String,
    /// Record per-request metrics and Stats figures; `false` only to measure what recording
    /// costs (scrapes then show residency and load figures only).
    #[arg(long, env = "TORCHWIRE_METRICS_RECORDING", default_value_t = true, action = clap::ArgAction::Set)]
    pub metrics_recording: bool,
    /// Largest gRPC request message, in bytes, that Inference and KServe decode; larger ones
    /// get RESOURCE_EXHAUSTED naming the limit (tonic's default is 4 MiB; tritonclient opens
    /// channels at 2 GiB). Also the largest HTTP request body (413 past it).
    #[arg(long, env = "TORCHWIRE_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub max_message_bytes: usize,
    /// Seconds between process-memory samples in the Stats history.
    #[arg(long, env = "TORCHWIRE_MEMORY_SAMPLE_SECS", default_value_t = 5)]
    pub memory_sample_secs: u64,
    /// Also write logs to this file (appended), in the same format.
    #[arg(long, env = "TORCHWIRE_LOG_FILE")]
    pub log_file: Option<PathBuf>,
    /// Log format: human-readable text or JSON lines.
    #[arg(long, env = "TORCHWIRE_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter, e.g. `info` or `torchwire=debug` (RUST_LOG wins when set).
    #[arg(long, env = "TORCHWIRE_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Deadline, in milliseconds, of a request that sends no grpc-timeout.
    #[arg(long, env = "TORCHWIRE_DEFAULT_TIMEOUT_MS", default_value_t = 30_000)]
    pub default_timeout_ms: u64,
    /// Cap, in milliseconds, on any request's deadline.
    #[arg(long, env = "TORCHWIRE_MAX_TIMEOUT_MS", default_value_t = 300_000)]
    pub max_timeout_ms: u64,
    /// Requests each (model, device) queue holds; past it, RESOURCE_EXHAUSTED at once.
    /// 0 = sixteen batches' worth of the model's largest batch on that device (CPU 256, GPU 512),
    /// so 64 closed-loop clients on one model queue rather than being refused.
    #[arg(long, env = "TORCHWIRE_QUEUE_CAPACITY", default_value_t = 0)]
    pub queue_capacity: usize,
    /// libtorch intra-op threads per model worker; 0 = the cores shared among the workers.
    #[arg(long, env = "TORCHWIRE_INTRA_OP_THREADS", default_value_t = 0)]
    pub intra_op_threads: usize,
    /// Seconds a failed model load is remembered before a request may retry it.
    #[arg(long, env = "TORCHWIRE_LOAD_RETRY_BACKOFF_SECS", default_value_t = 5)]
    pub load_retry_backoff_secs: u64,
    /// Most elements one input tensor may have.
    #[arg(long, env = "TORCHWIRE_MAX_TENSOR_ELEMENTS", default_value_t = 1 << 24)]
    pub max_tensor_elements: usize,
    /// Most rows (batch entries) one request may carry.
    #[arg(long, env = "TORCHWIRE_MAX_ROWS", default_value_t = 4096)]
    pub max_rows: usize,
    /// Default tokens per text (special tokens included) on every device, capped by each
    /// model's maximum; 0 = the device default (CPU 256, GPU 512). A request may ask for less.
    #[arg(long, env = "TORCHWIRE_MAX_TEXT_LENGTH", default_value_t = 0)]
    pub max_text_length: usize,
    /// Most texts one Sentiment request may carry.
    #[arg(long, env = "TORCHWIRE_MAX_TEXTS", default_value_t = 256)]
    pub max_texts: usize,
    /// Most bytes (UTF-8) one text may have.
    #[arg(long, env = "TORCHWIRE_MAX_TEXT_BYTES", default_value_t = 64 * 1024)]
    pub max_text_bytes: usize,
    /// Seconds shutdown waits for in-flight requests after SIGTERM / SIGINT.
    #[arg(long, env = "TORCHWIRE_SHUTDOWN_GRACE_SECS", default_value_t = 30)]
    pub shutdown_grace_secs: u64,
    /// Use the CPU only, even when libtorch sees a GPU.
    #[arg(long, env = "TORCHWIRE_CPU_ONLY")]
    pub cpu_only: bool,
    /// Largest batch, in rows or texts, for every model on every device (1 = batching off);
    /// 0 = each model's manifest, else the device default (CPU 16, GPU 32).
    #[arg(long, env = "TORCHWIRE_MAX_BATCH_SIZE", default_value_t = 0)]
    pub max_batch_size: usize,
    /// Most (model, device) pairs resident at once; a new load past it evicts the least
    /// recently used idle, unpinned model.
    #[arg(long, env = "TORCHWIRE_MAX_LOADED_MODELS", default_value_t = 3)]
    pub max_loaded_models: usize,
    /// Parameter and buffer bytes allowed across resident models (measured at load); past it
    /// the least recently used idle, unpinned models are evicted. 0 = no budget.
    #[arg(long, env = "TORCHWIRE_MODEL_MEMORY_BUDGET_BYTES", default_value_t = 0)]
    pub model_memory_budget_bytes: u64,
    /// Unload models unused for this many seconds (pinned ones stay); 0 = never.
    #[arg(long, env = "TORCHWIRE_IDLE_UNLOAD_SECS", default_value_t = 0)]
    pub idle_unload_secs: u64,
    /// Rescan the model repository every this many seconds (e.g. a mounted volume): new
    /// models and versions appear, removed ones drain and unload, a new default version is
    /// swapped in once it has loaded and passed its self-test. 0 = only on
    /// Admin.ReloadRepository.
    #[arg(long, env = "TORCHWIRE_REPOSITORY_POLL_SECS", default_value_t = 0.0)]
    pub repository_poll_secs: f64,
    /// Bytes of the in-process response cache for models whose manifest has `[cache]`:
    /// repeated rows and texts are answered without a forward pass. 0 = no in-process cache.
    /// Capped at half of the memory this process may use.
    #[arg(long, env = "TORCHWIRE_CACHE_BYTES", default_value_t = 0)]
    pub cache_bytes: u64,
    /// Redis shared by replicas as a second response-cache tier, e.g. `redis://cache:6379/0`.
    /// A Redis that is down or slow never fails a request: it computes instead (counted).
    #[arg(long, env = "TORCHWIRE_CACHE_REDIS_URL")]
    pub cache_redis_url: Option<String>,
    /// How long a Redis cache lookup may take before the request computes instead.
    #[arg(long, env = "TORCHWIRE_CACHE_REDIS_TIMEOUT_MS", default_value_t = 20)]
    pub cache_redis_timeout_ms: u64,
    /// Warm-up forward passes after each load, before the model serves (so the first request
    /// does not pay TorchScript's profiling passes).
    #[arg(long, env = "TORCHWIRE_WARMUP_RUNS", default_value_t = 2)]
    pub warmup_runs: usize,
    /// Fast path: a model whose forward pass of its largest batch, timed at load, stays under
    /// this many microseconds at p99 runs on the calling runtime thread (batched by flat
    /// combining) instead of its worker thread, and moves back if its p99 later exceeds twice
    /// this in two windows of 256 passes in a row; a manifest's `[batching] inline_max_us` overrides it per model; 0 = off for all.
    /// Timed only after a warm-up (`--warmup-runs` 0 keeps every model on its worker thread).
    #[arg(long, env = "TORCHWIRE_INLINE_MAX_US", default_value_t = 100)]
    pub inline_max_us: u64,
    /// Models to load and pin at start-up, in the background once the port listens:
    /// `name` or `name@device`, comma-separated.
    #[arg(long, env = "TORCHWIRE_PRELOAD", value_delimiter = ',')]
    pub preload: Vec<String>,
    /// Keep health `""` NOT_SERVING until every preloaded model is ready (Kubernetes readiness).
    #[arg(long, env = "TORCHWIRE_READY_AFTER_PRELOAD")]
    pub ready_after_preload: bool,
    /// Inference requests handled at once across the server; past it, RESOURCE_EXHAUSTED at once.
    #[arg(long, env = "TORCHWIRE_MAX_INFLIGHT", default_value_t = 1024)]
    pub max_inflight: usize,
    /// Per-client rate limit in requests per second (keyed by the fingerprint of the key the
    /// server verified when keys are configured, else the peer address); 0 = off. Refusals
    /// carry a retry-after-ms trailer.
    #[arg(long, env = "TORCHWIRE_RATE_LIMIT_RPS", default_value_t = 0.0)]
    pub rate_limit_rps: f64,
    /// Requests a client may send in a burst above the rate; 0 = the rate rounded up.
    #[arg(long, env = "TORCHWIRE_RATE_LIMIT_BURST", default_value_t = 0)]
    pub rate_limit_burst: u32,
    /// Concurrent HTTP/2 streams (in-flight RPCs) per client connection.
    #[arg(long, env = "TORCHWIRE_MAX_CONCURRENT_STREAMS", default_value_t = 256)]
    pub max_concurrent_streams: u32,
    /// Most bytes of request headers a client may send (HTTP/2 SETTINGS_MAX_HEADER_LIST_SIZE; on
    /// HTTP/1.1, at most 100 header lines and this many bytes, else 431).
    #[arg(long, env = "TORCHWIRE_MAX_HEADER_BYTES", default_value_t = 16 * 1024)]
    pub max_header_bytes: u32,
    /// Seconds without frames after which the server PINGs a connection; 0 = no keep-alive.
    #[arg(long, env = "TORCHWIRE_KEEPALIVE_INTERVAL_SECS", default_value_t = 60)]
    pub keepalive_interval_secs: u64,
    /// Seconds a keep-alive PING may go unanswered before the connection is closed.
    #[arg(long, env = "TORCHWIRE_KEEPALIVE_TIMEOUT_SECS", default_value_t = 20)]
    pub keepalive_timeout_secs: u64,
    /// Seconds a connection may stay open with no request in flight before the server closes
    /// it (GOAWAY); 0 = never.
    #[arg(long, env = "TORCHWIRE_IDLE_TIMEOUT_SECS", default_value_t = 600)]
    pub idle_timeout_secs: u64,
    /// PEM certificate chain: serve gRPC over TLS (with --tls-key).
    #[arg(long, env = "TORCHWIRE_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long, env = "TORCHWIRE_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// PEM CA bundle: require client certificates signed by it (mutual TLS; needs --tls-cert).
    #[arg(long, env = "TORCHWIRE_TLS_CLIENT_CA", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Key required as `authorization: Bearer <key>` on inference RPCs (repeatable; at least
    /// 16 printable characters). Prefer --api-key-file: flags show in `ps`.
    #[arg(long, env = "TORCHWIRE_API_KEY", hide_env_values = true)]
    pub api_key: Vec<String>,
    /// File of API keys, one per line (`#` comments allowed).
    #[arg(long, env = "TORCHWIRE_API_KEY_FILE")]
    pub api_key_file: Option<PathBuf>,
    /// Key required on Admin.*, ResetStats and the KServe repository RPCs (it also opens
    /// inference RPCs). Without one, those RPCs follow the API-key rule.
    #[arg(long, env = "TORCHWIRE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Vec<String>,
    /// File of admin keys, one per line.
    #[arg(long, env = "TORCHWIRE_ADMIN_KEY_FILE")]
    pub admin_key_file: Option<PathBuf>,
    /// Serve gRPC server reflection (what grpcurl uses to list and describe services).
    #[arg(long, env = "TORCHWIRE_REFLECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub reflection: bool,
    /// Serve the status page (HTML: models, a form per tabular model, Stats charts) at `GET /`
    /// on the gRPC port. The page holds no data itself; what it shows needs the API key.
    #[arg(long, env = "TORCHWIRE_UI", default_value_t = true, action = clap::ArgAction::Set)]
    pub ui: bool,
}

impl ServeArgs {
    /// The bearer keys from the flags and key files.
    fn keys(&self) -> Result<Keys, ConfigError> {
        let mut api: Vec<Secret> = self.api_key.iter().map(Secret::new).collect();
        if let Some(f) = &self.api_key_file {
            api.extend(read_key_file(f).map_err(|e| format!("--api-key-file: {e}"))?);
        }
        let mut admin: Vec<Secret> = self.admin_key.iter().map(Secret::new).collect();
        if let Some(f) = &self.admin_key_file {
            admin.extend(read_key_file(f).map_err(|e| format!("--admin-key-file: {e}"))?);
        }
        validate_keys(&api, "--api-key").map_err(|e| e.to_string())?;
        validate_keys(&admin, "--admin-key").map_err(|e| e.to_string())?;
        Ok(Keys { api, admin })
    }
}

/// Flags shared by the client commands.
#[derive(Debug, Args)]
pub struct ClientArgs {
    /// Server address.
    #[arg(long, env = "TORCHWIRE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,
    /// Key sent as `authorization: Bearer <key>` (for servers started with --api-key or
    /// --admin-key; `models` lists through Admin, so it needs the admin key there).
    #[arg(long = "key", env = "TORCHWIRE_KEY", hide_env_values = true)]
    pub key: Option<String>,
}

impl ClientArgs {
    /// The `authorization` metadata value for `--key`, if given.
    pub fn authorization(&self) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
        bearer(self.key.as_deref())
    }
}

/// `Bearer <key>` as metadata, checked to be a valid header value.
pub fn bearer(key: Option<&str>) -> anyhow::Result<Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>> {
    key.map(|k| format!("Bearer {k}").parse().map_err(|_| anyhow::anyhow!("--key must be printable ASCII"))).transpose()
}

/// Flags of `torchwire predict`.
#[derive(Debug, Args)]
pub struct PredictArgs {
    /// Server to call.
    #[command(flatten)]
    pub client: ClientArgs,
    /// Model name.
    #[arg(long)]
    pub model: String,
    /// Device: auto, cpu or cuda:N.
    #[arg(long, default_value = "auto")]
    pub device: String,
    /// One row as `name=value,name=value`; repeat for more rows.
    #[arg(long = "row", required = true)]
    pub rows: Vec<String>,
}

impl TryFrom<ServeArgs> for Config {
    type Error = ConfigError;

    fn try_from(a: ServeArgs) -> Result<Self, ConfigError> {
        if a.default_timeout_ms == 0 || a.max_timeout_ms == 0 {
            return Err("--default-timeout-ms and --max-timeout-ms must be positive".into());
        }
        if a.max_loaded_models == 0 {
            return Err("--max-loaded-models must be at least 1".into());
        }
        if a.max_inflight == 0 {
            return Err("--max-inflight must be at least 1".into());
        }
        if !(a.rate_limit_rps >= 0.0 && a.rate_limit_rps.is_finite()) {
            return Err("--rate-limit-rps must be a non-negative number".into());
        }
        if a.max_rows == 0 || a.max_tensor_elements == 0 || a.max_texts == 0 || a.max_text_bytes == 0 {
            return Err("--max-rows, --max-tensor-elements, --max-texts and --max-text-bytes must be positive".into());
        }
        if a.keepalive_interval_secs > 0 && a.keepalive_timeout_secs == 0 {
            return Err("--keepalive-timeout-secs must be positive when keep-alive is on".into());
        }
        if a.max_concurrent_streams == 0 || a.max_header_bytes == 0 || a.max_message_bytes == 0 {
            return Err("--max-concurrent-streams, --max-header-bytes and --max-message-bytes must be positive".into());
        }
        let keys = a.keys()?;
        Ok(Config {
            keys,
            tls: match (a.tls_cert, a.tls_key) {
                (Some(cert), Some(key)) => Some(TlsFiles { cert, key, client_ca: a.tls_client_ca }),
                _ => None,
            },
            reflection: a.reflection,
            ui: a.ui,
            keepalive_interval: (a.keepalive_interval_secs > 0).then(|| Duration::from_secs(a.keepalive_interval_secs)),
            keepalive_timeout: Duration::from_secs(a.keepalive_timeout_secs),
            idle_timeout: (a.idle_timeout_secs > 0).then(|| Duration::from_secs(a.idle_timeout_secs)),
            max_header_bytes: a.max_header_bytes,
            grpc_addr: a.grpc_addr,
            model_dir: a.model_dir,
            log_format: a.log_format,
            log_level: a.log_level,
            default_timeout: Duration::from_millis(a.default_timeout_ms),
            max_timeout: Duration::from_millis(a.max_timeout_ms),
            queue_capacity: a.queue_capacity,
            max_text_length: (a.max_text_length > 0).then_some(a.max_text_length),
            intra_op_threads: a.intra_op_threads,
            load_retry_backoff: Duration::from_secs(a.load_retry_backoff_secs),
            limits: Limits {
                max_tensor_elements: a.max_tensor_elements,
                max_rows: a.max_rows,
                max_texts: a.max_texts,
                max_text_bytes: a.max_text_bytes,
            },
            shutdown_grace: Duration::from_secs(a.shutdown_grace_secs),
            cpu_only: a.cpu_only,
            max_concurrent_streams: a.max_concurrent_streams,
            max_batch_size: (a.max_batch_size > 0).then_some(a.max_batch_size),
            max_loaded_models: a.max_loaded_models,
            model_memory_budget_bytes: a.model_memory_budget_bytes,
            warmup_runs: a.warmup_runs,
            inline_max_us: a.inline_max_us,
            executor: crate::inline::ExecutorChoice::Measured,
            idle_unload: (a.idle_unload_secs > 0).then(|| Duration::from_secs(a.idle_unload_secs)),
            cache: cache_config(a.cache_bytes, a.cache_redis_url.clone(), a.cache_redis_timeout_ms),
            repository_poll: (a.repository_poll_secs > 0.0)
                .then(|| Duration::try_from_secs_f64(a.repository_poll_secs))
                .transpose()
                .map_err(|_| {
                    ConfigError(format!("--repository-poll-secs {} is not a usable duration", a.repository_poll_secs))
                })?,
            preload: a.preload.into_iter().filter(|p| !p.trim().is_empty()).collect(),
            ready_after_preload: a.ready_after_preload,
            metrics_addr: match a.metrics_addr.trim() {
                "" | "off" | "none" => None,
                addr => Some(addr.parse().map_err(|e| format!("--metrics-addr {addr:?}: {e}"))?),
            },
            memory_sample_interval: Duration::from_secs(a.memory_sample_secs.max(1)),
            log_file: a.log_file,
            metrics_recording: a.metrics_recording,
            max_message_bytes: a.max_message_bytes,
            admission: AdmissionConfig {
                max_inflight: a.max_inflight,
                rate_limit_rps: a.rate_limit_rps,
                rate_limit_burst: if a.rate_limit_burst == 0 {
                    a.rate_limit_rps.ceil()
                } else {
                    f64::from(a.rate_limit_burst)
                },
            },
        })
    }
}

/// The response cache's settings; a size beyond half of the memory this process may use is
/// capped there (and said so).
fn cache_config(bytes: u64, redis_url: Option<String>, timeout_ms: u64) -> crate::cache::CacheConfig {
    let limit = crate::stats::ProcessLimits::read(std::path::Path::new("/")).memory_bytes / 2;
    let bytes = if limit > 0 && bytes > limit {
        tracing::warn!(asked = bytes, capped = limit, "--cache-bytes is beyond half of this process's memory; capped");
        limit
    } else {
        bytes
    };
    crate::cache::CacheConfig {
        bytes,
        redis_url: redis_url.filter(|u| !u.trim().is_empty()),
        redis_timeout: Duration::from_millis(timeout_ms.max(1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_into_a_valid_config() {
        let cli = Cli::try_parse_from(["torchwire", "serve"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve expected") };
        let c = Config::try_from(*args).unwrap();
        assert_eq!(c.grpc_addr.to_string(), "127.0.0.1:50051");
        assert_eq!(c.default_timeout, Duration::from_secs(30));
    }

    #[test]
    fn keys_come_from_flags_and_files_and_short_keys_are_refused() {
        let file = std::env::temp_dir().join(format!("torchwire-keys-{}", std::process::id()));
        std::fs::write(&file, "# comment\n\nfile-key-0123456789abcdef\n").unwrap();
        let f = file.to_str().unwrap();
        let cli = Cli::try_parse_from(["torchwire", "serve", "--api-key", "flag-key-0123456789", "--api-key-file", f])
            .unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve expected") };
        let c = Config::try_from(*args).unwrap();
        assert_eq!(c.keys.api.len(), 2);
        assert!(c.keys.admin.is_empty());
        let cli = Cli::try_parse_from(["torchwire", "serve", "--admin-key", "short"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve expected") };
        assert!(Config::try_from(*args).unwrap_err().0.contains("16 characters"));
        std::fs::remove_file(file).unwrap();
        // --tls-cert without --tls-key is a usage error.
        assert!(Cli::try_parse_from(["torchwire", "serve", "--tls-cert", "c.pem"]).is_err());
    }

    #[test]
    fn zero_loaded_models_is_refused() {
        let cli = Cli::try_parse_from(["torchwire", "serve", "--max-loaded-models", "0"]).unwrap();
        let Command::Serve(args) = cli.command else { panic!("serve expected") };
        assert!(Config::try_from(*args).unwrap_err().0.contains("--max-loaded-models"));
    }
}
