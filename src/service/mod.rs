//! The gRPC boundary: one tonic service per file, plus what they share — the application
//! state, the deadline of each call, and [`boundary`], which every handler goes through so that
//! deadlines, logging (and, later, metrics) are applied in one place.
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

use crate::config::Config;
use crate::deadline::Deadline;
use crate::error::{Error, Result};
use crate::registry::ModelRegistry;
use crate::transport::CallInfo;

/// What every service shares.
pub struct AppState {
    /// Models and their workers.
    pub registry: Arc<ModelRegistry>,
    /// The server configuration.
    pub config: Arc<Config>,
    /// When the server started.
    pub started: Instant,
    next_request_id: AtomicU64,
}

/// Shared handle to the application state.
pub type SharedState = Arc<AppState>;

impl AppState {
    /// State over a registry.
    pub fn new(registry: Arc<ModelRegistry>, config: Arc<Config>) -> Self {
        AppState { registry, config, started: Instant::now(), next_request_id: AtomicU64::new(1) }
    }

    /// The deadline of a call, measured from its arrival: its `grpc-timeout`, else the
    /// default, capped by the maximum. The transport put both in a [`CallInfo`].
    pub fn deadline<T>(&self, req: &Request<T>) -> Deadline {
        let info = req.extensions().get::<CallInfo>();
        let arrived = info.map_or_else(Instant::now, |i| i.arrived);
        let asked = info.and_then(|i| i.grpc_timeout);
        Deadline::for_call(arrived, asked, self.config.default_timeout, self.config.max_timeout)
    }
}

/// Runs one RPC: a span with request id and rpc, the deadline enforced around the whole
/// handler (DEADLINE_EXCEEDED, not tonic's CANCELLED), and the error logged once in full before
/// it becomes a client-safe status.
pub async fn boundary<T>(
    state: &AppState,
    rpc: &'static str,
    deadline: Deadline,
    handler: impl Future<Output = Result<T>>,
) -> std::result::Result<Response<T>, Status> {
    let id = state.next_request_id.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("rpc", id, rpc);
    async move {
        let started = Instant::now();
        let result = match tokio::time::timeout_at(deadline.at().into(), handler).await {
            Ok(r) => r,
            Err(_) => Err(Error::DeadlineExceeded { stage: "waiting for the model" }),
        };
        let micros = started.elapsed().as_micros();
        match result {
            Ok(v) => {
                tracing::debug!(micros, "ok");
                Ok(Response::new(v))
            }
            Err(e) => {
                if e.code() == tonic::Code::Internal {
                    tracing::error!(micros, error = ?e, "request failed");
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
