//! Model manifests: `models/<name>/model.toml`, overlaid per version by
//! `models/<name>/<N>/version.toml`, parsed and checked into one [`ModelSpec`] per version,
//! self-test goldens included. The repository scan ([`super::repository`]) is the only place
//! that turns names into paths. Model names are checked against `^[a-z0-9][a-z0-9_.-]{0,63}$`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::DType;
use crate::error::{Error, Result, clip};

/// What a model does, which decides how requests reach it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// Rows of named numeric features -> class scores.
    Tabular,
    /// Texts -> token ids -> class scores.
    TextClassification,
}

impl ModelKind {
    /// The manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            ModelKind::Tabular => "tabular",
            ModelKind::TextClassification => "text-classification",
        }
    }
}

/// What the first output holds, for turning it into labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutputKind {
    /// Unnormalised scores; the server applies softmax.
    Logits,
    /// Already probabilities.
    Probabilities,
}

/// Which file of a version the server runs (manifest `format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModelFormat {
    /// `model.pt`, a TorchScript archive (the default).
    #[default]
    TorchScript,
    /// `model.pt2`, an AOTInductor package (`torch.export` + `aoti_compile_and_package`).
    Pt2,
}

impl ModelFormat {
    /// The manifest spelling.
    pub fn name(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "torchscript",
            ModelFormat::Pt2 => "pt2",
        }
    }

    /// The file a version of this format serves, inside its folder.
    pub fn file_name(self) -> &'static str {
        match self {
            ModelFormat::TorchScript => "model.pt",
            ModelFormat::Pt2 => "model.pt2",
        }
    }
}

/// One named input feature of a tabular model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Feature {
    /// Feature name as clients send it.
    pub name: String,
    /// Unit of the raw value (`years`, `mg/dL`, ...).
    #[serde(default)]
    pub unit: String,
}

/// One input tensor a model takes.
#[derive(Debug, Clone, PartialEq)]
pub struct InputSpec {
    /// Input name.
    pub name: String,
    /// Element type the model takes.
    pub dtype: DType,
    /// Dimensions; -1 is variable. The first is the batch dimension and always -1.
    pub shape: Vec<i64>,
    /// Tabular only: the ordered features of the last dimension.
    pub features: Vec<Feature>,
}

/// Where a model's weights came from.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Provenance {
    /// Data set name and source.
    #[serde(default)]
    pub dataset: String,
    /// How it was split for training and evaluation.
    #[serde(default)]
    pub split: String,
    /// Held-out metrics.
    #[serde(default)]
    pub metrics: BTreeMap<String, f64>,
    /// Anything else worth knowing.
    #[serde(default)]
    pub notes: String,
}

/// One self-test of a version: inputs whose outputs must reproduce before the version takes a
/// request.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SelfTest {
    /// Tabular: raw feature values in the manifest's feature order, one list per row.
    #[serde(default)]
    pub rows: Vec<Vec<f64>>,
    /// Text models: the texts, tokenised as requests are.
    #[serde(default)]
    pub texts: Vec<String>,
    /// The model's raw first output, one list per row or text.
    pub expected: Vec<Vec<f64>>,
    /// Largest absolute difference allowed per element.
    #[serde(default = "default_tolerance")]
    pub tolerance: f64,
}

fn default_tolerance() -> f64 {
    1e-4
}

