//! torchwire: a gRPC server for TorchScript models.
//!
//! ```text
//! client ──gRPC──▶ transport   HTTP/2, TLS / mTLS, bearer keys (auth.rs), connection limits
//!                  └▶ service/   proto ⇄ domain, deadline, logging at the boundary
//!                     └▶ validate     shape, dtype, size, NaN → INVALID_ARGUMENT
//!                        └▶ registry  DashMap<(model, device), slot>: lazy single-flight load
//!                           └▶ worker  one OS thread per (model, device), bounded queue,
//!                                      drop expired / cancelled jobs → forward (no_grad) → reply
//! ```
//!
//! Seams for the work that follows (each lands in its own module):
//! - lifecycle (eviction, load/unload, warm-up): `registry.rs` owns slot state; `worker.rs`
//!   owns the thread and the model.
//! - batching and admission: `batch.rs` (jobs, batching policy), `worker.rs` (the loop).
//! - metrics: `metrics.rs` defines them; `service::boundary` is the one place every RPC passes
//!   through; workers record queue / compute / batch; the registry records loads / evictions;
//!   `http.rs` serves `/metrics`, `/healthz`, `/readyz`.
//! - KServe v2: a second service in `service/` over the same `ModelRegistry`.
//!
//! No libtorch call runs on a tokio worker thread: models live on their worker threads, and
//! device detection runs in `spawn_blocking`.

pub mod admission;
pub mod auth;
pub mod batch;
pub mod cli;
pub mod client;
pub mod config;
pub mod deadline;
pub mod device;
pub mod error;
pub mod http;
pub mod metrics;
pub mod model;
pub mod proto;
pub mod registry;
pub mod server;
pub mod service;
pub mod shutdown;
pub mod stats;
pub mod telemetry;
pub mod tokenize;
pub mod transport;
pub mod validate;
pub mod worker;

#[cfg(test)]
mod fuzz;
