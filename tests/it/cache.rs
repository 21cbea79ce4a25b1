//! The response cache through the real server: hits, misses and partial batches on the real
//! libtorch fixture (answers equal to computed ones), single flight and bypass on the fake
//! backend (whose forward passes are counted), a version swap that changes the key space, and
//! the Redis tier with a real `redis-server`: shared between two servers, killed in the middle
//! of a load (no request fails), unreachable at start-up.

#![allow(clippy::unwrap_used)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::common::{TestServer, fixtures_dir, tensor_predict};
use torchwire::cache::CacheConfig;
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{PredictRequest, PredictResponse, ReloadRepositoryRequest};

/// A repository with `m` = the `tiny_risk` fixture with `[cache]`; `versions` empty = flat.
fn repo(versions: &[u64]) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "torchwire-cache-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    ));
    let m = dir.join("m");
    std::fs::create_dir_all(&m).unwrap();
    let manifest = std::fs::read_to_string(fixtures_dir().join("tiny_risk/model.toml")).unwrap();
    std::fs::write(m.join("model.toml"), format!("{manifest}\n[cache]\n")).unwrap();
    if versions.is_empty() {
        std::fs::copy(fixtures_dir().join("tiny_risk/model.pt"), m.join("model.pt")).unwrap();
    }
    for v in versions {
        publish(&m, *v);
    }
    dir
}

fn publish(m: &Path, v: u64) {
    let tmp = m.join(format!(".{v}.tmp"));
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::copy(fixtures_dir().join("tiny_risk/model.pt"), tmp.join("model.pt")).unwrap();
    std::fs::rename(&tmp, m.join(v.to_string())).unwrap();
}

fn config(dir: &Path, bytes: u64, redis: Option<String>) -> Config {
    Config {
        cache: CacheConfig { bytes, redis_url: redis, redis_timeout: Duration::from_millis(50) },
        ..Config::for_tests(dir)
    }
}

fn row(i: u32) -> Vec<f32> {
    vec![20.0 + i as f32, 22.5, 90.0 + i as f32, 120.0]
}

async fn predict(server: &TestServer, rows: &[Vec<f32>], no_cache: bool) -> (PredictResponse, String) {
    let mut req = tonic::Request::new(tensor_predict("m", rows));
    if no_cache {
        req.metadata_mut().insert("cache-control", "no-cache".parse().unwrap());
    }
    let resp = server.inference().predict(req).await.unwrap();
    let header = resp.metadata().get("x-torchwire-cache").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (resp.into_inner(), header)
}

fn timing(r: &PredictResponse) -> (i32, String) {
    let t = r.timing.as_ref().unwrap();
    (t.cached_rows, t.cache.clone())
}

#[tokio::test]
async fn repeated_rows_are_answered_from_the_cache_and_equal_what_the_model_computes() {
    let dir = repo(&[]);
    let server = TestServer::start(config(&dir, 1 << 20, None)).await;
    let (first, h1) = predict(&server, &[row(1), row(2)], false).await;
    assert_eq!((timing(&first), h1.as_str()), ((0, "miss".into()), "miss"));
    let (again, h2) = predict(&server, &[row(1), row(2)], false).await;
    assert_eq!((timing(&again), h2.as_str()), ((2, "hit".into()), "hit"));
    assert_eq!(again.outputs, first.outputs, "a cached answer is byte-for-byte the computed one");
    assert_eq!(again.predictions, first.predictions);
    // A partial batch: one row cached, one computed, merged in request order.
    let (partial, h3) = predict(&server, &[row(3), row(1)], false).await;
    assert_eq!((timing(&partial), h3.as_str()), ((1, "partial".into()), "partial"));
    let (computed, h4) = predict(&server, &[row(3), row(1)], true).await;
    assert_eq!(h4, "bypass");
    // Equal to a full computation up to float rounding: libtorch's kernels round a row
    // differently in a batch of 1 than in a batch of 2 (about 1e-7 here).
    let (p, c) = (&partial.outputs[0].float_data, &computed.outputs[0].float_data);
    assert_eq!(p.len(), c.len());
    assert!(p.iter().zip(c).all(|(x, y)| (x - y).abs() <= 1e-5), "merged rows equal a full computation: {p:?} {c:?}");
    assert_eq!(partial.outputs[0].shape, vec![2, 3]);
    let hits = server.metric("torchwire_cache_lookups_total{model=\"m\",result=\"hit\"}").await;
    assert_eq!(hits, Some(3.0));
    assert!(server.metric("torchwire_cache_bytes").await.unwrap() > 0.0);
    server.stop().await.unwrap();
}