/// A parsed, checked manifest of one version plus where it lives.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelSpec {
    /// Model name (the directory name).
    pub name: String,
    /// The version (1 for a model in the flat layout).
    pub version: u64,
    /// Which reading of this version's files this is: a version whose files changed in place
    /// is a new generation, loaded into its own slot (0 for specs built in code).
    pub generation: u64,
    /// The model's directory.
    pub dir: PathBuf,
    /// The model file of this version (`model.pt` or `model.pt2`, after `format`).
    pub file: PathBuf,
    /// Which backend runs `file`.
    pub format: ModelFormat,
    /// What the model does.
    pub kind: ModelKind,
    /// One line for operators.
    pub description: String,
    /// Output labels, in output order; empty when the model is not a classifier.
    pub labels: Vec<String>,
    /// How to read the first output.
    pub output: OutputKind,
    /// Whether NaN and Inf inputs are passed through instead of rejected.
    pub allow_non_finite: bool,
    /// Inputs, in the order the model's `forward` takes them.
    pub inputs: Vec<InputSpec>,
    /// Provenance of the weights.
    pub provenance: Provenance,
    /// Largest batch, in rows, the model runs at once; `None` = the device's default.
    pub max_batch_size: Option<usize>,
    /// How long a worker may wait to fill a batch; zero = never wait.
    pub max_queue_delay: std::time::Duration,
    /// Keep resident once loaded.
    pub pin: bool,
    /// Text models: tokenizer and length limit.
    pub text: Option<TextSpec>,
    /// Whether the model may run in fp16 on a GPU (the CPU always runs fp32).
    pub fp16: bool,
    /// Goldens checked after every load, before the version takes traffic.
    pub self_test: Vec<SelfTest>,
    /// Opt-in response caching (`[cache]`); `None` = never cached.
    pub cache: Option<CacheSpec>,
    /// `[batching] inline_max_us`: this model's fast-path threshold, over the server's.
    pub inline_max_us: Option<u64>,
}

/// How a model's answers may be cached (manifest `[cache]`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheSpec {
    /// Also share answers through the Redis tier, when the server has one.
    #[serde(default = "yes")]
    pub redis: bool,
    /// How long Redis keeps an answer, in seconds.
    #[serde(default = "day")]
    pub ttl_secs: u64,
}

fn yes() -> bool {
    true
}

fn day() -> u64 {
    86_400
}

/// How a text model turns text into its inputs.
#[derive(Debug, Clone, PartialEq)]
pub struct TextSpec {
    /// The tokenizer file, inside the model's folder.
    pub tokenizer: PathBuf,
    /// The most tokens the model takes (its position table), special tokens included.
    pub max_length: usize,
}

/// Inputs a text model may take; the tokenizer fills each.
pub const TEXT_INPUTS: [&str; 3] = ["input_ids", "attention_mask", "token_type_ids"];

impl ModelSpec {
    /// The model file (`model.pt` or `model.pt2`).
    pub fn model_path(&self) -> PathBuf {
        self.file.clone()
    }

    /// `name@version`, for logs and messages.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    kind: String,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    description: String,
    #[serde(default)]
    labels: Vec<String>,
    #[serde(default)]
    output: Option<OutputKind>,
    #[serde(default)]
    allow_non_finite: bool,
    #[serde(default)]
    inputs: Vec<RawInput>,
    #[serde(default)]
    provenance: Provenance,
    #[serde(default)]
    batching: RawBatching,
    #[serde(default)]
    pin: bool,
    #[serde(default)]
    text: Option<RawText>,
    #[serde(default)]
    fp16: bool,
    #[serde(default)]
    self_test: Vec<SelfTest>,
    #[serde(default)]
    cache: Option<CacheSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawText {
    #[serde(default = "default_tokenizer")]
    tokenizer: String,
    max_length: usize,
}

fn default_tokenizer() -> String {
    "tokenizer.json".to_owned()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInput {
    name: String,
    dtype: String,
    shape: Vec<i64>,
    #[serde(default)]
    features: Vec<Feature>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawBatching {
    #[serde(default)]
    max_batch_size: Option<usize>,
    #[serde(default)]
    max_queue_delay_ms: u64,
    #[serde(default)]
    inline_max_us: Option<u64>,
}

/// Checks a model name before it is used for anything.
pub fn check_model_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::EmptyModelName);
    }
    let b = name.as_bytes();
    let first_ok = b[0].is_ascii_lowercase() || b[0].is_ascii_digit();
    let rest_ok =
        b[1..].iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'.' | b'-'));
    if first_ok && rest_ok && b.len() <= 64 { Ok(()) } else { Err(Error::InvalidModelName { name: clip(name, 72) }) }
}

/// Why a manifest was refused: what is wrong and what would be right, for the log and for
/// operators (the model is skipped; the rest of the repository serves).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ManifestError(pub String);

