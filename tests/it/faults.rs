//! Fault injection: a broken model file, a model that throws, a worker thread that dies and a
//! model larger than the memory budget each affect only that model. Every test builds its own
//! repository with a healthy model beside the faulty one and checks, after the fault, that the
//! healthy model still answers correctly (against `tiny_risk/expected.json` on the real backend)
//! and that the faulty model's INTERNAL answer names the model but no file path.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::common::on_both_executors;
use crate::common::{TestServer, fixtures_dir, tensor_predict};
use tonic::{Code, Status};
use torchwire::config::Config;
use torchwire::inline::ExecutorChoice;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{DeviceState, GetModelRequest, ListModelsRequest, ModelState, PredictRequest, PredictResponse};

/// A fresh, empty model repository.
fn fresh_repo() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "torchwire-faults-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies a fixture model folder (`model.toml`, `model.pt`) into `repo` as `name`.
fn add_model(repo: &Path, name: &str, from: &Path) -> PathBuf {
    let to = repo.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["model.toml", "model.pt"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
    to
}

fn tiny_risk() -> PathBuf {
    fixtures_dir().join("tiny_risk")
}

fn tiny_raises() -> PathBuf {
    fixtures_dir().join("faulty/tiny_raises")
}

/// `tiny_risk/expected.json`: input rows and, per row, label -> probability.
struct Expected {
    rows: Vec<Vec<f32>>,
    probabilities: Vec<Vec<(String, f32)>>,
}

fn expected() -> Expected {
    let text = std::fs::read_to_string(tiny_risk().join("expected.json")).unwrap();
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    let matrix = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    let labels: Vec<String> = v["labels"].as_array().unwrap().iter().map(|s| s.as_str().unwrap().to_owned()).collect();
    let probabilities =
        matrix("probabilities").into_iter().map(|row| labels.iter().cloned().zip(row).collect()).collect();
    Expected { rows: matrix("rows"), probabilities }
}

/// A request with `tiny_risk`'s expected rows.
fn expected_request(model: &str) -> PredictRequest {
    tensor_predict(model, &expected().rows)
}

/// One row, for the fake backend (whose answer is `[-sum, sum]`).
fn one_row(model: &str, first: f32) -> PredictRequest {
    tensor_predict(model, &[vec![first, 1.0, 2.0, 3.0]])
}

/// Asserts a real-backend answer to [`expected_request`] gives `expected.json`'s probabilities.
fn assert_expected(resp: &PredictResponse) {
    let e = expected();
    assert_eq!(resp.predictions.len(), e.rows.len(), "one prediction per row");
    for (i, (p, want)) in resp.predictions.iter().zip(&e.probabilities).enumerate() {
        for (label, prob) in want {
            let got = p.probabilities[label];
            assert!((got - prob).abs() <= 1e-4, "row {i} label {label}: got {got}, expected {prob}");
        }
    }
}

/// Runs [`expected_request`] on `model` and checks the answer against `expected.json`.
async fn assert_healthy(server: &TestServer, model: &str) {
    let resp = server.inference().predict(expected_request(model)).await.unwrap().into_inner();
    assert_eq!(resp.model, model);
    assert_expected(&resp);
}

/// Asserts `status` is INTERNAL, names `model`, and carries no file path.
fn assert_internal_without_paths(status: &Status, model: &str, repo: &Path) {
    let msg = status.message();
    assert_eq!(status.code(), Code::Internal, "{msg}");
    assert!(msg.contains(&format!("`{model}`")), "names the model: {msg}");
    assert!(!msg.contains(&*repo.to_string_lossy()), "no repository path: {msg}");
    assert!(!msg.contains("model.pt") && !msg.contains('/'), "no file path: {msg}");
}

async fn cpu_state(server: &TestServer, model: &str) -> (ModelState, DeviceState) {
    let info = server.admin().get_model(GetModelRequest { model: model.into() }).await.unwrap().into_inner();
    let cpu = info.devices.into_iter().find(|d| d.device == "cpu").unwrap();
    (ModelState::try_from(cpu.state).unwrap(), cpu)
}

#[tokio::test]
async fn a_truncated_model_file_fails_only_that_model() {
    let repo = fresh_repo();
    add_model(&repo, "good", &tiny_risk());
    let broken = add_model(&repo, "truncated", &tiny_risk());
    let bytes = std::fs::read(broken.join("model.pt")).unwrap();
    std::fs::write(broken.join("model.pt"), &bytes[..bytes.len() / 2]).unwrap();
    let server = TestServer::start(Config::for_tests(&repo)).await;

    let status = server.inference().predict(expected_request("truncated")).await.unwrap_err();
    assert_internal_without_paths(&status, "truncated", &repo);
    assert!(status.message().contains("failed to load"), "{}", status.message());
    assert_eq!(cpu_state(&server, "truncated").await.0, ModelState::Failed);
    assert_healthy(&server, "good").await;
}

#[tokio::test]
async fn a_corrupt_model_file_of_the_right_size_fails_only_that_model() {
    let repo = fresh_repo();
    add_model(&repo, "good", &tiny_risk());
    let broken = add_model(&repo, "corrupt", &tiny_risk());
    let mut bytes = std::fs::read(broken.join("model.pt")).unwrap();
    let len = bytes.len();
    // The middle third holds the model's compressed TorchScript code.
    for b in &mut bytes[len / 3..2 * len / 3] {
        *b ^= 0xa5;
    }
    std::fs::write(broken.join("model.pt"), &bytes).unwrap();
    assert_eq!(std::fs::metadata(broken.join("model.pt")).unwrap().len() as usize, len);
    let server = TestServer::start(Config::for_tests(&repo)).await;

    let status = server.inference().predict(expected_request("corrupt")).await.unwrap_err();
    assert_internal_without_paths(&status, "corrupt", &repo);
    assert_eq!(cpu_state(&server, "corrupt").await.0, ModelState::Failed);
    assert_healthy(&server, "good").await;
    let again = server.inference().predict(expected_request("corrupt")).await.unwrap_err();
    assert_internal_without_paths(&again, "corrupt", &repo);
}

#[tokio::test]
async fn a_model_file_deleted_after_start_up_fails_until_it_is_back_and_the_back_off_passed() {
    let repo = fresh_repo();
    add_model(&repo, "good", &tiny_risk());
    let gone = add_model(&repo, "gone", &tiny_risk());
    let backoff = Duration::from_millis(200);
    let server = TestServer::start(Config { load_retry_backoff: backoff, ..Config::for_tests(&repo) }).await;
    // The repository was scanned at start-up; the file disappears before the first request.
    std::fs::remove_file(gone.join("model.pt")).unwrap();

    let status = server.inference().predict(expected_request("gone")).await.unwrap_err();
    assert_internal_without_paths(&status, "gone", &repo);
    assert_healthy(&server, "good").await;

    std::fs::copy(tiny_risk().join("model.pt"), gone.join("model.pt")).unwrap();
    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    assert_healthy(&server, "gone").await;
    let (state, dev) = cpu_state(&server, "gone").await;
    assert_eq!((state, dev.loads), (ModelState::Ready, 1));
}

#[tokio::test]
async fn a_model_that_raises_fails_that_request_only_and_is_not_reloaded() {
    let repo = fresh_repo();
    add_model(&repo, "good", &tiny_risk());
    add_model(&repo, "raises", &tiny_raises());
    let server = TestServer::start(Config::for_tests(&repo)).await;

    // Same weights as tiny_risk: normal rows give expected.json's answer.
    assert_healthy(&server, "raises").await;
    let status =
        server.inference().predict(tensor_predict("raises", &[vec![50.0, 27.0, 5000.0, 125.0]])).await.unwrap_err();
    assert_internal_without_paths(&status, "raises", &repo);
    assert!(status.message().contains("failed while running the request"), "{}", status.message());
    assert!(!status.message().contains("ValueError"), "no TorchScript trace: {}", status.message());

    assert_healthy(&server, "raises").await;
    assert_healthy(&server, "good").await;
    let (state, dev) = cpu_state(&server, "raises").await;
    assert_eq!((state, dev.loads), (ModelState::Ready, 1), "the raise left the loaded model in place");
}

async fn a_worker_fault_fails_its_batch_and_the_model_is_reloaded_on_the_next_request(executor: ExecutorChoice) {
    let repo = fresh_repo();
    add_model(&repo, "faulty", &tiny_risk());
    add_model(&repo, "other", &tiny_risk());
    let factory = FakeFactory::default();
    let loads = Arc::clone(&factory.loads);
    let config = Config { warmup_runs: 0, executor, ..Config::for_tests(&repo) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let mut client = server.inference();
    let sum = |resp: PredictResponse| resp.outputs[0].float_data.clone();

    assert_eq!(sum(client.predict(one_row("faulty", 1.0)).await.unwrap().into_inner()), vec![-7.0, 7.0]);
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    assert_eq!(sum(client.predict(one_row("other", 2.0)).await.unwrap().into_inner()), vec![-8.0, 8.0]);
    assert_eq!(loads.load(Ordering::SeqCst), 2);

    let status = client.predict(one_row("faulty", 668.0)).await.unwrap_err();
    assert_internal_without_paths(&status, "faulty", &repo);
    assert!(status.message().contains("failed while running the request"), "{}", status.message());
    assert_eq!(sum(client.predict(one_row("other", 3.0)).await.unwrap().into_inner()), vec![-9.0, 9.0]);

    assert_eq!(sum(client.predict(one_row("faulty", 4.0)).await.unwrap().into_inner()), vec![-10.0, 10.0]);
    assert_eq!(loads.load(Ordering::SeqCst), 3, "the faulted model was loaded afresh; the other one was not");
    assert_eq!(cpu_state(&server, "faulty").await.1.loads, 2);
    assert_eq!(cpu_state(&server, "other").await.1.loads, 1);
    assert_eq!(sum(client.predict(one_row("other", 5.0)).await.unwrap().into_inner()), vec![-11.0, 11.0]);
}

async fn a_request_queued_behind_a_worker_fault_is_answered_and_never_hangs(executor: ExecutorChoice) {
    let repo = fresh_repo();
    add_model(&repo, "faulty", &tiny_risk());
    add_model(&repo, "other", &tiny_risk());
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let loads = Arc::clone(&factory.loads);
    let config = Config { warmup_runs: 0, executor, ..Config::for_tests(&repo) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    server.inference().predict(one_row("faulty", 1.0)).await.unwrap();
    server.inference().predict(one_row("other", 1.0)).await.unwrap();

    let mut c = server.inference();
    let faulting = tokio::spawn(async move { c.predict(one_row("faulty", 668.0)).await });
    // Submitted while the faulting pass computes, so it waits in the queue behind it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut c = server.inference();
    let queued = tokio::spawn(async move { c.predict(one_row("faulty", 2.0)).await });

    let bound = Duration::from_secs(5);
    let fault = tokio::time::timeout(bound, faulting).await.expect("the faulting request is answered").unwrap();
    assert_eq!(fault.unwrap_err().code(), Code::Internal);
    let queued = tokio::time::timeout(bound, queued).await.expect("the queued request is answered").unwrap();
    match queued {
        Ok(resp) => assert_eq!(resp.into_inner().outputs[0].float_data, vec![-8.0, 8.0]),
        Err(status) => assert_internal_without_paths(&status, "faulty", &repo),
    }

    let after = server.inference().predict(one_row("faulty", 3.0)).await.unwrap().into_inner();
    assert_eq!(after.outputs[0].float_data, vec![-9.0, 9.0]);
    assert_eq!(loads.load(Ordering::SeqCst), 3, "faulty reloaded once");
    server.inference().predict(one_row("other", 1.0)).await.unwrap();
}

#[tokio::test]
async fn a_model_larger_than_the_whole_memory_budget_is_refused_and_the_server_keeps_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};

    let repo = fresh_repo();
    add_model(&repo, "big", &tiny_risk());
    add_model(&repo, "other", &tiny_risk());
    // Measure the model's parameter bytes on a server without a budget.
    let bytes = {
        let server = TestServer::start(Config::for_tests(&repo)).await;
        assert_healthy(&server, "big").await;
        cpu_state(&server, "big").await.1.memory_bytes
    };
    assert!(bytes > 0, "the torch backend reports parameter bytes");

    let config = Config { model_memory_budget_bytes: bytes - 1, ..Config::for_tests(&repo) };
    let server = TestServer::start(config).await;
    let status = server.inference().predict(expected_request("big")).await.unwrap_err();
    assert_internal_without_paths(&status, "big", &repo);
    let (state, dev) = cpu_state(&server, "big").await;
    assert_eq!((state, dev.memory_bytes), (ModelState::Failed, 0), "not resident");
    assert!(dev.error.contains("memory budget"), "{}", dev.error);
    let health = HealthClient::new(server.channel.clone())
        .check(HealthCheckRequest { service: String::new() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(health.status, ServingStatus::Serving as i32);
    let listed = server.admin().list_models(ListModelsRequest {}).await.unwrap().into_inner();
    let names: Vec<&str> = listed.models.iter().map(|m| m.name.as_str()).collect();
    assert_eq!(names, ["big", "other"]);
    drop(server);

    // With room for exactly one copy, the same model loads and answers.
    let config = Config { model_memory_budget_bytes: bytes, ..Config::for_tests(&repo) };
    let server = TestServer::start(config).await;
    assert_healthy(&server, "big").await;
    let (state, dev) = cpu_state(&server, "big").await;
    assert_eq!((state, dev.memory_bytes), (ModelState::Ready, bytes));
}

on_both_executors!(
    a_worker_fault_fails_its_batch_and_the_model_is_reloaded_on_the_next_request,
    a_request_queued_behind_a_worker_fault_is_answered_and_never_hangs,
);
