//! Time-boxed fuzzing of everything that parses untrusted input, with `proptest`, so that it runs
//! on stable in the ordinary `cargo test` (cargo-fuzz needs nightly and the `cargo-fuzz` tool).
//!
//! Targets: Predict and Sentiment request validation, the KServe ModelInfer conversion, manifest
//! parsing and `grpc-timeout` parsing. Each feeds both raw protobuf bytes (random and mutated
//! encodings of well-formed requests) and structured inputs built to reach the deep checks
//! (huge, negative and overflowing shapes, wrong data lengths, NaN / Inf, odd names and texts).
//! Each must never panic, and every accepted input must satisfy the invariants the worker
//! relies on. Each target runs for `TORCHWIRE_FUZZ_SECS` seconds (default 3), prints how many
//! cases it ran, and on failure reports proptest's minimal failing input.
//!
//! Seeds: every round of a target is seeded from `TORCHWIRE_FUZZ_SEED` (a hex number; default a
//! fixed one, so CI runs the same cases every time; `random` explores) and the round's index.
//! A failure prints the round's seed and appends it to `src/fuzz/regressions.txt`; listed
//! seeds are replayed first on every run, so a failure seen once replays until it is fixed
//! (see the README, "Fuzzing").
//!
//! Lives inside the crate (test-only) so it can reach crate-private functions; it changes
//! nothing outside tests. The input strategies are in `fuzz/inputs.rs`.

use std::cell::Cell;
use std::fmt::Debug;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::{Config, RngAlgorithm, TestCaseError, TestRng, TestRunner};
use prost::Message;

use crate::batch::Payload;
use crate::deadline::parse_grpc_timeout;
use crate::model::Repository;
use crate::model::manifest::{ModelKind, parse_manifest};
use crate::model::{DType, HostTensor, InputSpec, ModelSpec};
use crate::proto::{self, kserve as ks};
use crate::request::InferRequest;
use crate::validate::{Limits, payload};

mod inputs;
use inputs::{
    edits, infer_request, mutate, near_valid, near_valid_infer, near_valid_predict, predict_request, sentiment_request,
    wire,
};

/// Small limits, so that a random shape often crosses them.
const LIMITS: Limits = Limits { max_tensor_elements: 256, max_rows: 16, max_texts: 8, max_text_bytes: 512 };

/// Every element type, for specs and sizes.
const ALL_DTYPES: [DType; 9] =
    [DType::F32, DType::F64, DType::F16, DType::BF16, DType::I64, DType::I32, DType::I8, DType::U8, DType::Bool];

/// Seconds each target runs: `TORCHWIRE_FUZZ_SECS`, default 3.
fn fuzz_secs() -> f64 {
    std::env::var("TORCHWIRE_FUZZ_SECS")
        .ok()
        .and_then(|s| s.parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0)
        .unwrap_or(3.0)
}

/// The base seed: `TORCHWIRE_FUZZ_SEED` (hex), `random` for a fresh one, else a fixed one.
fn base_seed() -> u64 {
    match std::env::var("TORCHWIRE_FUZZ_SEED").ok().as_deref() {
        None | Some("") => 0x7457_6972_6546_757a,
        Some("random") => {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_nanos() as u64)
        }
        Some(hex) => u64::from_str_radix(hex.trim_start_matches("0x"), 16).expect("TORCHWIRE_FUZZ_SEED is hex"),
    }
}

/// Failures seen before: `<target> <round seed in hex>` per line.
fn regressions_file() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src/fuzz/regressions.txt")
}

fn regressions(target: &str) -> Vec<u64> {
    let text = std::fs::read_to_string(regressions_file()).unwrap_or_default();
    text.lines()
        .filter_map(|l| l.split_once(' '))
        .filter(|(t, _)| *t == target)
        .filter_map(|(_, seed)| u64::from_str_radix(seed.trim(), 16).ok())
        .collect()
}

fn round_rng(seed: u64) -> TestRng {
    let mut bytes = [0u8; 32];
    bytes[..8].copy_from_slice(&seed.to_le_bytes());
    bytes[8..16].copy_from_slice(&seed.rotate_left(29).to_le_bytes());
    TestRng::from_seed(RngAlgorithm::ChaCha, &bytes)
}