/// Parses a flat-layout manifest's text as version 1 (`dir/model.pt`); its version settings
/// are checked and dropped.
pub fn parse_manifest(name: &str, dir: &Path, text: &str) -> Result<ModelSpec, ManifestError> {
    let mut table: toml::Table = toml::from_str(text).map_err(|e| ManifestError(e.to_string()))?;
    super::versions::take_versioning(&mut table)?;
    parse_version_spec(name, dir, dir, 1, table)
}

/// Overlays a `version.toml`'s keys on the model's manifest table: each key it sets replaces
/// the manifest's. The model-level keys (policy, default, labels) may not be overlaid.
pub fn overlay(base: &toml::Table, text: &str) -> Result<toml::Table, ManifestError> {
    let over: toml::Table = toml::from_str(text).map_err(|e| ManifestError(format!("version.toml: {e}")))?;
    let mut merged = base.clone();
    for (k, v) in over {
        if super::versions::MODEL_KEYS.contains(&k.as_str()) {
            return Err(ManifestError(format!("version.toml may not set {k}: it belongs in the model's model.toml")));
        }
        merged.insert(k, v);
    }
    Ok(merged)
}

/// Parses one version's manifest table (model keys already taken out). `version_dir` holds its
/// `model.pt` or `model.pt2` (`format`; a version may ship both, the manifest picks) and may
/// hold its own tokenizer; `dir` is the model's folder.
pub fn parse_version_spec(
    name: &str,
    dir: &Path,
    version_dir: &Path,
    version: u64,
    table: toml::Table,
) -> Result<ModelSpec, ManifestError> {
    let raw: RawManifest =
        toml::Value::Table(table).try_into().map_err(|e: toml::de::Error| ManifestError(e.to_string()))?;
    let kind = match raw.kind.as_str() {
        "tabular" => ModelKind::Tabular,
        "text-classification" => ModelKind::TextClassification,
        other => {
            return Err(ManifestError(format!("kind must be \"tabular\" or \"text-classification\", got {other:?}")));
        }
    };
    let format = match raw.format.as_deref() {
        None | Some("torchscript") => ModelFormat::TorchScript,
        Some("pt2") => ModelFormat::Pt2,
        Some(other) => {
            return Err(ManifestError(format!("format must be \"torchscript\" or \"pt2\", got {other:?}")));
        }
    };
    if raw.inputs.is_empty() {
        return Err(ManifestError("at least one [[inputs]] entry is required".into()));
    }
    let mut inputs = Vec::with_capacity(raw.inputs.len());
    for (i, r) in raw.inputs.into_iter().enumerate() {
        let dtype = DType::from_name(&r.dtype)
            .ok_or_else(|| ManifestError(format!("inputs[{i}].dtype {:?} is not a known dtype", r.dtype)))?;
        if r.shape.first() != Some(&-1) {
            return Err(ManifestError(format!("inputs[{i}].shape must start with -1 (the batch dimension)")));
        }
        if r.shape.iter().skip(1).any(|&d| d == 0 || d < -1) {
            return Err(ManifestError(format!("inputs[{i}].shape dimensions must be positive or -1")));
        }
        inputs.push(InputSpec { name: r.name, dtype, shape: r.shape, features: r.features });
    }
    if kind == ModelKind::Tabular {
        check_tabular(&inputs)?;
    }
    let text = match (kind, raw.text) {
        (ModelKind::TextClassification, Some(t)) => Some(text_spec(dir, version_dir, t, &inputs)?),
        (ModelKind::TextClassification, None) => {
            return Err(ManifestError("a text-classification model needs a [text] table".into()));
        }
        (ModelKind::Tabular, Some(_)) => {
            return Err(ManifestError("[text] is only for text-classification models".into()));
        }
        (ModelKind::Tabular, None) => None,
    };
    let max_batch_size = raw.batching.max_batch_size;
    if max_batch_size == Some(0) {
        return Err(ManifestError("batching.max_batch_size must be at least 1".into()));
    }
    check_self_tests(&raw.self_test, kind, &inputs)?;
    Ok(ModelSpec {
        name: name.to_owned(),
        version,
        generation: 0,
        dir: dir.to_owned(),
        file: version_dir.join(format.file_name()),
        format,
        kind,
        description: raw.description,
        labels: raw.labels,
        output: raw.output.unwrap_or(OutputKind::Logits),
        allow_non_finite: raw.allow_non_finite,
        inputs,
        provenance: raw.provenance,
        max_batch_size,
        max_queue_delay: std::time::Duration::from_millis(raw.batching.max_queue_delay_ms.min(10_000)),
        pin: raw.pin,
        text,
        fp16: raw.fp16,
        self_test: raw.self_test,
        cache: raw.cache,
        inline_max_us: raw.batching.inline_max_us,
    })
}

