//! Model lifecycle through the real server and the real libtorch backend: eviction (LRU, memory
//! budget), pinning, busy models, load / unload, idle unload, a failed load retried after the
//! back-off once the file is fixed, preload with readiness, warm-up, and memory after 50
//! load / unload cycles.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestServer, fixtures_dir};
use tonic::Code;
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{
    DataType, GetModelRequest, LoadModelRequest, ModelState, PredictRequest, Tensor, UnloadModelRequest,
};

/// A fresh model repository holding copies of the `tiny_risk` fixture under the given names.
fn repo_of(names: &[&str]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "torchwire-lifecycle-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    for name in names {
        copy_model(&fixtures_dir().join("tiny_risk"), &dir.join(name));
    }
    dir
}

fn copy_model(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in ["model.toml", "model.pt"] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}

fn predict(model: &str) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: model.into(),
        device: "cpu".into(),
        inputs: vec![Tensor {
            name: "features".into(),
            dtype: DataType::Float32 as i32,
            shape: vec![1, 4],
            float_data: vec![50.0, 27.0, 110.0, 125.0],
            ..Default::default()
        }],
        rows: vec![],
    }
}

async fn state(server: &TestServer, model: &str) -> (ModelState, torchwire::proto::DeviceState) {
    let info = server.admin().get_model(GetModelRequest { model: model.into() }).await.unwrap().into_inner();
    let cpu = info.devices.into_iter().find(|d| d.device == "cpu").unwrap();
    (ModelState::try_from(cpu.state).unwrap(), cpu)
}

#[tokio::test]
async fn the_least_recently_used_idle_model_is_evicted_and_pinned_ones_stay() {
    let config = Config { max_loaded_models: 2, ..Config::for_tests(repo_of(&["a", "b", "c"])) };
    let server = TestServer::start(config).await;
    let mut admin = server.admin();
    admin.load_model(LoadModelRequest { model: "a".into(), device: "cpu".into(), pin: true }).await.unwrap();
    server.inference().predict(predict("b")).await.unwrap();
    server.inference().predict(predict("c")).await.unwrap();
    let (a, a_dev) = state(&server, "a").await;
    let (b, b_dev) = state(&server, "b").await;
    let (c, _) = state(&server, "c").await;
    assert_eq!((a, b, c), (ModelState::Ready, ModelState::Unloaded, ModelState::Ready), "b was the LRU unpinned model");
    assert!(a_dev.pinned);
    assert_eq!(b_dev.evictions, 1);
    // Using b again loads it back, now evicting c (a stays pinned).
    server.inference().predict(predict("b")).await.unwrap();
    let (c, _) = state(&server, "c").await;
    let (b, b_dev) = state(&server, "b").await;
    assert_eq!((b, c), (ModelState::Ready, ModelState::Unloaded));
    assert_eq!(b_dev.loads, 2);
}

#[tokio::test]
async fn the_memory_budget_evicts_to_fit() {
    let server = TestServer::start(Config::for_tests(repo_of(&["a", "b"]))).await;
    server.inference().predict(predict("a")).await.unwrap();
    let (_, a) = state(&server, "a").await;
    assert!(a.memory_bytes > 0);
    drop(server);
    // Room for one model's bytes and a half: loading the second evicts the first.
    let budget = a.memory_bytes + a.memory_bytes / 2;
    let config = Config { model_memory_budget_bytes: budget, ..Config::for_tests(repo_of(&["a", "b"])) };
    let server = TestServer::start(config).await;
    server.inference().predict(predict("a")).await.unwrap();
    server.inference().predict(predict("b")).await.unwrap();
    assert_eq!(state(&server, "a").await.0, ModelState::Unloaded);
    assert_eq!(state(&server, "b").await.0, ModelState::Ready);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_with_requests_in_flight_is_never_evicted() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(400), ..FakeFactory::default() };
    let config = Config { max_loaded_models: 1, warmup_runs: 0, ..Config::for_tests(repo_of(&["a", "b"])) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    server.inference().predict(predict("a")).await.unwrap();
    let mut slow = server.inference();
    let in_flight = tokio::spawn(async move { slow.predict(predict("a")).await });
    tokio::time::sleep(Duration::from_millis(100)).await;
    server.inference().predict(predict("b")).await.unwrap();
    assert_eq!(state(&server, "a").await.0, ModelState::Ready, "busy a is kept although over the limit");
    in_flight.await.unwrap().expect("the in-flight request completes");
}

