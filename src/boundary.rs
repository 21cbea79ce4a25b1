//! The boundary every call passes through, whichever front door it came in by: the shared
//! application state, the per-call facts ([`Call`]: decided once), and [`boundary`], which
//! runs a handler inside one span with admission, the deadline, metrics, statistics and the
//! one log line of its outcome. Handlers hand back what they ran on ([`Handled`]) as data.
//!
//! Front doors build a [`Call`] from their transport's facts, call [`boundary`], and turn its
//! `Result` into their wire form; nothing here knows a wire format.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::admission::Admission;
use crate::config::Config;
use crate::deadline::Deadline;
use crate::device::Device;
use crate::error::{Error, Result, clip};
use crate::metrics::{CallHandles, Metrics, UNKNOWN_MODEL};
use crate::registry::ModelRegistry;
use crate::stats::{Outcome, RequestStats, SystemSampler};

/// What every front door shares.
pub struct AppState {
    /// Models and their workers.
    pub registry: Arc<ModelRegistry>,
    /// The server configuration.
    pub config: Arc<Config>,
    /// In-flight limit and rate limits.
    pub admission: Admission,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// The response cache (per row and text, for models that opt in).
    pub cache: crate::cache::ResponseCache,
    /// Request statistics for Stats (reset by ResetStats).
    pub stats: RequestStats,
    /// Process and system samples for Stats.
    pub sampler: SystemSampler,
    /// Ready for traffic: serving, preloads done, not draining (`/readyz`).
    pub ready: AtomicBool,
    /// When the server started.
    pub started: Instant,
}

/// Shared handle to the application state.
pub type SharedState = Arc<AppState>;

/// The facts of one call, decided once, before its handler runs.
#[derive(Debug, Clone)]
pub struct Call {
    /// RPC name, for logs and metric labels.
    pub rpc: &'static str,
    /// The model the request names (for Sentiment without one, the default text model).
    pub model: String,
    /// When the call arrived.
    pub arrived: Instant,
    /// When the answer is due.
    pub deadline: Deadline,
    /// Who is calling, for rate limits and logs: `key:<fingerprint>` of the verified key when
    /// keys are configured, else `ip:<peer address>`.
    pub client: String,
    /// The client's `x-request-id`, else one the server made; echoed back.
    pub request_id: String,
    /// Whether the call is inference work subject to admission control.
    pub admitted: bool,
    /// The client asked not to be answered from the response cache.
    pub no_cache: bool,
}

/// What a handler ran on, handed back to the boundary for statistics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ran {
    /// The device the request was resolved to, once it was.
    pub device: Option<Device>,
    /// Rows in the batch the request ran in, when it ran.
    pub batch_size: Option<usize>,
    /// The model version the request was resolved to, once it was.
    pub version: Option<u64>,
}

/// A handler's outcome: its answer or error, and what it ran on.
#[derive(Debug)]
pub struct Handled<T> {
    /// The answer, or why not.
    pub result: Result<T>,
    /// Device and batch, as far as the request got.
    pub ran: Ran,
}

impl<T> From<Result<T>> for Handled<T> {
    fn from(result: Result<T>) -> Self {
        Handled { result, ran: Ran::default() }
    }
}

impl<T> Handled<T> {
    /// Converts the answer, keeping what it ran on.
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Handled<U> {
        Handled { result: self.result.map(f), ran: self.ran }
    }

    /// Converts the answer with a step that may fail, keeping what it ran on.
    pub fn and_then<U>(self, f: impl FnOnce(T) -> Result<U>) -> Handled<U> {
        Handled { result: self.result.and_then(f), ran: self.ran }
    }
}

impl AppState {
    /// State over a registry.
    pub fn new(registry: Arc<ModelRegistry>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let admission = Admission::new(config.admission);
        let cache = crate::cache::ResponseCache::new(&config.cache, &metrics);
        AppState {
            registry,
            config,
            admission,
            cache,
            metrics,
            stats: RequestStats::default(),
            sampler: SystemSampler::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
        }
    }