/// A tabular model: one float input `[-1, n]` listing its `n` uniquely named features.
fn check_tabular(inputs: &[InputSpec]) -> Result<(), ManifestError> {
    let [input] = inputs else {
        return Err(ManifestError("a tabular model takes exactly one input".into()));
    };
    if input.shape.len() != 2 || input.shape[1] < 1 {
        return Err(ManifestError("a tabular input has shape [-1, n_features]".into()));
    }
    if input.features.len() != input.shape[1] as usize {
        return Err(ManifestError(format!(
            "a tabular input lists {} features but its shape has {}",
            input.features.len(),
            input.shape[1]
        )));
    }
    if !input.dtype.is_float() {
        return Err(ManifestError("a tabular input must be a float type".into()));
    }
    let mut names: Vec<&str> = input.features.iter().map(|f| f.name.as_str()).collect();
    names.sort_unstable();
    if names.windows(2).any(|w| w[0] == w[1]) {
        return Err(ManifestError("feature names must be unique".into()));
    }
    Ok(())
}

fn check_self_tests(tests: &[SelfTest], kind: ModelKind, inputs: &[InputSpec]) -> Result<(), ManifestError> {
    for (i, t) in tests.iter().enumerate() {
        let bad = |why: String| ManifestError(format!("self_test[{i}]: {why}"));
        let count = match kind {
            ModelKind::Tabular => {
                let n = inputs[0].features.len();
                if t.rows.is_empty() || !t.texts.is_empty() {
                    return Err(bad("a tabular model's self-test gives `rows` (and no `texts`)".into()));
                }
                if let Some(r) = t.rows.iter().find(|r| r.len() != n) {
                    return Err(bad(format!("each row has the model's {n} features, one has {}", r.len())));
                }
                t.rows.len()
            }
            ModelKind::TextClassification => {
                if t.texts.is_empty() || !t.rows.is_empty() {
                    return Err(bad("a text model's self-test gives `texts` (and no `rows`)".into()));
                }
                t.texts.len()
            }
        };
        if t.expected.len() != count {
            return Err(bad(format!("`expected` has {} entries for {count} inputs", t.expected.len())));
        }
        if !(t.tolerance.is_finite() && t.tolerance >= 0.0) {
            return Err(bad("`tolerance` must be a finite number >= 0".into()));
        }
    }
    Ok(())
}

