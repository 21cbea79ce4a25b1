//! Composition root: scans the repository, detects devices, builds the registry and services,
//! and serves gRPC (Inference, Admin, health, reflection v1 + v1alpha) on a listener the caller
//! bound, until the shutdown token fires; then drains and joins the workers.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::service::Routes;
use tonic_health::ServingStatus;
use tonic_health::server::HealthReporter;

use crate::config::Config;
use crate::device::Devices;
use crate::model::SharedFactory;
use crate::model::manifest::Repository;
use crate::model::torch::TorchFactory;
use crate::proto::admin_server::AdminServer;
use crate::proto::inference_server::InferenceServer;
use crate::registry::{ModelRegistry, RegistryConfig};
use crate::service::admin::AdminService;
use crate::service::inference::InferenceService;
use crate::service::{AppState, SharedState};
use crate::transport::{self, TransportConfig};

/// Serves the models in `config.model_dir` with libtorch until `shutdown` is cancelled.
pub async fn run(config: Config, listener: TcpListener, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_factory(config, listener, shutdown, Arc::new(TorchFactory)).await
}

/// Like [`run`], with the backend factory chosen by the caller (tests use the fake one).
pub async fn run_with_factory(
    config: Config,
    listener: TcpListener,
    shutdown: CancellationToken,
    factory: SharedFactory,
) -> anyhow::Result<()> {
    let state = build_state(config, factory).await?;
    let config = Arc::clone(&state.config);
    let registry = Arc::clone(&state.registry);

    let (health, health_service) = tonic_health::server::health_reporter();
    set_health(&health, ServingStatus::Serving).await;
    // Each reflection version also lists the other, so `list` shows both whichever a client speaks.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection_v1 = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
        .build_v1()
        .context("building reflection v1")?;
    let reflection_v1alpha = reflection()
        .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .context("building reflection v1alpha")?;

    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, models = registry.repository().len(), model_dir = %config.model_dir.display(), "serving gRPC");

    let drain = async {
        set_health(&health, ServingStatus::NotServing).await;
        tracing::info!("draining: no new connections, finishing in-flight requests");
    };
    let mut routes = Routes::builder();
    routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(InferenceServer::new(InferenceService::new(Arc::clone(&state))))
        .add_service(AdminServer::new(AdminService::new(Arc::clone(&state))));
    let transport =
        TransportConfig { grace: config.shutdown_grace, max_concurrent_streams: config.max_concurrent_streams };
    transport::serve(listener, routes.routes().prepare(), shutdown, transport, drain).await;
    tokio::task::spawn_blocking(move || registry.shutdown()).await.context("joining workers")?;
    tracing::info!("stopped");
    Ok(())
}

async fn build_state(config: Config, factory: SharedFactory) -> anyhow::Result<SharedState> {
    let dir = config.model_dir.clone();
    let cpu_only = config.cpu_only;
    // Both touch the disk or libtorch: keep them off the async workers.
    let (repo, devices) = tokio::task::spawn_blocking(move || {
        let repo = Repository::scan(&dir).with_context(|| format!("reading model directory {}", dir.display()))?;
        let devices = if cpu_only { Devices::cpu_only() } else { Devices::detect() };
        anyhow::Ok((repo, devices))
    })
    .await??;
    tracing::info!(models = ?repo.names(), gpus = devices.gpu_count(), "repository scanned");
    let workers = repo.len().clamp(1, 3);
    let registry = ModelRegistry::new(
        repo,
        devices,
        factory,
        RegistryConfig {
            queue_capacity: config.queue_capacity,
            threads_per_worker: config.threads_per_worker(workers),
            load_retry_backoff: config.load_retry_backoff,
            max_batch_size: config.max_batch_size,
        },
    );
    Ok(Arc::new(AppState::new(Arc::new(registry), Arc::new(config))))
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status("torchwire.v1.Inference", status).await;
    health.set_service_status("torchwire.v1.Admin", status).await;
}