#[tokio::test]
async fn unload_frees_the_model_and_the_next_request_loads_it_again() {
    let server = TestServer::start(Config::for_tests(repo_of(&["a"]))).await;
    let mut admin = server.admin();
    let info = admin
        .load_model(LoadModelRequest { model: "a".into(), device: String::new(), pin: false })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.devices[0].state, ModelState::Ready as i32);
    let settings = info.devices[0].settings.clone().unwrap();
    assert_eq!((settings.max_batch_size, settings.precision.as_str()), (16, "fp32"));
    let info =
        admin.unload_model(UnloadModelRequest { model: "a".into(), device: String::new() }).await.unwrap().into_inner();
    assert_eq!(info.devices[0].state, ModelState::Unloaded as i32);
    server.inference().predict(predict("a")).await.unwrap();
    let (s, d) = state(&server, "a").await;
    assert_eq!((s, d.loads), (ModelState::Ready, 2));
    let bad = admin.unload_model(UnloadModelRequest { model: "a".into(), device: "cuda:3".into() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::FailedPrecondition);
    let bad = admin.load_model(LoadModelRequest { model: "../x".into(), ..Default::default() }).await.unwrap_err();
    assert_eq!(bad.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn idle_models_are_unloaded_after_the_idle_time() {
    let config = Config { idle_unload: Some(Duration::from_millis(200)), ..Config::for_tests(repo_of(&["a", "b"])) };
    let server = TestServer::start(config).await;
    server.admin().load_model(LoadModelRequest { model: "b".into(), device: "cpu".into(), pin: true }).await.unwrap();
    server.inference().predict(predict("a")).await.unwrap();
    let started = Instant::now();
    while state(&server, "a").await.0 != ModelState::Unloaded {
        assert!(started.elapsed() < Duration::from_secs(10), "a was never unloaded");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(state(&server, "b").await.0, ModelState::Ready, "pinned b stays");
}

#[tokio::test]
async fn a_failed_load_is_retried_after_the_back_off_once_the_file_is_fixed() {
    let dir = repo_of(&["m"]);
    std::fs::write(dir.join("m/model.pt"), b"not a model").unwrap();
    let config = Config { load_retry_backoff: Duration::from_millis(300), ..Config::for_tests(&dir) };
    let server = TestServer::start(config).await;
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let mut c = server.inference();
            tokio::spawn(async move { c.predict(predict("m")).await })
        })
        .collect();
    for c in calls {
        let status = c.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Internal, "every waiter gets the failure");
        assert!(!status.message().contains(&*dir.to_string_lossy()), "no paths: {}", status.message());
    }
    let (s, d) = state(&server, "m").await;
    assert_eq!(s, ModelState::Failed);
    assert!(d.error.starts_with("libtorch: ") && !d.error.contains("frame #"), "{}", d.error);
    std::fs::copy(fixtures_dir().join("tiny_risk/model.pt"), dir.join("m/model.pt")).unwrap();
    let early = server.inference().predict(predict("m")).await.unwrap_err();
    assert!(early.message().contains("failed to load"), "within the back-off: {}", early.message());
    tokio::time::sleep(Duration::from_millis(350)).await;
    server.inference().predict(predict("m")).await.expect("loads once fixed and the back-off passed");
}

#[tokio::test]
async fn preloaded_models_load_in_the_background_and_gate_readiness() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let config =
        Config { preload: vec!["a@cpu".into()], ready_after_preload: true, ..Config::for_tests(repo_of(&["a", "b"])) };
    let server = TestServer::start(config).await;
    let mut health = HealthClient::new(server.channel.clone());
    let mut watch = health.watch(HealthCheckRequest { service: String::new() }).await.unwrap().into_inner();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let msg =
            tokio::time::timeout_at(deadline.into(), watch.message()).await.expect("became ready").unwrap().unwrap();
        if msg.status == ServingStatus::Serving as i32 {
            break;
        }
    }
    let (s, d) = state(&server, "a").await;
    assert_eq!(s, ModelState::Ready);
    assert!(d.pinned);
    assert_eq!(state(&server, "b").await.0, ModelState::Unloaded);
}

#[tokio::test]
async fn warm_up_runs_before_the_model_serves() {
    let factory = FakeFactory::default();
    let forwards = Arc::clone(&factory.forwards);
    // The fast path's timed passes (which follow the warm-up) are off, so they do not add to
    // the count; executors.rs tests them.
    let config = Config { warmup_runs: 3, inline_max_us: 0, ..Config::for_tests(repo_of(&["a"])) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    server.inference().predict(predict("a")).await.unwrap();
    assert_eq!(forwards.load(Ordering::SeqCst), 4, "3 warm-up passes, then the request");
}
