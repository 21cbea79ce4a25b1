//! `torchwire-bench floor`: the gRPC floor. A bare `tonic::transport::Server` with default
//! settings serving `torchwire.v1.Inference` with constant answers, so `torchwire-bench load`
//! against it measures what HTTP/2, protobuf and tonic cost with no model, no validation, no
//! queue and no metrics: the most any server on this stack could do on this machine.
//!
//! Answers are shaped like the real server's (one output tensor of two float32 probabilities
//! per row, one classification per row, timing), so the bytes on the wire are comparable.
//! Must never load a model or touch libtorch.

use std::future::Future;
use std::net::SocketAddr;

use anyhow::Context;
use clap::Args;
use tokio::net::TcpListener;
use tonic::transport::Server;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};
use torchwire::proto::{self, inference_server::Inference, inference_server::InferenceServer};

/// The probabilities every floor answer carries, per row: label index 1 wins.
const PROBABILITIES: [f32; 2] = [0.25, 0.75];
/// Labels of the two classes in Sentiment answers.
const SENTIMENT_LABELS: [&str; 2] = ["negative", "positive"];
/// Tokens a floor Sentiment answer claims each text had.
const FLOOR_TOKENS: i32 = 12;

/// Flags of `torchwire-bench floor`.
#[derive(Debug, Args, Clone)]
pub struct FloorArgs {
    /// Address the floor server listens on.
    #[arg(long, env = "TORCHWIRE_FLOOR_ADDR", default_value = "127.0.0.1:50052")]
    pub grpc_addr: SocketAddr,
}

/// `torchwire.v1.Inference` with constant answers and no model behind it.
#[derive(Debug, Clone, Copy, Default)]
pub struct FloorService;

#[tonic::async_trait]
impl Inference for FloorService {
    async fn predict(&self, req: Request<proto::PredictRequest>) -> Result<Response<proto::PredictResponse>, Status> {
        let req = req.into_inner();
        let rows = match req.inputs.first() {
            Some(t) => t.shape.first().copied().unwrap_or(1).max(0),
            None => req.rows.len() as i64,
        };
        Ok(Response::new(predict_answer(req.model, rows)))
    }

    async fn sentiment(
        &self,
        req: Request<proto::SentimentRequest>,
    ) -> Result<Response<proto::SentimentResponse>, Status> {
        let req = req.into_inner();
        let texts = if req.texts.is_empty() { usize::from(!req.text.is_empty()) } else { req.texts.len() };
        Ok(Response::new(sentiment_answer(req.model, texts)))
    }

    async fn stats(&self, _req: Request<proto::StatsRequest>) -> Result<Response<proto::StatsResponse>, Status> {
        Err(Status::unimplemented("the gRPC floor answers Predict and Sentiment only"))
    }
}

fn predict_answer(model: String, rows: i64) -> proto::PredictResponse {
    let n = usize::try_from(rows).unwrap_or(0);
    let classification = proto::Classification {
        label: "1".to_owned(),
        label_index: 1,
        score: PROBABILITIES[1],
        probabilities: [("0".to_owned(), PROBABILITIES[0]), ("1".to_owned(), PROBABILITIES[1])].into(),
    };
    proto::PredictResponse {
        model,
        version: "1".to_owned(),
        device: "cpu".to_owned(),
        outputs: vec![proto::Tensor {
            name: "probabilities".to_owned(),
            dtype: proto::DataType::Float32 as i32,
            shape: vec![rows, PROBABILITIES.len() as i64],
            float_data: PROBABILITIES.repeat(n),
            ..Default::default()
        }],
        predictions: vec![classification; n],
        timing: Some(proto::Timing { batch_size: i32::try_from(rows).unwrap_or(i32::MAX), ..Default::default() }),
    }
}

fn sentiment_answer(model: String, texts: usize) -> proto::SentimentResponse {
    let result = proto::SentimentResult {
        label: SENTIMENT_LABELS[1].to_owned(),
        score: PROBABILITIES[1],
        probabilities: [
            (SENTIMENT_LABELS[0].to_owned(), PROBABILITIES[0]),
            (SENTIMENT_LABELS[1].to_owned(), PROBABILITIES[1]),
        ]
        .into(),
        tokens: FLOOR_TOKENS,
        truncated: false,
    };
    proto::SentimentResponse {
        results: vec![result; texts],
        model,
        version: "1".to_owned(),
        device: "cpu".to_owned(),
        timing: Some(proto::Timing { batch_size: i32::try_from(texts).unwrap_or(i32::MAX), ..Default::default() }),
    }
}

/// Serves the floor on `listener` until `shutdown` completes. TCP_NODELAY is set on accepted
/// connections, as `Server::serve` does by default (an incoming stream bypasses that setting).
pub async fn serve_floor(listener: TcpListener, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    Server::builder()
        .add_service(InferenceServer::new(FloorService))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serving the gRPC floor")
}

/// Runs `torchwire-bench floor` until SIGTERM or Ctrl-C.
pub async fn run_floor(args: FloorArgs) -> anyhow::Result<()> {
    let listener = TcpListener::bind(args.grpc_addr).await.with_context(|| format!("binding {}", args.grpc_addr))?;
    eprintln!("torchwire-bench floor: torchwire.v1.Inference with constant answers on {}", listener.local_addr()?);
    let token = torchwire::shutdown::on_signals();
    serve_floor(listener, async move { token.cancelled().await }).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn predict_answer_has_two_probabilities_and_label_one_per_row() {
        let a = predict_answer("m".into(), 3);
        assert_eq!(a.outputs[0].shape, vec![3, 2]);
        assert_eq!(a.outputs[0].float_data, vec![0.25, 0.75, 0.25, 0.75, 0.25, 0.75]);
        assert_eq!(a.predictions.len(), 3);
        assert!(a.predictions.iter().all(|p| p.label_index == 1));
    }

    #[test]
    fn sentiment_answer_has_one_result_per_text() {
        assert_eq!(sentiment_answer(String::new(), 4).results.len(), 4);
    }
}
