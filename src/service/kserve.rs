//! `inference.GRPCInferenceService`: KServe v2 / Open Inference Protocol, wire-compatible with
//! Triton, so tritonclient, perf_analyzer and KServe clients work unchanged.
//!
//! It is a second front door to the same machinery: requests convert to the same domain
//! payloads, go through the same boundary (admission, deadlines, metrics, logs), the same
//! registry (lazy load, LRU) and the same workers (batching) as `Predict` and `Sentiment`.
//! Tabular and tensor models take their declared inputs; text models take one BYTES input of
//! UTF-8 strings, tokenised on the worker thread as for `Sentiment`.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use tonic::{Request, Response, Status};

use super::inference::run_job;
use super::{BatchSized, SharedState, boundary};
use crate::batch::Payload;
use crate::device::{Device, DeviceRequest};
use crate::error::{Error, Result, clip};
use crate::model::{DType, HostTensor, ModelSpec};
use crate::proto::kserve::{self as ks, grpc_inference_service_server::GrpcInferenceService};
use crate::registry::LoadState;
use crate::validate::{Limits, check_finite, check_shape};

/// The KServe v2 service.
pub struct KserveService {
    state: SharedState,
}

impl KserveService {
    /// A service over the shared state.
    pub fn new(state: SharedState) -> Self {
        KserveService { state }
    }
}

/// The only model version torchwire serves.
const VERSION: &str = "1";

/// KServe datatype string of a dtype.
pub fn datatype(d: DType) -> &'static str {
    match d {
        DType::F32 => "FP32",
        DType::F64 => "FP64",
        DType::F16 => "FP16",
        DType::BF16 => "BF16",
        DType::I64 => "INT64",
        DType::I32 => "INT32",
        DType::I8 => "INT8",
        DType::U8 => "UINT8",
        DType::Bool => "BOOL",
    }
}

fn dtype_of(s: &str) -> Option<DType> {
    Some(match s {
        "FP32" => DType::F32,
        "FP64" => DType::F64,
        "FP16" => DType::F16,
        "BF16" => DType::BF16,
        "INT64" => DType::I64,
        "INT32" => DType::I32,
        "INT8" => DType::I8,
        "UINT8" => DType::U8,
        "BOOL" => DType::Bool,
        _ => return None,
    })
}

fn config_type(d: DType) -> ks::DataType {
    match d {
        DType::F32 => ks::DataType::TypeFp32,
        DType::F64 => ks::DataType::TypeFp64,
        DType::F16 => ks::DataType::TypeFp16,
        DType::BF16 => ks::DataType::TypeBf16,
        DType::I64 => ks::DataType::TypeInt64,
        DType::I32 => ks::DataType::TypeInt32,
        DType::I8 => ks::DataType::TypeInt8,
        DType::U8 => ks::DataType::TypeUint8,
        DType::Bool => ks::DataType::TypeBool,
    }
}

/// The name of a text model's one input.
const TEXT_INPUT: &str = "text";
/// The output with per-label probabilities (classifiers).
const PROBABILITIES: &str = "probabilities";

/// Parses the BYTES wire form: each element a 4-byte little-endian length, then the bytes.
fn split_bytes(field: &str, raw: &[u8]) -> Result<Vec<Bytes>> {
    let mut out = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        let (len, tail) = rest.split_at_checked(4).ok_or_else(|| {
            Error::invalid(
                field,
                "BYTES data is a sequence of 4-byte little-endian lengths, each followed by that many bytes",
            )
        })?;
        let n = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let (item, tail) = tail.split_at_checked(n).ok_or_else(|| {
            Error::invalid(field, format!("element {} claims {n} bytes but only {} remain", out.len(), tail.len()))
        })?;
        out.push(Bytes::copy_from_slice(item));
        rest = tail;
    }
    Ok(out)
}

