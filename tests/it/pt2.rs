//! AOTInductor `.pt2` packages through the real server: the fixtures' packages answer Predict,
//! Sentiment and KServe with the TorchScript numbers (Python's, within 1e-4), and every fault
//! (truncated or corrupt package, another device, another torch release, inputs that do not
//! match the manifest, a kernel that throws, a shape outside the exported range) gets a clear
//! status while the healthy model beside it keeps answering.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::common::{TestServer, assert_each_loads_and_passes_its_self_test, fixtures_dir, tensor_predict};
use tonic::Code;
use torchwire::config::Config;
use torchwire::proto::kserve::model_infer_request::InferInputTensor;
use torchwire::proto::kserve::{InferTensorContents, ModelInferRequest};
use torchwire::proto::{DataType, GetModelRequest, ModelState, PredictRequest, SentimentRequest, Tensor};

fn fresh_repo() -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir =
        std::env::temp_dir().join(format!("torchwire-pt2-{}-{}", std::process::id(), N.fetch_add(1, Ordering::SeqCst)));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Copies fixture `from` into `repo` as `name`, serving `package` (a `.pt2`) as its model file:
/// its manifest gains `format = "pt2"`. Keeps `model.pt` beside it, as a bundled model ships
/// both.
fn add_pt2(repo: &Path, name: &str, from: &str, package: &Path) -> PathBuf {
    let src = fixtures_dir().join(from);
    let to = repo.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in ["model.pt", "tokenizer.json"] {
        if src.join(f).exists() {
            std::fs::copy(src.join(f), to.join(f)).unwrap();
        }
    }
    std::fs::copy(package, to.join("model.pt2")).unwrap();
    let manifest = std::fs::read_to_string(src.join("model.toml")).unwrap();
    std::fs::write(to.join("model.toml"), format!("format = \"pt2\"\n{manifest}")).unwrap();
    to
}

fn risk_package() -> PathBuf {
    fixtures_dir().join("tiny_risk/model.pt2")
}

fn faulty(name: &str) -> PathBuf {
    fixtures_dir().join("faulty/pt2").join(name)
}

/// `tiny_risk/expected.json`'s rows and logits.
fn expected() -> (Vec<Vec<f32>>, Vec<Vec<f32>>) {
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("tiny_risk/expected.json")).unwrap())
            .unwrap();
    let m = |k: &str| -> Vec<Vec<f32>> {
        v[k].as_array()
            .unwrap()
            .iter()
            .map(|r| r.as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect())
            .collect()
    };
    (m("rows"), m("logits"))
}

fn assert_close(got: &[f32], want: &[f32], what: &str) {
    assert_eq!(got.len(), want.len(), "{what}");
    for (g, w) in got.iter().zip(want) {
        assert!((g - w).abs() <= 1e-4, "{what}: got {got:?}, expected {want:?}");
    }
}

/// Predict on `model` with expected.json's rows gives its logits.
async fn assert_risk_answers(server: &TestServer, model: &str) {
    let (rows, logits) = expected();
    let resp = server.inference().predict(tensor_predict(model, &rows)).await.unwrap().into_inner();
    assert_close(&resp.outputs[0].float_data, &logits.concat(), model);
}

