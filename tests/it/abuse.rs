//! Raw HTTP/2 abuse with a client built on the `h2` crate, below any gRPC library: malformed
//! gRPC frames (bad compression flag, a length prefix longer than the body or absurdly large,
//! garbage protobuf), a client that never finishes its request body, and a flood of streams
//! opened and reset. Each gets a proper gRPC status or is cut off, and the server keeps serving
//! other clients, with nothing left in flight.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use crate::common::{TestServer, fixtures_dir, frame, grpc_answer, grpc_request, h2_connect, tensor_predict};
use bytes::Bytes;
use torchwire::config::Config;
use torchwire::proto::PredictRequest;

const PREDICT: &str = "/torchwire.v1.Inference/Predict";

fn good() -> PredictRequest {
    tensor_predict("tiny_risk", &[vec![50.0, 27.0, 110.0, 125.0]])
}

/// Sends `body` as the whole request body on a fresh connection; returns (code, message).
async fn send_raw(server: &TestServer, body: Vec<u8>) -> (i32, String) {
    let (send, _conn) = h2_connect(server.addr).await;
    let mut send = send.ready().await.unwrap();
    let (resp, mut stream) = send.send_request(grpc_request(server.addr, PREDICT), false).unwrap();
    stream.send_data(Bytes::from(body), true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), grpc_answer(resp)).await.expect("an answer, not a hang")
}

/// A gRPC frame header: compression flag and declared length.
fn header(flag: u8, len: u32) -> Vec<u8> {
    let mut v = vec![flag];
    v.extend_from_slice(&len.to_be_bytes());
    v
}

async fn still_serves(server: &TestServer) {
    let resp = server.inference().predict(good()).await.expect("the server still serves a good client");
    assert_eq!(resp.into_inner().predictions.len(), 1);
}

#[tokio::test]
async fn malformed_grpc_frames_get_a_status_and_the_server_keeps_serving() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let msg = prost::Message::encode_to_vec(&good());

    // Sanity: the same path with a well-formed frame is answered OK.
    let (code, _) = send_raw(&server, frame(&good()).to_vec()).await;
    assert_eq!(code, 0);

    // Compressed flag without a grpc-encoding header.
    let mut body = header(1, u32::try_from(msg.len()).unwrap());
    body.extend_from_slice(&msg);
    let (code, message) = send_raw(&server, body).await;
    assert_eq!(code, 13, "INTERNAL: {message}");
    assert!(message.contains("compress"), "{message}");

    // A flag that is neither 0 nor 1.
    let mut body = header(7, u32::try_from(msg.len()).unwrap());
    body.extend_from_slice(&msg);
    let (code, message) = send_raw(&server, body).await;
    assert_eq!(code, 13, "INTERNAL: {message}");
    assert!(message.contains("compression flag"), "{message}");

    // A length prefix longer than the body that follows.
    let mut body = header(0, 100);
    body.extend_from_slice(&msg[..10]);
    let (code, message) = send_raw(&server, body).await;
    assert_eq!(code, 13, "INTERNAL: {message}");
    assert!(message.contains("EOF"), "{message}");

    // A length prefix of 4 GiB: refused from the prefix alone, nothing allocated.
    let (code, message) = send_raw(&server, header(0, u32::MAX)).await;
    assert_eq!(code, 11, "OUT_OF_RANGE: {message}");
    assert!(message.contains("too large"), "{message}");

    // Garbage protobuf: a well-framed message that does not decode.
    let garbage = vec![0xff; 64];
    let mut body = header(0, 64);
    body.extend_from_slice(&garbage);
    let (code, message) = send_raw(&server, body).await;
    assert_eq!(code, 13, "INTERNAL (protobuf parse errors, per the gRPC spec): {message}");
    assert!(message.contains("decode"), "{message}");

    // Random bytes that happen to decode: a validation error, not a crash.
    let mut body = header(0, 6);
    body.extend_from_slice(&[0x0a, 0x04, b'n', b'o', b'p', b'e']);
    let (code, message) = send_raw(&server, body).await;
    assert_eq!(code, 5, "NOT_FOUND for model `nope`: {message}");

    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_finishes_its_body_gets_deadline_exceeded() {
    let mut config = Config::for_tests(fixtures_dir());
    config.default_timeout = Duration::from_millis(500);
    let server = TestServer::start(config).await;
    let partial = frame(&good()).slice(..12);

    // With a grpc-timeout of 300 ms.
    let (send, _conn) = h2_connect(server.addr).await;
    let mut send = send.ready().await.unwrap();
    let mut req = grpc_request(server.addr, PREDICT);
    req.headers_mut().insert("grpc-timeout", "300m".parse().unwrap());
    let started = Instant::now();
    let (resp, mut stream) = send.send_request(req, false).unwrap();
    stream.send_data(partial.clone(), false).unwrap();
    let (code, message) = tokio::time::timeout(Duration::from_secs(10), grpc_answer(resp)).await.expect("answered");
    assert_eq!(code, 4, "DEADLINE_EXCEEDED: {message}");
    assert!(message.contains("receiving the request"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(5), "took {:?}", started.elapsed());

    // Without one: the server's default deadline applies.
    let mut send = send.ready().await.unwrap();
    let (resp, mut stream2) = send.send_request(grpc_request(server.addr, PREDICT), false).unwrap();
    stream2.send_data(partial, false).unwrap();
    let (code, _) = tokio::time::timeout(Duration::from_secs(10), grpc_answer(resp)).await.expect("answered");
    assert_eq!(code, 4);
    drop((stream, stream2));
    still_serves(&server).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_streams_opened_and_reset_leaves_the_server_serving() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    still_serves(&server).await;
    let (send, conn) = h2_connect(server.addr).await;
    let mut send = Some(send);
    let mut opened = 0;
    for _ in 0..2000 {
        let Some(s) = send.take() else { break };
        let Ok(mut s) = s.ready().await else { break };
        match s.send_request(grpc_request(server.addr, PREDICT), false) {
            Ok((_resp, mut stream)) => {
                opened += 1;
                // Half of them get half a frame first.
                if opened % 2 == 0 {
                    let _ = stream.send_data(frame(&good()).slice(..8), false);
                }
                stream.send_reset(h2::Reason::CANCEL);
            }
            Err(_) => break, // the server sent GOAWAY: the flood was cut off
        }
        send = Some(s);
    }
    assert!(opened > 0);
    // The flooding connection ends (cut off by the server) or stays usable; either way the
    // server serves other clients and nothing is left in flight.
    drop(send);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    still_serves(&server).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let (_, metrics) = server.http_get("/metrics").await;
        let inflight: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("torchwire_inflight_requests"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        if inflight == 0.0 {
            break;
        }
        assert!(Instant::now() < deadline, "{inflight} requests still in flight after the flood");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("flood: {opened} streams opened and reset before the server stopped accepting them");
}
