//! The gRPC boundary: one tonic service per file, plus what they share — the application
//! state, each call's deadline and client key, and [`boundary`], which every handler goes
//! through so that admission, deadlines and logging (and, later, metrics) happen in one place.
//!
//! Protobuf types stop here and in `validate.rs`.

pub mod admin;
pub mod inference;
pub mod kserve;
pub mod stats;

use std::future::Future;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::admission::Admission;
use crate::config::Config;
use crate::deadline::Deadline;
use crate::device::Device;
use crate::error::{Error, Result, clip};
use crate::metrics::{Metrics, UNKNOWN_MODEL};
use crate::registry::ModelRegistry;
use crate::stats::{Outcome, RequestStats, SystemSampler};
use crate::transport::CallInfo;

/// What every service shares.
pub struct AppState {
    /// Models and their workers.
    pub registry: Arc<ModelRegistry>,
    /// The server configuration.
    pub config: Arc<Config>,
    /// In-flight limit and rate limits.
    pub admission: Admission,
    /// Prometheus metrics.
    pub metrics: Arc<Metrics>,
    /// Request statistics for Stats (reset by ResetStats).
    pub stats: RequestStats,
    /// Process and system samples for Stats.
    pub sampler: SystemSampler,
    /// Ready for traffic: serving, preloads done, not draining (`/readyz`).
    pub ready: AtomicBool,
    /// When the server started.
    pub started: Instant,
    next_request_id: AtomicU64,
}

/// Shared handle to the application state.
pub type SharedState = Arc<AppState>;

/// What the boundary knows of one call before its handler runs.
#[derive(Debug, Clone)]
pub struct Call {
    /// RPC name, for logs and metric labels.
    pub rpc: &'static str,
    /// The model the request names (as sent; checked later).
    pub model: String,
    /// When the answer is due.
    pub deadline: Deadline,
    /// Who is calling, for rate limits: the API key when sent, else the peer address.
    pub client: String,
    /// Whether the call is inference work subject to admission control.
    pub admitted: bool,
    /// The client's `x-request-id`, else one the server made; echoed back.
    pub request_id: String,
    /// The device the handler chose, once it did (for per-device statistics).
    pub device: Arc<OnceLock<Device>>,
}

impl AppState {
    /// State over a registry.
    pub fn new(registry: Arc<ModelRegistry>, config: Arc<Config>, metrics: Arc<Metrics>) -> Self {
        let admission = Admission::new(config.admission);
        AppState {
            registry,
            config,
            admission,
            metrics,
            stats: RequestStats::default(),
            sampler: SystemSampler::default(),
            ready: AtomicBool::new(false),
            started: Instant::now(),
            next_request_id: AtomicU64::new(1),
        }
    }

    /// Sets the gauges that are read off the registry rather than counted: residency,
    /// memory and queue depth. Called before each scrape.
    pub fn refresh_gauges(&self) {
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
        if model.is_empty() {
            ""
        } else if self.registry.spec(model).is_ok() {
            model
        } else {
            UNKNOWN_MODEL
        }
    }

    /// Describes a call: its deadline (the client's `grpc-timeout`, else the default, capped by
    /// the maximum, measured from arrival) and its client key.
    pub fn call<T>(&self, rpc: &'static str, req: &Request<T>, model: &str, admitted: bool) -> Call {
        let info = req.extensions().get::<CallInfo>();
        let arrived = info.map_or_else(Instant::now, |i| i.arrived);
        let asked = info.and_then(|i| i.grpc_timeout);
        let deadline = Deadline::for_call(arrived, asked, self.config.default_timeout, self.config.max_timeout);
        let md = req.metadata();
        // The key itself is never kept or logged: its fingerprint names the client.
        let key = md.get("x-api-key").or_else(|| md.get("authorization")).map(|v| v.as_bytes());
        let client = match (key, info) {
            (Some(k), _) => format!("key:{}", crate::auth::fingerprint(k)),
            (None, Some(i)) => format!("ip:{}", i.peer.ip()),
            (None, None) => "unknown".to_owned(),
        };
        let request_id = md
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 128)
            .map_or_else(|| format!("tw-{:x}", self.next_request_id.fetch_add(1, Ordering::Relaxed)), str::to_owned);
        let model = if model.is_empty() && rpc == "Sentiment" {
            self.registry.repository().default_text_model().map(|s| s.name.clone()).unwrap_or_default()
        } else {
            model.to_owned()
        };
        Call { rpc, model, deadline, client, admitted, request_id, device: Arc::default() }
    }
}

