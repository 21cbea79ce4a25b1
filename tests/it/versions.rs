//! Model versions through the real server and the real libtorch backend: addressing by number,
//! label and `name@`, every bad version a client can send, swaps under continuous load with no
//! failed request, a self-test that fails and keeps the old version, a half-copied version
//! refused, a canary split's proportions, SetLabels, a manifest that stops parsing, a model
//! removed while a request runs, and the repository poll.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestServer, assert_each_loads_and_passes_its_self_test, fixtures_dir, tensor_predict};
use tonic::Code;
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{
    GetModelRequest, ModelInfo, PredictRequest, ReloadRepositoryRequest, ReloadRepositoryResponse, SetLabelsRequest,
    StatsRequest,
};

/// The fixture's first row and its logits (`expected.json`), as a self-test golden.
const ROW: [f32; 4] = [45.0, 24.5, 95.0, 118.0];
const LOGITS: [f64; 3] = [-0.18856222927570343, -0.34585046768188477, -0.33708977699279785];

fn golden(shift: f64) -> String {
    let expected: Vec<String> = LOGITS.iter().map(|l| format!("{}", l + shift)).collect();
    format!(
        "[[self_test]]\nrows = [[{}]]\nexpected = [[{}]]\ntolerance = 1e-4\n",
        ROW.map(|v| format!("{v:.1}")).join(", "),
        expected.join(", ")
    )
}

/// A fresh repository with model `m` (the `tiny_risk` fixture) at `versions`; `extra` (top-level
/// keys only: labels as inline tables) goes at the top of its model.toml.
fn repo(versions: &[u64], extra: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "torchwire-versions-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    let manifest = std::fs::read_to_string(fixtures_dir().join("tiny_risk/model.toml")).unwrap();
    // Model-level keys go before the first table.
    std::fs::write(m.join("model.toml"), format!("{extra}\n{manifest}")).unwrap();
    for v in versions {
        publish(&m, *v, &golden(0.0));
    }
    dir
}

/// Publishes version `v` of the model in `m` as the README says: a dot-folder, then a rename.
fn publish(m: &Path, v: u64, version_toml: &str) {
    let tmp = m.join(format!(".{v}.tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(fixtures_dir().join("tiny_risk/model.pt"), tmp.join("model.pt")).unwrap();
    std::fs::write(tmp.join("version.toml"), version_toml).unwrap();
    std::fs::rename(&tmp, m.join(v.to_string())).unwrap();
}

fn predict(model: &str, version: &str) -> PredictRequest {
    PredictRequest { version: version.into(), ..tensor_predict(model, &[ROW.to_vec()]) }
}

async fn version_of(server: &TestServer, model: &str, version: &str) -> Result<String, tonic::Status> {
    server.inference().predict(predict(model, version)).await.map(|r| r.into_inner().version)
}

async fn reload(server: &TestServer) -> ReloadRepositoryResponse {
    server.admin().reload_repository(ReloadRepositoryRequest { wait: true }).await.unwrap().into_inner()
}

async fn info(server: &TestServer) -> ModelInfo {
    server.admin().get_model(GetModelRequest { model: "m".into() }).await.unwrap().into_inner()
}

#[tokio::test]
async fn versions_are_addressed_by_number_label_and_name_at_and_bad_ones_are_refused_clearly() {
    let dir = repo(&[1, 2], "version_policy = \"all\"\nversion_labels = { stable = 1 }");
    std::fs::create_dir_all(dir.join("m/3")).unwrap(); // no model.pt: not served
    let server = TestServer::start(Config::for_tests(&dir)).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "2", "the default is the latest");
    assert_eq!(version_of(&server, "m", "1").await.unwrap(), "1");
    assert_eq!(version_of(&server, "m@1", "").await.unwrap(), "1");
    assert_eq!(version_of(&server, "m", "stable").await.unwrap(), "1");
    assert_eq!(version_of(&server, "m@stable", "").await.unwrap(), "1");
    let cases = [
        ("m", "9", Code::NotFound, "has no version 9; served versions: 1, 2"),
        ("m", "3", Code::FailedPrecondition, "version 3 of model `m` is not served: no readable model.pt"),
        ("m", "beta", Code::NotFound, "no version label `beta`; labels: stable"),
        ("m@", "", Code::InvalidArgument, "must be a positive integer or a version label"),
        ("m", "0", Code::InvalidArgument, "must be a positive integer"),
        ("m", "-1", Code::InvalidArgument, "must be a positive integer"),
        ("m", "99999999999999999999999", Code::InvalidArgument, "must be a positive integer"),
        ("m", "../1", Code::InvalidArgument, "must be a positive integer"),
        ("m@1", "2", Code::InvalidArgument, "use one"),
        ("nope@1", "", Code::NotFound, "model `nope` not found"),
    ];
    for (model, version, code, want) in cases {
        let status = version_of(&server, model, version).await.unwrap_err();
        assert_eq!(status.code(), code, "{model} {version}: {}", status.message());
        assert!(status.message().contains(want), "{model} {version}: {}", status.message());
    }
    let info = info(&server).await;
    assert_eq!(info.version_policy, "all");
    let listed: Vec<(String, String)> = info.versions.iter().map(|v| (v.version.clone(), v.status.clone())).collect();
    assert_eq!(listed[0], ("1".into(), "routed".into()));
    assert_eq!(listed[1], ("2".into(), "routed".into()));
    assert!(listed[2].1.starts_with("not served: no readable model.pt"), "{listed:?}");
    assert_eq!(info.versions[0].self_tests, 1);
    // Still serving after every mistake.
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "2");
    let stats = server.inference().stats(StatsRequest { model: "m".into() }).await.unwrap().into_inner();
    let v1 = stats.versions.iter().find(|v| v.version == "1").unwrap();
    assert_eq!(v1.requests, 4);
    let ok = server.metric("torchwire_version_requests_total{code=\"OK\",model=\"m\",version=\"2\"}").await;
    assert_eq!(ok, Some(2.0));
    server.stop().await.unwrap();
}