#[tokio::test]
async fn pt2_packages_answer_predict_sentiment_and_kserve_with_torchscripts_numbers() {
    let repo = fresh_repo();
    add_pt2(&repo, "risk", "tiny_risk", &risk_package());
    add_pt2(&repo, "bert", "tiny_bert", &fixtures_dir().join("tiny_bert/model.pt2"));
    let server = TestServer::start(Config::for_tests(&repo)).await;

    // Predict, one row and all three, typed tensors.
    assert_risk_answers(&server, "risk").await;
    let (rows, logits) = expected();
    let one = server.inference().predict(tensor_predict("risk", &rows[..1])).await.unwrap().into_inner();
    assert_close(&one.outputs[0].float_data, &logits[0], "one row");

    // KServe ModelInfer, the same rows.
    let infer = ModelInferRequest {
        model_name: "risk".into(),
        inputs: vec![InferInputTensor {
            name: "features".into(),
            datatype: "FP32".into(),
            shape: vec![rows.len() as i64, 4],
            contents: Some(InferTensorContents { fp32_contents: rows.concat(), ..Default::default() }),
            ..Default::default()
        }],
        ..Default::default()
    };
    let resp = server.kserve().model_infer(infer).await.unwrap().into_inner();
    let raw = &resp.raw_output_contents[0];
    let got: Vec<f32> = raw.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect();
    assert_close(&got, &logits.concat(), "kserve");

    // Sentiment: every parity text in one padded batch, and a few alone, against Python's
    // TorchScript probabilities.
    let parity: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixtures_dir().join("text_parity.json")).unwrap()).unwrap();
    let cases = parity["cases"].as_array().unwrap();
    let labels: Vec<&str> = parity["labels"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    let max_length = parity["max_length"].as_i64().unwrap() as i32;
    let texts: Vec<String> = cases.iter().map(|c| c["text"].as_str().unwrap().to_owned()).collect();
    let check = |results: &[torchwire::proto::SentimentResult], cases: &[serde_json::Value]| {
        for (r, c) in results.iter().zip(cases) {
            let want: Vec<f32> =
                c["probabilities"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap() as f32).collect();
            let got: Vec<f32> = labels.iter().map(|l| r.probabilities[*l]).collect();
            assert_close(&got, &want, c["text"].as_str().unwrap());
        }
    };
    let req = SentimentRequest { texts: texts.clone(), model: "bert".into(), max_length, ..Default::default() };
    let all = server.inference().sentiment(req).await.unwrap().into_inner();
    assert_eq!(all.results.len(), cases.len());
    check(&all.results, cases);
    for (i, text) in texts.iter().enumerate().take(4) {
        let req = SentimentRequest { text: text.clone(), model: "bert".into(), max_length, ..Default::default() };
        let one = server.inference().sentiment(req).await.unwrap().into_inner();
        check(&one.results, &cases[i..=i]);
    }

    // Token tensors longer than the model takes: INVALID_ARGUMENT before anything runs.
    let ids = |len: i64| PredictRequest {
        model: "bert".into(),
        inputs: ["input_ids", "attention_mask"]
            .iter()
            .map(|n| Tensor {
                name: (*n).into(),
                dtype: DataType::Int64 as i32,
                shape: vec![1, len],
                int64_data: vec![1; len as usize],
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    };
    server.inference().predict(ids(128)).await.unwrap();
    let err = server.inference().predict(ids(129)).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{}", err.message());
    assert!(err.message().contains("at most 128 tokens"), "{}", err.message());
    let info = server.admin().get_model(GetModelRequest { model: "bert".into() }).await.unwrap().into_inner();
    let cpu = info.devices.iter().find(|d| d.device == "cpu").unwrap();
    assert_eq!((ModelState::try_from(cpu.state).unwrap(), cpu.loads), (ModelState::Ready, 1));
}

/// The load failure of `model`: INTERNAL naming the model (no path), and the model's FAILED
/// state whose reason (operators') contains `reason`.
async fn assert_load_fails(server: &TestServer, model: &str, reason: &str) {
    let status = server.inference().predict(tensor_predict(model, &expected().0)).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{model}: {}", status.message());
    assert!(status.message().contains(&format!("`{model}` failed to load")), "{}", status.message());
    assert!(!status.message().contains('/'), "no path: {}", status.message());
    let info = server.admin().get_model(GetModelRequest { model: model.into() }).await.unwrap().into_inner();
    let cpu = info.devices.iter().find(|d| d.device == "cpu").unwrap();
    assert_eq!(ModelState::try_from(cpu.state).unwrap(), ModelState::Failed, "{model}");
    assert!(cpu.error.contains(reason), "{model}: {:?} should say {reason:?}", cpu.error);
}

#[tokio::test]
async fn broken_and_mismatched_packages_fail_to_load_and_only_they_do() {
    let repo = fresh_repo();
    add_pt2(&repo, "good", "tiny_risk", &risk_package());
    let bytes = std::fs::read(risk_package()).unwrap();
    let truncated = add_pt2(&repo, "truncated", "tiny_risk", &risk_package());
    std::fs::write(truncated.join("model.pt2"), &bytes[..bytes.len() / 2]).unwrap();
    let corrupt = add_pt2(&repo, "corrupt", "tiny_risk", &risk_package());
    let mut flipped = bytes.clone();
    let len = flipped.len();
    // The middle holds the compressed shared object.
    for b in &mut flipped[len / 3..2 * len / 3] {
        *b ^= 0xa5;
    }
    std::fs::write(corrupt.join("model.pt2"), &flipped).unwrap();
    add_pt2(&repo, "cuda", "tiny_risk", &faulty("cuda.pt2"));
    add_pt2(&repo, "old-torch", "tiny_risk", &faulty("torch_2_12.pt2"));
    add_pt2(&repo, "five", "tiny_risk", &faulty("five_features.pt2"));
    let server = TestServer::start(Config::for_tests(&repo)).await;

    assert_load_fails(&server, "truncated", "central directory").await;
    assert_load_fails(&server, "corrupt", "pt2: ").await;
    assert_load_fails(&server, "cuda", "compiled for cuda, not cpu").await;
    assert_load_fails(&server, "old-torch", "compiled by torch 2.12.0").await;
    assert_load_fails(&server, "five", "inputs do not match the manifest").await;
    assert_risk_answers(&server, "good").await;
}

#[tokio::test]
async fn a_kernel_that_throws_fails_that_request_only_and_out_of_range_shapes_are_invalid() {
    let repo = fresh_repo();
    add_pt2(&repo, "good", "tiny_risk", &risk_package());
    add_pt2(&repo, "raises", "tiny_risk", &faulty("raises.pt2"));
    let mut config = Config::for_tests(&repo);
    // More rows per request than the packages were exported for (1..=4096).
    config.limits.max_rows = 5000;
    let server = TestServer::start(config).await;

    let fine = server.inference().predict(tensor_predict("raises", &[vec![450.0, 1.0, 2.0, 3.0]])).await.unwrap();
    assert_eq!(fine.into_inner().outputs[0].shape, vec![1, 3]);
    let status =
        server.inference().predict(tensor_predict("raises", &[vec![5000.0, 1.0, 2.0, 3.0]])).await.unwrap_err();
    assert_eq!(status.code(), Code::Internal, "{}", status.message());
    assert!(status.message().contains("`raises` failed while running the request"), "{}", status.message());
    assert!(!status.message().contains("index out of bounds"), "no kernel text for clients: {}", status.message());
    server.inference().predict(tensor_predict("raises", &[vec![10.0, 1.0, 2.0, 3.0]])).await.unwrap();
    let info = server.admin().get_model(GetModelRequest { model: "raises".into() }).await.unwrap().into_inner();
    let cpu = info.devices.iter().find(|d| d.device == "cpu").unwrap();
    assert_eq!((ModelState::try_from(cpu.state).unwrap(), cpu.loads), (ModelState::Ready, 1), "still loaded once");

    let rows = vec![vec![50.0, 27.0, 110.0, 125.0]; 4097];
    let status = server.inference().predict(tensor_predict("good", &rows)).await.unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument, "{}", status.message());
    assert!(status.message().contains("dimension 0 is 4097, outside the range 1..=4096"), "{}", status.message());
    server.inference().predict(tensor_predict("good", &rows[..4096])).await.unwrap();
    assert_risk_answers(&server, "good").await;
}

/// Every bundled model's packages (written by `make models`, as `make test` does) load and
/// reproduce the self-test goldens its TorchScript build recorded: the repository is the real
/// one, linked into a temporary folder with `format = "pt2"` on each manifest.
#[tokio::test]
async fn every_bundled_package_passes_its_models_self_test() {
    let models = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models");
    let names = ["breast_cancer", "diabetes", "heart_disease", "liver", "lung", "sentiment"];
    let repo = fresh_repo();
    for n in names {
        let (src, to) = (models.join(n), repo.join(n));
        assert!(src.join("1/model.pt2").exists(), "models/{n} has no model.pt2: run `make models` (make test does)");
        std::fs::create_dir_all(&to).unwrap();
        let manifest = std::fs::read_to_string(src.join("model.toml")).unwrap();
        let manifest = manifest.lines().filter(|l| !l.starts_with("format =")).collect::<Vec<_>>().join("\n");
        std::fs::write(to.join("model.toml"), format!("format = \"pt2\"\n{manifest}\n")).unwrap();
        for entry in std::fs::read_dir(&src).unwrap() {
            let name = entry.unwrap().file_name();
            let s = name.to_string_lossy();
            if s == "tokenizer.json" || s.parse::<u64>().is_ok() {
                std::os::unix::fs::symlink(src.join(&name), to.join(&name)).unwrap();
            }
        }
    }
    assert_each_loads_and_passes_its_self_test(&repo, &names).await;
}
