//! Sentiment and text-model tests: tokenizer parity with Python, probability parity with the
//! TorchScript output in Python (committed tiny BERT fixture, and the real `sentiment` model
//! when it has been built), and bad input.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use crate::common::{TestServer, fixtures_dir};
use tonic::Code;
use torchwire::config::Config;
use torchwire::model::Repository;
use torchwire::proto::{PredictRequest, Row, SentimentRequest, SentimentResponse};
use torchwire::tokenize::TextEncoder;

struct Case {
    text: String,
    ids: Vec<i64>,
    tokens: i32,
    truncated: bool,
    probabilities: Vec<f32>,
}

struct Parity {
    max_length: i32,
    labels: Vec<String>,
    cases: Vec<Case>,
}

fn parity(path: &Path) -> Parity {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    Parity {
        max_length: v["max_length"].as_i64().unwrap() as i32,
        labels: v["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap().to_owned()).collect(),
        cases: v["cases"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| Case {
                text: c["text"].as_str().unwrap().to_owned(),
                ids: c["ids"].as_array().unwrap().iter().map(|x| x.as_i64().unwrap()).collect(),
                tokens: c["tokens"].as_i64().unwrap() as i32,
                truncated: c["truncated"].as_bool().unwrap(),
                probabilities: c["probabilities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_f64().unwrap() as f32)
                    .collect(),
            })
            .collect(),
    }
}

fn fixture_parity() -> Parity {
    parity(&fixtures_dir().join("text_parity.json"))
}

#[test]
fn rust_token_ids_equal_the_python_tokenizer() {
    let p = fixture_parity();
    assert!(p.cases.len() >= 50, "at least 50 strings, got {}", p.cases.len());
    let repo = Repository::scan(&fixtures_dir(), None).unwrap();
    let spec = std::sync::Arc::clone(repo.get("tiny_bert").unwrap().latest().unwrap());
    let mut enc = TextEncoder::load(&spec.text.as_ref().unwrap().tokenizer).unwrap();
    for c in &p.cases {
        let (tensors, infos) = enc.encode(std::slice::from_ref(&c.text), p.max_length as usize, &spec.inputs).unwrap();
        let ids: Vec<i64> =
            tensors[0].data.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect();
        assert_eq!(ids, c.ids, "ids of {:?}", c.text);
        assert_eq!(infos[0].tokens as i32, c.tokens, "{:?}", c.text);
        assert_eq!(infos[0].truncated, c.truncated, "{:?}", c.text);
    }
}

fn check_probabilities(p: &Parity, resp: &SentimentResponse, model: &str) {
    assert_eq!(resp.model, model);
    assert_eq!(resp.results.len(), p.cases.len());
    for (c, r) in p.cases.iter().zip(&resp.results) {
        assert_eq!(r.tokens, c.tokens, "{:?}", c.text);
        assert_eq!(r.truncated, c.truncated, "{:?}", c.text);
        for (label, want) in p.labels.iter().zip(&c.probabilities) {
            let got = r.probabilities[label];
            assert!((got - want).abs() <= 1e-4, "{model} {:?}: p({label}) = {got}, Python says {want}", c.text);
        }
        let best = c.probabilities.iter().copied().fold(f32::MIN, f32::max);
        assert!((r.score - best).abs() <= 1e-4);
    }
}

async fn all_at_once(server: &TestServer, p: &Parity, model: &str) -> SentimentResponse {
    let req = SentimentRequest {
        texts: p.cases.iter().map(|c| c.text.clone()).collect(),
        model: model.into(),
        max_length: p.max_length,
        ..Default::default()
    };
    server.inference().sentiment(req).await.unwrap().into_inner()
}

#[tokio::test]
async fn server_probabilities_equal_python_torchscript_on_the_tiny_bert_fixture() {
    let p = fixture_parity();
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    // All texts in one padded batch, and each alone: both must match the unpadded Python run.
    let resp = all_at_once(&server, &p, "tiny_bert").await;
    check_probabilities(&p, &resp, "tiny_bert");
    assert_eq!(resp.timing.unwrap().batch_size as usize, p.cases.len());
    for c in p.cases.iter().take(5) {
        let one = Parity { max_length: p.max_length, labels: p.labels.clone(), cases: vec![Case { ..clone_case(c) }] };
        let req = SentimentRequest {
            text: c.text.clone(),
            model: "tiny_bert".into(),
            max_length: p.max_length,
            ..Default::default()
        };
        let resp = server.inference().sentiment(req).await.unwrap().into_inner();
        check_probabilities(&one, &resp, "tiny_bert");
    }
}

fn clone_case(c: &Case) -> Case {
    Case {
        text: c.text.clone(),
        ids: c.ids.clone(),
        tokens: c.tokens,
        truncated: c.truncated,
        probabilities: c.probabilities.clone(),
    }
}

/// The real model, built by `make models` (which `make test`, and so CI, runs first). It fails,
/// never passes, when the model is missing.
#[tokio::test]
async fn server_probabilities_equal_python_on_the_real_sentiment_model() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let parity_file = dir.join("sentiment/parity.json");
    assert!(
        parity_file.exists() && dir.join("sentiment/1/model.pt").exists(),
        "models/sentiment is not built: run `make models` (make test does) before the tests"
    );
    let p = parity(&parity_file);
    let server = TestServer::start(Config::for_tests(dir)).await;
    let resp = all_at_once(&server, &p, "sentiment").await;
    check_probabilities(&p, &resp, "sentiment");
    let clear = SentimentRequest {
        texts: vec![
            "This is the best purchase I have made all year, I love it!".into(),
            "Terrible service, rude staff and cold food. Never again.".into(),
        ],
        ..Default::default()
    };
    let resp = server.inference().sentiment(clear).await.unwrap().into_inner();
    assert_eq!(resp.results[0].label, "positive");
    assert_eq!(resp.results[1].label, "negative");
}

#[tokio::test]
async fn bad_sentiment_requests_get_clear_errors_and_the_server_keeps_serving() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut client = server.inference();
    let base = SentimentRequest { model: "tiny_bert".into(), ..Default::default() };
    let cases: Vec<(&str, SentimentRequest, &str)> = vec![
        ("neither", base.clone(), "both are empty"),
        ("both", SentimentRequest { text: "a".into(), texts: vec!["b".into()], ..base.clone() }, "not both"),
        (
            "too many",
            SentimentRequest { texts: vec!["ok".into(); 257], ..base.clone() },
            "at most 256 texts per request, got 257",
        ),
        ("too long", SentimentRequest { text: "x".repeat(64 * 1024 + 1), ..base.clone() }, "at most 65536 bytes"),
        (
            "negative max_length",
            SentimentRequest { text: "a".into(), max_length: -5, ..base.clone() },
            "must be positive",
        ),
        (
            "huge max_length",
            SentimentRequest { text: "a".into(), max_length: 100_000, ..base.clone() },
            "takes at most",
        ),
        (
            "tabular model",
            SentimentRequest { text: "a".into(), model: "tiny_risk".into(), ..base.clone() },
            "texts need a text-classification model",
        ),
    ];
    for (what, req, want) in cases {
        let status = client.sentiment(req).await.expect_err(what);
        assert_eq!(status.code(), Code::InvalidArgument, "{what}: {}", status.message());
        assert!(status.message().contains(want), "{what}: {:?} should contain {want:?}", status.message());
    }
    let rows = PredictRequest {
        model: "tiny_bert".into(),
        rows: vec![Row { features: [("x".to_owned(), 1.0)].into() }],
        ..Default::default()
    };
    let status = client.predict(rows).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("`rows` are for tabular models"), "{}", status.message());

    let ok = client.sentiment(SentimentRequest { text: "fine".into(), ..base }).await.expect("still serving");
    assert_eq!(ok.into_inner().results.len(), 1);
}

#[tokio::test]
async fn sentiment_without_a_model_uses_the_repository_text_model() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let resp = server
        .inference()
        .sentiment(SentimentRequest { text: "hello there".into(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resp.model, "tiny_bert");
    let r = &resp.results[0];
    assert!(r.tokens >= 3 && !r.truncated, "{r:?}");
    let sum: f32 = r.probabilities.values().sum();
    assert!((sum - 1.0).abs() < 1e-5);
}
