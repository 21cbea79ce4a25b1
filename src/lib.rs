//! torchwire: a gRPC model server for TorchScript models.
//!
//! One path from the socket to the model, whichever front door a call comes in by:
//!
//! ```text
//! socket ─▶ transport.rs   HTTP/2 and HTTP/1.1 (hyper), TLS / mTLS, bearer keys (auth.rs),
//!    │                     connection limits; decides each call's facts once: arrival,
//!    │                     deadline, client, request id; gRPC to service/, the rest to rest/
//!    ▼
//! rest/                  the HTTP/JSON door, converters only (JSON ⇄ proto, then service/):
//!    │                     KServe v2 REST (/v2), torchwire JSON (/v1), the status page (/)
//!    ▼
//! service/               front doors, converters only (proto ⇄ domain):
//!    │  inference.rs       torchwire.v1 Predict / Sentiment / Stats   (torchwire_convert.rs)
//!    │  kserve.rs          KServe v2 ModelInfer and metadata          (kserve_convert.rs)
//!    │  admin.rs           Admin: models, load / unload, ResetStats
//!    ▼
//! boundary.rs            one span per call: admission (admission.rs), the deadline (deadline.rs),
//!    │                   metrics (metrics.rs), Stats figures (stats.rs), the one log line
//!    ▼
//! infer.rs               the one inference path (request.rs: its domain types)
//!    ├▶ validate.rs        domain inputs checked → the worker's payload (INVALID_ARGUMENT)
//!    ├▶ registry.rs        (model, device) → slot: lazy single-flight load, eviction, unload
//!    └▶ worker.rs          one OS thread per (model, device): bounded queue, dynamic batches
//!       │                  (batch.rs), expired / cancelled jobs dropped, no_grad; or, for a
//!       │                  model whose timed pass is tiny, inline.rs: the calling runtime
//!       │                  thread, flat combining; both run a batch with pass.rs
//!       ▼
//!    model/              the Backend trait: TorchScript through libtorch (torch.rs), a fake
//!                        for tests (fake.rs), manifests (manifest.rs); tokenize.rs for texts
//! ```
//!
//! Beside the path: `server.rs` composes it all and runs it until `shutdown.rs` says stop;
//! `http.rs` serves `/metrics`, `/healthz`, `/readyz`; `cli.rs` / `config.rs` turn flags into a
//! [`config::Config`]; `client.rs` holds the client commands; `error.rs` the one error enum
//! and its mapping to gRPC codes. No libtorch call runs on a tokio worker thread except a
//! fast-path model's pass (tens of microseconds, moved back to its thread if it turns slow):
//! models live on their worker threads, and device detection runs in `spawn_blocking`.

pub mod admission;
pub mod auth;
pub mod batch;
pub mod boundary;
pub mod cache;
pub mod catalog;
pub mod cli;
pub mod client;
pub mod config;
pub mod deadline;
pub mod device;
pub mod error;
pub mod http;
pub mod infer;
pub mod inline;
pub mod metrics;
pub mod model;
pub mod pass;
pub mod proto;
pub mod registry;
pub mod reload;
pub mod request;
pub mod rest;
pub mod selftest;
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
