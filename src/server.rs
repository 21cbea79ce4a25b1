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
use crate::inline::InlinePolicy;
use std::time::Duration;

use crate::boundary::{AppState, SharedState};
use crate::catalog::Catalog;
use crate::device::{Device, DeviceRequest, Devices};
use crate::metrics::Metrics;
use crate::model::ModelSpec;
use crate::model::Repository;
use crate::model::SharedFactory;
use crate::model::torch::TorchFactory;
use crate::proto::admin_server::AdminServer;
use crate::proto::inference_server::InferenceServer;
use crate::proto::kserve::grpc_inference_service_server::GrpcInferenceServiceServer;
use crate::registry::{ModelRegistry, RegistryConfig};
use crate::service::admin::AdminService;
use crate::service::inference::InferenceService;
use crate::service::kserve::KserveService;
use crate::transport::{self, TransportConfig};

/// The sockets the server answers on, bound by the caller (tests bind port 0).
pub struct Listeners {
    /// gRPC.
    pub grpc: TcpListener,
    /// HTTP `/metrics`, `/healthz`, `/readyz`; `None` = not served.
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `config`.
    pub async fn bind(config: &Config) -> anyhow::Result<Self> {
        let grpc =
            TcpListener::bind(config.grpc_addr).await.with_context(|| format!("binding gRPC {}", config.grpc_addr))?;
        let metrics = match config.metrics_addr {
            Some(a) => Some(TcpListener::bind(a).await.with_context(|| format!("binding metrics {a}"))?),
            None => None,
        };
        Ok(Listeners { grpc, metrics })
    }
}

/// Serves the models in `config.model_dir` with libtorch until `shutdown` is cancelled.
pub async fn run(config: Config, listeners: Listeners, shutdown: CancellationToken) -> anyhow::Result<()> {
    run_with_factory(config, listeners, shutdown, Arc::new(TorchFactory)).await
}

/// Like [`run`], with the backend factory chosen by the caller (tests use the fake one).
pub async fn run_with_factory(
    config: Config,
    listeners: Listeners,
    shutdown: CancellationToken,
    factory: SharedFactory,
) -> anyhow::Result<()> {
    let Listeners { grpc: listener, metrics: metrics_listener } = listeners;
    // Certificates are read before anything else starts, so a bad file stops start-up at once.
    let tls = config
        .tls
        .as_ref()
        .map(|files| crate::auth::server_tls_config(files).map(tokio_rustls::TlsAcceptor::from))
        .transpose()?;
    let state = build_state(config, factory).await?;
    let config = Arc::clone(&state.config);
    let registry = Arc::clone(&state.registry);

    let preload = parse_preload(&state)?;
    let (health, health_service) = tonic_health::server::health_reporter();
    let wait_for_preload = config.ready_after_preload && !preload.is_empty();
    set_health(&health, if wait_for_preload { ServingStatus::NotServing } else { ServingStatus::Serving }).await;
    state.ready.store(!wait_for_preload, std::sync::atomic::Ordering::Release);
    if let Some(l) = metrics_listener {
        let addr = l.local_addr().context("metrics listener address")?;
        tracing::info!(%addr, "serving HTTP /metrics, /healthz, /readyz");
        tokio::spawn(crate::http::serve(l, Arc::clone(&state), shutdown.clone()));
    }
    tokio::spawn(sampler_task(Arc::clone(&state), config.memory_sample_interval, shutdown.clone()));
    tokio::spawn(preload_task(Arc::clone(&state), preload, wait_for_preload.then(|| health.clone()), shutdown.clone()));
    tokio::spawn(crate::reload::maintain(Arc::clone(&registry), config.repository_poll, shutdown.clone()));
    if let Some(idle) = config.idle_unload {
        tokio::spawn(idle_unload_task(Arc::clone(&registry), idle, shutdown.clone()));
    }
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(
        %addr,
        models = registry.catalog().view().repo.len(),
        model_dir = %config.model_dir.display(),
        tls = tls.is_some(),
        mutual_tls = config.tls.as_ref().is_some_and(|t| t.client_ca.is_some()),
        api_keys = config.keys.api.len(),
        admin_keys = config.keys.admin.len(),
        reflection = config.reflection,
        "serving gRPC"
    );

    let drain = async {
        state.ready.store(false, std::sync::atomic::Ordering::Release);
        set_health(&health, ServingStatus::NotServing).await;
        tracing::info!("draining: no new connections, finishing in-flight requests");
    };
    let routes = routes(&state, health_service)?;
    let transport = transport_config(&state, tls);
    transport::serve(listener, routes, shutdown, transport, drain).await;
    tokio::task::spawn_blocking(move || registry.shutdown()).await.context("joining workers")?;
    tracing::info!("stopped");
    Ok(())
}