/// KServe inputs -> the domain payload and its row count.
pub(crate) fn infer_inputs(
    spec: &ModelSpec,
    req: &ks::ModelInferRequest,
    text_length: usize,
    limits: Limits,
) -> Result<(Payload, usize)> {
    let raw = !req.raw_input_contents.is_empty();
    if raw && req.inputs.iter().any(|i| i.contents.is_some()) {
        return Err(Error::invalid("raw_input_contents", "use raw_input_contents or typed contents, not both"));
    }
    if raw && req.raw_input_contents.len() != req.inputs.len() {
        return Err(Error::invalid(
            "raw_input_contents",
            format!("one entry per input: {} inputs, {} raw entries", req.inputs.len(), req.raw_input_contents.len()),
        ));
    }
    if let Some(text) = &spec.text {
        let [input] = req.inputs.as_slice() else {
            return Err(Error::invalid(
                "inputs",
                format!("model `{}` takes one BYTES input `{TEXT_INPUT}`, got {} inputs", spec.name, req.inputs.len()),
            ));
        };
        if input.datatype != "BYTES" {
            return Err(Error::invalid(
                "inputs[0].datatype",
                format!("text models take BYTES, got {:?}", clip(&input.datatype, 16)),
            ));
        }
        let items = if raw {
            split_bytes("raw_input_contents[0]", &req.raw_input_contents[0])?
        } else {
            input.contents.as_ref().map(|c| c.bytes_contents.clone()).unwrap_or_default()
        };
        let n = items.len();
        let shape_ok = matches!(input.shape.as_slice(), [rows] | [rows, 1] if *rows >= 0 && *rows as usize == n);
        if !shape_ok {
            return Err(Error::invalid(
                "inputs[0].shape",
                format!("shape must be [N] or [N, 1] with N = {n} strings, got {:?}", input.shape),
            ));
        }
        if n == 0 {
            return Err(Error::invalid("inputs[0]", "at least one string is required"));
        }
        if n > limits.max_texts {
            return Err(Error::invalid(
                "inputs[0]",
                format!("at most {} texts per request, got {n}", limits.max_texts),
            ));
        }
        let mut texts = Vec::with_capacity(n);
        for (i, b) in items.into_iter().enumerate() {
            if b.len() > limits.max_text_bytes {
                return Err(Error::invalid(
                    format!("inputs[0][{i}]"),
                    format!("a text may have at most {} bytes, got {}", limits.max_text_bytes, b.len()),
                ));
            }
            let t = String::from_utf8(b.to_vec())
                .map_err(|_| Error::invalid(format!("inputs[0][{i}]"), "texts must be UTF-8"))?;
            texts.push(t);
        }
        let max_length = text_length.min(text.max_length);
        return Ok((Payload::Texts { texts, max_length }, n));
    }
    if req.inputs.len() != spec.inputs.len() {
        let names: Vec<&str> = spec.inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(Error::invalid(
            "inputs",
            format!("model `{}` takes {} input(s) {names:?}, got {}", spec.name, names.len(), req.inputs.len()),
        ));
    }
    let mut tensors: Vec<Option<HostTensor>> = vec![None; spec.inputs.len()];
    for (i, input) in req.inputs.iter().enumerate() {
        let field = format!("inputs[{i}]");
        let idx = spec.inputs.iter().position(|s| s.name == input.name).ok_or_else(|| {
            let names: Vec<&str> = spec.inputs.iter().map(|s| s.name.as_str()).collect();
            Error::invalid(
                format!("{field}.name"),
                format!("model `{}` has no input {:?}; its inputs are {names:?}", spec.name, clip(&input.name, 64)),
            )
        })?;
        if tensors[idx].is_some() {
            return Err(Error::invalid(format!("{field}.name"), format!("input `{}` given twice", input.name)));
        }
        let want = &spec.inputs[idx];
        let dtype = dtype_of(&input.datatype).ok_or_else(|| {
            Error::invalid(format!("{field}.datatype"), format!("unknown datatype {:?}", clip(&input.datatype, 16)))
        })?;
        if dtype != want.dtype {
            return Err(Error::invalid(
                format!("{field}.datatype"),
                format!("input `{}` takes {}, got {}", want.name, datatype(want.dtype), input.datatype),
            ));
        }
        let numel = check_shape(&field, &input.shape, want, limits)?;
        let data = if raw {
            let bytes = &req.raw_input_contents[i];
            if bytes.len() != numel * dtype.size() {
                return Err(Error::invalid(
                    format!("raw_input_contents[{i}]"),
                    format!(
                        "shape {:?} of {} needs {} bytes, got {}",
                        input.shape,
                        input.datatype,
                        numel * dtype.size(),
                        bytes.len()
                    ),
                ));
            }
            bytes.to_vec()
        } else {
            typed_bytes(&field, input.contents.as_ref(), dtype, numel)?
        };
        let t = HostTensor { name: want.name.clone(), dtype, shape: input.shape.clone(), data };
        if dtype.is_float() && !spec.allow_non_finite {
            check_finite(&field, &t)?;
        }
        tensors[idx] = Some(t);
    }
    let tensors: Vec<HostTensor> = tensors.into_iter().flatten().collect();
    let rows = tensors.first().map_or(0, |t| t.shape[0]);
    if tensors.iter().any(|t| t.shape[0] != rows) {
        return Err(Error::invalid("inputs", "every input must share the first (batch) dimension"));
    }
    let rows = usize::try_from(rows).unwrap_or(0);
    if rows == 0 || rows > limits.max_rows {
        return Err(Error::invalid(
            "inputs",
            format!("the batch dimension must be 1 to {}, got {rows}", limits.max_rows),
        ));
    }
    Ok((Payload::Tensors(tensors), rows))
}

