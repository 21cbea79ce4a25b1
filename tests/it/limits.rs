//! Every configurable request and connection limit, tested at its boundary: the largest value
//! allowed passes and one more is refused with a clear status (message size, rows, tensor
//! elements, texts, bytes per text, header bytes), and the connection limits hold (concurrent
//! streams advertised and enforced, keep-alive closes a peer that stops answering PINGs, idle
//! connections are closed while busy ones are not). The server keeps serving after each.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::common::{TestServer, fixtures_dir, frame, grpc_request, grpc_status, h2_connect};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::Code;
use torchwire::config::Config;
use torchwire::model::fake::FakeFactory;
use torchwire::proto::{DataType, PredictRequest, Row, SentimentRequest, Tensor};

fn tensor_request(rows: i64) -> PredictRequest {
    PredictRequest {
        model: "tiny_risk".into(),
        inputs: vec![Tensor {
            name: "features".into(),
            dtype: DataType::Float32 as i32,
            shape: vec![rows, 4],
            float_data: (0..rows * 4).map(|i| 20.0 + i as f32).collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn row_request(rows: usize) -> PredictRequest {
    let row = || Row {
        features: [("age", 50.0), ("bmi", 27.0), ("glucose", 100.0), ("systolic_bp", 120.0)]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
    };
    PredictRequest { model: "tiny_risk".into(), rows: (0..rows).map(|_| row()).collect(), ..Default::default() }
}

fn texts(texts: &[&str]) -> SentimentRequest {
    SentimentRequest {
        model: "tiny_bert".into(),
        texts: texts.iter().map(|t| (*t).to_owned()).collect(),
        ..Default::default()
    }
}

fn refused(result: Result<impl std::fmt::Debug, tonic::Status>, code: Code, words: &[&str]) {
    let err = result.expect_err("must be refused");
    assert_eq!(err.code(), code, "{err:?}");
    for w in words {
        assert!(err.message().contains(w), "message {:?} should mention {w:?}", err.message());
    }
}

#[tokio::test]
async fn message_size_limit_is_exact() {
    let req = tensor_request(8);
    let len = prost::Message::encoded_len(&req);
    let mut config = Config::for_tests(fixtures_dir());
    config.max_message_bytes = len;
    let server = TestServer::start(config).await;
    server.inference().predict(req.clone()).await.expect("a message of exactly the limit is accepted");

    let mut config = Config::for_tests(fixtures_dir());
    config.max_message_bytes = len - 1;
    let server = TestServer::start(config).await;
    refused(server.inference().predict(req).await, Code::OutOfRange, &["too large", &format!("{}", len - 1)]);
    server.inference().predict(tensor_request(1)).await.expect("smaller messages still served");
}

#[tokio::test]
async fn rows_and_tensor_elements_limits_are_exact_and_overflow_safe() {
    let mut config = Config::for_tests(fixtures_dir());
    config.limits.max_rows = 3;
    config.limits.max_tensor_elements = 8;
    let server = TestServer::start(config).await;
    let mut c = server.inference();
    // Named rows: 3 pass, 4 do not.
    c.predict(row_request(3)).await.expect("max_rows rows");
    refused(c.predict(row_request(4)).await, Code::InvalidArgument, &["3"]);
    // Tensors: 2 x 4 = 8 elements pass, 3 x 4 = 12 do not.
    c.predict(tensor_request(2)).await.expect("max_tensor_elements elements");
    refused(c.predict(tensor_request(3)).await, Code::InvalidArgument, &["8"]);
    // Shapes whose element count overflows 64 bits are refused, not wrapped.
    for shape in [vec![i64::MAX, 4], vec![1 << 40, 1 << 40], vec![-1, 4], vec![4, i64::MIN]] {
        let mut req = tensor_request(1);
        req.inputs[0].shape = shape.clone();
        refused(c.predict(req).await, Code::InvalidArgument, &[]);
    }
    c.predict(tensor_request(1)).await.expect("still serving");
}

#[tokio::test]
async fn texts_per_request_and_bytes_per_text_limits_are_exact() {
    let mut config = Config::for_tests(fixtures_dir());
    config.limits.max_texts = 2;
    config.limits.max_text_bytes = 16;
    let server = TestServer::start(config).await;
    let mut c = server.inference();
    c.sentiment(texts(&["good", "bad"])).await.expect("max_texts texts");
    refused(c.sentiment(texts(&["a", "b", "c"])).await, Code::InvalidArgument, &["2"]);
    c.sentiment(texts(&["sixteen bytes ok"])).await.expect("a text of exactly max_text_bytes");
    c.sentiment(texts(&["éééééééé"])).await.expect("16 bytes in 8 two-byte characters");
    refused(c.sentiment(texts(&["seventeen bytes!!"])).await, Code::InvalidArgument, &["16"]);
    refused(c.sentiment(texts(&["éééééééé!"])).await, Code::InvalidArgument, &["16"]);
    c.sentiment(texts(&["fine"])).await.expect("still serving");
}

#[tokio::test]
async fn oversized_headers_are_refused_and_the_server_keeps_serving() {
    let mut config = Config::for_tests(fixtures_dir());
    config.max_header_bytes = 2048;
    let server = TestServer::start(config).await;
    let mut req = tonic::Request::new(tensor_request(1));
    req.metadata_mut().insert("x-padding", "p".repeat(4096).parse().unwrap());
    assert!(server.inference().predict(req).await.is_err(), "a 4 KiB header over a 2 KiB limit");
    let mut req = tonic::Request::new(tensor_request(1));
    req.metadata_mut().insert("x-padding", "p".repeat(512).parse().unwrap());
    // A fresh connection: the refused request may have cost the first one.
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", server.addr)).unwrap().connect_lazy();
    torchwire::proto::inference_client::InferenceClient::new(channel)
        .predict(req)
        .await
        .expect("headers within the limit are served");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_per_connection_are_capped() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(50), ..FakeFactory::default() };
    let mut config = Config::for_tests(fixtures_dir());
    config.max_concurrent_streams = 2;
    let server = TestServer::start_with(config, Arc::new(factory)).await;
    let (send, _conn) = h2_connect(server.addr).await;
    let mut send = send.ready().await.unwrap();
    // One full round trip, so the server's SETTINGS have been read.
    let (resp, mut body) =
        send.send_request(grpc_request(server.addr, "/torchwire.v1.Inference/Predict"), false).unwrap();
    body.send_data(frame(&tensor_request(1)), true).unwrap();
    assert_eq!(grpc_status(resp).await, 0);
    let mut send = send.ready().await.unwrap();
    // Two streams with unfinished bodies hold both slots.
    let mut open = Vec::new();
    for _ in 0..2 {
        let (resp, body) =
            send.send_request(grpc_request(server.addr, "/torchwire.v1.Inference/Predict"), false).unwrap();
        open.push((resp, body));
        send = send.ready().await.unwrap();
    }
    assert_eq!(send.current_max_send_streams(), 2, "the server advertises its stream limit");
    // A third stream is not admitted while two are open...
    let (third, mut third_body) =
        send.send_request(grpc_request(server.addr, "/torchwire.v1.Inference/Predict"), false).unwrap();
    third_body.send_data(frame(&tensor_request(1)), true).unwrap();
    let third = tokio::spawn(grpc_status(third));
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(!third.is_finished(), "a third stream ran while two were open");
    // ...and runs once one of them finishes.
    let (first, mut first_body) = open.remove(0);
    first_body.send_data(frame(&tensor_request(1)), true).unwrap();
    assert_eq!(grpc_status(first).await, 0);
    let status = tokio::time::timeout(Duration::from_secs(5), third).await.expect("third stream answered").unwrap();
    assert_eq!(status, 0);
    let (second, mut second_body) = open.remove(0);
    second_body.send_data(frame(&tensor_request(1)), true).unwrap();
    assert_eq!(grpc_status(second).await, 0);
}

#[tokio::test]
async fn keep_alive_closes_a_peer_that_stops_answering_pings() {
    let mut config = Config::for_tests(fixtures_dir());
    config.keepalive_interval = Some(Duration::from_millis(300));
    config.keepalive_timeout = Duration::from_millis(300);
    let server = TestServer::start(config).await;
    // A raw HTTP/2 peer: preface, empty SETTINGS, ACK of the server's SETTINGS, then silence.
    let mut tcp = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    tcp.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]).await.unwrap();
    let started = Instant::now();
    let mut buf = vec![0u8; 4096];
    let mut saw_ping = false;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => saw_ping |= buf[..n].windows(4).any(|w| w[3] == 6 && w[0..3] == [0, 0, 8]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the server kept a silent peer open for 10 s");
    assert!(saw_ping, "the server sent a keep-alive PING");
    assert!(started.elapsed() >= Duration::from_millis(500), "closed before the PING could be answered");

    // A client that answers PINGs keeps its connection past several intervals.
    let (send, conn) = h2_connect(server.addr).await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(!conn.is_finished(), "a responsive client's connection was closed");
    let mut send = send.ready().await.unwrap();
    let (resp, mut body) =
        send.send_request(grpc_request(server.addr, "/torchwire.v1.Inference/Predict"), false).unwrap();
    body.send_data(frame(&tensor_request(1)), true).unwrap();
    assert_eq!(grpc_status(resp).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_are_closed_and_busy_ones_are_not() {
    let factory = FakeFactory { forward_delay: Duration::from_millis(1200), ..FakeFactory::default() };
    let mut config = Config::for_tests(fixtures_dir());
    config.idle_timeout = Some(Duration::from_millis(500));
    let server = TestServer::start_with(config, Arc::new(factory)).await;

    // Busy: one request longer than the idle time-out completes on its connection.
    let (send, conn) = h2_connect(server.addr).await;
    let mut send = send.ready().await.unwrap();
    let (resp, mut body) =
        send.send_request(grpc_request(server.addr, "/torchwire.v1.Inference/Predict"), false).unwrap();
    body.send_data(frame(&tensor_request(1)), true).unwrap();
    assert_eq!(grpc_status(resp).await, 0, "a request longer than the idle time-out is not cut");
    // Idle afterwards: the server closes the connection (GOAWAY) about 0.5 s later.
    let started = Instant::now();
    let ended = tokio::time::timeout(Duration::from_secs(5), conn).await;
    assert!(ended.is_ok(), "an idle connection stayed open");
    assert!(started.elapsed() >= Duration::from_millis(400), "closed before the idle time-out");
    // A new connection is served.
    server.inference().predict(tensor_request(1)).await.expect("a new connection is served");
}