fn text_spec(dir: &Path, version_dir: &Path, t: RawText, inputs: &[InputSpec]) -> Result<TextSpec, ManifestError> {
    // The tokenizer is a plain file name inside the model's folder: never a path elsewhere.
    let plain = !t.tokenizer.is_empty()
        && !t.tokenizer.starts_with('.')
        && t.tokenizer.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !plain {
        return Err(ManifestError(format!(
            "text.tokenizer must be a file name in the model folder, got {:?}",
            t.tokenizer
        )));
    }
    if t.max_length < 2 {
        return Err(ManifestError("text.max_length must be at least 2".into()));
    }
    for i in inputs {
        if !TEXT_INPUTS.contains(&i.name.as_str()) {
            return Err(ManifestError(format!("text model inputs are among {TEXT_INPUTS:?}, got {:?}", i.name)));
        }
        if !matches!(i.dtype, DType::I64 | DType::I32) || i.shape.len() != 2 {
            return Err(ManifestError(format!("text input {:?} must be int64 or int32 with shape [-1, -1]", i.name)));
        }
    }
    if !inputs.iter().any(|i| i.name == "input_ids") {
        return Err(ManifestError("a text model takes input_ids".into()));
    }
    // A version may carry its own tokenizer; else the model's is shared by its versions.
    let own = version_dir.join(&t.tokenizer);
    let tokenizer = if own.is_file() { own } else { dir.join(&t.tokenizer) };
    Ok(TextSpec { tokenizer, max_length: t.max_length })
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABULAR: &str = r#"
kind = "tabular"
labels = ["no", "yes"]
[[inputs]]
name = "features"
dtype = "float32"
shape = [-1, 2]
features = [{ name = "age", unit = "years" }, { name = "bmi", unit = "kg/m2" }]
"#;

    #[test]
    fn parses_a_tabular_manifest() {
        let spec = parse_manifest("m", Path::new("/x"), TABULAR).unwrap();
        assert_eq!(spec.kind, ModelKind::Tabular);
        assert_eq!(spec.inputs[0].features[1].unit, "kg/m2");
        assert_eq!(spec.output, OutputKind::Logits);
        assert_eq!(spec.max_batch_size, None);
    }

    #[test]
    fn format_picks_the_file_a_version_serves() {
        let spec = parse_manifest("m", Path::new("/x"), TABULAR).unwrap();
        assert_eq!((spec.format, spec.file.as_path()), (ModelFormat::TorchScript, Path::new("/x/model.pt")));
        let pt2 = parse_manifest("m", Path::new("/x"), &format!("format = \"pt2\"\n{TABULAR}")).unwrap();
        assert_eq!((pt2.format, pt2.file.as_path()), (ModelFormat::Pt2, Path::new("/x/model.pt2")));
        let err = parse_manifest("m", Path::new("/x"), &format!("format = \"onnx\"\n{TABULAR}")).unwrap_err();
        assert!(err.0.contains("format must be"), "{err}");
    }

    #[test]
    fn rejects_inconsistent_manifests() {
        let cases = [
            (TABULAR.replace("shape = [-1, 2]", "shape = [-1, 3]"), "lists 2 features"),
            (TABULAR.replace("tabular", "vision"), "kind must be"),
            (TABULAR.replace("float32", "complex"), "not a known dtype"),
            (TABULAR.replace("[-1, 2]", "[4, 2]"), "must start with -1"),
            (TABULAR.replace("bmi", "age"), "unique"),
            (format!("{TABULAR}\nsurprise = 1"), "unknown field"),
        ];
        for (text, want) in cases {
            let err = parse_manifest("m", Path::new("/x"), &text).unwrap_err();
            assert!(err.0.contains(want), "{err} should mention {want}");
        }
    }

    const TEXT: &str = r#"
kind = "text-classification"
labels = ["negative", "positive"]
[[inputs]]
name = "input_ids"
dtype = "int64"
shape = [-1, -1]
[[inputs]]
name = "attention_mask"
dtype = "int64"
shape = [-1, -1]
[text]
max_length = 512
"#;

    #[test]
    fn parses_a_text_manifest_and_checks_it() {
        let spec = parse_manifest("s", Path::new("/m/s"), TEXT).unwrap();
        let text = spec.text.unwrap();
        assert_eq!(text.tokenizer, Path::new("/m/s/tokenizer.json"));
        assert_eq!(text.max_length, 512);
        let cases = [
            (TEXT.replace("max_length = 512", "max_length = 512\ntokenizer = \"../../etc/passwd\""), "file name"),
            (TEXT.replace("[text]\nmax_length = 512", ""), "needs a [text] table"),
            (TEXT.replace("\"attention_mask\"", "\"pixels\""), "inputs are among"),
            (TEXT.replace("dtype = \"int64\"", "dtype = \"float32\""), "int64 or int32"),
        ];
        for (text, want) in cases {
            let err = parse_manifest("s", Path::new("/x"), &text).unwrap_err();
            assert!(err.0.contains(want), "{err} should mention {want}");
        }
    }

    #[test]
    fn model_names_are_checked_before_use() {
        for ok in ["a", "heart-disease", "m.v2", "x_1", &"a".repeat(64)] {
            assert!(check_model_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "A", "-a", ".a", "..", "a/b", "../etc", "a b", "é", &"a".repeat(65), &"a".repeat(200)] {
            assert!(check_model_name(bad).is_err(), "{bad}");
        }
        let long = check_model_name(&"a".repeat(200)).unwrap_err().to_string();
        assert!(long.len() < 200, "message clips the name: {long}");
    }
}
