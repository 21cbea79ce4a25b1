//! The one inference path every front door calls: resolve the model version (by number,
//! label, canary split or the model's default) and the device, check the inputs, answer what
//! the response cache has (models that opt in), load the model if needed (single flight),
//! submit the rest as one job to its worker (bounded queue: a full one is RESOURCE_EXHAUSTED at
//! once), and await the answer.
//!
//! Runs inside the boundary (which holds the deadline and the admission permit); never touches
//! libtorch itself and knows no wire format.

use std::sync::Arc;
use std::time::Instant;

use tokio::sync::oneshot;

use crate::batch::{Job, JobOutput, Payload};
use crate::boundary::{AppState, Call, Handled, Ran};
use crate::device::Device;
use crate::error::{Cause, Error, Result};
use crate::model::ModelSpec;
use crate::request::{Answer, InferRequest, Inputs};
use crate::validate;

/// Runs one inference request for `call.model`. A text request that names no model runs on
/// the repository's default text model.
pub async fn infer(state: &AppState, call: &Call, req: InferRequest) -> Handled<Answer> {
    let resolved = resolve(state, call, &req);
    let (spec, device) = match resolved {
        Ok(x) => x,
        Err(e) => return Err(e).into(),
    };
    let result = run(state, call, &spec, device, req.inputs).await;
    let ran = Ran {
        device: Some(device),
        batch_size: result.as_ref().ok().map(|a| a.batch_size),
        version: Some(spec.version),
    };
    Handled { result, ran }
}

/// The model version and the device the request runs on.
fn resolve(state: &AppState, call: &Call, req: &InferRequest) -> Result<(Arc<ModelSpec>, Device)> {
    let text = matches!(req.inputs, Inputs::Texts(_));
    let spec = state.registry.catalog().resolve(&call.model, &req.version, &call.request_id, text)?;
    let device = state.registry.pick_device(&spec, req.device)?;
    Ok((spec, device))
}

async fn run(state: &AppState, call: &Call, spec: &Arc<ModelSpec>, device: Device, inputs: Inputs) -> Result<Answer> {
    let (payload, rows) = validate::payload(spec, inputs, state.registry.text_length(device), state.config.limits)?;
    let compute = |payload, rows| submit(state, call, spec, device, payload, rows);
    let (out, cached_rows, cache) = match (state.cache.enabled_for(spec), call.no_cache) {
        (true, false) => {
            let served = state.cache.serve(spec, payload, rows, compute).await?;
            let how = match served.cached_rows {
                0 => "miss",
                n if n == rows => "hit",
                _ => "partial",
            };
            (served.out, served.cached_rows, how)
        }
        (true, true) => (compute(payload, rows).await?, 0, "bypass"),
        (false, _) => (compute(payload, rows).await?, 0, ""),
    };
    if spec.text.is_some() && out.predictions.len() != rows {
        let cause = Cause::Output(format!(
            "expected {rows} predictions of {} labels, got {}",
            spec.labels.len(),
            out.predictions.len()
        ));
        return Err(Error::Forward { model: spec.name.clone(), cause: Arc::new(cause) });
    }
    Ok(Answer {
        spec: Arc::clone(spec),
        device,
        rows,
        outputs: out.outputs,
        predictions: out.predictions,
        texts: out.texts,
        queue: out.queue,
        compute: out.compute,
        batch_size: out.batch_size,
        total: call.arrived.elapsed(),
        cached_rows,
        cache,
    })
}

/// Loads the model if needed and runs `payload` as one job on its worker.
async fn submit(
    state: &AppState,
    call: &Call,
    spec: &Arc<ModelSpec>,
    device: Device,
    payload: Payload,
    rows: usize,
) -> Result<JobOutput> {
    let worker = state.registry.get_or_load(spec, device).await?;
    let (reply, answer) = oneshot::channel();
    worker.submit(Job { rpc: call.rpc, payload, rows, deadline: call.deadline, enqueued: Instant::now(), reply })?;
    answer.await.map_err(|_| Error::internal("worker dropped a job without answering"))?
}