    /// Sets the gauges that are read off the registry rather than counted: residency,
    /// memory and queue depth. Called before each scrape.
    pub fn refresh_gauges(&self) {
        self.cache.refresh();
        let m = &self.metrics;
        m.models_loaded.reset();
        m.model_memory.reset();
        m.queue_depth.reset();
        for d in self.registry.devices().all() {
            m.models_loaded.with_label_values(&[&d.label()]).set(0);
        }
        for (key, bytes, pending) in self.registry.resident_figures() {
            let device = key.device.label();
            m.models_loaded.with_label_values(&[&device]).inc();
            m.model_memory.with_label_values(&[&key.model, &device]).set(i64::try_from(bytes).unwrap_or(i64::MAX));
            m.queue_depth.with_label_values(&[&key.model, &device]).set(i64::try_from(pending).unwrap_or(i64::MAX));
        }
    }

    /// The metric label for a client-supplied model name: the name when the repository has it,
    /// `_unknown` otherwise (never the raw string), empty when the RPC names none.
    fn model_label<'a>(&self, model: &'a str) -> &'a str {
        // `name@version` is labelled by its name: versions have their own metrics.
        let name = model.split_once('@').map_or(model, |(name, _)| name);
        if model.is_empty() {
            ""
        } else if self.registry.catalog().entry(name).is_ok() {
            name
        } else {
            UNKNOWN_MODEL
        }
    }

    /// Counts a call refused before any handler ran (by the transport: a missing or wrong key,
    /// a message over the size limit), in the metrics and Stats like any other call.
    pub fn record_refused(&self, rpc: &'static str, error: &Error, latency: Duration) {
        if self.metrics.recording {
            let handles = self.metrics.call(rpc, "");
            self.record(&handles, "", false, error.code(), Ran::default(), latency, Some(error));
        }
    }

    /// Records one finished call in the metrics and the Stats figures.
    #[allow(clippy::too_many_arguments)]
    fn record(
        &self,
        handles: &CallHandles,
        model: &str,
        admitted: bool,
        code: tonic::Code,
        ran: Ran,
        latency: Duration,
        error: Option<&Error>,
    ) {
        let m = &self.metrics;
        let rpc = handles.rpc;
        let code_name = code_name(code);
        if code == tonic::Code::Ok {
            handles.ok.get_or_init(|| m.requests.with_label_values(&[rpc, model, code_name])).inc();
        } else {
            m.requests.with_label_values(&[rpc, model, code_name]).inc();
        }
        handles.duration.observe(latency.as_secs_f64());
        if let Some(e) = error {
            if let Some(reason) = rejection_reason(e) {
                m.rejected.with_label_values(&[rpc, model, reason]).inc();
            }
            if matches!(e, Error::DeadlineExceeded { stage } if !stage.starts_with("queued")) {
                m.deadline_exceeded.with_label_values(&[rpc, model, "handler"]).inc();
            }
        }
        if let (Some(v), true) = (ran.version, admitted) {
            let v = v.to_string();
            m.version_requests.with_label_values(&[model, &v, code_name]).inc();
            m.version_request_duration.with_label_values(&[model, &v]).observe(latency.as_secs_f64());
        }
        let device = ran.device.map(|d| d.label());
        self.stats.record(&Outcome {
            // Per-model figures count inference calls only (not metadata or admin calls).
            model: if admitted { model } else { "" },
            device: device.as_deref(),
            status: code_name,
            error: error.map(Error::code_label),
            latency,
            batch_size: ran.batch_size,
            version: ran.version,
        });
    }
}

