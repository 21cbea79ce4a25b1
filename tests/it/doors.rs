//! One table of mistakes, each sent through both gRPC front doors (torchwire.v1 Predict or
//! Sentiment, and KServe v2 ModelInfer) to the real server: the same mistake must get the same
//! code and the same message from both, because both doors are converters over one core.
//! Before the core was shared, the two drifted (`at most N rows per request` against
//! `the batch dimension must be 1 to N`, for one).

#![allow(clippy::unwrap_used)]

use tonic::Code;
use torchwire::config::Config;
use torchwire::proto::kserve::model_infer_request::InferInputTensor;
use torchwire::proto::kserve::{InferTensorContents, ModelInferRequest};
use torchwire::proto::{DataType, PredictRequest, SentimentRequest, Tensor};

use crate::common::{TestServer, fixtures_dir};

/// A tensor for both doors: name, dtype (torchwire enum, KServe name), shape, f32 values.
struct T {
    name: &'static str,
    dtype: (DataType, &'static str),
    shape: Vec<i64>,
    values: Vec<f32>,
}

const FP32: (DataType, &str) = (DataType::Float32, "FP32");

fn t(shape: &[i64], values: &[f32]) -> T {
    T { name: "features", dtype: FP32, shape: shape.to_vec(), values: values.to_vec() }
}

fn predict(model: &str, tensors: &[T]) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: model.into(),
        device: String::new(),
        inputs: tensors
            .iter()
            .map(|t| Tensor {
                name: t.name.into(),
                dtype: t.dtype.0 as i32,
                shape: t.shape.clone(),
                float_data: if t.dtype.0 == DataType::Float32 { t.values.clone() } else { vec![] },
                int64_data: if t.dtype.0 == DataType::Int64 {
                    t.values.iter().map(|v| *v as i64).collect()
                } else {
                    vec![]
                },
                ..Default::default()
            })
            .collect(),
        rows: vec![],
    }
}

