//! Integration tests over gRPC: the real server in-process on an ephemeral port, real
//! TorchScript fixtures through libtorch, called with the generated tonic clients.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use crate::common::{TestServer, fixtures_dir};
use tonic::Code;
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{self, DataType, GetModelRequest, ListModelsRequest, PredictRequest, Row, Tensor};

struct Expected {
    features: Vec<String>,
    labels: Vec<String>,
    rows: Vec<Vec<f32>>,
    logits: Vec<Vec<f32>>,
    probabilities: Vec<Vec<f32>>,
    label_index: Vec<i32>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(fixtures_dir().join("tiny_risk/expected.json")).expect("expected.json");
    let v: serde_json::Value = serde_json::from_str(&text).expect("json");
    let strings = |k: &str| v[k].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    let matrix = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    Expected {
        features: strings("features"),
        labels: strings("labels"),
        rows: matrix("rows"),
        logits: matrix("logits"),
        probabilities: matrix("probabilities"),
        label_index: v["label_index"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap() as i32).collect(),
    }
}

fn close(a: f32, b: f32) -> bool {
    (a - b).abs() <= 1e-4 + 1e-4 * b.abs()
}

fn tensor_request(rows: &[Vec<f32>]) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: "tiny_risk".into(),
        device: "cpu".into(),
        inputs: vec![Tensor {
            name: "features".into(),
            dtype: DataType::Float32 as i32,
            shape: vec![rows.len() as i64, 4],
            float_data: rows.concat(),
            ..Default::default()
        }],
        rows: vec![],
    }
}

fn row_request(e: &Expected) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: "tiny_risk".into(),
        device: String::new(),
        inputs: vec![],
        rows: e
            .rows
            .iter()
            .map(|r| Row { features: e.features.iter().cloned().zip(r.iter().map(|v| f64::from(*v))).collect() })
            .collect(),
    }
}

fn check_predictions(e: &Expected, resp: &proto::PredictResponse) {
    assert_eq!(resp.model, "tiny_risk");
    assert_eq!(resp.device, "cpu");
    let out = &resp.outputs[0];
    assert_eq!(out.shape, vec![3, 3]);
    for (got, want) in out.float_data.iter().zip(e.logits.concat()) {
        assert!(close(*got, want), "logit {got} != {want}");
    }
    assert_eq!(resp.predictions.len(), 3);
    for (i, p) in resp.predictions.iter().enumerate() {
        assert_eq!(p.label_index, e.label_index[i]);
        assert_eq!(p.label, e.labels[e.label_index[i] as usize]);
        for (j, label) in e.labels.iter().enumerate() {
            assert!(close(p.probabilities[label], e.probabilities[i][j]), "row {i} {label}");
        }
        assert!(close(p.score, e.probabilities[i][e.label_index[i] as usize]));
    }
    let t = resp.timing.clone().expect("timing");
    assert_eq!(t.batch_size, 3);
    assert!(t.total_us >= t.compute_us && t.compute_us > 0, "{t:?}");
}

#[tokio::test]
async fn predict_with_tensors_matches_libtorch_in_python() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let resp = server.inference().predict(tensor_request(&e.rows)).await.expect("predict").into_inner();
    check_predictions(&e, &resp);
}

#[tokio::test]
async fn predict_with_named_rows_matches_libtorch_in_python() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let resp = server.inference().predict(row_request(&e)).await.expect("predict").into_inner();
    check_predictions(&e, &resp);
}

