//! `torchwire.v1.Admin`: the repository, each model's per-device state, and the operator's
//! levers: load (optionally pinned), unload, and ResetStats. Every RPC does its work inside the
//! boundary, so it is logged and counted like any other.

use tonic::{Request, Response, Status};

use super::{SharedState, call, serve_result};
use crate::device::DeviceRequest;
use crate::model::{InputSpec, ModelSpec};
use crate::proto::{self, admin_server::Admin};
use crate::registry::{DeviceStatus, LoadState, Settings};

/// The Admin service.
pub struct AdminService {
    state: SharedState,
}

impl AdminService {
    /// A service over the shared state.
    pub fn new(state: SharedState) -> Self {
        AdminService { state }
    }

    fn info(&self, spec: &ModelSpec) -> proto::ModelInfo {
        model_info(spec, &self.state.registry.status(spec))
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_models(&self, req: Request<proto::ListModelsRequest>) -> Reply<proto::ListModelsResponse> {
        let call = call(&self.state, "ListModels", &req, String::new(), false);
        serve_result(&self.state, call, async {
            Ok(proto::ListModelsResponse {
                models: self.state.registry.repository().specs().map(|s| self.info(s)).collect(),
            })
        })
        .await
    }

    async fn get_model(&self, req: Request<proto::GetModelRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "GetModel", &req, req.get_ref().model.clone(), false);
        let name = req.into_inner().model;
        serve_result(&self.state, call, async { self.state.registry.spec(&name).map(|s| self.info(&s)) }).await
    }

    async fn load_model(&self, req: Request<proto::LoadModelRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "LoadModel", &req, req.get_ref().model.clone(), false);
        let req = req.into_inner();
        let state = &self.state;
        serve_result(state, call, async move {
            let spec = state.registry.spec(&req.model)?;
            let device = state.registry.pick_device(&spec, DeviceRequest::parse(&req.device)?)?;
            if req.pin {
                state.registry.set_pinned(&spec, device, true);
            }
            state.registry.get_or_load(&spec, device).await?;
            Ok(model_info(&spec, &state.registry.status(&spec)))
        })
        .await
    }

    async fn unload_model(&self, req: Request<proto::UnloadModelRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "UnloadModel", &req, req.get_ref().model.clone(), false);
        let req = req.into_inner();
        let state = &self.state;
        serve_result(state, call, async move {
            let spec = state.registry.spec(&req.model)?;
            let device = if req.device.trim().is_empty() {
                None
            } else {
                match DeviceRequest::parse(&req.device)? {
                    DeviceRequest::Auto => None,
                    d => Some(state.registry.devices().resolve(d)?),
                }
            };
            state.registry.unload(&spec, device);
            Ok(model_info(&spec, &state.registry.status(&spec)))
        })
        .await
    }

    async fn reset_stats(&self, req: Request<proto::ResetStatsRequest>) -> Reply<proto::ResetStatsResponse> {
        let call = call(&self.state, "ResetStats", &req, String::new(), false);
        serve_result(&self.state, call, async {
            self.state.stats.reset();
            tracing::info!("request statistics reset (Prometheus counters are not)");
            Ok(proto::ResetStatsResponse {})
        })
        .await
    }
}

/// A model's manifest and per-device state in proto form.
pub fn model_info(spec: &ModelSpec, devices: &[DeviceStatus]) -> proto::ModelInfo {
    proto::ModelInfo {
        name: spec.name.clone(),
        kind: spec.kind.name().to_owned(),
        description: spec.description.clone(),
        inputs: spec.inputs.iter().map(input_spec).collect(),
        labels: spec.labels.clone(),
        provenance: Some(proto::Provenance {
            dataset: spec.provenance.dataset.clone(),
            split: spec.provenance.split.clone(),
            metrics: spec.provenance.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
            notes: spec.provenance.notes.clone(),
        }),
        devices: devices.iter().map(device_state).collect(),
    }
}

fn input_spec(i: &InputSpec) -> proto::InputSpec {
    proto::InputSpec {
        name: i.name.clone(),
        dtype: proto::DataType::from(i.dtype) as i32,
        shape: i.shape.clone(),
        features: i.features.iter().map(|f| proto::Feature { name: f.name.clone(), unit: f.unit.clone() }).collect(),
    }
}

/// A device's settings in proto form (GetModel, Stats).
pub fn settings(s: &Settings) -> proto::DeviceSettings {
    proto::DeviceSettings {
        max_batch_size: i32::try_from(s.max_batch_size).unwrap_or(i32::MAX),
        max_text_length: i32::try_from(s.max_text_length).unwrap_or(i32::MAX),
        precision: s.precision.to_owned(),
        intra_op_threads: i32::try_from(s.intra_op_threads).unwrap_or(i32::MAX),
        executor: s.executor.to_owned(),
    }
}

fn device_state(d: &DeviceStatus) -> proto::DeviceState {
    let state = match d.state {
        LoadState::Unloaded => proto::ModelState::Unloaded,
        LoadState::Loading => proto::ModelState::Loading,
        LoadState::Ready => proto::ModelState::Ready,
        LoadState::Failed => proto::ModelState::Failed,
    };
    proto::DeviceState {
        device: d.device.to_string(),
        state: state as i32,
        error: d.error.clone(),
        load_ms: i64::try_from(d.load_ms).unwrap_or(i64::MAX),
        last_used_unix_ms: d.last_used_unix_ms,
        memory_bytes: d.memory_bytes,
        pinned: d.pinned,
        loads: d.loads,
        evictions: d.evictions,
        settings: Some(settings(&d.settings)),
    }
}
