//! `torchwire.v1.Admin`: the repository, each model's per-device state, and the operator's
//! levers: load (optionally pinned) and unload. ResetStats lands with the observability work.

use tonic::{Request, Response, Status};

use super::{SharedState, boundary};
use crate::device::DeviceRequest;
use crate::error::Result;
use crate::model::{InputSpec, ModelSpec};
use crate::proto::{self, admin_server::Admin};
use crate::registry::{DeviceStatus, LoadState};

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

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_models(
        &self,
        req: Request<proto::ListModelsRequest>,
    ) -> Result<Response<proto::ListModelsResponse>, Status> {
        let call = self.state.call("ListModels", &req, "", false);
        let models = self.state.registry.repository().specs().map(|s| self.info(s)).collect();
        boundary(&self.state, call, async { Ok(proto::ListModelsResponse { models }) }).await
    }

    async fn get_model(&self, req: Request<proto::GetModelRequest>) -> Result<Response<proto::ModelInfo>, Status> {
        let call = self.state.call("GetModel", &req, &req.get_ref().model, false);
        let result = self.state.registry.spec(&req.get_ref().model).map(|s| self.info(&s));
        boundary(&self.state, call, async { result }).await
    }

    async fn load_model(&self, req: Request<proto::LoadModelRequest>) -> Result<Response<proto::ModelInfo>, Status> {
        let call = self.state.call("LoadModel", &req, &req.get_ref().model, false);
        let req = req.into_inner();
        let state = &self.state;
        boundary(&self.state, call, async move {
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

    async fn unload_model(
        &self,
        req: Request<proto::UnloadModelRequest>,
    ) -> Result<Response<proto::ModelInfo>, Status> {
        let call = self.state.call("UnloadModel", &req, &req.get_ref().model, false);
        let req = req.into_inner();
        let state = &self.state;
        boundary(&self.state, call, async move {
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

    async fn reset_stats(
        &self,
        req: Request<proto::ResetStatsRequest>,
    ) -> Result<Response<proto::ResetStatsResponse>, Status> {
        let call = self.state.call("ResetStats", &req, "", false);
        self.state.stats.reset();
        tracing::info!("request statistics reset (Prometheus counters are not)");
        boundary(&self.state, call, async { Ok(proto::ResetStatsResponse {}) }).await
    }
}

impl super::BatchSized for proto::ListModelsResponse {}
impl super::BatchSized for proto::ModelInfo {}
impl super::BatchSized for proto::ResetStatsResponse {}

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
        settings: Some(proto::DeviceSettings {
            max_batch_size: i32::try_from(d.max_batch_size).unwrap_or(i32::MAX),
            max_text_length: i32::try_from(d.max_text_length).unwrap_or(i32::MAX),
            precision: d.precision.to_owned(),
            intra_op_threads: i32::try_from(d.intra_op_threads).unwrap_or(i32::MAX),
        }),
    }
}