#[tokio::test]
async fn identical_rows_in_flight_are_computed_once_and_bypass_computes() {
    let dir = repo(&[]);
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let rows_seen = Arc::clone(&factory.rows_seen);
    let server = TestServer::start_with(config(&dir, 1 << 20, None), Arc::new(factory)).await;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            let mut c = server.inference();
            tokio::spawn(async move { c.predict(tensor_predict("m", &[row(7), row(7)])).await.unwrap().into_inner() })
        })
        .collect();
    let mut answers = Vec::new();
    for c in clients {
        answers.push(c.await.unwrap());
    }
    assert!(answers.iter().all(|a| a.outputs == answers[0].outputs));
    // Warm-up passes run zeros; every request row beyond them was this one row, once.
    let warmup = rows_seen.load(Ordering::SeqCst) - 1;
    let misses = server.metric("torchwire_cache_lookups_total{model=\"m\",result=\"miss\"}").await;
    assert_eq!(misses, Some(1.0), "16 identical rows in flight, one computed");
    let coalesced = server.metric("torchwire_cache_lookups_total{model=\"m\",result=\"coalesced\"}").await;
    assert_eq!(
        coalesced.unwrap()
            + server.metric("torchwire_cache_lookups_total{model=\"m\",result=\"hit\"}").await.unwrap_or(0.0),
        15.0
    );
    let (_, how) = predict(&server, &[row(7)], true).await;
    assert_eq!(how, "bypass");
    assert_eq!(rows_seen.load(Ordering::SeqCst), warmup + 2, "a bypass computes");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_new_version_changes_the_key_space() {
    let dir = repo(&[1]);
    let server = TestServer::start(config(&dir, 1 << 20, None)).await;
    assert_eq!(predict(&server, &[row(1)], false).await.1, "miss");
    assert_eq!(predict(&server, &[row(1)], false).await.1, "hit");
    publish(&dir.join("m"), 2);
    server.admin().reload_repository(ReloadRepositoryRequest { wait: true }).await.unwrap();
    let (resp, how) = predict(&server, &[row(1)], false).await;
    assert_eq!((resp.version.as_str(), how.as_str()), ("2", "miss"), "never the old version's answer");
    server.stop().await.unwrap();
}

#[tokio::test]
async fn a_model_without_cache_or_a_zero_size_cache_is_not_cached_and_bypass_is_a_no_op() {
    let server = TestServer::start(config(&fixtures_dir(), 1 << 20, None)).await;
    let mut req = tonic::Request::new(tensor_predict("tiny_risk", &[row(1)]));
    req.metadata_mut().insert("cache-control", "no-cache".parse().unwrap());
    let resp = server.inference().predict(req).await.unwrap();
    assert!(resp.metadata().get("x-torchwire-cache").is_none());
    assert_eq!(timing(&resp.into_inner()), (0, String::new()));
    server.stop().await.unwrap();
    let dir = repo(&[]);
    let server = TestServer::start(config(&dir, 0, None)).await;
    let (resp, how) = predict(&server, &[row(1)], false).await;
    assert_eq!((timing(&resp), how.as_str()), ((0, String::new()), ""));
    server.stop().await.unwrap();
}

/// A real `redis-server` on a free port, killed when dropped.
struct Redis {
    port: u16,
    child: Child,
}

impl Redis {
    fn start(port: u16) -> Self {
        let child = Command::new("redis-server")
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server (Debian package redis-server; scripts/setup-system.sh installs it)");
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(started.elapsed() < Duration::from_secs(10), "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Redis { port, child }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_second_server_answers_from_redis_and_redis_dying_fails_no_request() {
    let dir = repo(&[]);
    let redis = Redis::start(free_port());
    let a = TestServer::start(config(&dir, 1 << 20, Some(redis.url()))).await;
    // b has no in-process tier: everything it finds, it finds in Redis.
    let b = TestServer::start(config(&dir, 0, Some(redis.url()))).await;
    let (computed, how) = predict(&a, &[row(1), row(2)], false).await;
    assert_eq!(how, "miss");
    // Writes are in the background.
    let started = Instant::now();
    loop {
        let (resp, how) = predict(&b, &[row(1), row(2)], false).await;
        if how == "hit" {
            assert_eq!(resp.outputs, computed.outputs, "the shared answer is the computed one");
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "server b never found server a's answer in Redis");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(b.metric("torchwire_cache_lookups_total{model=\"m\",result=\"redis_hit\"}").await.unwrap() >= 2.0);

    // Load on b while Redis dies and comes back: nothing fails.
    let failures = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let tasks: Vec<_> = (0..4)
        .map(|t| {
            let (mut c, failures, stop) = (b.inference(), Arc::clone(&failures), Arc::clone(&stop));
            tokio::spawn(async move {
                let mut i = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let req: PredictRequest = tensor_predict("m", &[row(100 + (t * 1000 + i) % 400)]);
                    if c.predict(req).await.is_err() {
                        failures.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let port = redis.port;
    drop(redis);
    tokio::time::sleep(Duration::from_millis(700)).await;
    let redis = Redis::start(port);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0, "no request failed while Redis was down");
    let errors = b.metric("torchwire_cache_redis_errors_total{kind=\"error\",model=\"m\"}").await.unwrap_or(0.0)
        + b.metric("torchwire_cache_redis_errors_total{kind=\"timeout\",model=\"m\"}").await.unwrap_or(0.0)
        + b.metric("torchwire_cache_redis_errors_total{kind=\"skipped\",model=\"m\"}").await.unwrap_or(0.0);
    assert!(errors > 0.0, "the outage was counted");
    // Back: new answers computed by a reach b through Redis again (each server's connection
    // comes back on its own).
    let started = Instant::now();
    for k in 0.. {
        let fresh = [row(5000 + k)];
        assert_eq!(predict(&a, &fresh, false).await.1, "miss");
        tokio::time::sleep(Duration::from_millis(100)).await;
        if predict(&b, &fresh, false).await.1 == "hit" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "the Redis tier never came back");
    }
    drop(redis);
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test]
async fn redis_unreachable_at_start_up_serves_without_it() {
    let dir = repo(&[]);
    let server = TestServer::start(config(&dir, 0, Some(format!("redis://127.0.0.1:{}/0", free_port())))).await;
    for _ in 0..3 {
        let (resp, how) = predict(&server, &[row(1)], false).await;
        assert_eq!((how.as_str(), resp.predictions.len()), ("miss", 1));
    }
    let (status, _) = server.http_get("/readyz").await;
    assert_eq!(status, 200);
    server.stop().await.unwrap();
}
