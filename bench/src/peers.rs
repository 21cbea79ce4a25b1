//! The wire side of `torchwire-bench load`: request bodies for each target server and the one call
//! that sends a body and checks the answer.
//!
//! The peers' messages are written by hand with `prost::Message` (their protos are not part of
//! this crate's build): the python-grpc baseline's `serving.v1.Predictor` and TorchServe's
//! `org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions` (field numbers from
//! `inference.proto` inside TorchServe 0.12's `model-server.jar`). Every target is called the
//! same way, through `tonic::client::Grpc` with `ProstCodec` on the method path, so the load
//! generator adds the same client cost to each.
//!
//! Knows nothing of timing or statistics: [`Requests::call`] returns the outcome label only.

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Context;
use clap::ValueEnum;
use http::uri::PathAndQuery;
use tonic::client::Grpc;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::transport::Channel;
use tonic_prost::ProstCodec;

use torchwire::proto;

/// Which RPC a load run drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchRpc {
    /// Tabular rows of float features: torchwire Predict, python Predict, TorchServe's tabular
    /// handler.
    Predict,
    /// Texts: torchwire Sentiment, python ClassifyText, TorchServe's text handler.
    Sentiment,
    /// Tabular rows as one FP32 tensor through KServe v2 `ModelInfer` (torchwire and the
    /// python peer; raw_input_contents, as tritonclient sends them).
    Infer,
}

/// Which server `torchwire-bench load` drives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BenchTarget {
    /// torchwire itself (or `torchwire-bench floor`): `torchwire.v1.Inference`.
    Torchwire,
    /// The python-grpc baseline in the peers folder: `serving.v1.Predictor`.
    Python,
    /// TorchServe's gRPC inference API.
    Torchserve,
}

impl BenchTarget {
    /// The name the CLI and the JSON report use.
    pub fn name(self) -> &'static str {
        match self {
            BenchTarget::Torchwire => "torchwire",
            BenchTarget::Python => "python",
            BenchTarget::Torchserve => "torchserve",
        }
    }

    /// Where the target listens unless `--addr` says otherwise.
    pub fn default_addr(self) -> &'static str {
        match self {
            BenchTarget::Torchwire => "http://127.0.0.1:50051",
            BenchTarget::Python => "http://127.0.0.1:50061",
            BenchTarget::Torchserve => "http://127.0.0.1:7070",
        }
    }
}

/// `serving.v1.PredictRequest`: `rows × cols` float32 features, row-major.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PythonPredictRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model: String,
    /// Rows.
    #[prost(uint32, tag = "2")]
    pub rows: u32,
    /// Features per row.
    #[prost(uint32, tag = "3")]
    pub cols: u32,
    /// The features, row-major.
    #[prost(float, repeated, tag = "4")]
    pub features: Vec<f32>,
}

/// `serving.v1.TextRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PythonTextRequest {
    /// Model name.
    #[prost(string, tag = "1")]
    pub model: String,
    /// Texts to classify.
    #[prost(string, repeated, tag = "2")]
    pub texts: Vec<String>,
}

/// `serving.v1.PredictResponse`, the answer to both of the python peer's RPCs.
#[derive(Clone, PartialEq, prost::Message)]
pub struct PythonPredictResponse {
    /// Rows answered.
    #[prost(uint32, tag = "1")]
    pub rows: u32,
    /// Classes per row.
    #[prost(uint32, tag = "2")]
    pub cols: u32,
    /// Probabilities, row-major.
    #[prost(float, repeated, tag = "3")]
    pub probs: Vec<f32>,
    /// Arg-max class per row.
    #[prost(int32, repeated, tag = "4")]
    pub labels: Vec<i32>,
}

/// TorchServe's `PredictionsRequest` (`sequence_id = 4` is for streaming only and left out).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictionsRequest {
    /// Model name, as registered in the model store.
    #[prost(string, tag = "1")]
    pub model_name: String,
    /// Model version; empty = the default version.
    #[prost(string, tag = "2")]
    pub model_version: String,
    /// Handler input: the peers' handlers read a JSON body from `data`.
    #[prost(map = "string, bytes", tag = "3")]
    pub input: HashMap<String, Vec<u8>>,
}

/// TorchServe's `PredictionResponse` (`sequence_id` and `status` are for streaming only).
#[derive(Clone, PartialEq, prost::Message)]
pub struct PredictionResponse {
    /// The handler's answer, JSON for the peers' handlers.
    #[prost(bytes = "vec", tag = "1")]
    pub prediction: Vec<u8>,
}