/// Every bad input gets its code and a message naming the problem; the server keeps serving.
#[tokio::test]
async fn bad_requests_get_clear_errors_and_the_server_keeps_serving() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut client = server.inference();
    let good = tensor_request(&e.rows[..1]);
    let with_tensor = |f: &dyn Fn(&mut Tensor)| {
        let mut r = good.clone();
        f(&mut r.inputs[0]);
        r
    };
    let mut missing = row_request(&e);
    missing.rows[0].features.remove("bmi");
    let mut unknown = row_request(&e);
    unknown.rows[1].features.insert("shoe_size".into(), 42.0);
    let mut nan_row = row_request(&e);
    nan_row.rows[0].features.insert("age".into(), f64::NAN);
    let cases: Vec<(&str, PredictRequest, Code, &str)> = vec![
        (
            "empty model",
            PredictRequest { version: String::new(), model: String::new(), ..good.clone() },
            Code::InvalidArgument,
            "`model` is required",
        ),
        (
            "unknown model",
            PredictRequest { version: String::new(), model: "nope".into(), ..good.clone() },
            Code::NotFound,
            "available models: broken, tiny_bert, tiny_risk",
        ),
        (
            "slash",
            PredictRequest { version: String::new(), model: "a/b".into(), ..good.clone() },
            Code::InvalidArgument,
            "must match",
        ),
        (
            "dotdot",
            PredictRequest { version: String::new(), model: "../etc/passwd".into(), ..good.clone() },
            Code::InvalidArgument,
            "must match",
        ),
        (
            "long name",
            PredictRequest { version: String::new(), model: "a".repeat(200), ..good.clone() },
            Code::InvalidArgument,
            "must match",
        ),
        (
            "neither",
            PredictRequest { version: String::new(), inputs: vec![], ..good.clone() },
            Code::InvalidArgument,
            "none given",
        ),
        (
            "both",
            PredictRequest { version: String::new(), rows: row_request(&e).rows, ..good.clone() },
            Code::InvalidArgument,
            "not both",
        ),
        ("missing feature", missing, Code::InvalidArgument, "missing feature `bmi` (kg/m2)"),
        ("unknown feature", unknown, Code::InvalidArgument, "unknown feature(s) `shoe_size`"),
        (
            "short data",
            with_tensor(&|t| t.float_data.pop().map(drop).unwrap_or(())),
            Code::InvalidArgument,
            "needs 4 elements, got 3",
        ),
        ("negative dim", with_tensor(&|t| t.shape = vec![-1, 4]), Code::InvalidArgument, "non-negative"),
        ("huge dim", with_tensor(&|t| t.shape = vec![i64::MAX, 4]), Code::InvalidArgument, "elements per tensor"),
        (
            "overflowing dims",
            with_tensor(&|t| t.shape = vec![1 << 62, 4]),
            Code::InvalidArgument,
            "elements per tensor",
        ),
        ("wrong width", with_tensor(&|t| t.shape = vec![2, 2]), Code::InvalidArgument, "shape [N, 4]"),
        (
            "wrong dtype",
            with_tensor(&|t| {
                t.dtype = DataType::Int64 as i32;
                t.int64_data = vec![1, 2, 3, 4];
                t.float_data.clear();
            }),
            Code::InvalidArgument,
            "takes float32, got int64",
        ),
        ("nan", with_tensor(&|t| t.float_data[0] = f32::NAN), Code::InvalidArgument, "NaN and Inf"),
        ("inf", with_tensor(&|t| t.float_data[2] = f32::NEG_INFINITY), Code::InvalidArgument, "NaN and Inf"),
        ("nan row", nan_row, Code::InvalidArgument, "NaN and Inf"),
        (
            "no cuda",
            PredictRequest { version: String::new(), device: "cuda:0".into(), ..good.clone() },
            Code::FailedPrecondition,
            "available devices: cpu",
        ),
        (
            "tpu",
            PredictRequest { version: String::new(), device: "tpu".into(), ..good.clone() },
            Code::InvalidArgument,
            "\"cpu\" or \"cuda:N\"",
        ),
    ];
    for (what, req, code, text) in cases {
        let status = client.predict(req).await.expect_err(what);
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(status.message().contains(text), "{what}: {:?} should contain {text:?}", status.message());
    }
    let ok = client.predict(good).await.expect("still serving after bad input").into_inner();
    assert_eq!(ok.predictions.len(), 1);
}

#[tokio::test]
async fn a_model_that_fails_to_load_is_internal_without_paths_and_others_still_serve() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut client = server.inference();
    let mut req = tensor_request(&e.rows[..1]);
    req.model = "broken".into();
    req.inputs[0].shape = vec![1, 1];
    req.inputs[0].float_data = vec![1.0];
    let status = client.predict(req).await.expect_err("broken model");
    assert_eq!(status.code(), Code::Internal);
    assert!(status.message().contains("`broken` failed to load"), "{}", status.message());
    assert!(!status.message().contains('/'), "no paths for clients: {}", status.message());

    let info = server.admin().get_model(GetModelRequest { model: "broken".into() }).await.unwrap().into_inner();
    assert_eq!(info.devices[0].state, proto::ModelState::Failed as i32);
    assert!(!info.devices[0].error.is_empty());

    client.predict(tensor_request(&e.rows)).await.expect("other models still serve");
}

#[tokio::test]
async fn sixty_four_concurrent_first_requests_load_the_model_once() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let calls: Vec<_> = (0..64)
        .map(|_| {
            let mut c = server.inference();
            let req = tensor_request(&e.rows);
            tokio::spawn(async move { c.predict(req).await })
        })
        .collect();
    for c in calls {
        let resp = c.await.unwrap().expect("every waiter gets an answer").into_inner();
        assert_eq!(resp.predictions.len(), 3);
    }
    let info = server.admin().get_model(GetModelRequest { model: "tiny_risk".into() }).await.unwrap().into_inner();
    let cpu = &info.devices[0];
    assert_eq!(cpu.device, "cpu");
    assert_eq!(cpu.state, proto::ModelState::Ready as i32);
    assert_eq!(cpu.loads, 1);
    assert!(cpu.memory_bytes > 0 && cpu.last_used_unix_ms > 0, "{cpu:?}");
}