/// Runs `check` on values of `strategy`: first every persisted regression seed of `target`,
/// then rounds seeded from the base seed until the time box is spent. `check` returns how many
/// validations accepted the input (printed, to show the deep paths are reached). A panic or a
/// failed check fails the test with proptest's shrunk, minimal input and the round's seed.
fn fuzz<S: Strategy>(target: &str, strategy: S, check: impl Fn(S::Value) -> Result<u64, TestCaseError>)
where
    S::Value: Debug,
{
    let budget = Duration::from_secs_f64(fuzz_secs());
    let config = Config { cases: 64, failure_persistence: None, ..Config::default() };
    let base = base_seed();
    let (cases, accepted) = (Cell::new(0u64), Cell::new(0u64));
    let started = Instant::now();
    let replays = regressions(target);
    let rounds = replays.iter().copied().map(Some).chain(std::iter::repeat(None));
    let mut round = 0u64;
    for replay in rounds {
        if replay.is_none() && started.elapsed() >= budget {
            break;
        }
        // A runner stops after `cases` successes, so each round gets a fresh one.
        let seed = replay.unwrap_or_else(|| base ^ round.wrapping_mul(0x9e37_79b9_7f4a_7c15));
        round += u64::from(replay.is_none());
        let mut runner = TestRunner::new_with_rng(config.clone(), round_rng(seed));
        let outcome = runner.run(&strategy, |v| {
            cases.set(cases.get() + 1);
            accepted.set(accepted.get() + check(v)?);
            Ok(())
        });
        if let Err(e) = outcome {
            if replay.is_none() {
                use std::io::Write as _;
                let line = format!("{target} {seed:x}\n");
                let file = std::fs::OpenOptions::new().create(true).append(true).open(regressions_file());
                let _ = file.and_then(|mut f| f.write_all(line.as_bytes()));
            }
            panic!("fuzz {target}: round seed {seed:x} (recorded in src/fuzz/regressions.txt): {e}");
        }
    }
    let n = cases.get();
    let secs = started.elapsed().as_secs_f64();
    eprintln!(
        "fuzz {target}: {n} cases in {secs:.1} s ({} accepted; base seed {base:x}, {} regression seeds replayed)",
        accepted.get(),
        replays.len()
    );
    assert!(n > 0, "fuzz {target} ran no cases");
}

