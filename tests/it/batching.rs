//! Batching, admission and cancellation through the real server, with the fake backend (whose
//! forward pass returns `[-sum(row), sum(row)]` per row after a set delay) so timings are
//! controlled and the backend can say exactly what it ran.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::common::on_both_executors;
use crate::common::{TestServer, fixtures_dir};
use tonic::Code;
use torchwire::config::Config;
use torchwire::inline::ExecutorChoice;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{DataType, PredictRequest, Tensor};

fn one_row(v: f32) -> PredictRequest {
    PredictRequest {
        version: String::new(),
        model: "tiny_risk".into(),
        device: "cpu".into(),
        inputs: vec![Tensor {
            name: "features".into(),
            dtype: DataType::Float32 as i32,
            shape: vec![1, 4],
            float_data: vec![v, 0.0, 0.0, 0.0],
            ..Default::default()
        }],
        rows: vec![],
    }
}

async fn concurrent_requests_share_forward_passes_and_each_gets_its_own_rows(executor: ExecutorChoice) {
    let factory = FakeFactory { forward_delay: Duration::from_millis(60), ..FakeFactory::default() };
    let forwards = Arc::clone(&factory.forwards);
    let server =
        TestServer::start_with(Config { executor, ..Config::for_tests(fixtures_dir()) }, Arc::new(factory)).await;
    // Load first, so the concurrent requests below queue behind one another.
    server.inference().predict(one_row(0.5)).await.unwrap();
    let forwards_before = forwards.load(Ordering::SeqCst);
    let calls: Vec<_> = (1..=16)
        .map(|i| {
            let mut c = server.inference();
            tokio::spawn(async move { (i, c.predict(one_row(i as f32)).await) })
        })
        .collect();
    let mut batched = 0;
    for call in calls {
        let (i, resp) = call.await.unwrap();
        let resp = resp.unwrap().into_inner();
        assert_eq!(resp.outputs[0].shape, vec![1, 2]);
        assert_eq!(resp.outputs[0].float_data, vec![-(i as f32), i as f32], "request {i} got its own row back");
        let size = resp.timing.unwrap().batch_size;
        assert!(size <= 16, "CPU default max batch is 16, got {size}");
        if size > 1 {
            batched += 1;
        }
    }
    assert!(batched > 0, "some requests ran in batches larger than 1");
    assert!(forwards.load(Ordering::SeqCst) - forwards_before < 16, "fewer forward passes than requests");
}

/// Eight clients in a closed loop: each batch's eight answers leave together and the eight next
/// requests arrive over the next moments. The worker waits briefly for the batch to refill
/// instead of starting a pass on the first arrival, so batches stay full rather than
/// alternating between one request and seven.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_loop_of_clients_keeps_its_batches_full() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(50), ..FakeFactory::default() };
    let server = TestServer::start_with(Config::for_tests(fixtures_dir()), Arc::new(factory)).await;
    server.inference().predict(one_row(0.5)).await.unwrap();
    let clients: Vec<_> = (0..8)
        .map(|i| {
            let mut c = server.inference();
            tokio::spawn(async move {
                let mut sizes = Vec::new();
                for round in 0..12 {
                    let resp = c.predict(one_row(i as f32)).await.unwrap().into_inner();
                    // The first rounds start the loop; from then on the load is steady.
                    if round >= 3 {
                        sizes.push(resp.timing.unwrap().batch_size);
                    }
                }
                sizes
            })
        })
        .collect();
    let mut sizes = Vec::new();
    for c in clients {
        sizes.extend(c.await.unwrap());
    }
    // Forward passes in the steady rounds: a batch of s requests contributes s times 1/s. Kept
    // together, the eight clients need one pass per round; split into two cohorts, two.
    let passes: f64 = sizes.iter().map(|&s| 1.0 / f64::from(s)).sum();
    let rounds = 9.0;
    assert!(passes <= 1.5 * rounds, "{passes:.1} passes for {rounds} rounds of 8 clients; batch sizes {sizes:?}");
}

async fn a_full_queue_answers_resource_exhausted_at_once(executor: ExecutorChoice) {
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let config = Config { queue_capacity: 1, executor, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    server.inference().predict(one_row(1.0)).await.unwrap();
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut c = server.inference();
            tokio::spawn(async move { c.predict(one_row(i as f32)).await })
        })
        .collect();
    let mut rejected = 0;
    let mut ok = 0;
    for call in calls {
        match call.await.unwrap() {
            Ok(_) => ok += 1,
            Err(status) => {
                assert_eq!(status.code(), Code::ResourceExhausted, "{}", status.message());
                assert!(
                    status.message().contains("`tiny_risk`") && status.message().contains("1 queued"),
                    "{}",
                    status.message()
                );
                rejected += 1;
            }
        }
    }
    assert!(rejected > 0 && ok > 0, "ok {ok}, rejected {rejected}");
}

