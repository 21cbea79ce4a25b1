//! `torchwire.v1.Inference`: Predict and Sentiment (Stats lands with the observability work).
//!
//! A Predict goes: model name -> spec, device -> resolved device, request -> validated inputs,
//! then the (model, device) worker, loaded on first use; the answer comes back on a oneshot.

use std::sync::{Arc, OnceLock};
use std::time::Instant;

use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

use super::{SharedState, boundary};
use crate::batch::{Job, JobOutput, Payload};
use crate::deadline::Deadline;
use crate::device::{Device, DeviceRequest};
use crate::error::{Error, Result};
use crate::model::ModelSpec;
use crate::proto::{self, inference_server::Inference};
use crate::validate;

/// The Inference service.
pub struct InferenceService {
    state: SharedState,
}

impl InferenceService {
    /// A service over the shared state.
    pub fn new(state: SharedState) -> Self {
        InferenceService { state }
    }
}

#[tonic::async_trait]
impl Inference for InferenceService {
    async fn predict(&self, req: Request<proto::PredictRequest>) -> Result<Response<proto::PredictResponse>, Status> {
        let call = self.state.call("Predict", &req, &req.get_ref().model, true);
        let ctx = Ctx { deadline: call.deadline, device: Arc::clone(&call.device) };
        boundary(&self.state, call, predict(&self.state, req.into_inner(), ctx)).await
    }

    async fn sentiment(
        &self,
        req: Request<proto::SentimentRequest>,
    ) -> Result<Response<proto::SentimentResponse>, Status> {
        let call = self.state.call("Sentiment", &req, &req.get_ref().model, true);
        let ctx = Ctx { deadline: call.deadline, device: Arc::clone(&call.device) };
        boundary(&self.state, call, sentiment(&self.state, req.into_inner(), ctx)).await
    }

    async fn stats(&self, req: Request<proto::StatsRequest>) -> Result<Response<proto::StatsResponse>, Status> {
        let call = self.state.call("Stats", &req, &req.get_ref().model, false);
        let model = req.into_inner().model;
        let state = Arc::clone(&self.state);
        boundary(&self.state, call, async move {
            if !model.is_empty() {
                state.registry.spec(&model)?;
            }
            let sample = {
                let state = Arc::clone(&state);
                tokio::task::spawn_blocking(move || state.sampler.sample())
                    .await
                    .map_err(|e| Error::internal(format!("sampler: {e}")))?
            };
            Ok(super::stats::stats_response(&state, (!model.is_empty()).then_some(model.as_str()), sample))
        })
        .await
    }
}

/// What a handler needs from its call besides the request.
struct Ctx {
    deadline: Deadline,
    /// Set once the device is chosen, for per-device statistics.
    device: Arc<OnceLock<Device>>,
}

impl super::BatchSized for proto::PredictResponse {
    fn batch_size(&self) -> Option<usize> {
        self.timing.as_ref().and_then(|t| usize::try_from(t.batch_size).ok())
    }
}

impl super::BatchSized for proto::SentimentResponse {
    fn batch_size(&self) -> Option<usize> {
        self.timing.as_ref().and_then(|t| usize::try_from(t.batch_size).ok())
    }
}

impl super::BatchSized for proto::StatsResponse {}

async fn predict(state: &SharedState, req: proto::PredictRequest, ctx: Ctx) -> Result<proto::PredictResponse> {
    let arrived = Instant::now();
    let spec = state.registry.spec(&req.model)?;
    let device = state.registry.pick_device(&spec, DeviceRequest::parse(&req.device)?)?;
    let _ = ctx.device.set(device);
    let inputs = validate::predict_inputs(&spec, &req, state.config.limits)?;
    let out =
        run_job(state, "Predict", &spec, device, ctx.deadline, Payload::Tensors(inputs.tensors), inputs.rows).await?;
    Ok(proto::PredictResponse {
        model: spec.name.clone(),
        device: device.to_string(),
        predictions: out.predictions.iter().map(|p| classification(&spec, p)).collect(),
        timing: Some(timing(&out, arrived)),
        outputs: out.outputs.into_iter().map(proto::Tensor::from).collect(),
    })
}

async fn sentiment(state: &SharedState, req: proto::SentimentRequest, ctx: Ctx) -> Result<proto::SentimentResponse> {
    let arrived = Instant::now();
    let spec = if req.model.is_empty() {
        state.registry.repository().default_text_model()?
    } else {
        state.registry.spec(&req.model)?
    };
    let device = state.registry.pick_device(&spec, DeviceRequest::parse(&req.device)?)?;
    let _ = ctx.device.set(device);
    let inputs = validate::sentiment_inputs(&spec, req, state.registry.text_length(device), state.config.limits)?;
    let rows = inputs.texts.len();
    let out = run_job(
        state,
        "Sentiment",
        &spec,
        device,
        ctx.deadline,
        Payload::Texts { texts: inputs.texts, max_length: inputs.max_length },
        rows,
    )
    .await?;
    let results = out
        .predictions
        .iter()
        .zip(&out.texts)
        .map(|(p, info)| {
            let c = classification(&spec, p);
            proto::SentimentResult {
                label: c.label,
                score: c.score,
                probabilities: c.probabilities,
                tokens: i32::try_from(info.tokens).unwrap_or(i32::MAX),
                truncated: info.truncated,
            }
        })
        .collect::<Vec<_>>();
    if results.len() != rows {
        return Err(Error::Forward {
            model: spec.name.clone(),
            detail: format!("expected {rows} predictions of {} labels, got {}", spec.labels.len(), results.len()),
        });
    }
    Ok(proto::SentimentResponse {
        results,
        model: spec.name.clone(),
        device: device.to_string(),
        timing: Some(timing(&out, arrived)),
    })
}

/// Loads the model if needed, queues the job and waits for its answer.
pub(super) async fn run_job(
    state: &SharedState,
    rpc: &'static str,
    spec: &std::sync::Arc<ModelSpec>,
    device: crate::device::Device,
    deadline: Deadline,
    payload: Payload,
    rows: usize,
) -> Result<JobOutput> {
    let worker = state.registry.get_or_load(spec, device).await?;
    let (reply, answer) = oneshot::channel();
    worker.submit(Job { rpc, payload, rows, deadline, enqueued: Instant::now(), reply })?;
    answer.await.map_err(|_| Error::internal("worker dropped a job without answering"))?
}

fn timing(out: &JobOutput, arrived: Instant) -> proto::Timing {
    proto::Timing {
        queue_us: micros(out.queue),
        compute_us: micros(out.compute),
        total_us: micros(arrived.elapsed()),
        batch_size: i32::try_from(out.batch_size).unwrap_or(i32::MAX),
    }
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A prediction with the manifest's label names.
fn classification(spec: &ModelSpec, p: &crate::model::Prediction) -> proto::Classification {
    let label = |i: usize| spec.labels.get(i).cloned().unwrap_or_else(|| i.to_string());
    proto::Classification {
        label: label(p.index),
        label_index: i32::try_from(p.index).unwrap_or(i32::MAX),
        score: p.score,
        probabilities: p.probabilities.iter().enumerate().map(|(i, v)| (label(i), *v)).collect(),
    }
}
