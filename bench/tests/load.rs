//! `torchwire-bench load` end to end, in-process: the gRPC floor (`serve_floor`) on an
//! ephemeral port, or the real server over the committed fixtures, driven by the load
//! generator's library function with arguments parsed as the CLI parses them.
//! No model and no peer server is needed; the python and TorchServe targets are checked to
//! count a server that does not speak their API as errors, not as throughput.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;

use clap::Parser;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use torchwire_bench::cli::{Cli, Command};
use torchwire_bench::load::{BenchArgs, measure};
use torchwire_bench::report::Report;

/// The floor on 127.0.0.1:0; stops when the token is cancelled.
struct Floor {
    addr: SocketAddr,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Floor {
    async fn start() -> Floor {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(torchwire_bench::floor::serve_floor(listener, async move { token.cancelled().await }));
        Floor { addr, stop, task }
    }

    async fn shut_down(self) {
        self.stop.cancel();
        self.task.await.unwrap().unwrap();
    }
}

fn bench_args(addr: SocketAddr, extra: &[&str]) -> BenchArgs {
    let addr = addr.to_string();
    let mut argv = vec!["torchwire-bench", "load", "--addr", &addr, "--duration", "0.5", "--warmup", "0.1"];
    argv.extend_from_slice(extra);
    match Cli::try_parse_from(argv).unwrap().command {
        Command::Load(args) => args,
        other => panic!("load expected, got {other:?}"),
    }
}

/// The real server over the committed fixtures on 127.0.0.1:0.
async fn real_server(
    edit: impl FnOnce(&mut torchwire::config::Config),
) -> (SocketAddr, CancellationToken, tokio::task::JoinHandle<anyhow::Result<()>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let stop = CancellationToken::new();
    // The fixtures live with the server crate, one level up from this one.
    let dir = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures");
    let mut config = torchwire::config::Config::for_tests(dir);
    edit(&mut config);
    let server = tokio::spawn(torchwire::server::run(
        config,
        torchwire::server::Listeners { grpc: listener, metrics: None },
        stop.clone(),
    ));
    (addr, stop, server)
}

fn assert_all_ok(report: &Report) {
    assert!(report.requests > 0, "no request answered: {report:?}");
    assert_eq!(report.errors, 0, "{report:?}");
    assert_eq!(report.codes.keys().collect::<Vec<_>>(), vec!["OK"], "{report:?}");
    assert_eq!(report.codes["OK"], report.requests);
    assert!(report.latency_us.p50 > 0.0 && report.latency_us.p50 <= report.latency_us.max, "{report:?}");
    assert!(report.requests_per_s > 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn predict_against_the_floor_is_all_ok() {
    let floor = Floor::start().await;
    let report = measure(&bench_args(floor.addr, &["--features", "13", "--concurrency", "4"]), false).await.unwrap();
    assert_all_ok(&report);
    assert_eq!((report.concurrency, report.rows, report.duration_s), (4, 1, 0.5));
    assert_eq!(report.to_json()["target"], "torchwire");
    floor.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentiment_batches_from_a_text_file_are_all_ok() {
    let floor = Floor::start().await;
    let path = std::env::temp_dir().join(format!("torchwire-bench-texts-{}.txt", std::process::id()));
    std::fs::write(&path, "good\nbad\n\nfine\n").unwrap();
    let file = path.to_string_lossy().into_owned();
    let args = bench_args(
        floor.addr,
        &["--rpc", "sentiment", "--text-file", &file, "--rows", "2", "--concurrency", "4", "--connections", "2"],
    );
    let report = measure(&args, false).await.unwrap();
    assert_all_ok(&report);
    // The floor answers one result per text: rows/s counts texts.
    assert!((report.rows_per_s - 2.0 * report.requests_per_s).abs() < 1e-6, "{report:?}");
    std::fs::remove_file(&path).unwrap();
    floor.shut_down().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_targets_count_a_foreign_server_as_errors() {
    let floor = Floor::start().await;
    for target in ["python", "torchserve"] {
        let args = bench_args(floor.addr, &["--target", target, "--features", "3"]);
        let report = measure(&args, false).await.unwrap();
        assert_eq!(report.requests, 0, "{report:?}");
        assert!(report.errors > 0, "{report:?}");
        assert_eq!(report.codes.keys().collect::<Vec<_>>(), vec!["Unimplemented"], "{report:?}");
    }
    floor.shut_down().await;
}

#[tokio::test]
async fn predict_without_model_or_features_says_what_is_missing() {
    let floor = Floor::start().await;
    let err = measure(&bench_args(floor.addr, &[]), false).await.unwrap_err().to_string();
    assert!(err.contains("--model") && err.contains("--features"), "{err}");
    floor.shut_down().await;
}

/// `--malformed-percent` against the real server: about that share of requests comes back
/// INVALID_ARGUMENT, the rest OK.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_percent_sends_that_share_of_invalid_requests() {
    let (addr, stop, server) = real_server(|_| {}).await;
    let args = bench_args(addr, &["--model", "tiny_risk", "--concurrency", "2", "--malformed-percent", "10"]);
    let report = measure(&args, false).await.unwrap();
    let bad = report.codes.get("InvalidArgument").copied().unwrap_or(0);
    let total: u64 = report.codes.values().sum();
    assert_eq!(report.codes.keys().filter(|k| *k != "OK" && *k != "InvalidArgument").count(), 0, "{report:?}");
    let share = bad as f64 / total as f64;
    assert!((0.08..=0.12).contains(&share), "{bad} of {total} malformed: {report:?}");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// `--key` against a server that requires one: every request OK with it, UNAUTHENTICATED
/// without it (GetModel, for the input width, is asked with the same key).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_opens_a_keyed_server() {
    use torchwire::auth::{Keys, Secret};
    const KEY: &str = "bench-key-0123456789abcdef";
    let (addr, stop, server) = real_server(|c| c.keys = Keys { api: vec![], admin: vec![Secret::new(KEY)] }).await;
    let report = measure(&bench_args(addr, &["--model", "tiny_risk", "--key", KEY]), false).await.unwrap();
    assert_all_ok(&report);
    let refused = measure(&bench_args(addr, &["--model", "tiny_risk"]), false).await;
    let err = format!("{:#}", refused.unwrap_err());
    assert!(err.contains("nauthenticated") || err.contains("authorization"), "{err}");
    stop.cancel();
    server.await.unwrap().unwrap();
}

/// `--rpc infer`: KServe v2 ModelInfer with FP32 rows against the real server, all OK; and
/// TorchServe, which has no KServe gRPC, is refused up front.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kserve_infer_against_the_real_server_is_all_ok() {
    let (addr, stop, server) = real_server(|_| {}).await;
    let report =
        measure(&bench_args(addr, &["--rpc", "infer", "--model", "tiny_risk", "--rows", "3"]), false).await.unwrap();
    assert_all_ok(&report);
    assert!((report.rows_per_s - 3.0 * report.requests_per_s).abs() < 1e-6 * report.rows_per_s, "{report:?}");
    let err = measure(&bench_args(addr, &["--rpc", "infer", "--target", "torchserve", "--features", "4"]), false)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("KServe"), "{err}");
    stop.cancel();
    server.await.unwrap().unwrap();
}