/// Every gRPC service the server answers: health, reflection (v1 and v1alpha, unless switched
/// off), torchwire.v1 Inference and Admin, and KServe v2.
fn routes(
    state: &SharedState,
    health: tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
) -> anyhow::Result<Routes> {
    let config = &state.config;
    let mut routes = Routes::builder();
    routes.add_service(health);
    if config.reflection {
        // Each reflection version also lists the other, so `list` shows both whichever a client speaks.
        let reflection = || {
            tonic_reflection::server::Builder::configure()
                .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
                .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        };
        let v1 = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET)
            .build_v1()
            .context("building reflection v1")?;
        let v1alpha = reflection()
            .register_encoded_file_descriptor_set(tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .context("building reflection v1alpha")?;
        routes.add_service(v1).add_service(v1alpha);
    }
    routes
        .add_service(
            // Answers are bounded by the request limits (rows, texts), not by this one.
            InferenceServer::new(InferenceService::new(Arc::clone(state)))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(AdminServer::new(AdminService::new(Arc::clone(state))))
        .add_service(
            GrpcInferenceServiceServer::new(KserveService::new(Arc::clone(state)))
                .max_decoding_message_size(config.max_message_bytes)
                .max_encoding_message_size(usize::MAX),
        );
    Ok(routes.routes().prepare())
}

/// The transport's settings; calls it refuses itself are counted in the state's metrics.
fn transport_config(state: &SharedState, tls: Option<tokio_rustls::TlsAcceptor>) -> TransportConfig {
    let config = &state.config;
    TransportConfig {
        grace: config.shutdown_grace,
        max_concurrent_streams: config.max_concurrent_streams,
        max_header_bytes: config.max_header_bytes,
        keepalive_interval: config.keepalive_interval,
        keepalive_timeout: config.keepalive_timeout,
        idle_timeout: config.idle_timeout,
        default_timeout: config.default_timeout,
        max_timeout: config.max_timeout,
        keys: Arc::new(config.keys.clone()),
        tls,
        max_message_bytes: config.max_message_bytes,
        refused: {
            let state = Arc::clone(state);
            Arc::new(move |rpc, error, latency| state.record_refused(rpc, error, latency))
        },
        rest: Arc::new(crate::rest::Door::new(Arc::clone(state))),
    }
}

async fn build_state(config: Config, factory: SharedFactory) -> anyhow::Result<SharedState> {
    let dir = config.model_dir.clone();
    let cpu_only = config.cpu_only;
    // Both touch the disk or libtorch: keep them off the async workers.
    let (repo, devices) = tokio::task::spawn_blocking(move || {
        let repo =
            Repository::scan(&dir, None).with_context(|| format!("reading model directory {}", dir.display()))?;
        let devices = if cpu_only { Devices::cpu_only() } else { Devices::detect() };
        anyhow::Ok((repo, devices))
    })
    .await??;
    tracing::info!(models = ?repo.names(), gpus = devices.gpu_count(), "repository scanned");
    let workers = repo.len().clamp(1, config.max_loaded_models.max(1));
    let metrics = Arc::new(Metrics::with_recording(config.metrics_recording));
    let registry = ModelRegistry::new(
        Catalog::new(repo, Some(config.model_dir.clone())),
        devices,
        factory,
        RegistryConfig {
            queue_capacity: config.queue_capacity,
            max_text_length: config.max_text_length,
            threads_per_worker: config.threads_per_worker(workers),
            load_retry_backoff: config.load_retry_backoff,
            max_batch_size: config.max_batch_size,
            max_loaded_models: config.max_loaded_models,
            memory_budget_bytes: config.model_memory_budget_bytes,
            warmup_runs: config.warmup_runs,
            inline: InlinePolicy { threshold: Duration::from_micros(config.inline_max_us), choice: config.executor },
        },
        Arc::clone(&metrics),
    );
    Ok(Arc::new(AppState::new(Arc::new(registry), Arc::new(config), metrics)))
}

/// Parses `--preload` against the repository and devices; a name or device that does not exist
/// stops start-up with a clear error rather than failing later in the background.
fn parse_preload(state: &AppState) -> anyhow::Result<Vec<(Arc<ModelSpec>, Device)>> {
    state
        .config
        .preload
        .iter()
        .map(|item| {
            let (name, device) = item.trim().split_once('@').unwrap_or((item.trim(), "auto"));
            let spec = state.registry.spec(name).map_err(|e| anyhow::anyhow!("--preload {item:?}: {e}"))?;
            let req = DeviceRequest::parse(device).map_err(|e| anyhow::anyhow!("--preload {item:?}: {e}"))?;
            let device =
                state.registry.pick_device(&spec, req).map_err(|e| anyhow::anyhow!("--preload {item:?}: {e}"))?;
            Ok((spec, device))
        })
        .collect()
}

/// Loads and pins the preloaded models after the port listens, so health answers at once
/// (the seed's start-up time-out fix). With `health`, turns `""` SERVING when all are ready.
async fn preload_task(
    state: Arc<AppState>,
    models: Vec<(Arc<ModelSpec>, Device)>,
    health: Option<HealthReporter>,
    shutdown: CancellationToken,
) {
    let registry = &state.registry;
    let mut all_ready = true;
    for (spec, device) in models {
        registry.set_pinned(&spec, device, true);
        let started = std::time::Instant::now();
        tokio::select! {
            res = registry.get_or_load(&spec, device) => match res {
                Ok(_) => tracing::info!(model = %spec.name, %device, ms = started.elapsed().as_millis() as u64, "preloaded"),
                Err(e) => {
                    all_ready = false;
                    tracing::error!(model = %spec.name, %device, error = ?e, "preload failed");
                }
            },
            () = shutdown.cancelled() => return,
        }
    }
    if let Some(health) = health {
        if all_ready {
            set_health(&health, ServingStatus::Serving).await;
            state.ready.store(true, std::sync::atomic::Ordering::Release);
            tracing::info!("every preloaded model is ready; health SERVING");
        } else {
            tracing::error!("a preloaded model failed; health stays NOT_SERVING (--ready-after-preload)");
        }
    }
}

/// Samples process memory, CPU and threads every `interval` into the Stats history.
async fn sampler_task(state: Arc<AppState>, interval: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval(interval.max(Duration::from_millis(100)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let s = Arc::clone(&state);
                if tokio::task::spawn_blocking(move || s.sampler.sample()).await.is_err() {
                    tracing::warn!("system sampler panicked");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

/// Every second or so, unloads models idle for longer than `idle`.
async fn idle_unload_task(registry: Arc<ModelRegistry>, idle: Duration, shutdown: CancellationToken) {
    let mut tick = tokio::time::interval((idle / 2).clamp(Duration::from_millis(50), Duration::from_secs(1)));
    loop {
        tokio::select! {
            _ = tick.tick() => {
                let n = registry.unload_idle(idle);
                if n > 0 {
                    tracing::info!(unloaded = n, idle_secs = idle.as_secs_f64(), "unloaded idle models");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}

async fn set_health(health: &HealthReporter, status: ServingStatus) {
    health.set_service_status("", status).await;
    health.set_service_status("torchwire.v1.Inference", status).await;
    health.set_service_status("torchwire.v1.Admin", status).await;
    health.set_service_status("inference.GRPCInferenceService", status).await;
}