fn fixtures() -> Repository {
    Repository::scan(&Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures"), None)
        .expect("scan models/fixtures")
}

/// tiny_risk (tabular, float32), tiny_bert (two int64 text inputs), and one single-input spec
/// per dtype, so that every data path of validation is reachable.
fn specs() -> Vec<Arc<ModelSpec>> {
    let repo = fixtures();
    let risk = Arc::clone(repo.get("tiny_risk").expect("tiny_risk fixture").latest().expect("tiny_risk version"));
    let bert = Arc::clone(repo.get("tiny_bert").expect("tiny_bert fixture").latest().expect("tiny_bert version"));
    let shapes: [&[i64]; 4] = [&[-1], &[-1, -1], &[-1, 2], &[-1, 2, -1]];
    let mut specs = vec![Arc::clone(&risk), bert];
    for (i, dtype) in ALL_DTYPES.into_iter().enumerate() {
        let mut s = (*risk).clone();
        s.name = format!("zoo-{dtype}");
        // Not tabular (no manifest allows these dtypes there), so `rows` are refused; the
        // tensor paths ignore the kind.
        s.kind = ModelKind::TextClassification;
        s.allow_non_finite = i % 2 == 1;
        s.inputs = vec![InputSpec { name: "x".into(), dtype, shape: shapes[i % 4].to_vec(), features: vec![] }];
        specs.push(Arc::new(s));
    }
    specs
}

/// The invariants the worker and the backend rely on, for tensors validation accepted.
fn check_tensors(spec: &ModelSpec, tensors: &[HostTensor], rows: usize) -> Result<(), TestCaseError> {
    prop_assert!((1..=LIMITS.max_rows).contains(&rows), "rows {rows}");
    prop_assert_eq!(tensors.len(), spec.inputs.len());
    for (t, want) in tensors.iter().zip(&spec.inputs) {
        prop_assert_eq!(&t.name, &want.name);
        prop_assert_eq!(t.dtype, want.dtype);
        prop_assert_eq!(t.shape.len(), want.shape.len());
        prop_assert_eq!(t.shape[0], rows as i64);
        prop_assert!(t.shape.iter().zip(&want.shape).all(|(g, w)| *g >= 0 && (*w < 0 || g == w)), "{:?}", t.shape);
        let numel = t.shape.iter().map(|d| *d as usize).product::<usize>();
        prop_assert!(numel <= LIMITS.max_tensor_elements);
        prop_assert_eq!(t.data.len(), numel * t.dtype.size());
        if t.dtype.is_float() && !spec.allow_non_finite {
            prop_assert!(t.to_f32().iter().all(|v| v.is_finite()));
        }
    }
    Ok(())
}

/// Validates `req` against every spec; returns how many accepted it.
fn check_predict(specs: &[Arc<ModelSpec>], req: &proto::PredictRequest) -> Result<u64, TestCaseError> {
    let mut accepted = 0;
    let Ok(converted) = InferRequest::try_from(req.clone()) else { return Ok(0) };
    for spec in specs {
        match payload(spec, converted.inputs.clone(), 128, LIMITS) {
            Ok((Payload::Tensors(tensors), rows)) => {
                check_tensors(spec, &tensors, rows)?;
                accepted += 1;
            }
            Ok((Payload::Texts { .. }, _)) => prop_assert!(false, "a Predict became texts"),
            Err(_) => {}
        }
    }
    Ok(accepted)
}

#[test]
fn predict() {
    let specs = specs();
    let strategy = prop_oneof![
        1 => wire(predict_request()).prop_map(|b| proto::PredictRequest::decode(b.as_slice()).ok()),
        1 => predict_request().prop_map(Some),
        2 => near_valid(specs.clone()).prop_map(|nv| Some(near_valid_predict(nv))),
    ];
    fuzz("predict", strategy, |req| match req {
        Some(req) => check_predict(&specs, &req),
        None => Ok(0),
    });
}

#[test]
fn sentiment() {
    let specs = specs();
    let device_max = prop_oneof![0usize..1000, any::<usize>()];
    let strategy = (
        prop_oneof![
            1 => wire(sentiment_request()).prop_map(|b| proto::SentimentRequest::decode(b.as_slice()).ok()),
            2 => sentiment_request().prop_map(Some),
        ],
        device_max,
    );
    fuzz("sentiment", strategy, |(req, device_max)| {
        let Some(req) = req else { return Ok(0) };
        let Ok(converted) = InferRequest::try_from(req.clone()) else { return Ok(0) };
        let mut accepted = 0;
        for spec in &specs {
            let Ok((out, rows)) = payload(spec, converted.inputs.clone(), device_max, LIMITS) else { continue };
            let Payload::Texts { texts, max_length } = out else {
                prop_assert!(false, "a Sentiment request became tensors");
                continue;
            };
            let text = spec.text.as_ref().expect("only text models accept Sentiment");
            let sent = if req.text.is_empty() { req.texts.clone() } else { vec![req.text.clone()] };
            prop_assert_eq!(&texts, &sent);
            prop_assert_eq!(rows, texts.len());
            prop_assert!((1..=LIMITS.max_texts).contains(&texts.len()));
            prop_assert!(texts.iter().all(|t| t.len() <= LIMITS.max_text_bytes));
            prop_assert!(max_length <= text.max_length);
            if req.max_length > 0 {
                prop_assert_eq!(max_length, req.max_length as usize);
            }
            accepted += 1;
        }
        Ok(accepted)
    });
}

#[test]
fn model_infer() {
    let specs = specs();
    let strategy = (
        prop_oneof![
            1 => wire(infer_request()).prop_map(|b| ks::ModelInferRequest::decode(b.as_slice()).ok()),
            1 => infer_request().prop_map(Some),
            2 => near_valid(specs.clone()).prop_map(|nv| Some(near_valid_infer(nv))),
        ],
        prop_oneof![0usize..300, any::<usize>()],
    );
    fuzz("model_infer", strategy, |(req, text_length)| {
        let Some(req) = req else { return Ok(0) };
        let Ok(converted) = InferRequest::try_from(req) else { return Ok(0) };
        let mut accepted = 0;
        for spec in &specs {
            match payload(spec, converted.inputs.clone(), text_length, LIMITS) {
                Ok((Payload::Tensors(tensors), rows)) => {
                    check_tensors(spec, &tensors, rows)?;
                    accepted += 1;
                }
                Ok((Payload::Texts { texts, max_length }, rows)) => {
                    let text = spec.text.as_ref().expect("only text models take texts");
                    prop_assert_eq!(texts.len(), rows);
                    prop_assert!((1..=LIMITS.max_texts).contains(&rows));
                    prop_assert!(texts.iter().all(|t| t.len() <= LIMITS.max_text_bytes));
                    prop_assert!(max_length <= text.max_length);
                    accepted += 1;
                }
                Err(_) => {}
            }
        }
        Ok(accepted)
    });
}

/// Fragments that make an edited manifest interesting rather than merely unparseable.
const SNIPPETS: [&str; 16] = [
    "-1",
    "0",
    "-9223372036854775808",
    "99999999999999999999",
    "[",
    "]",
    "\"",
    "=",
    "\n[[inputs]]\nname = \"x\"\ndtype = \"float16\"\nshape = [-1, 0]\n",
    "\n[text]\nmax_length = 0\n",
    "\n[batching]\nmax_batch_size = 0\nmax_queue_delay_ms = 18446744073709551615\n",
    "kind = \"text-classification\"\n",
    "shape = []",
    "features = []",
    "tokenizer = \"../x\"",
    "\u{0}\u{feff}é",
];

#[test]
fn manifest() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/fixtures");
    let bases: Vec<String> = ["tiny_risk", "tiny_bert"]
        .iter()
        .map(|m| std::fs::read_to_string(root.join(m).join("model.toml")).expect("fixture manifest"))
        .collect();
    let snippet_edits = prop::collection::vec((any::<Index>(), 0..SNIPPETS.len()), 0..4);
    let mutated = (prop::sample::select(bases), edits(), snippet_edits).prop_map(|(base, edits, snippets)| {
        let mut text = base;
        for (at, s) in snippets {
            let mut at = at.index(text.len() + 1);
            while !text.is_char_boundary(at) {
                at -= 1;
            }
            text.insert_str(at, SNIPPETS[s]);
        }
        String::from_utf8_lossy(&mutate(text.into_bytes(), &edits)).into_owned()
    });
    let nested = (1usize..2000, prop::sample::select(vec!["[", "{a=", "[[", "a."]))
        .prop_map(|(n, open)| format!("kind = \"tabular\"\nx = {}", open.repeat(n)));
    let strategy = prop_oneof![1 => any::<String>(), 1 => "\\PC{0,200}", 6 => mutated, 1 => nested];
    let dir = Path::new("/nonexistent/m");
    fuzz("manifest", strategy, |text| {
        let Ok(spec) = parse_manifest("m", dir, &text) else { return Ok(0) };
        prop_assert!(!spec.inputs.is_empty());
        prop_assert!(spec.inputs.iter().all(|i| i.shape.first() == Some(&-1)));
        prop_assert!(spec.max_batch_size != Some(0));
        match spec.kind {
            ModelKind::Tabular => {
                let [input] = spec.inputs.as_slice() else { return Err(TestCaseError::fail("tabular: one input")) };
                prop_assert_eq!(input.features.len() as i64, input.shape[1]);
                prop_assert!(input.dtype.is_float());
                prop_assert!(spec.text.is_none());
            }
            ModelKind::TextClassification => {
                let text = spec.text.as_ref().expect("text models have [text]");
                prop_assert!(
                    text.tokenizer.parent() == Some(dir),
                    "tokenizer {:?} left the model folder",
                    text.tokenizer
                );
                prop_assert!(text.max_length >= 2);
            }
        }
        Ok(1)
    });
}