/// Runs one call: a span with request id, rpc, model and client; admission for inference
/// calls; the deadline enforced around the whole handler (DEADLINE_EXCEEDED, not tonic's
/// CANCELLED); metrics and statistics recorded once; the error logged once in full before the
/// front door turns it into a client-safe answer.
pub async fn boundary<T>(state: &AppState, call: &Call, handler: impl Future<Output = Handled<T>>) -> Result<T> {
    let span = tracing::info_span!("rpc", id = %call.request_id, rpc = call.rpc, model = %clip(&call.model, 64), peer = %call.client);
    async move {
        let started = call.arrived;
        let model = state.model_label(&call.model);
        let recording = state.metrics.recording;
        let handles = recording.then(|| state.metrics.call(call.rpc, model));
        if let Some(h) = &handles {
            h.inflight.inc();
        }
        let handled = match call.admitted.then(|| state.admission.admit(&call.client, &call.model)).transpose() {
            Err(e) => Handled::from(Err(e)),
            // The permit, if any, lives until the handler is done.
            Ok(_permit) => match tokio::time::timeout_at(call.deadline.at().into(), handler).await {
                Ok(h) => h,
                Err(_) => Handled::from(Err(Error::DeadlineExceeded { stage: "waiting for the model" })),
            },
        };
        if let Some(h) = &handles {
            h.inflight.dec();
        }
        let latency = started.elapsed();
        let Handled { result, ran } = handled;
        let code = result.as_ref().map_or_else(Error::code, |_| tonic::Code::Ok);
        if let Some(h) = &handles {
            state.record(h, model, call.admitted, code, ran, latency, result.as_ref().err());
        }
        let micros = latency.as_micros();
        let device = ran.device.map(|d| d.label());
        match &result {
            Ok(_) => tracing::debug!(micros, device = ?device, "ok"),
            Err(e) if code == tonic::Code::Internal => {
                tracing::error!(micros, device = ?device, error = ?e, "request failed");
            }
            Err(e) => tracing::info!(micros, device = ?device, code = e.code_label(), error = %e, "request refused"),
        }
        result
    }
    .instrument(span)
    .await
}

/// The canonical gRPC code name (`OK`, `INVALID_ARGUMENT`, ...), a stable metric label.
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code as C;
    match code {
        C::Ok => "OK",
        C::Cancelled => "CANCELLED",
        C::Unknown => "UNKNOWN",
        C::InvalidArgument => "INVALID_ARGUMENT",
        C::DeadlineExceeded => "DEADLINE_EXCEEDED",
        C::NotFound => "NOT_FOUND",
        C::AlreadyExists => "ALREADY_EXISTS",
        C::PermissionDenied => "PERMISSION_DENIED",
        C::ResourceExhausted => "RESOURCE_EXHAUSTED",
        C::FailedPrecondition => "FAILED_PRECONDITION",
        C::Aborted => "ABORTED",
        C::OutOfRange => "OUT_OF_RANGE",
        C::Unimplemented => "UNIMPLEMENTED",
        C::Internal => "INTERNAL",
        C::Unavailable => "UNAVAILABLE",
        C::DataLoss => "DATA_LOSS",
        C::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Why a request was refused before model work, as a `rejected_requests_total` reason.
fn rejection_reason(e: &Error) -> Option<&'static str> {
    match e {
        Error::QueueFull { .. } => Some("queue_full"),
        Error::InflightLimit { .. } => Some("inflight_limit"),
        Error::RateLimited { .. } => Some("rate_limited"),
        Error::MessageTooLarge { .. } => Some("message_too_large"),
        Error::Unauthenticated { .. } | Error::PermissionDenied { .. } => Some("unauthorized"),
        Error::ShuttingDown => Some("shutting_down"),
        Error::EmptyModelName
        | Error::InvalidModelName { .. }
        | Error::InvalidDevice { .. }
        | Error::InvalidInput { .. } => Some("invalid"),
        _ => None,
    }
}

/// The RPC names the server serves, for metric labels of calls refused before routing.
const RPCS: &[&str] = &[
    "Predict",
    "Sentiment",
    "Stats",
    "ListModels",
    "GetModel",
    "LoadModel",
    "UnloadModel",
    "ResetStats",
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
    "RepositoryIndex",
    "RepositoryModelLoad",
    "RepositoryModelUnload",
    "ServerReflectionInfo",
    "Check",
    "Watch",
];

/// The RPC label of a request path (`/package.Service/Method`): the method when it is one
/// this server serves, else `unknown` (a client's string never becomes a label).
pub fn rpc_label(path: &str) -> &'static str {
    let method = path.rsplit('/').next().unwrap_or("");
    RPCS.iter().find(|r| **r == method).copied().unwrap_or("unknown")
}
