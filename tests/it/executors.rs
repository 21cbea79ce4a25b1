//! Where a model's passes run: the fast path (the calling runtime thread) for a model whose
//! passes, timed at load, are tiny, else its worker thread; GetModel and Stats say which; a
//! fast-path model that turns slow moves back to its worker thread, counted in the metrics,
//! and keeps answering. The fake backend's pass is made slow while it serves.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::common::{TestServer, fixtures_dir, tensor_predict};
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{GetModelRequest, StatsRequest};

/// Where `tiny_risk` runs on the CPU, as GetModel reports it.
async fn executor(server: &TestServer) -> String {
    let info = server.admin().get_model(GetModelRequest { model: "tiny_risk".into() }).await.unwrap().into_inner();
    let cpu = info.devices.into_iter().find(|d| d.device == "cpu").unwrap();
    cpu.settings.unwrap().executor
}

/// As Stats reports it.
async fn stats_executor(server: &TestServer) -> String {
    let stats = server.inference().stats(StatsRequest::default()).await.unwrap().into_inner();
    let m = stats.models.into_iter().find(|m| m.model == "tiny_risk" && m.device == "cpu").unwrap();
    m.settings.unwrap().executor
}

async fn predict(server: &TestServer, v: f32) -> Vec<f32> {
    let resp = server.inference().predict(tensor_predict("tiny_risk", &[vec![v, 1.0, 0.0, 0.0]])).await.unwrap();
    resp.into_inner().outputs[0].float_data.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tiny_model_runs_inline_and_a_zero_threshold_keeps_every_model_on_its_worker() {
    // A generous threshold (5 ms) so that a busy test machine cannot push the fake's
    // microsecond pass over it.
    let config = Config { inline_max_us: 5_000, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(FakeFactory::default())).await;
    assert_eq!(executor(&server).await, "", "not resident yet");
    assert_eq!(predict(&server, 2.0).await, vec![-3.0, 3.0]);
    assert_eq!(executor(&server).await, "inline");
    assert_eq!(stats_executor(&server).await, "inline");

    let off = Config { inline_max_us: 0, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(off, Arc::new(FakeFactory::default())).await;
    assert_eq!(predict(&server, 2.0).await, vec![-3.0, 3.0]);
    assert_eq!(executor(&server).await, "worker");
    assert_eq!(stats_executor(&server).await, "worker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fast_path_model_that_turns_slow_moves_back_to_its_worker_and_keeps_answering() {
    let factory = FakeFactory::default();
    let extra = Arc::clone(&factory.extra_delay_us);
    let loads = Arc::clone(&factory.loads);
    let config = Config { inline_max_us: 5_000, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    assert_eq!(predict(&server, 1.0).await, vec![-2.0, 2.0]);
    assert_eq!(executor(&server).await, "inline");
    // The first window of 256 passes after the load is not judged.
    for _ in 0..256 {
        predict(&server, 1.0).await;
    }
    assert_eq!(executor(&server).await, "inline");
    // Every pass now computes for 12 ms, over twice the threshold: more than 1 % of a window
    // over it, in two windows in a row (one slow window is forgiven as a burst of the host's;
    // a runtime thread's first few passes are not judged: libtorch sets itself up on them).
    extra.store(12_000, Ordering::SeqCst);
    let mut sent = 0;
    while executor(&server).await == "inline" {
        assert!(sent < 2 * 256 + 16, "still on the fast path after {sent} slow passes");
        assert_eq!(predict(&server, 2.0).await, vec![-3.0, 3.0], "answers stay right while it moves");
        sent += 1;
    }
    assert!(sent > 3, "moved after {sent} slow passes; one slow window alone does not move it");
    assert_eq!(stats_executor(&server).await, "worker");
    let demotions = r#"torchwire_inline_demotions_total{device="cpu",model="tiny_risk"}"#;
    assert_eq!(server.metric(demotions).await, Some(1.0));
    // The worker thread runs it now, on the model already loaded.
    extra.store(0, Ordering::SeqCst);
    assert_eq!(predict(&server, 4.0).await, vec![-5.0, 5.0]);
    assert_eq!(executor(&server).await, "worker", "a move back is for good");
    assert_eq!(loads.load(Ordering::SeqCst), 1, "no reload");
}
