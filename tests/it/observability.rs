//! Observability: exact metric values after a known sequence of calls, `promtool check
//! metrics` on the scraped text, the HTTP probes, Stats and ResetStats, and request ids.

#![allow(clippy::unwrap_used)]

use std::process::{Command, Stdio};

use crate::common::on_both_executors;
use crate::common::{TestServer, fixtures_dir};
use torchwire::config::Config;
use torchwire::inline::ExecutorChoice;
use torchwire::proto::{DataType, PredictRequest, ResetStatsRequest, StatsRequest, Tensor};

fn predict(model: &str, values: Vec<f32>) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: model.into(),
        device: "cpu".into(),
        inputs: vec![Tensor {
            name: "features".into(),
            dtype: DataType::Float32 as i32,
            shape: vec![1, 4],
            float_data: values,
            ..Default::default()
        }],
        rows: vec![],
    }
}

/// The value of the sample line that starts with `prefix` (name and labels).
fn sample(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|l| l.starts_with(prefix)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// Three good Predicts, two bad inputs, one unknown model (labelled `_unknown`).
async fn known_sequence(server: &TestServer) {
    let mut c = server.inference();
    for _ in 0..3 {
        c.predict(predict("tiny_risk", vec![50.0, 27.0, 110.0, 125.0])).await.unwrap();
    }
    for _ in 0..2 {
        c.predict(predict("tiny_risk", vec![f32::NAN, 27.0, 110.0, 125.0])).await.unwrap_err();
    }
    c.predict(predict("made-up-name-123", vec![1.0; 4])).await.unwrap_err();
}

async fn counters_and_histograms_have_exact_values_after_known_calls(executor: ExecutorChoice) {
    let server = TestServer::start(Config { executor, ..Config::for_tests(fixtures_dir()) }).await;
    known_sequence(&server).await;
    let (status, text) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    let at = |p: &str| sample(&text, p).unwrap_or_else(|| panic!("no sample {p}\n{text}"));
    assert_eq!(at(r#"torchwire_requests_total{code="OK",model="tiny_risk",rpc="Predict"}"#), 3.0);
    assert_eq!(at(r#"torchwire_requests_total{code="INVALID_ARGUMENT",model="tiny_risk",rpc="Predict"}"#), 2.0);
    assert_eq!(at(r#"torchwire_requests_total{code="NOT_FOUND",model="_unknown",rpc="Predict"}"#), 1.0);
    assert!(!text.contains("made-up-name-123"), "client-made names never become labels");
    assert_eq!(at(r#"torchwire_request_duration_seconds_count{model="tiny_risk",rpc="Predict"}"#), 5.0);
    assert_eq!(at(r#"torchwire_rejected_requests_total{model="tiny_risk",reason="invalid",rpc="Predict"}"#), 2.0);
    assert_eq!(at(r#"torchwire_batch_size_count{device="cpu",model="tiny_risk"}"#), 3.0, "warm-up is not counted");
    assert_eq!(at(r#"torchwire_model_loads_total{device="cpu",model="tiny_risk",outcome="ok"}"#), 1.0);
    assert_eq!(at(r#"torchwire_models_loaded{device="cpu"}"#), 1.0);
    assert!(at(r#"torchwire_model_memory_bytes{device="cpu",model="tiny_risk"}"#) > 0.0);
    assert_eq!(at(r#"torchwire_queue_depth{device="cpu",model="tiny_risk"}"#), 0.0);
    assert!(at("process_resident_memory_bytes") > 0.0);
    assert!(text.contains("torchwire_build_info{libtorch=\"2.13.0\""));
}

#[tokio::test]
async fn promtool_accepts_the_scraped_metrics() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    known_sequence(&server).await;
    let (_, text) = server.http_get("/metrics").await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian package prometheus; `make test` installs it)");
    std::io::Write::write_all(child.stdin.as_mut().unwrap(), text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool check metrics failed:\n{report}");
    assert!(report.trim().is_empty(), "promtool found problems:\n{report}");
}

#[tokio::test]
async fn http_probes_answer() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    assert_eq!(server.http_get("/healthz").await.0, 200);
    assert_eq!(server.http_get("/readyz").await, (200, "ready\n".to_owned()));
    assert_eq!(server.http_get("/nope").await.0, 404);
    server.shutdown.cancel();
}

async fn stats_reports_totals_error_rate_and_resets(executor: ExecutorChoice) {
    let server = TestServer::start(Config { executor, ..Config::for_tests(fixtures_dir()) }).await;
    known_sequence(&server).await;
    let s = server.inference().stats(StatsRequest::default()).await.unwrap().into_inner();
    assert_eq!(s.total_requests, 6);
    assert!((s.error_rate_percent - 50.0).abs() < 1e-9, "{}", s.error_rate_percent);
    assert_eq!(s.requests_by_status["OK"], 3);
    assert_eq!(s.requests_by_status["INVALID_ARGUMENT"], 2);
    assert_eq!(s.errors_by_type["invalid_input"], 2);
    assert_eq!(s.errors_by_type["model_not_found"], 1);
    let lat = s.latency.unwrap();
    assert!(lat.max_ms >= lat.p50_ms && lat.p50_ms >= lat.min_ms && lat.avg_ms > 0.0, "{lat:?}");
    assert!(s.process_memory_mb > 10.0 && s.threads > 1 && s.uptime_seconds > 0.0, "{s:?}");
    assert!(!s.memory_history.is_empty());
    let tiny = s.models.iter().find(|m| m.model == "tiny_risk" && m.device == "cpu").unwrap();
    assert_eq!((tiny.requests, tiny.errors), (5, 2), "the NaN requests were for tiny_risk on cpu too");
    assert_eq!(tiny.avg_batch_size, 1.0);
    assert_eq!(tiny.state, torchwire::proto::ModelState::Ready as i32);
    assert_eq!(s.devices[0].name, "cpu");
    assert_eq!(s.devices[0].settings.as_ref().unwrap().max_text_length, 256);

    let one = server.inference().stats(StatsRequest { model: "tiny_risk".into() }).await.unwrap().into_inner();
    assert!(one.models.iter().all(|m| m.model == "tiny_risk"));
    let bad = server.inference().stats(StatsRequest { model: "nope".into() }).await.unwrap_err();
    assert_eq!(bad.code(), tonic::Code::NotFound);

    server.admin().reset_stats(ResetStatsRequest {}).await.unwrap();
    let s = server.inference().stats(StatsRequest::default()).await.unwrap().into_inner();
    // The failed Stats above is gone; this Stats call itself is not counted until it ends.
    assert_eq!(s.total_requests, 1, "only the ResetStats call since the reset");
    assert!(s.since_unix_ms > 0);
}

#[tokio::test]
async fn request_ids_are_echoed_or_generated() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut req = tonic::Request::new(predict("tiny_risk", vec![1.0; 4]));
    req.metadata_mut().insert("x-request-id", "abc-123".parse().unwrap());
    let resp = server.inference().predict(req).await.unwrap();
    assert_eq!(resp.metadata().get("x-request-id").unwrap(), "abc-123");
    let err = server.inference().predict(predict("tiny_risk", vec![1.0; 3])).await.unwrap_err();
    assert!(err.metadata().get("x-request-id").unwrap().to_str().unwrap().starts_with("tw-"));
}

/// Calls the transport refuses before any handler runs (no key, a wrong key, an admin RPC with
/// an inference key) are counted in `requests_total` and Stats with their code; before, they
/// never reached the boundary and were invisible.
#[tokio::test]
async fn calls_refused_by_the_transport_are_counted() {
    use torchwire::auth::{Keys, Secret};
    let (api, admin) = ("api-key-0123456789abcdef", "admin-key-0123456789abcdef");
    let mut config = Config::for_tests(fixtures_dir());
    config.keys = Keys { api: vec![Secret::new(api)], admin: vec![Secret::new(admin)] };
    let server = TestServer::start(config).await;
    fn with_key<T>(key: &str, msg: T) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        req
    }
    let predict_req = || predict("tiny_risk", vec![50.0, 27.0, 110.0, 125.0]);
    for _ in 0..2 {
        let e = server.inference().predict(predict_req()).await.unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
    let e = server.admin().list_models(with_key(api, torchwire::proto::ListModelsRequest {})).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::PermissionDenied);
    server.inference().predict(with_key(api, predict_req())).await.unwrap();
    let at = |prefix: &'static str| server.metric(prefix);
    assert_eq!(at(r#"torchwire_requests_total{code="UNAUTHENTICATED",model="",rpc="Predict"}"#).await, Some(2.0));
    assert_eq!(at(r#"torchwire_requests_total{code="PERMISSION_DENIED",model="",rpc="ListModels"}"#).await, Some(1.0));
    assert_eq!(
        at(r#"torchwire_rejected_requests_total{model="",reason="unauthorized",rpc="Predict"}"#).await,
        Some(2.0)
    );
    let stats = server.inference().stats(with_key(api, torchwire::proto::StatsRequest::default())).await.unwrap();
    let by_status = stats.into_inner().requests_by_status;
    assert_eq!(by_status.get("UNAUTHENTICATED"), Some(&2), "{by_status:?}");
    assert_eq!(by_status.get("PERMISSION_DENIED"), Some(&1), "{by_status:?}");
}

/// Stats and GetModel read one source for what a model runs with: a manifest's batch size shows
/// in both (Stats used to report the device's defaults only, and `fp32` whatever the device).
#[tokio::test]
async fn stats_and_get_model_show_the_same_settings() {
    let dir = std::env::temp_dir().join(format!("torchwire-settings-{}", std::process::id()));
    let model = dir.join("capped");
    std::fs::create_dir_all(&model).unwrap();
    std::fs::copy(fixtures_dir().join("tiny_risk/model.pt"), model.join("model.pt")).unwrap();
    let manifest = std::fs::read_to_string(fixtures_dir().join("tiny_risk/model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), format!("{manifest}\n[batching]\nmax_batch_size = 3\n")).unwrap();
    let server = TestServer::start(Config::for_tests(dir.clone())).await;
    server.inference().predict(predict("capped", vec![50.0, 27.0, 110.0, 125.0])).await.unwrap();
    let info = server
        .admin()
        .get_model(torchwire::proto::GetModelRequest { model: "capped".into() })
        .await
        .unwrap()
        .into_inner();
    let from_get_model = info.devices.iter().find(|d| d.device == "cpu").unwrap().settings.clone().unwrap();
    let stats = server.inference().stats(StatsRequest::default()).await.unwrap().into_inner();
    let from_stats = stats.models.iter().find(|m| m.model == "capped").unwrap().settings.clone().unwrap();
    assert_eq!(from_get_model.max_batch_size, 3);
    assert_eq!(from_stats, from_get_model);
    assert_eq!(stats.devices[0].settings.as_ref().unwrap().precision, "fp32", "the CPU runs fp32");
    std::fs::remove_dir_all(dir).unwrap();
}

on_both_executors!(
    counters_and_histograms_have_exact_values_after_known_calls,
    stats_reports_totals_error_rate_and_resets,
);
