//! `torchwire.v1.Admin`: the repository, each model's versions and per-device state, and the
//! operator's levers: load (optionally pinned), unload, ResetStats, ReloadRepository and
//! SetLabels. Every RPC does its work inside the boundary, so it is logged and counted like
//! any other.

use std::collections::BTreeMap;

use tonic::{Request, Response, Status};

use super::{SharedState, call, serve_result};
use crate::catalog::SwapStatus;
use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use crate::model::versions::{LabelTarget, is_label_name, split_model_name, split_target};
use crate::model::{InputSpec, ModelEntry, ModelSpec};
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

    fn info(&self, name: &str) -> Result<proto::ModelInfo> {
        model_info(&self.state, name)
    }
}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Admin for AdminService {
    async fn list_models(&self, req: Request<proto::ListModelsRequest>) -> Reply<proto::ListModelsResponse> {
        let call = call(&self.state, "ListModels", &req, String::new(), false);
        serve_result(&self.state, call, async {
            let names = self.state.registry.catalog().view().repo.names();
            Ok(proto::ListModelsResponse { models: names.iter().map(|n| self.info(n)).collect::<Result<_>>()? })
        })
        .await
    }

    async fn get_model(&self, req: Request<proto::GetModelRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "GetModel", &req, req.get_ref().model.clone(), false);
        let name = req.into_inner().model;
        serve_result(&self.state, call, async { self.info(split_model_name(&name)?.0) }).await
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
            model_info(state, &spec.name)
        })
        .await
    }

    async fn unload_model(&self, req: Request<proto::UnloadModelRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "UnloadModel", &req, req.get_ref().model.clone(), false);
        let req = req.into_inner();
        let state = &self.state;
        serve_result(state, call, async move {
            let (model, version) = split_model_name(&req.model)?;
            let entry = state.registry.catalog().entry(model)?;
            let version = match version {
                Some(_) => Some(state.registry.spec(&req.model)?.version),
                None => None,
            };
            let device = if req.device.trim().is_empty() {
                None
            } else {
                match DeviceRequest::parse(&req.device)? {
                    DeviceRequest::Auto => None,
                    d => Some(state.registry.devices().resolve(d)?),
                }
            };
            state.registry.unload(&entry.name, version, device);
            model_info(state, &entry.name)
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

    async fn reload_repository(
        &self,
        req: Request<proto::ReloadRepositoryRequest>,
    ) -> Reply<proto::ReloadRepositoryResponse> {
        let call = call(&self.state, "ReloadRepository", &req, String::new(), false);
        let wait = req.get_ref().wait;
        let state = &self.state;
        serve_result(state, call, async move {
            let s = crate::reload::reload(&state.registry, wait).await?;
            Ok(proto::ReloadRepositoryResponse {
                added: s.added,
                removed: s.removed,
                changed: s.changed,
                swapping: s.swapping,
                errors: s.errors.into_iter().collect(),
            })
        })
        .await
    }

    async fn set_labels(&self, req: Request<proto::SetLabelsRequest>) -> Reply<proto::ModelInfo> {
        let call = call(&self.state, "SetLabels", &req, req.get_ref().model.clone(), false);
        let req = req.into_inner();
        let state = &self.state;
        serve_result(state, call, async move {
            let entry = state.registry.catalog().entry(&req.model)?;
            let changes = parse_labels(&entry.name, &req.labels)?;
            crate::reload::set_labels(&state.registry, &entry.name, changes, req.wait).await?;
            model_info(state, &entry.name)
        })
        .await
    }
}

/// SetLabels' label map: each value `3`, `3=90,4=10`, or empty (remove).
fn parse_labels(
    model: &str,
    labels: &std::collections::HashMap<String, String>,
) -> Result<BTreeMap<String, Option<LabelTarget>>> {
    let bad = |reason: String| Error::InvalidLabels { model: model.to_owned(), reason };
    if labels.is_empty() {
        return Err(bad("`labels` is empty: give label -> version (or \"\" to remove a label)".into()));
    }
    let mut out = BTreeMap::new();
    for (label, value) in labels {
        if !is_label_name(label) || label == "default" {
            return Err(bad(format!("label {label:?} must match ^[a-z][a-z0-9_-]{{0,31}}$ and not be `default`")));
        }
        let value = value.trim();
        let target = if value.is_empty() {
            None
        } else if !value.contains('=') {
            Some(LabelTarget::One(
                positive(value).ok_or_else(|| bad(format!("{label}: {value:?} is not a positive version number")))?,
            ))
        } else {
            let mut split = Vec::new();
            for part in value.split(',') {
                let (v, w) = part.split_once('=').unwrap_or((part, ""));
                let v = positive(v.trim()).ok_or_else(|| bad(format!("{label}: {part:?} is not version=weight")))?;
                let w = w.trim().parse::<u32>().map_err(|_| bad(format!("{label}: {part:?} is not version=weight")))?;
                split.push((v, w));
            }
            Some(split_target(split).map_err(|e| bad(format!("{label}: {e}")))?)
        };
        out.insert(label.clone(), target);
    }
    Ok(out)
}

fn positive(s: &str) -> Option<u64> {
    s.parse::<u64>().ok().filter(|n| *n > 0)
}

/// A model's manifest (its default version's), versions, routes and per-device state in proto
/// form.
pub fn model_info(state: &SharedState, name: &str) -> Result<proto::ModelInfo> {
    let catalog = state.registry.catalog();
    let view = catalog.view();
    let entry = view.repo.get(name)?;
    let route = view.routes.get(name);
    let Some(spec) = route.and_then(|r| r.specs.values().next()).or_else(|| entry.latest()).cloned() else {
        return Err(Error::VersionNotFound {
            model: name.to_owned(),
            version: "(any)".to_owned(),
            available: catalog.resolve(name, "", "", false).err().map(|e| e.to_string()).unwrap_or_default(),
        });
    };
    let default_spec = route.map(|r| &r.specs[&r.default.pick(0)]).unwrap_or(&spec);
    let mut info = manifest_info(default_spec, &state.registry.status(default_spec));
    info.versions = versions(state, &entry, route);
    info.default_version = route.map(|r| r.default.describe()).unwrap_or_default();
    info.version_labels =
        route.map(|r| r.labels.iter().map(|(l, t)| (l.clone(), t.describe())).collect()).unwrap_or_default();
    info.version_policy = entry.versioning.policy.describe();
    let SwapStatus { pending, error, .. } = catalog.swap_status(name);
    info.swap_pending = pending.unwrap_or_default();
    info.swap_error =
        error.or_else(|| entry.manifest_error.clone().map(|e| format!("model.toml: {e}"))).unwrap_or_default();
    Ok(info)
}

/// Every version folder of `entry` (and routed versions no longer on disk).
fn versions(state: &SharedState, entry: &ModelEntry, route: Option<&crate::catalog::Route>) -> Vec<proto::VersionInfo> {
    let mut specs: BTreeMap<u64, &std::sync::Arc<ModelSpec>> = entry.versions.iter().map(|(v, s)| (*v, s)).collect();
    if let Some(r) = route {
        for (v, s) in &r.specs {
            specs.entry(*v).or_insert(s);
        }
    }
    let mut out: Vec<proto::VersionInfo> = specs
        .into_iter()
        .map(|(v, spec)| {
            let mut labels = Vec::new();
            if let Some(r) = route {
                if r.default.versions().contains(&v) {
                    labels.push("default".to_owned());
                }
                labels.extend(r.labels.iter().filter(|(_, t)| t.versions().contains(&v)).map(|(l, _)| l.clone()));
            }
            let status = if !labels.is_empty() { "routed" } else { "serving" };
            proto::VersionInfo {
                version: v.to_string(),
                status: status.to_owned(),
                labels,
                devices: state.registry.status(spec).iter().map(device_state).collect(),
                self_tests: i32::try_from(spec.self_test.len()).unwrap_or(i32::MAX),
                provenance: Some(provenance(spec)),
            }
        })
        .collect();
    out.extend(entry.not_served.iter().map(|(v, why)| {
        proto::VersionInfo {
            version: v.to_string(),
            status: format!("not served: {why}"),
            // A retired version still finishing its queue shows where.
            devices: state
                .registry
                .resident_states(&entry.name, *v)
                .into_iter()
                .map(|(d, s)| proto::DeviceState {
                    device: d.to_string(),
                    state: load_state(s) as i32,
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }));
    out.sort_by_key(|v| v.version.parse::<u64>().unwrap_or(0));
    out
}

fn provenance(spec: &ModelSpec) -> proto::Provenance {
    proto::Provenance {
        dataset: spec.provenance.dataset.clone(),
        split: spec.provenance.split.clone(),
        metrics: spec.provenance.metrics.iter().map(|(k, v)| (k.clone(), *v)).collect(),
        notes: spec.provenance.notes.clone(),
    }
}

/// One version's manifest and per-device state in proto form.
pub fn manifest_info(spec: &ModelSpec, devices: &[DeviceStatus]) -> proto::ModelInfo {
    proto::ModelInfo {
        name: spec.name.clone(),
        kind: spec.kind.name().to_owned(),
        description: spec.description.clone(),
        inputs: spec.inputs.iter().map(input_spec).collect(),
        labels: spec.labels.clone(),
        provenance: Some(provenance(spec)),
        devices: devices.iter().map(device_state).collect(),
        ..Default::default()
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

fn load_state(s: LoadState) -> proto::ModelState {
    match s {
        LoadState::Unloaded => proto::ModelState::Unloaded,
        LoadState::Loading => proto::ModelState::Loading,
        LoadState::Ready => proto::ModelState::Ready,
        LoadState::Failed => proto::ModelState::Failed,
    }
}

fn device_state(d: &DeviceStatus) -> proto::DeviceState {
    let state = load_state(d.state);
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