fn infer(model: &str, tensors: &[T]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: tensors
            .iter()
            .map(|t| InferInputTensor {
                name: t.name.into(),
                datatype: t.dtype.1.into(),
                shape: t.shape.clone(),
                contents: Some(InferTensorContents {
                    fp32_contents: if t.dtype.0 == DataType::Float32 { t.values.clone() } else { vec![] },
                    int64_contents: if t.dtype.0 == DataType::Int64 {
                        t.values.iter().map(|v| *v as i64).collect()
                    } else {
                        vec![]
                    },
                    ..Default::default()
                }),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}

fn texts_infer(model: &str, texts: &[&str]) -> ModelInferRequest {
    ModelInferRequest {
        model_name: model.into(),
        inputs: vec![InferInputTensor {
            name: "text".into(),
            datatype: "BYTES".into(),
            shape: vec![texts.len() as i64, 1],
            contents: Some(InferTensorContents {
                bytes_contents: texts.iter().map(|t| t.as_bytes().to_vec().into()).collect(),
                ..Default::default()
            }),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn texts_sentiment(model: &str, texts: &[&str]) -> SentimentRequest {
    SentimentRequest {
        model: model.into(),
        texts: texts.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

#[tokio::test]
async fn the_same_mistake_gets_the_same_answer_from_both_front_doors() {
    let mut config = Config::for_tests(fixtures_dir());
    config.limits.max_rows = 4;
    config.limits.max_texts = 2;
    config.limits.max_text_bytes = 16;
    config.limits.max_tensor_elements = 64;
    let server = TestServer::start(config).await;
    let ok = [50.0, 27.0, 110.0, 125.0];
    let tensor_cases: Vec<(&str, &str, Vec<T>)> = vec![
        ("unknown model", "nope", vec![t(&[1, 4], &ok)]),
        ("invalid model name", "Bad/Name", vec![t(&[1, 4], &ok)]),
        ("no inputs", "tiny_risk", vec![]),
        ("two inputs for one", "tiny_risk", vec![t(&[1, 4], &ok), t(&[1, 4], &ok)]),
        ("unknown input name", "tiny_risk", vec![T { name: "feature", ..t(&[1, 4], &ok) }]),
        ("wrong dtype", "tiny_risk", vec![T { dtype: (DataType::Int64, "INT64"), ..t(&[1, 4], &ok) }]),
        ("wrong rank", "tiny_risk", vec![t(&[4], &ok)]),
        ("wrong dimension", "tiny_risk", vec![t(&[1, 5], &[1.0; 5])]),
        ("negative dimension", "tiny_risk", vec![t(&[-1, 4], &ok)]),
        ("too many elements", "tiny_risk", vec![t(&[1_000_000, 4], &[])]),
        ("too few values", "tiny_risk", vec![t(&[1, 4], &ok[..3])]),
        ("no values", "tiny_risk", vec![t(&[1, 4], &[])]),
        ("NaN", "tiny_risk", vec![t(&[1, 4], &[f32::NAN, 1.0, 2.0, 3.0])]),
        ("zero rows", "tiny_risk", vec![t(&[0, 4], &[])]),
        ("too many rows", "tiny_risk", vec![t(&[5, 4], &[1.0; 20])]),
    ];
    for (what, model, tensors) in &tensor_cases {
        let a = server.inference().predict(predict(model, tensors)).await.unwrap_err();
        let b = server.kserve().model_infer(infer(model, tensors)).await.unwrap_err();
        assert_ne!(a.code(), Code::Ok, "{what}");
        assert_eq!((a.code(), a.message()), (b.code(), b.message()), "{what}: Predict and ModelInfer differ");
    }
    let text_cases: Vec<(&str, &str, Vec<&str>)> = vec![
        ("texts for a tabular model", "tiny_risk", vec!["hello"]),
        ("too many texts", "tiny_bert", vec!["a", "b", "c"]),
        ("a text too long", "tiny_bert", vec!["fine", "this one is far too long"]),
    ];
    for (what, model, texts) in &text_cases {
        let a = server.inference().sentiment(texts_sentiment(model, texts)).await.unwrap_err();
        let b = server.kserve().model_infer(texts_infer(model, texts)).await.unwrap_err();
        assert_eq!((a.code(), a.message()), (b.code(), b.message()), "{what}: Sentiment and ModelInfer differ");
    }
    // A bad version, named in each door's own version field or as `name@version`.
    let version_cases = [
        ("missing version", "tiny_risk", "7"),
        ("zero version", "tiny_risk", "0"),
        ("overflowing version", "tiny_risk", "99999999999999999999999"),
        ("unknown label", "tiny_risk", "stable"),
        ("not a version", "tiny_risk", "../1"),
        ("version given twice", "tiny_risk@1", "1"),
        ("empty after @", "tiny_risk@", ""),
    ];
    for (what, model, version) in version_cases {
        let one = [t(&[1, 4], &ok)];
        let p = PredictRequest { version: version.into(), ..predict(model, &one) };
        let k = ModelInferRequest { model_version: version.into(), ..infer(model, &one) };
        let a = server.inference().predict(p).await.unwrap_err();
        let b = server.kserve().model_infer(k).await.unwrap_err();
        assert_ne!(a.code(), Code::Ok, "{what}");
        assert_eq!((a.code(), a.message()), (b.code(), b.message()), "{what}: Predict and ModelInfer differ");
        let text_model = model.replace("tiny_risk", "tiny_bert");
        let s = SentimentRequest { version: version.into(), ..texts_sentiment(&text_model, &["good"]) };
        let k = ModelInferRequest { model_version: version.into(), ..texts_infer(&text_model, &["good"]) };
        let a = server.inference().sentiment(s).await.unwrap_err();
        let b = server.kserve().model_infer(k).await.unwrap_err();
        assert_eq!((a.code(), a.message()), (b.code(), b.message()), "{what}: Sentiment and ModelInfer differ");
    }
    // Still serving, through both doors.
    server.inference().predict(predict("tiny_risk", &[t(&[1, 4], &ok)])).await.unwrap();
    server.kserve().model_infer(infer("tiny_risk", &[t(&[1, 4], &ok)])).await.unwrap();
    server.kserve().model_infer(texts_infer("tiny_bert", &["good"])).await.unwrap();
}
