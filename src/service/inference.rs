//! `torchwire.v1.Inference`: Predict, Sentiment and Stats. Converters only: the request
//! becomes an [`InferRequest`] (see `torchwire_convert.rs`), runs through the one inference
//! path inside the boundary, and the answer becomes the response.

use std::sync::Arc;

use tonic::{Request, Response, Status};

use super::torchwire_convert::{predict_response, sentiment_response};
use super::{SharedState, call, serve, serve_result};
use crate::boundary::Handled;
use crate::error::{Error, Result};
use crate::infer::infer;
use crate::proto::{self, inference_server::Inference};
use crate::request::InferRequest;

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

type Reply<T> = std::result::Result<Response<T>, Status>;

#[tonic::async_trait]
impl Inference for InferenceService {
    async fn predict(&self, req: Request<proto::PredictRequest>) -> Reply<proto::PredictResponse> {
        let call = call(&self.state, "Predict", &req, req.get_ref().model.clone(), true);
        let state = &self.state;
        serve(state, call.clone(), async {
            match InferRequest::try_from(req.into_inner()) {
                Ok(r) => infer(state, &call, r).await.map(predict_response),
                Err(e) => Handled::from(Err(e)),
            }
        })
        .await
        .map(|r| with_cache_header(r, |p| p.timing.as_ref()))
    }

    async fn sentiment(&self, req: Request<proto::SentimentRequest>) -> Reply<proto::SentimentResponse> {
        let model = match req.get_ref().model.as_str() {
            // The default text model, named once for logs, metrics and the path.
            "" => self
                .state
                .registry
                .catalog()
                .view()
                .repo
                .default_text_model()
                .map(|e| e.name.clone())
                .unwrap_or_default(),
            m => m.to_owned(),
        };
        let call = call(&self.state, "Sentiment", &req, model, true);
        let state = &self.state;
        serve(state, call.clone(), async {
            match InferRequest::try_from(req.into_inner()) {
                Ok(r) => infer(state, &call, r).await.map(sentiment_response),
                Err(e) => Handled::from(Err(e)),
            }
        })
        .await
        .map(|r| with_cache_header(r, |s| s.timing.as_ref()))
    }

    async fn stats(&self, req: Request<proto::StatsRequest>) -> Reply<proto::StatsResponse> {
        let model = req.get_ref().model.clone();
        let call = call(&self.state, "Stats", &req, model.clone(), false);
        let state = Arc::clone(&self.state);
        serve_result(&self.state, call, stats(state, model)).await
    }
}

async fn stats(state: SharedState, model: String) -> Result<proto::StatsResponse> {
    if !model.is_empty() {
        state.registry.catalog().entry(&model)?;
    }
    let sample = {
        let state = Arc::clone(&state);
        tokio::task::spawn_blocking(move || state.sampler.sample())
            .await
            .map_err(|e| Error::internal(format!("sampler: {e}")))?
    };
    Ok(super::stats::stats_response(&state, (!model.is_empty()).then_some(model.as_str()), sample))
}

/// Adds `x-torchwire-cache: hit | partial | miss | bypass` for models with a response cache.
fn with_cache_header<T>(mut r: Response<T>, timing: impl Fn(&T) -> Option<&proto::Timing>) -> Response<T> {
    let how = timing(r.get_ref()).map(|t| t.cache.clone()).unwrap_or_default();
    if let Ok(v) = how.parse::<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>()
        && !how.is_empty()
    {
        r.metadata_mut().insert("x-torchwire-cache", v);
    }
    r
}