const TORCHWIRE_PREDICT: &str = "/torchwire.v1.Inference/Predict";
const TORCHWIRE_SENTIMENT: &str = "/torchwire.v1.Inference/Sentiment";
const PYTHON_PREDICT: &str = "/serving.v1.Predictor/Predict";
const PYTHON_CLASSIFY_TEXT: &str = "/serving.v1.Predictor/ClassifyText";
const KSERVE_MODEL_INFER: &str = "/inference.GRPCInferenceService/ModelInfer";
const TORCHSERVE_PREDICTIONS: &str = "/org.pytorch.serve.grpc.inference.InferenceAPIsService/Predictions";

/// The request bodies of one run, every one carrying the same number of rows (or texts);
/// requests cycle through them. Never empty.
#[derive(Debug, Clone)]
pub enum Requests {
    /// torchwire Predict.
    Predict(Vec<proto::PredictRequest>),
    /// torchwire Sentiment.
    Sentiment(Vec<proto::SentimentRequest>),
    /// python-grpc Predict.
    PythonPredict(Vec<PythonPredictRequest>),
    /// python-grpc ClassifyText.
    PythonText(Vec<PythonTextRequest>),
    /// TorchServe Predictions (tabular or text: the handler decides).
    TorchServe(Vec<PredictionsRequest>),
    /// KServe v2 ModelInfer (torchwire or the python peer).
    Infer(Vec<proto::kserve::ModelInferRequest>),
}

/// How one request ended: `"OK"`, a gRPC code name (`"Unavailable"`), or a label for an
/// answer that came back OK but is not an answer (`"empty_prediction"`, `"short_answer"`).
pub type Outcome = std::result::Result<(), String>;