/// Clients that keep calling the default version until stopped; counts failures and the
/// versions that answered.
struct Load {
    stop: Arc<AtomicBool>,
    failures: Arc<AtomicU64>,
    by_version: Arc<[AtomicU64; 4]>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(server: &TestServer, clients: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let failures = Arc::new(AtomicU64::new(0));
        let by_version: Arc<[AtomicU64; 4]> = Arc::new(Default::default());
        let tasks = (0..clients)
            .map(|_| {
                let (mut client, stop) = (server.inference(), Arc::clone(&stop));
                let (failures, by_version) = (Arc::clone(&failures), Arc::clone(&by_version));
                tokio::spawn(async move {
                    while !stop.load(Ordering::Relaxed) {
                        match client.predict(predict("m", "")).await {
                            Ok(r) => {
                                let v: usize = r.into_inner().version.parse().unwrap();
                                by_version[v.min(3)].fetch_add(1, Ordering::Relaxed);
                            }
                            Err(s) => {
                                eprintln!("failed under load: {s:?}");
                                failures.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        Load { stop, failures, by_version, tasks }
    }

    fn count(&self, v: usize) -> u64 {
        self.by_version[v].load(Ordering::Relaxed)
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        self.failures.load(Ordering::Relaxed)
    }
}

#[tokio::test]
async fn a_new_version_is_swapped_in_under_load_without_a_failed_request() {
    let dir = repo(&[1], "");
    let server = TestServer::start(Config::for_tests(&dir)).await;
    let load = Load::start(&server, 4);
    let started = Instant::now();
    while load.count(1) < 50 {
        assert!(started.elapsed() < Duration::from_secs(30), "no answers from version 1");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    publish(&dir.join("m"), 2, &golden(0.0));
    let summary = reload(&server).await;
    assert_eq!(summary.changed, ["m"]);
    assert_eq!(summary.swapping, ["m"]);
    let after_swap = load.count(2);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v1_before = load.count(1);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(load.count(1), v1_before, "once swapped, no new request goes to version 1");
    assert!(load.count(2) > after_swap, "version 2 serves");
    assert_eq!(load.finish().await, 0, "no request failed during the swap");
    let info = info(&server).await;
    assert_eq!(info.default_version, "2");
    assert_eq!(info.swap_error, "");
    // Version 1 finished its queue and unloaded.
    let started = Instant::now();
    loop {
        let info = self::info(&server).await;
        let v1 = info.versions.iter().find(|v| v.version == "1").unwrap();
        assert!(v1.status.contains("outside the version policy"), "{v1:?}");
        // Listed on cpu while it finishes its queue; gone from the list once unloaded.
        if v1.devices.is_empty() {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "version 1 never unloaded");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(server.metric("torchwire_version_swaps_total{model=\"m\",outcome=\"ok\"}").await, Some(1.0));
    let v2 = server.metric("torchwire_version_requests_total{code=\"OK\",model=\"m\",version=\"2\"}").await;
    assert!(v2.is_some_and(|n| n > 0.0));
    let v1 = server.metric("torchwire_version_requests_total{code=\"OK\",model=\"m\",version=\"1\"}").await;
    assert_eq!(v1, None, "the series of a version that left the repository are dropped once it unloaded");
    let status = version_of(&server, "m", "1").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("outside the version policy (latest)"), "{}", status.message());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_version_that_fails_its_self_test_never_takes_traffic_and_the_old_one_keeps_serving() {
    let dir = repo(&[1], "");
    let server = TestServer::start(Config::for_tests(&dir)).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1");
    publish(&dir.join("m"), 2, &golden(0.5));
    reload(&server).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1", "the old version keeps serving");
    let info = info(&server).await;
    assert_eq!(info.default_version, "1");
    assert!(
        info.swap_error.contains("version 2") && info.swap_error.contains("self-test failed"),
        "{}",
        info.swap_error
    );
    assert!(info.swap_error.contains("off by 5.000e-1"), "{}", info.swap_error);
    assert_eq!(server.metric("torchwire_version_swaps_total{model=\"m\",outcome=\"refused\"}").await, Some(1.0));
    // A fixed version goes through.
    publish(&dir.join("m"), 3, &golden(0.0));
    reload(&server).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "3");
    assert_eq!(self::info(&server).await.swap_error, "");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_half_copied_version_is_refused_with_the_reason_and_a_dot_folder_is_ignored() {
    let dir = repo(&[1], "");
    let server = TestServer::start(Config::for_tests(&dir)).await;
    let m = dir.join("m");
    let bytes = std::fs::read(fixtures_dir().join("tiny_risk/model.pt")).unwrap();
    std::fs::create_dir_all(m.join("2")).unwrap();
    std::fs::write(m.join("2/model.pt"), &bytes[..bytes.len() / 2]).unwrap();
    std::fs::create_dir_all(m.join(".3.tmp")).unwrap();
    std::fs::write(m.join(".3.tmp/model.pt"), &bytes).unwrap();
    let summary = reload(&server).await;
    assert!(summary.swapping.is_empty(), "{summary:?}");
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1");
    let status = version_of(&server, "m", "2").await.unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(status.message().contains("not a complete archive"), "{}", status.message());
    let info = info(&server).await;
    let listed: Vec<&str> = info.versions.iter().map(|v| v.version.as_str()).collect();
    assert_eq!(listed, ["1", "2"], "the dot-folder is not a version");
    assert!(info.versions[1].status.contains("dot-folder"), "{:?}", info.versions[1]);
    // The copy completes: the next reload serves it.
    std::fs::write(m.join("2/model.pt"), &bytes).unwrap();
    reload(&server).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "2");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_canary_split_sends_its_share_and_a_request_id_sticks_to_one_version() {
    let dir = repo(
        &[1, 2],
        "version_policy = \"all\"\ndefault_version = \"canary\"\nversion_labels = { canary = { 1 = 90, 2 = 10 } }",
    );
    let server = TestServer::start(Config::for_tests(&dir)).await;
    let mut client = server.inference();
    let n = 2000;
    let mut twos = 0;
    for i in 0..n {
        let mut req = tonic::Request::new(predict("m", ""));
        req.metadata_mut().insert("x-request-id", format!("client-{i}").parse().unwrap());
        if client.predict(req).await.unwrap().into_inner().version == "2" {
            twos += 1;
        }
    }
    let share = f64::from(twos) * 100.0 / f64::from(n);
    assert!((8.0..=12.0).contains(&share), "{share}% of requests on version 2, want 10 ± 2");
    let mut seen = std::collections::HashSet::new();
    for _ in 0..20 {
        let mut req = tonic::Request::new(predict("m", ""));
        req.metadata_mut().insert("x-request-id", "sticky-7".parse().unwrap());
        seen.insert(client.predict(req).await.unwrap().into_inner().version);
    }
    assert_eq!(seen.len(), 1, "one request id, one version: {seen:?}");
    assert_eq!(info(&server).await.default_version, "{1 = 90, 2 = 10}");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn set_labels_moves_traffic_once_ready_and_refuses_labels_that_cannot_be() {
    let dir = repo(&[1, 2], "version_policy = \"all\"\ndefault_version = \"stable\"\nversion_labels = { stable = 1 }");
    let server = TestServer::start(Config::for_tests(&dir)).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1");
    let set = |labels: &[(&str, &str)]| SetLabelsRequest {
        model: "m".into(),
        labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
        wait: true,
    };
    let info = server.admin().set_labels(set(&[("stable", "2")])).await.unwrap().into_inner();
    assert_eq!(info.version_labels["stable"], "2");
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "2", "the default label moved");
    assert_eq!(version_of(&server, "m", "stable").await.unwrap(), "2");
    let cases: [(&[(&str, &str)], &str); 5] = [
        (&[("stable", "7")], "version 7"),
        (&[("canary", "1=50,2=40")], "sum to 100, got 90"),
        (&[("Bad", "1")], "must match"),
        (&[("canary", "1=x")], "not version=weight"),
        (&[("stable", "")], "default_version names label `stable`, which is not set"),
    ];
    for (labels, want) in cases {
        let status = server.admin().set_labels(set(labels)).await.unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{labels:?}: {}", status.message());
        assert!(status.message().contains(want), "{labels:?}: {}", status.message());
    }
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "2", "refused labels changed nothing");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_manifest_that_stops_parsing_keeps_the_previous_one_in_force() {
    let dir = repo(&[1], "");
    let server = TestServer::start(Config::for_tests(&dir)).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1", "scanned before the manifest breaks");
    std::fs::write(dir.join("m/model.toml"), "kind = \"tabular\"\n[[inputs\n").unwrap();
    let summary = reload(&server).await;
    assert!(summary.errors["m"].contains("previous manifest stays in force"), "{summary:?}");
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1");
    assert!(info(&server).await.swap_error.starts_with("model.toml:"));
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_removed_while_a_request_runs_finishes_it_and_then_is_gone() {
    let dir = repo(&[1], "");
    // No goldens: the fake backend's answers are not the fixture's.
    std::fs::write(dir.join("m/1/version.toml"), "").unwrap();
    let factory = FakeFactory { forward_delay: Duration::from_millis(400), ..FakeFactory::default() };
    let server = TestServer::start_with(Config::for_tests(&dir), Arc::new(factory)).await;
    let mut client = server.inference();
    let running = tokio::spawn(async move { client.predict(predict("m", "")).await });
    tokio::time::sleep(Duration::from_millis(150)).await;
    std::fs::remove_dir_all(dir.join("m")).unwrap();
    let summary = reload(&server).await;
    assert_eq!(summary.removed, ["m"]);
    let answer = running.await.unwrap().expect("the request in flight finishes");
    assert_eq!(answer.into_inner().version, "1");
    let status = version_of(&server, "m", "").await.unwrap_err();
    assert_eq!(status.code(), Code::NotFound, "{}", status.message());
    server.stop().await.unwrap();
}

#[tokio::test]
async fn the_repository_is_polled_when_asked_to() {
    let dir = repo(&[1], "");
    let config = Config { repository_poll: Some(Duration::from_millis(100)), ..Config::for_tests(&dir) };
    let server = TestServer::start(config).await;
    assert_eq!(version_of(&server, "m", "").await.unwrap(), "1");
    publish(&dir.join("m"), 2, &golden(0.0));
    let started = Instant::now();
    while version_of(&server, "m", "").await.unwrap() != "2" {
        assert!(started.elapsed() < Duration::from_secs(20), "the poll never swapped in version 2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.stop().await.unwrap();
}

/// Every bundled model (built by `make models`, as `make test` does) loads and passes the
/// self-test its build recorded, so a golden that cannot reproduce is caught here rather than
/// by the first request in production.
#[tokio::test]
async fn every_bundled_model_passes_its_self_test() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let names = ["breast_cancer", "diabetes", "heart_disease", "liver", "lung", "sentiment", "sentiment-int8"];
    for n in names {
        assert!(
            dir.join(n).join("1/version.toml").exists(),
            "models/{n} is not built: run `make models` (make test does)"
        );
    }
    assert_each_loads_and_passes_its_self_test(&dir, &names).await;
}