#[tokio::test]
async fn list_and_get_models_describe_the_repository() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut admin = server.admin();
    let list = admin.list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = list.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["broken", "tiny_bert", "tiny_risk"]);
    let tiny = &list.models[2];
    assert_eq!(tiny.kind, "tabular");
    assert_eq!(tiny.labels, ["low", "medium", "high"]);
    let features: Vec<(&str, &str)> =
        tiny.inputs[0].features.iter().map(|f| (f.name.as_str(), f.unit.as_str())).collect();
    assert_eq!(features[2], ("glucose", "mg/dL"));
    assert_eq!(tiny.inputs[0].shape, vec![-1, 4]);
    assert_eq!(tiny.devices[0].state, proto::ModelState::Unloaded as i32, "nothing loads before it is asked for");

    let status = admin.get_model(GetModelRequest { model: "ghost".into() }).await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound);
    assert!(status.message().contains("tiny_risk"));
}

#[tokio::test]
async fn health_is_serving_then_not_serving_on_shutdown() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut health = HealthClient::new(server.channel.clone());
    for service in ["", "torchwire.v1.Inference", "torchwire.v1.Admin"] {
        let r = health.check(HealthCheckRequest { service: service.into() }).await.unwrap().into_inner();
        assert_eq!(r.status, ServingStatus::Serving as i32, "{service:?}");
    }
    let unknown = health.check(HealthCheckRequest { service: "nope.Service".into() }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound);

    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    assert_eq!(watch.message().await.unwrap().unwrap().status, ServingStatus::Serving as i32);
    server.shutdown.cancel();
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message()).await.expect("health update on shutdown");
    assert_eq!(next.unwrap().unwrap().status, ServingStatus::NotServing as i32);
}

#[tokio::test]
async fn reflection_v1_and_v1alpha_list_every_service() {
    use tokio_stream::StreamExt;
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let want = ["torchwire.v1.Inference", "torchwire.v1.Admin", "grpc.health.v1.Health"];

    use tonic_reflection::pb::v1 as r1;
    let mut c1 = r1::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let req = r1::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r1::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = c1.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(r1::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1: expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in want {
        assert!(names.iter().any(|n| n == w), "v1 lists {w}: {names:?}");
    }

    use tonic_reflection::pb::v1alpha as ra;
    let mut ca = ra::server_reflection_client::ServerReflectionClient::new(server.channel.clone());
    let req = ra::ServerReflectionRequest {
        host: String::new(),
        message_request: Some(ra::server_reflection_request::MessageRequest::ListServices(String::new())),
    };
    let mut stream = ca.server_reflection_info(tokio_stream::iter([req])).await.unwrap().into_inner();
    let Some(ra::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        stream.next().await.unwrap().unwrap().message_response
    else {
        panic!("v1alpha: expected a service list");
    };
    let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
    for w in want {
        assert!(names.iter().any(|n| n == w), "v1alpha lists {w}: {names:?}");
    }
}

/// The server's own deadline answers DEADLINE_EXCEEDED (not tonic's CANCELLED). The client sets
/// no timer of its own here (tonic's client would race the server with one), so the default
/// deadline, 50 ms, is the server's.
#[tokio::test]
async fn the_server_deadline_answers_deadline_exceeded_and_grpc_timeout_overrides_the_default() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let config = Config { default_timeout: Duration::from_millis(50), ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let e = expected();
    let status = server.inference().predict(tensor_request(&e.rows[..1])).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    assert!(status.message().contains("deadline exceeded"), "{}", status.message());

    // A client that asks for 10 s gets them: the header wins over the 50 ms default.
    let mut req = tonic::Request::new(tensor_request(&e.rows[..1]));
    req.set_timeout(Duration::from_secs(10));
    let ok = server.inference().predict(req).await.expect("grpc-timeout of 10 s is honoured");
    assert_eq!(ok.into_inner().outputs[0].shape, vec![1, 2]);
}

#[tokio::test]
async fn the_maximum_timeout_caps_what_a_client_asks_for() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let config = Config { max_timeout: Duration::from_millis(50), ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let mut req = tonic::Request::new(tensor_request(&expected().rows[..1]));
    req.set_timeout(Duration::from_secs(10));
    let status = server.inference().predict(req).await.unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
}

#[tokio::test]
async fn graceful_stop_joins_the_workers_and_returns_ok() {
    let e = expected();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    server.inference().predict(tensor_request(&e.rows)).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), server.stop())
        .await
        .expect("stops within the grace")
        .expect("run returns Ok");
}