impl Requests {
    /// torchwire Predict bodies: one float32 tensor per batch, `[rows, width…]`; `input` names
    /// the model's input (empty is fine for a lone input) and `inner_shape` its dimensions
    /// after the first.
    pub fn torchwire_predict(model: &str, input: &str, inner_shape: &[i64], batches: Vec<Vec<Vec<f32>>>) -> Self {
        Requests::Predict(
            batches
                .into_iter()
                .map(|rows| proto::PredictRequest {
                    model: model.to_owned(),
                    inputs: vec![proto::Tensor {
                        name: input.to_owned(),
                        dtype: proto::DataType::Float32 as i32,
                        shape: std::iter::once(rows.len() as i64).chain(inner_shape.iter().copied()).collect(),
                        float_data: rows.concat(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
                .collect(),
        )
    }

    /// KServe v2 ModelInfer bodies: one FP32 tensor `[rows, inner_shape…]` named `input`, its
    /// values little-endian in `raw_input_contents`.
    pub fn kserve_infer(model: &str, input: &str, inner_shape: &[i64], batches: Vec<Vec<Vec<f32>>>) -> Self {
        Requests::Infer(
            batches
                .into_iter()
                .map(|rows| {
                    let raw: Vec<u8> = rows.iter().flatten().flat_map(|v| v.to_le_bytes()).collect();
                    proto::kserve::ModelInferRequest {
                        model_name: model.to_owned(),
                        inputs: vec![proto::kserve::model_infer_request::InferInputTensor {
                            name: input.to_owned(),
                            datatype: "FP32".to_owned(),
                            shape: std::iter::once(rows.len() as i64).chain(inner_shape.iter().copied()).collect(),
                            ..Default::default()
                        }],
                        raw_input_contents: vec![raw.into()],
                        ..Default::default()
                    }
                })
                .collect(),
        )
    }

    /// torchwire Sentiment bodies; an empty `model` picks the server's default text model.
    pub fn torchwire_sentiment(model: &str, batches: Vec<Vec<String>>) -> Self {
        Requests::Sentiment(
            batches
                .into_iter()
                .map(|texts| proto::SentimentRequest { texts, model: model.to_owned(), ..Default::default() })
                .collect(),
        )
    }

    /// python-grpc Predict bodies.
    pub fn python_predict(model: &str, batches: Vec<Vec<Vec<f32>>>) -> anyhow::Result<Self> {
        let mut out = Vec::with_capacity(batches.len());
        for rows in batches {
            out.push(PythonPredictRequest {
                model: model.to_owned(),
                rows: u32::try_from(rows.len()).context("too many rows for a uint32")?,
                cols: u32::try_from(rows.first().map_or(0, Vec::len)).context("too many features for a uint32")?,
                features: rows.concat(),
            });
        }
        Ok(Requests::PythonPredict(out))
    }

    /// python-grpc ClassifyText bodies.
    pub fn python_text(model: &str, batches: Vec<Vec<String>>) -> Self {
        Requests::PythonText(
            batches.into_iter().map(|texts| PythonTextRequest { model: model.to_owned(), texts }).collect(),
        )
    }

    /// TorchServe bodies for the tabular handler: `input["data"] = {"features": [[…], …]}`.
    pub fn torchserve_predict(model: &str, batches: Vec<Vec<Vec<f32>>>) -> anyhow::Result<Self> {
        let bodies: Result<Vec<_>, _> =
            batches.iter().map(|rows| serde_json::to_vec(&serde_json::json!({ "features": rows }))).collect();
        Ok(Self::torchserve(model, bodies?))
    }

    /// TorchServe bodies for the text handler: `input["data"] = {"texts": […]}`.
    pub fn torchserve_text(model: &str, batches: Vec<Vec<String>>) -> anyhow::Result<Self> {
        let bodies: Result<Vec<_>, _> =
            batches.iter().map(|texts| serde_json::to_vec(&serde_json::json!({ "texts": texts }))).collect();
        Ok(Self::torchserve(model, bodies?))
    }

    fn torchserve(model: &str, bodies: Vec<Vec<u8>>) -> Self {
        Requests::TorchServe(
            bodies
                .into_iter()
                .map(|body| PredictionsRequest {
                    model_name: model.to_owned(),
                    model_version: String::new(),
                    input: HashMap::from([("data".to_owned(), body)]),
                })
                .collect(),
        )
    }

    /// Deliberately malformed copies of torchwire bodies (peers' bodies are returned as they
    /// are): Predict data one value longer than its shape, Sentiment texts over the default
    /// 64 KiB byte limit. The server must answer INVALID_ARGUMENT.
    pub fn malformed(&self) -> Self {
        match self {
            Requests::Predict(v) => Requests::Predict(
                v.iter()
                    .cloned()
                    .map(|mut r| {
                        if let Some(t) = r.inputs.first_mut() {
                            t.float_data.push(0.0);
                        }
                        r
                    })
                    .collect(),
            ),
            Requests::Sentiment(v) => Requests::Sentiment(
                v.iter()
                    .cloned()
                    .map(|mut r| {
                        r.texts = vec!["x".repeat(64 * 1024 + 1)];
                        r
                    })
                    .collect(),
            ),
            other => other.clone(),
        }
    }

    /// Distinct bodies.
    pub fn len(&self) -> usize {
        match self {
            Requests::Predict(v) => v.len(),
            Requests::Sentiment(v) => v.len(),
            Requests::PythonPredict(v) => v.len(),
            Requests::PythonText(v) => v.len(),
            Requests::TorchServe(v) => v.len(),
            Requests::Infer(v) => v.len(),
        }
    }

    /// True when there is nothing to send (a bug in the caller: runs check it first).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Sends body `k` (modulo the count) with a `timeout` deadline and checks the answer;
    /// `rows` is how many rows (or texts) each body carries.
    pub async fn call(
        &self,
        grpc: &mut Grpc<Channel>,
        k: usize,
        rows: usize,
        timeout: Duration,
        auth: Option<&MetadataValue<Ascii>>,
    ) -> Outcome {
        let call = async {
            match self {
                Requests::Predict(v) => {
                    let r: proto::PredictResponse = unary(grpc, pick(v, k)?, TORCHWIRE_PREDICT, timeout, auth).await?;
                    expect(!r.outputs.is_empty(), "empty_answer")
                }
                Requests::Sentiment(v) => {
                    let r: proto::SentimentResponse =
                        unary(grpc, pick(v, k)?, TORCHWIRE_SENTIMENT, timeout, auth).await?;
                    expect(r.results.len() == rows, "short_answer")
                }
                Requests::PythonPredict(v) => {
                    let r: PythonPredictResponse = unary(grpc, pick(v, k)?, PYTHON_PREDICT, timeout, auth).await?;
                    expect(r.rows as usize == rows && !r.probs.is_empty(), "short_answer")
                }
                Requests::PythonText(v) => {
                    let r: PythonPredictResponse =
                        unary(grpc, pick(v, k)?, PYTHON_CLASSIFY_TEXT, timeout, auth).await?;
                    expect(r.rows as usize == rows && !r.probs.is_empty(), "short_answer")
                }
                Requests::Infer(v) => {
                    let r: proto::kserve::ModelInferResponse =
                        unary(grpc, pick(v, k)?, KSERVE_MODEL_INFER, timeout, auth).await?;
                    expect(!r.outputs.is_empty() && !r.raw_output_contents.is_empty(), "empty_answer")
                }
                Requests::TorchServe(v) => {
                    let r: PredictionResponse = unary(grpc, pick(v, k)?, TORCHSERVE_PREDICTIONS, timeout, auth).await?;
                    expect(!r.prediction.is_empty(), "empty_prediction")
                }
            }
        };
        // The deadline travels as grpc-timeout; this bounds a server that ignores it.
        match tokio::time::timeout(timeout, call).await {
            Ok(outcome) => outcome,
            Err(_) => Err(format!("{:?}", tonic::Code::DeadlineExceeded)),
        }
    }
}

fn pick<T: Clone>(v: &[T], k: usize) -> Result<T, String> {
    v.get(k % v.len().max(1)).cloned().ok_or_else(|| "no_request_bodies".to_owned())
}

fn expect(ok: bool, label: &str) -> Outcome {
    if ok { Ok(()) } else { Err(label.to_owned()) }
}

async fn unary<Q, R>(
    grpc: &mut Grpc<Channel>,
    body: Q,
    path: &'static str,
    timeout: Duration,
    auth: Option<&MetadataValue<Ascii>>,
) -> Result<R, String>
where
    Q: prost::Message + Send + Sync + 'static,
    R: prost::Message + Default + Send + Sync + 'static,
{
    grpc.ready().await.map_err(|_| format!("{:?}", tonic::Code::Unavailable))?;
    let mut request = tonic::Request::new(body);
    request.set_timeout(timeout);
    if let Some(auth) = auth {
        request.metadata_mut().insert("authorization", auth.clone());
    }
    let codec: ProstCodec<Q, R> = ProstCodec::default();
    match grpc.unary(request, PathAndQuery::from_static(path), codec).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => Err(format!("{:?}", status.code())),
    }
}

#[cfg(test)]
mod tests {
    use prost::Message;

    use super::*;

    #[test]
    fn torchserve_body_is_the_handlers_json_under_data() {
        let Requests::TorchServe(v) = Requests::torchserve_predict("tabular", vec![vec![vec![1.0, 2.5]]]).unwrap()
        else {
            panic!("torchserve bodies expected")
        };
        assert_eq!(v[0].model_name, "tabular");
        let body: serde_json::Value = serde_json::from_slice(&v[0].input["data"]).unwrap();
        assert_eq!(body, serde_json::json!({ "features": [[1.0, 2.5]] }));
        let Requests::TorchServe(v) = Requests::torchserve_text("sentiment", vec![vec!["hi".into()]]).unwrap() else {
            panic!("torchserve bodies expected")
        };
        let body: serde_json::Value = serde_json::from_slice(&v[0].input["data"]).unwrap();
        assert_eq!(body, serde_json::json!({ "texts": ["hi"] }));
    }

    #[test]
    fn python_predict_encodes_with_the_peer_field_numbers() {
        let Requests::PythonPredict(v) = Requests::python_predict("tabular", vec![vec![vec![1.0], vec![2.0]]]).unwrap()
        else {
            panic!("python bodies expected")
        };
        let bytes = v[0].encode_to_vec();
        // model = 1 (string), rows = 2 (varint 2), cols = 3 (varint 1), features = 4 (packed).
        assert_eq!(&bytes[..9], &[0x0a, 7, b't', b'a', b'b', b'u', b'l', b'a', b'r']);
        assert_eq!(&bytes[9..13], &[0x10, 2, 0x18, 1]);
        assert_eq!(bytes[13], 0x22);
    }

    #[test]
    fn torchwire_predict_shapes_rows_by_width() {
        let Requests::Predict(v) = Requests::torchwire_predict("m", "x", &[3], vec![vec![vec![0.0; 3]; 2]]) else {
            panic!("torchwire bodies expected")
        };
        assert_eq!(v[0].inputs[0].shape, vec![2, 3]);
        assert_eq!(v[0].inputs[0].float_data.len(), 6);
    }
}