/// Runs one RPC: a span with request id, rpc and model; admission for inference calls; the
/// deadline enforced around the whole handler (DEADLINE_EXCEEDED, not tonic's CANCELLED);
/// metrics and statistics recorded once; the error logged once in full before it becomes a
/// client-safe status; the request id echoed in the response metadata.
pub async fn boundary<T>(
    state: &AppState,
    call: Call,
    handler: impl Future<Output = Result<T>>,
) -> std::result::Result<Response<T>, Status>
where
    T: BatchSized,
{
    let span = tracing::info_span!("rpc", id = %call.request_id, rpc = call.rpc, model = %clip(&call.model, 64), peer = %call.client);
    async move {
        let started = Instant::now();
        let model = state.model_label(&call.model);
        let recording = state.metrics.recording;
        let inflight = recording.then(|| state.metrics.inflight.with_label_values(&[call.rpc]));
        if let Some(g) = &inflight {
            g.inc();
        }
        let result = match call.admitted.then(|| state.admission.admit(&call.client, &call.model)).transpose() {
            Err(e) => Err(e),
            // The permit, if any, lives until the handler is done.
            Ok(_permit) => match tokio::time::timeout_at(call.deadline.at().into(), handler).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded { stage: "waiting for the model" }),
            },
        };
        if let Some(g) = &inflight {
            g.dec();
        }
        let latency = started.elapsed();
        let code = match &result {
            Ok(_) => tonic::Code::Ok,
            Err(e) => e.code(),
        };
        let code_name = code_name(code);
        let device = call.device.get().map(Device::label);
        if recording {
            record(state, &call, model, code_name, device.as_deref(), latency, &result);
        }
        let micros = latency.as_micros();
        let mut response = match result {
            Ok(v) => {
                tracing::debug!(micros, device = ?device, "ok");
                Ok(Response::new(v))
            }
            Err(e) => {
                if code == tonic::Code::Internal {
                    tracing::error!(micros, device = ?device, error = ?e, "request failed");
                } else {
                    tracing::info!(micros, device = ?device, code = e.code_label(), error = %e, "request refused");
                }
                Err(Status::from(e))
            }
        };
        if let Ok(id) = call.request_id.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>() {
            match &mut response {
                Ok(r) => {
                    r.metadata_mut().insert("x-request-id", id);
                }
                Err(s) => {
                    s.metadata_mut().insert("x-request-id", id);
                }
            }
        }
        response
    }
    .instrument(span)
    .await
}

/// Records one finished call in the metrics and the Stats figures.
fn record<T: BatchSized>(
    state: &AppState,
    call: &Call,
    model: &str,
    code_name: &'static str,
    device: Option<&str>,
    latency: std::time::Duration,
    result: &Result<T>,
) {
    let m = &state.metrics;
    m.requests.with_label_values(&[call.rpc, model, code_name]).inc();
    m.request_duration.with_label_values(&[call.rpc, model]).observe(latency.as_secs_f64());
    if let Err(e) = &result {
        if let Some(reason) = rejection_reason(e) {
            m.rejected.with_label_values(&[call.rpc, model, reason]).inc();
        }
        if matches!(e, Error::DeadlineExceeded { stage } if !stage.starts_with("queued")) {
            m.deadline_exceeded.with_label_values(&[call.rpc, model, "handler"]).inc();
        }
    }
    state.stats.record(&Outcome {
        // Per-model figures count inference calls only (not metadata or admin calls).
        model: if call.admitted { model } else { "" },
        device,
        status: code_name,
        error: result.as_ref().err().map(Error::code_label),
        latency,
        batch_size: result.as_ref().ok().and_then(BatchSized::batch_size),
    });
}

/// Responses that say how large a batch their request ran in (for statistics).
pub trait BatchSized {
    /// Rows in the batch, when the request ran one.
    fn batch_size(&self) -> Option<usize> {
        None
    }
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
        Error::ShuttingDown => Some("shutting_down"),
        Error::EmptyModelName
        | Error::InvalidModelName { .. }
        | Error::InvalidDevice { .. }
        | Error::InvalidInput { .. } => Some("invalid"),
        _ => None,
    }
}