fn typed_bytes(field: &str, contents: Option<&ks::InferTensorContents>, dtype: DType, numel: usize) -> Result<Vec<u8>> {
    let empty = ks::InferTensorContents::default();
    let c = contents.unwrap_or(&empty);
    let check = |name: &str, len: usize| {
        if len == numel {
            Ok(())
        } else {
            Err(Error::invalid(
                format!("{field}.contents.{name}"),
                format!("the shape needs {numel} elements, got {len}"),
            ))
        }
    };
    Ok(match dtype {
        DType::F32 => {
            check("fp32_contents", c.fp32_contents.len())?;
            c.fp32_contents.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::F64 => {
            check("fp64_contents", c.fp64_contents.len())?;
            c.fp64_contents.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I64 => {
            check("int64_contents", c.int64_contents.len())?;
            c.int64_contents.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I32 => {
            check("int_contents", c.int_contents.len())?;
            c.int_contents.iter().flat_map(|v| v.to_le_bytes()).collect()
        }
        DType::I8 => {
            check("int_contents", c.int_contents.len())?;
            c.int_contents
                .iter()
                .map(|&v| i8::try_from(v).map(|x| x.to_le_bytes()[0]))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::invalid(format!("{field}.contents.int_contents"), "values must fit in INT8"))?
        }
        DType::U8 => {
            check("uint_contents", c.uint_contents.len())?;
            c.uint_contents
                .iter()
                .map(|&v| u8::try_from(v))
                .collect::<std::result::Result<_, _>>()
                .map_err(|_| Error::invalid(format!("{field}.contents.uint_contents"), "values must fit in UINT8"))?
        }
        DType::Bool => {
            check("bool_contents", c.bool_contents.len())?;
            c.bool_contents.iter().map(|&b| u8::from(b)).collect()
        }
        DType::F16 | DType::BF16 => {
            return Err(Error::invalid(field, format!("{} data travels in raw_input_contents", datatype(dtype))));
        }
    })
}

fn infer_output(t: HostTensor) -> (ks::model_infer_response::InferOutputTensor, Bytes) {
    let meta = ks::model_infer_response::InferOutputTensor {
        name: t.name,
        datatype: datatype(t.dtype).to_owned(),
        shape: t.shape,
        ..Default::default()
    };
    (meta, Bytes::from(t.data))
}

fn timeout_param(req: &ks::ModelInferRequest) -> Result<Option<Duration>> {
    match req.parameters.get("timeout").and_then(|p| p.parameter_choice.as_ref()) {
        None => Ok(None),
        Some(ks::infer_parameter::ParameterChoice::Int64Param(us)) if *us > 0 => {
            Ok(Some(Duration::from_micros(*us as u64)))
        }
        Some(ks::infer_parameter::ParameterChoice::Uint64Param(us)) if *us > 0 => Ok(Some(Duration::from_micros(*us))),
        Some(_) => Err(Error::invalid("parameters.timeout", "must be a positive int64 of microseconds")),
    }
}

fn check_version(v: &str) -> Result<()> {
    if v.is_empty() || v == VERSION {
        Ok(())
    } else {
        Err(Error::invalid(
            "model_version",
            format!("torchwire serves version \"1\" (or empty), got {:?}", clip(v, 16)),
        ))
    }
}

async fn model_infer(
    state: &SharedState,
    req: ks::ModelInferRequest,
    deadline: crate::deadline::Deadline,
    cell: Arc<OnceLock<Device>>,
) -> Result<ks::ModelInferResponse> {
    let spec = state.registry.spec(&req.model_name)?;
    check_version(&req.model_version)?;
    let device = state.registry.pick_device(&spec, DeviceRequest::Auto)?;
    let _ = cell.set(device);
    let (payload, rows) = infer_inputs(&spec, &req, state.registry.text_length(device), state.config.limits)?;
    let out = run_job(state, "ModelInfer", &spec, device, deadline, payload, rows).await?;
    let mut outputs: Vec<HostTensor> = out.outputs;
    if !out.predictions.is_empty() {
        let probs: Vec<f32> = out.predictions.iter().flat_map(|p| p.probabilities.iter().copied()).collect();
        let labels = out.predictions[0].probabilities.len() as i64;
        outputs.push(HostTensor::from_f32(PROBABILITIES, vec![rows as i64, labels], &probs));
    }
    if !req.outputs.is_empty() {
        if let Some(missing) = req.outputs.iter().find(|o| !outputs.iter().any(|t| t.name == o.name)) {
            let names: Vec<&str> = outputs.iter().map(|t| t.name.as_str()).collect();
            return Err(Error::invalid(
                "outputs",
                format!("model `{}` has no output {:?}; its outputs are {names:?}", spec.name, clip(&missing.name, 64)),
            ));
        }
        outputs.retain(|t| req.outputs.iter().any(|o| o.name == t.name));
    }
    let (metas, raws): (Vec<_>, Vec<_>) = outputs.into_iter().map(infer_output).unzip();
    Ok(ks::ModelInferResponse {
        model_name: spec.name.clone(),
        model_version: VERSION.to_owned(),
        id: req.id,
        parameters: Default::default(),
        outputs: metas,
        raw_output_contents: raws,
    })
}

fn output_metadata(spec: &ModelSpec) -> Vec<ks::model_metadata_response::TensorMetadata> {
    let labels = spec.labels.len() as i64;
    let dims = if labels > 0 { vec![-1, labels] } else { vec![-1, -1] };
    let mut out = vec![ks::model_metadata_response::TensorMetadata {
        name: "output_0".into(),
        datatype: "FP32".into(),
        shape: dims.clone(),
    }];
    if labels > 0 {
        out.push(ks::model_metadata_response::TensorMetadata {
            name: PROBABILITIES.into(),
            datatype: "FP32".into(),
            shape: dims,
        });
    }
    out
}

fn model_metadata(spec: &ModelSpec) -> ks::ModelMetadataResponse {
    let inputs = if spec.text.is_some() {
        vec![ks::model_metadata_response::TensorMetadata {
            name: TEXT_INPUT.into(),
            datatype: "BYTES".into(),
            shape: vec![-1, 1],
        }]
    } else {
        spec.inputs
            .iter()
            .map(|i| ks::model_metadata_response::TensorMetadata {
                name: i.name.clone(),
                datatype: datatype(i.dtype).into(),
                shape: i.shape.clone(),
            })
            .collect()
    };
    ks::ModelMetadataResponse {
        name: spec.name.clone(),
        versions: vec![VERSION.to_owned()],
        platform: "pytorch_libtorch".into(),
        inputs,
        outputs: output_metadata(spec),
    }
}

fn model_config(spec: &ModelSpec, max_batch: usize) -> ks::ModelConfig {
    let input = if spec.text.is_some() {
        vec![ks::ModelInput {
            name: TEXT_INPUT.into(),
            data_type: ks::DataType::TypeString as i32,
            dims: vec![1],
            ..Default::default()
        }]
    } else {
        spec.inputs
            .iter()
            .map(|i| ks::ModelInput {
                name: i.name.clone(),
                data_type: config_type(i.dtype) as i32,
                dims: i.shape[1..].to_vec(),
                ..Default::default()
            })
            .collect()
    };
    let output = output_metadata(spec)
        .into_iter()
        .map(|o| ks::ModelOutput {
            name: o.name,
            data_type: ks::DataType::TypeFp32 as i32,
            dims: o.shape[1..].to_vec(),
            ..Default::default()
        })
        .collect();
    ks::ModelConfig {
        name: spec.name.clone(),
        platform: "pytorch_libtorch".into(),
        backend: "pytorch".into(),
        max_batch_size: i32::try_from(max_batch).unwrap_or(i32::MAX),
        input,
        output,
        scheduling_choice: Some(ks::model_config::SchedulingChoice::DynamicBatching(ks::ModelDynamicBatching {
            preferred_batch_size: vec![],
            max_queue_delay_microseconds: u64::try_from(spec.max_queue_delay.as_micros()).unwrap_or(u64::MAX),
        })),
    }
}

impl BatchSized for ks::ServerLiveResponse {}
impl BatchSized for ks::ServerReadyResponse {}
impl BatchSized for ks::ModelReadyResponse {}
impl BatchSized for ks::ServerMetadataResponse {}
impl BatchSized for ks::ModelMetadataResponse {}
impl BatchSized for ks::ModelInferResponse {}
impl BatchSized for ks::ModelConfigResponse {}
impl BatchSized for ks::ModelStatisticsResponse {}
impl BatchSized for ks::RepositoryIndexResponse {}
impl BatchSized for ks::RepositoryModelLoadResponse {}
impl BatchSized for ks::RepositoryModelUnloadResponse {}

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl GrpcInferenceService for KserveService {
    async fn server_live(&self, req: Request<ks::ServerLiveRequest>) -> Reply<ks::ServerLiveResponse> {
        let call = self.state.call("ServerLive", &req, "", false);
        boundary(&self.state, call, async { Ok(ks::ServerLiveResponse { live: true }) }).await
    }

    async fn server_ready(&self, req: Request<ks::ServerReadyRequest>) -> Reply<ks::ServerReadyResponse> {
        let call = self.state.call("ServerReady", &req, "", false);
        let ready = self.state.ready.load(std::sync::atomic::Ordering::Acquire);
        boundary(&self.state, call, async move { Ok(ks::ServerReadyResponse { ready }) }).await
    }

    /// Ready = the model exists and its last load on its default device did not fail: with
    /// lazy loading, a model that is not resident yet still answers (it loads on demand).
    async fn model_ready(&self, req: Request<ks::ModelReadyRequest>) -> Reply<ks::ModelReadyResponse> {
        let call = self.state.call("ModelReady", &req, &req.get_ref().name, false);
        let state = Arc::clone(&self.state);
        let req = req.into_inner();
        boundary(&self.state, call, async move {
            let spec = state.registry.spec(&req.name)?;
            check_version(&req.version)?;
            let device = state.registry.pick_device(&spec, DeviceRequest::Auto)?;
            let failed =
                state.registry.status(&spec).iter().any(|d| d.device == device && d.state == LoadState::Failed);
            Ok(ks::ModelReadyResponse { ready: !failed })
        })
        .await
    }

    async fn server_metadata(&self, req: Request<ks::ServerMetadataRequest>) -> Reply<ks::ServerMetadataResponse> {
        let call = self.state.call("ServerMetadata", &req, "", false);
        boundary(&self.state, call, async {
            Ok(ks::ServerMetadataResponse {
                name: "torchwire".into(),
                version: env!("CARGO_PKG_VERSION").into(),
                extensions: ["model_repository", "statistics", "model_configuration"].map(String::from).to_vec(),
            })
        })
        .await
    }

    async fn model_metadata(&self, req: Request<ks::ModelMetadataRequest>) -> Reply<ks::ModelMetadataResponse> {
        let call = self.state.call("ModelMetadata", &req, &req.get_ref().name, false);
        let result = self
            .state
            .registry
            .spec(&req.get_ref().name)
            .and_then(|s| check_version(&req.get_ref().version).map(|()| model_metadata(&s)));
        boundary(&self.state, call, async { result }).await
    }

    async fn model_infer(&self, req: Request<ks::ModelInferRequest>) -> Reply<ks::ModelInferResponse> {
        let mut call = self.state.call("ModelInfer", &req, &req.get_ref().model_name, true);
        let req = req.into_inner();
        let timeout = timeout_param(&req);
        if let Ok(Some(t)) = timeout {
            call.deadline = call.deadline.tightened(t);
        }
        let (deadline, cell) = (call.deadline, Arc::clone(&call.device));
        let state = Arc::clone(&self.state);
        boundary(&self.state, call, async move {
            timeout?;
            model_infer(&state, req, deadline, cell).await
        })
        .await
    }

    async fn model_config(&self, req: Request<ks::ModelConfigRequest>) -> Reply<ks::ModelConfigResponse> {
        let call = self.state.call("ModelConfig", &req, &req.get_ref().name, false);
        let state = Arc::clone(&self.state);
        let req = req.into_inner();
        boundary(&self.state, call, async move {
            let spec = state.registry.spec(&req.name)?;
            check_version(&req.version)?;
            let device = state.registry.pick_device(&spec, DeviceRequest::Auto)?;
            let max_batch =
                state.registry.status(&spec).iter().find(|d| d.device == device).map_or(1, |d| d.max_batch_size);
            Ok(ks::ModelConfigResponse { config: Some(model_config(&spec, max_batch)) })
        })
        .await
    }

    async fn model_statistics(&self, req: Request<ks::ModelStatisticsRequest>) -> Reply<ks::ModelStatisticsResponse> {
        let call = self.state.call("ModelStatistics", &req, &req.get_ref().name, false);
        let state = Arc::clone(&self.state);
        let ks::ModelStatisticsRequest { name, version } = req.into_inner();
        boundary(&self.state, call, async move {
            check_version(&version)?;
            let specs: Vec<Arc<ModelSpec>> = if name.is_empty() {
                state.registry.repository().specs().cloned().collect()
            } else {
                vec![state.registry.spec(&name)?]
            };
            let snap = state.stats.snapshot(None);
            let model_stats = specs
                .iter()
                .map(|spec| {
                    let figures: Vec<_> =
                        snap.models.iter().filter(|((m, _), _)| *m == spec.name).map(|(_, f)| f).collect();
                    let requests: u64 = figures.iter().map(|f| f.requests).sum();
                    let errors: u64 = figures.iter().map(|f| f.errors).sum();
                    let ns = |f: &&crate::stats::ModelFigures| (f.latency.avg_ms * 1e6 * f.requests as f64) as u64;
                    let total_ns: u64 = figures.iter().map(ns).sum();
                    let last = state.registry.status(spec).iter().map(|d| d.last_used_unix_ms).max().unwrap_or(0);
                    ks::ModelStatistics {
                        name: spec.name.clone(),
                        version: VERSION.into(),
                        last_inference: u64::try_from(last).unwrap_or(0),
                        inference_count: requests - errors,
                        execution_count: requests - errors,
                        inference_stats: Some(ks::InferStatistics {
                            success: Some(ks::StatisticDuration { count: requests - errors, ns: total_ns }),
                            fail: Some(ks::StatisticDuration { count: errors, ns: 0 }),
                            ..Default::default()
                        }),
                        batch_stats: vec![],
                    }
                })
                .collect();
            Ok(ks::ModelStatisticsResponse { model_stats })
        })
        .await
    }

    async fn repository_index(&self, req: Request<ks::RepositoryIndexRequest>) -> Reply<ks::RepositoryIndexResponse> {
        let call = self.state.call("RepositoryIndex", &req, "", false);
        let only_ready = req.get_ref().ready;
        let models = self
            .state
            .registry
            .repository()
            .specs()
            .filter_map(|spec| {
                let st = self.state.registry.status(spec);
                let (state, reason) = if st.iter().any(|d| d.state == LoadState::Ready) {
                    ("READY", String::new())
                } else if st.iter().any(|d| d.state == LoadState::Loading) {
                    ("LOADING", String::new())
                } else if let Some(f) = st.iter().find(|d| d.state == LoadState::Failed) {
                    ("UNAVAILABLE", format!("load failed: {}", f.error.lines().next().unwrap_or("")))
                } else {
                    ("UNAVAILABLE", "unloaded (loads on first request)".to_owned())
                };
                (!only_ready || state == "READY").then(|| ks::repository_index_response::ModelIndex {
                    name: spec.name.clone(),
                    version: VERSION.into(),
                    state: state.into(),
                    reason,
                })
            })
            .collect();
        boundary(&self.state, call, async { Ok(ks::RepositoryIndexResponse { models }) }).await
    }

    async fn repository_model_load(
        &self,
        req: Request<ks::RepositoryModelLoadRequest>,
    ) -> Reply<ks::RepositoryModelLoadResponse> {
        let call = self.state.call("RepositoryModelLoad", &req, &req.get_ref().model_name, false);
        let state = Arc::clone(&self.state);
        let name = req.into_inner().model_name;
        boundary(&self.state, call, async move {
            let spec = state.registry.spec(&name)?;
            let device = state.registry.pick_device(&spec, DeviceRequest::Auto)?;
            state.registry.get_or_load(&spec, device).await?;
            Ok(ks::RepositoryModelLoadResponse {})
        })
        .await
    }

    async fn repository_model_unload(
        &self,
        req: Request<ks::RepositoryModelUnloadRequest>,
    ) -> Reply<ks::RepositoryModelUnloadResponse> {
        let call = self.state.call("RepositoryModelUnload", &req, &req.get_ref().model_name, false);
        let result = self.state.registry.spec(&req.get_ref().model_name).map(|spec| {
            self.state.registry.unload(&spec, None);
        });
        boundary(&self.state, call, async move { result.map(|()| ks::RepositoryModelUnloadResponse {}) }).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_wire_form_parses_and_rejects_truncation() {
        let mut raw = Vec::new();
        for s in ["héllo", "", "world"] {
            raw.extend_from_slice(&(s.len() as u32).to_le_bytes());
            raw.extend_from_slice(s.as_bytes());
        }
        let items = split_bytes("x", &raw).unwrap();
        assert_eq!(items.len(), 3);
        assert_eq!(&items[0][..], "héllo".as_bytes());
        assert!(split_bytes("x", &raw[..raw.len() - 1]).unwrap_err().to_string().contains("remain"));
        assert!(split_bytes("x", &[1, 0]).is_err());
    }

    #[test]
    fn datatypes_round_trip() {
        for d in
            [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool]
        {
            assert_eq!(dtype_of(datatype(d)), Some(d));
        }
        assert_eq!(dtype_of("COMPLEX64"), None);
    }
}
