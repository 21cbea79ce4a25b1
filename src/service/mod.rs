//! The gRPC boundary: one tonic service per file, plus what they share — the application
//! state, each call's deadline and client key, and [`boundary`], which every handler goes
//! through so that admission, deadlines and logging (and, later, metrics) happen in one place.
//!
//! Protobuf types stop here and in `validate.rs`.

pub mod admin;
pub mod inference;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::admission::Admission;
use crate::config::Config;
use crate::deadline::Deadline;
use crate::error::{Error, Result, clip};
use crate::registry::ModelRegistry;
use crate::transport::CallInfo;

/// What every service shares.
pub struct AppState {
    /// Models and their workers.
    pub registry: Arc<ModelRegistry>,
    /// The server configuration.
    pub config: Arc<Config>,
    /// In-flight limit and rate limits.
    pub admission: Admission,
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
}

impl AppState {
    /// State over a registry.
    pub fn new(registry: Arc<ModelRegistry>, config: Arc<Config>) -> Self {
        let admission = Admission::new(config.admission);
        AppState { registry, config, admission, started: Instant::now(), next_request_id: AtomicU64::new(1) }
    }

    /// Describes a call: its deadline (the client's `grpc-timeout`, else the default, capped by
    /// the maximum, measured from arrival) and its client key.
    pub fn call<T>(&self, rpc: &'static str, req: &Request<T>, model: &str, admitted: bool) -> Call {
        let info = req.extensions().get::<CallInfo>();
        let arrived = info.map_or_else(Instant::now, |i| i.arrived);
        let asked = info.and_then(|i| i.grpc_timeout);
        let deadline = Deadline::for_call(arrived, asked, self.config.default_timeout, self.config.max_timeout);
        let md = req.metadata();
        let key = md.get("x-api-key").or_else(|| md.get("authorization")).and_then(|v| v.to_str().ok());
        let client = match (key, info) {
            (Some(k), _) => format!("key:{}", clip(k, 128)),
            (None, Some(i)) => format!("ip:{}", i.peer.ip()),
            (None, None) => "unknown".to_owned(),
        };
        Call { rpc, model: model.to_owned(), deadline, client, admitted }
    }
}

/// Runs one RPC: a span with request id, rpc and model; admission for inference calls; the
/// deadline enforced around the whole handler (DEADLINE_EXCEEDED, not tonic's CANCELLED); the
/// error logged once in full before it becomes a client-safe status.
pub async fn boundary<T>(
    state: &AppState,
    call: Call,
    handler: impl Future<Output = Result<T>>,
) -> std::result::Result<Response<T>, Status> {
    let id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("rpc", id, rpc = call.rpc, model = %clip(&call.model, 64));
    async move {
        let started = Instant::now();
        let result = match call.admitted.then(|| state.admission.admit(&call.client, &call.model)).transpose() {
            Err(e) => Err(e),
            // The permit, if any, lives until the handler is done.
            Ok(_permit) => match tokio::time::timeout_at(call.deadline.at().into(), handler).await {
                Ok(r) => r,
                Err(_) => Err(Error::DeadlineExceeded { stage: "waiting for the model" }),
            },
        };
        let micros = started.elapsed().as_micros();
        match result {
            Ok(v) => {
                tracing::debug!(micros, "ok");
                Ok(Response::new(v))
            }
            Err(e) => {
                if e.code() == tonic::Code::Internal {
                    tracing::error!(micros, client = %call.client, error = ?e, "request failed");
                } else {
                    tracing::info!(micros, error = %e, code = e.code_label(), "request refused");
                }
                Err(e.into())
            }
        }
    }
    .instrument(span)
    .await
}