/// The `grpc-timeout` grammar, written independently: 1 to 8 ASCII digits, then one unit.
fn grpc_timeout_oracle(v: &str) -> Option<Duration> {
    let unit = v.chars().last()?;
    let digits = &v[..v.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let n: u128 = digits.parse().ok()?;
    let nanos_per: u128 = match unit {
        'H' => 3_600_000_000_000,
        'M' => 60_000_000_000,
        'S' => 1_000_000_000,
        'm' => 1_000_000,
        'u' => 1_000,
        'n' => 1,
        _ => return None,
    };
    let total = n * nanos_per;
    Some(Duration::new(u64::try_from(total / 1_000_000_000).ok()?, (total % 1_000_000_000) as u32))
}

#[test]
fn grpc_timeout() {
    let well_formed =
        ("[0-9]{1,8}", prop::sample::select(vec!["H", "M", "S", "m", "u", "n"])).prop_map(|(d, u)| format!("{d}{u}"));
    let strategy = prop_oneof![
        2 => well_formed,
        1 => prop::sample::select(vec!["99999999H", "00000000n", "0H", "100000000S", "1h", "1", "H"]).prop_map(str::to_owned),
        1 => "[0-9+\\- .]{0,10}[HMSmunhs]?",
        1 => "\\PC{0,12}",
        1 => any::<String>(),
    ];
    fuzz("grpc_timeout", strategy, |v| {
        let parsed = parse_grpc_timeout(&v);
        prop_assert_eq!(parsed, grpc_timeout_oracle(&v), "{:?}", v);
        Ok(u64::from(parsed.is_some()))
    });
    assert_eq!(parse_grpc_timeout("99999999H"), Some(Duration::from_secs(99_999_999 * 3600)));
}