/// Waits until the model's queue depth (jobs queued or running) is `n`, proving that the jobs
/// the test sent reached the worker's queue.
async fn wait_for_queue_depth(server: &TestServer, n: f64) {
    let gauge = r#"torchwire_queue_depth{device="cpu",model="tiny_risk"}"#;
    for _ in 0..500 {
        if server.metric(gauge).await == Some(n) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    panic!("queue depth never reached {n}: {:?}", server.metric(gauge).await);
}

async fn a_cancelled_or_expired_request_is_never_computed(executor: ExecutorChoice) {
    // The blocker's pass is long enough for the two other requests to reach the queue (and the
    // test to see each arrive) on a loaded CI host: at 400 ms one run saw it finish first.
    let factory = FakeFactory { forward_delay: Duration::from_millis(1500), ..FakeFactory::default() };
    let rows_seen = Arc::clone(&factory.rows_seen);
    // Calls without a grpc-timeout get 150 ms (the server's own default, no client timer).
    let config = Config { default_timeout: Duration::from_millis(150), executor, ..Config::for_tests(fixtures_dir()) };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let patient = |v: f32| {
        let mut req = tonic::Request::new(one_row(v));
        req.set_timeout(Duration::from_secs(10));
        req
    };
    server.inference().predict(patient(1.0)).await.unwrap();
    let before = rows_seen.load(Ordering::SeqCst);
    // Occupy the worker, then queue one request whose client gives up, and one whose deadline
    // passes while it waits in the queue; the queue depth proves each reached the queue.
    let mut busy = server.inference();
    let blocker = tokio::spawn(async move { busy.predict(patient(2.0)).await });
    wait_for_queue_depth(&server, 1.0).await;
    let mut c = server.inference();
    let cancelled = tokio::spawn(async move { c.predict(patient(3.0)).await });
    wait_for_queue_depth(&server, 2.0).await;
    let mut c = server.inference();
    let expiring = tokio::spawn(async move { c.predict(one_row(4.0)).await });
    wait_for_queue_depth(&server, 3.0).await;
    cancelled.abort();
    let status = expiring.await.unwrap().unwrap_err();
    assert_eq!(status.code(), Code::DeadlineExceeded, "{status:?}");
    blocker.await.unwrap().unwrap();
    wait_for_queue_depth(&server, 0.0).await;
    assert_eq!(rows_seen.load(Ordering::SeqCst), before + 1, "only the blocker ran");
    let dropped = r#"torchwire_deadline_exceeded_total{model="tiny_risk",rpc="Predict",stage="queue"}"#;
    assert_eq!(server.metric(dropped).await, Some(1.0), "the expired job was dropped by the worker, at the queue");
}

async fn the_rate_limit_refuses_with_a_retry_after_trailer(executor: ExecutorChoice) {
    use torchwire::admission::AdmissionConfig;
    let config = Config {
        admission: AdmissionConfig { max_inflight: 100, rate_limit_rps: 2.0, rate_limit_burst: 2.0 },
        executor,
        ..Config::for_tests(fixtures_dir())
    };
    let server = TestServer::start_with(config, Arc::new(FakeFactory::default())).await;
    let mut c = server.inference();
    c.predict(one_row(1.0)).await.unwrap();
    c.predict(one_row(1.0)).await.unwrap();
    let status = c.predict(one_row(1.0)).await.unwrap_err();
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry: u64 =
        status.metadata().get("retry-after-ms").expect("retry-after-ms trailer").to_str().unwrap().parse().unwrap();
    assert!((1..=500).contains(&retry), "{retry}");
    // A client cannot pick its own bucket: a fresh `x-api-key` on each request (which nothing
    // verifies) used to get a fresh, full bucket each time. Without keys the bucket is the
    // peer address.
    for i in 0..3 {
        let mut req = tonic::Request::new(one_row(1.0));
        req.metadata_mut().insert("x-api-key", format!("rotating-{i}").parse().unwrap());
        let status = c.predict(req).await.expect_err("rotating x-api-key is still limited");
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_keys_the_rate_limit_bucket_is_the_verified_key() {
    use torchwire::admission::AdmissionConfig;
    use torchwire::auth::{Keys, Secret};
    let (key_a, key_b) = ("key-a-0123456789abcdef", "key-b-0123456789abcdef");
    let mut config = Config {
        admission: AdmissionConfig { max_inflight: 100, rate_limit_rps: 1.0, rate_limit_burst: 2.0 },
        ..Config::for_tests(fixtures_dir())
    };
    config.keys = Keys { api: vec![Secret::new(key_a), Secret::new(key_b)], admin: vec![] };
    let server = TestServer::start_with(config, Arc::new(FakeFactory::default())).await;
    let mut c = server.inference();
    let call = |key: &str, rotate: Option<usize>| {
        let mut req = tonic::Request::new(one_row(1.0));
        req.metadata_mut().insert("authorization", format!("Bearer {key}").parse().unwrap());
        if let Some(i) = rotate {
            req.metadata_mut().insert("x-api-key", format!("rotating-{i}").parse().unwrap());
        }
        req
    };
    c.predict(call(key_a, None)).await.unwrap();
    c.predict(call(key_a, None)).await.unwrap();
    for i in 0..3 {
        let status = c.predict(call(key_a, Some(i))).await.expect_err("key A's bucket is empty");
        assert_eq!(status.code(), Code::ResourceExhausted);
    }
    c.predict(call(key_b, None)).await.expect("key B has its own bucket");
}

async fn the_global_inflight_limit_refuses_at_once(executor: ExecutorChoice) {
    use torchwire::admission::AdmissionConfig;
    let factory = FakeFactory { forward_delay: Duration::from_millis(200), ..FakeFactory::default() };
    let config = Config {
        admission: AdmissionConfig { max_inflight: 2, rate_limit_rps: 0.0, rate_limit_burst: 0.0 },
        executor,
        ..Config::for_tests(fixtures_dir())
    };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let calls: Vec<_> = (0..6)
        .map(|i| {
            let mut c = server.inference();
            tokio::spawn(async move { c.predict(one_row(i as f32)).await })
        })
        .collect();
    let mut refused = 0;
    for call in calls {
        if let Err(status) = call.await.unwrap() {
            assert_eq!(status.code(), Code::ResourceExhausted);
            assert!(status.message().contains("limit of 2 requests in flight"), "{}", status.message());
            refused += 1;
        }
    }
    assert!((1..=4).contains(&refused), "refused {refused} of 6 with room for 2");
}

async fn a_panicking_forward_pass_fails_that_request_only(executor: ExecutorChoice) {
    let server = TestServer::start_with(
        Config { executor, ..Config::for_tests(fixtures_dir()) },
        Arc::new(FakeFactory::default()),
    )
    .await;
    let mut c = server.inference();
    let status = c.predict(one_row(666.0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal);
    assert!(!status.message().contains("panicked"), "details stay in the log: {}", status.message());
    let ok = c.predict(one_row(2.0)).await.expect("the model keeps serving");
    assert_eq!(ok.into_inner().outputs[0].float_data, vec![-2.0, 2.0]);
}

/// One request computes; the next expires while computing (computed, result discarded); the
/// third expires in the queue and is never computed. Counted by stage in the metrics.
async fn deadlines_expire_in_the_queue_and_during_compute_and_are_counted_by_stage(executor: ExecutorChoice) {
    let factory = FakeFactory { forward_delay: Duration::from_millis(300), ..FakeFactory::default() };
    let rows_seen = Arc::clone(&factory.rows_seen);
    let config = Config {
        max_batch_size: Some(1),
        warmup_runs: 0,
        default_timeout: Duration::from_millis(400),
        executor,
        ..Config::for_tests(fixtures_dir())
    };
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    server.inference().predict(one_row(1.0)).await.unwrap();
    let before = rows_seen.load(Ordering::SeqCst);
    let mut a = server.inference();
    let first = tokio::spawn(async move { a.predict(one_row(1.0)).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut b = server.inference();
    let computing = tokio::spawn(async move { b.predict(one_row(2.0)).await });
    tokio::time::sleep(Duration::from_millis(10)).await;
    let mut c = server.inference();
    let queued = tokio::spawn(async move { c.predict(one_row(3.0)).await });
    first.await.unwrap().expect("the first request fits its deadline");
    for late in [computing, queued] {
        let status = late.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::DeadlineExceeded, "{}", status.message());
    }
    // Let the worker finish the second job and reach the third.
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(rows_seen.load(Ordering::SeqCst), before + 2, "the third job was never computed");
    let (_, text) = server.http_get("/metrics").await;
    let at = |stage: &str| {
        let prefix = format!(r#"torchwire_deadline_exceeded_total{{model="tiny_risk",rpc="Predict",stage="{stage}"}}"#);
        text.lines()
            .find(|l| l.starts_with(&prefix))
            .and_then(|l| l.rsplit(' ').next())
            .map(|v| v.parse::<f64>().unwrap())
    };
    assert_eq!(at("queue"), Some(1.0), "{text}");
    assert_eq!(at("compute"), Some(1.0), "{text}");
    assert_eq!(at("handler"), Some(2.0), "{text}");
}

on_both_executors!(
    concurrent_requests_share_forward_passes_and_each_gets_its_own_rows,
    a_full_queue_answers_resource_exhausted_at_once,
    a_cancelled_or_expired_request_is_never_computed,
    the_rate_limit_refuses_with_a_retry_after_trailer,
    the_global_inflight_limit_refuses_at_once,
    a_panicking_forward_pass_fails_that_request_only,
    deadlines_expire_in_the_queue_and_during_compute_and_are_counted_by_stage,
);
