//! A model's versions as its manifest declares them: which versions on disk are served (the
//! version policy), which one answers a request that names none (`default_version`), and the
//! version labels (`stable`, `canary`, ...), one of which may split traffic by weight. Also
//! the parsing of what a client may write to pick a version (`3`, `stable`), checked before
//! it is used for anything.
//!
//! ```toml
//! version_policy = "latest"            # or "all", { latest = 2 }, { specific = [1, 3] }
//! default_version = "stable"           # a label or a number; absent = the highest served
//! [version_labels]
//! stable = 3
//! canary = { 3 = 90, 4 = 10 }          # weights sum to 100
//! ```

use std::collections::BTreeMap;

use super::manifest::ManifestError;
use crate::error::{Error, Result, clip};

/// Which of the versions on disk a model serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionPolicy {
    /// The highest `n` versions.
    Latest(usize),
    /// Every version on disk.
    All,
    /// Exactly these versions (those that exist).
    Specific(Vec<u64>),
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest(1)
    }
}

impl VersionPolicy {
    /// The served subset of `on_disk` (ascending).
    pub fn select(&self, on_disk: &[u64]) -> Vec<u64> {
        match self {
            VersionPolicy::Latest(n) => on_disk[on_disk.len().saturating_sub(*n)..].to_vec(),
            VersionPolicy::All => on_disk.to_vec(),
            VersionPolicy::Specific(want) => on_disk.iter().copied().filter(|v| want.contains(v)).collect(),
        }
    }

    /// How the manifest would spell it, for messages and GetModel.
    pub fn describe(&self) -> String {
        match self {
            VersionPolicy::Latest(1) => "latest".to_owned(),
            VersionPolicy::Latest(n) => format!("latest {n}"),
            VersionPolicy::All => "all".to_owned(),
            VersionPolicy::Specific(v) => format!("specific {v:?}"),
        }
    }
}

/// What a label (or a request) points at: one version, or a weighted split of several.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelTarget {
    /// One version.
    One(u64),
    /// `(version, weight)` pairs, weights summing to 100, versions ascending.
    Split(Vec<(u64, u32)>),
}

impl LabelTarget {
    /// Every version it names.
    pub fn versions(&self) -> Vec<u64> {
        match self {
            LabelTarget::One(v) => vec![*v],
            LabelTarget::Split(s) => s.iter().map(|(v, _)| *v).collect(),
        }
    }

    /// The version a request goes to; `key` (a hash of the request id) keeps a split sticky.
    pub fn pick(&self, key: u64) -> u64 {
        match self {
            LabelTarget::One(v) => *v,
            LabelTarget::Split(split) => {
                let mut point = (key % 100) as u32;
                for (v, w) in split {
                    if point < *w {
                        return *v;
                    }
                    point -= w;
                }
                split.last().map_or(0, |(v, _)| *v)
            }
        }
    }

    /// `3` or `{3 = 90, 4 = 10}`, as the manifest writes it.
    pub fn describe(&self) -> String {
        match self {
            LabelTarget::One(v) => v.to_string(),
            LabelTarget::Split(s) => {
                let parts: Vec<String> = s.iter().map(|(v, w)| format!("{v} = {w}")).collect();
                format!("{{{}}}", parts.join(", "))
            }
        }
    }
}

/// A version as a client or a manifest names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VersionRef {
    /// A version number.
    Number(u64),
    /// A label.
    Label(String),
}

impl std::fmt::Display for VersionRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            VersionRef::Number(n) => write!(f, "{n}"),
            VersionRef::Label(l) => f.write_str(l),
        }
    }
}

/// Parses what a client wrote for a version: empty is `None` (the model's default); digits are
/// a positive version number; anything else must be a label name (`^[a-z][a-z0-9_-]{0,31}$`).
pub fn parse_version(given: &str) -> Result<Option<VersionRef>> {
    let bad = || Error::InvalidVersion { given: clip(given, 40) };
    if given.is_empty() {
        return Ok(None);
    }
    if given.bytes().all(|b| b.is_ascii_digit()) {
        return match given.parse::<u64>() {
            Ok(0) | Err(_) => Err(bad()),
            Ok(n) => Ok(Some(VersionRef::Number(n))),
        };
    }
    if is_label_name(given) { Ok(Some(VersionRef::Label(given.to_owned()))) } else { Err(bad()) }
}

/// Splits `name@version` into its parts; a name without `@` has no version part.
pub fn split_model_name(name: &str) -> Result<(&str, Option<&str>)> {
    match name.split_once('@') {
        None => Ok((name, None)),
        Some((_, "")) => Err(Error::InvalidVersion { given: clip(name, 72) }),
        Some((model, version)) => Ok((model, Some(version))),
    }
}

/// Whether `s` may be a label name.
pub fn is_label_name(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_lowercase()
        && b.iter().all(|&c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'_' | b'-'))
}

/// The version settings of a model's manifest.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Versioning {
    /// Which versions on disk are served.
    pub policy: VersionPolicy,
    /// What a request that names no version gets; `None` = the highest served version.
    pub default: Option<VersionRef>,
    /// Label -> target.
    pub labels: BTreeMap<String, LabelTarget>,
}

/// Keys of `model.toml` that belong to the model, not to a version (a `version.toml` may not
/// set them).
pub const MODEL_KEYS: [&str; 3] = ["version_policy", "default_version", "version_labels"];

/// Reads the version settings out of a manifest's table (removing them from it).
pub fn take_versioning(table: &mut toml::Table) -> Result<Versioning, ManifestError> {
    let policy = match table.remove("version_policy") {
        None => VersionPolicy::default(),
        Some(v) => parse_policy(&v)?,
    };
    let default = match table.remove("default_version") {
        None => None,
        Some(toml::Value::Integer(n)) if n > 0 => Some(VersionRef::Number(n as u64)),
        Some(toml::Value::String(s)) if is_label_name(&s) => Some(VersionRef::Label(s)),
        Some(other) => {
            return Err(ManifestError(format!(
                "default_version must be a positive version number or a label name, got {other}"
            )));
        }
    };
    let mut labels = BTreeMap::new();
    if let Some(v) = table.remove("version_labels") {
        let toml::Value::Table(t) = v else {
            return Err(ManifestError("version_labels must be a table: label = version".into()));
        };
        for (label, target) in t {
            if !is_label_name(&label) {
                return Err(ManifestError(format!("version label {label:?} must match ^[a-z][a-z0-9_-]{{0,31}}$")));
            }
            let target = label_target(&target).map_err(|e| ManifestError(format!("version_labels.{label}: {e}")))?;
            labels.insert(label, target);
        }
    }
    if let Some(VersionRef::Label(l)) = &default
        && !labels.contains_key(l)
    {
        return Err(ManifestError(format!("default_version names label {l:?}, which version_labels does not define")));
    }
    Ok(Versioning { policy, default, labels })
}

fn parse_policy(v: &toml::Value) -> Result<VersionPolicy, ManifestError> {
    let bad = || {
        ManifestError(format!(
            "version_policy must be \"latest\", \"all\", {{ latest = N }} or {{ specific = [..] }}, got {v}"
        ))
    };
    match v {
        toml::Value::String(s) if s == "latest" => Ok(VersionPolicy::Latest(1)),
        toml::Value::String(s) if s == "all" => Ok(VersionPolicy::All),
        toml::Value::Table(t) if t.len() == 1 => match t.iter().next() {
            Some((k, toml::Value::Integer(n))) if k == "latest" && *n > 0 => Ok(VersionPolicy::Latest(*n as usize)),
            Some((k, toml::Value::Array(a))) if k == "specific" && !a.is_empty() => {
                let versions: Option<Vec<u64>> =
                    a.iter().map(|x| x.as_integer().filter(|n| *n > 0).map(|n| n as u64)).collect();
                versions.map(VersionPolicy::Specific).ok_or_else(bad)
            }
            _ => Err(bad()),
        },
        _ => Err(bad()),
    }
}

/// A label's target as the manifest (or SetLabels, as text) writes it: a positive integer, or
/// a table of version -> weight with weights summing to 100.
pub fn label_target(v: &toml::Value) -> Result<LabelTarget, String> {
    match v {
        toml::Value::Integer(n) if *n > 0 => Ok(LabelTarget::One(*n as u64)),
        toml::Value::Table(t) => {
            let mut split = Vec::with_capacity(t.len());
            for (k, w) in t {
                let version = k.parse::<u64>().ok().filter(|n| *n > 0);
                let weight = w.as_integer().and_then(|w| u32::try_from(w).ok());
                match (version, weight) {
                    (Some(version), Some(weight)) => split.push((version, weight)),
                    _ => return Err(format!("a split is {{ version = weight, ... }} with positive versions, got {v}")),
                }
            }
            split_target(split)
        }
        _ => Err(format!("must be a positive version number or {{ version = weight, ... }}, got {v}")),
    }
}

/// Checks a weighted split: at least two versions, no repeats, weights summing to 100.
pub fn split_target(mut split: Vec<(u64, u32)>) -> Result<LabelTarget, String> {
    split.sort_unstable();
    if split.windows(2).any(|w| w[0].0 == w[1].0) {
        return Err("a split names each version once".into());
    }
    let sum: u64 = split.iter().map(|(_, w)| u64::from(*w)).sum();
    if sum != 100 {
        return Err(format!("split weights must sum to 100, got {sum}"));
    }
    split.retain(|(_, w)| *w > 0);
    match split.as_slice() {
        [(v, _)] => Ok(LabelTarget::One(*v)),
        [] => Err("a split needs at least one version with a weight".into()),
        _ => Ok(LabelTarget::Split(split)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        toml::from_str(text).unwrap()
    }

    #[test]
    fn policies_select_the_served_versions() {
        let disk = [1, 2, 5, 7];
        assert_eq!(VersionPolicy::default().select(&disk), vec![7]);
        assert_eq!(VersionPolicy::Latest(2).select(&disk), vec![5, 7]);
        assert_eq!(VersionPolicy::Latest(9).select(&disk), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::All.select(&disk), vec![1, 2, 5, 7]);
        assert_eq!(VersionPolicy::Specific(vec![2, 3]).select(&disk), vec![2]);
        assert_eq!(VersionPolicy::Latest(1).select(&[]), Vec::<u64>::new());
    }

    #[test]
    fn manifest_versioning_parses_and_is_checked() {
        let mut t = table(
            "version_policy = { latest = 2 }\ndefault_version = \"stable\"\n[version_labels]\nstable = 3\ncanary = { 3 = 90, 4 = 10 }\n",
        );
        let v = take_versioning(&mut t).unwrap();
        assert!(t.is_empty(), "the model keys are taken out of the table");
        assert_eq!(v.policy, VersionPolicy::Latest(2));
        assert_eq!(v.default, Some(VersionRef::Label("stable".into())));
        assert_eq!(v.labels["canary"], LabelTarget::Split(vec![(3, 90), (4, 10)]));
        for (text, want) in [
            ("version_policy = \"newest\"", "version_policy must be"),
            ("version_policy = { latest = 0 }", "version_policy must be"),
            ("default_version = 0", "default_version must be"),
            ("default_version = \"beta\"", "does not define"),
            ("[version_labels]\nstable = { 3 = 50, 4 = 40 }", "sum to 100, got 90"),
            ("[version_labels]\nstable = -1", "positive version number"),
            ("[version_labels]\nStable = 1", "must match"),
            ("[version_labels]\nx = { a = 100 }", "positive versions"),
        ] {
            let err = take_versioning(&mut table(text)).unwrap_err();
            assert!(err.0.contains(want), "{text}: {err}");
        }
    }

    #[test]
    fn client_versions_are_numbers_or_labels() {
        assert_eq!(parse_version("").unwrap(), None);
        assert_eq!(parse_version("12").unwrap(), Some(VersionRef::Number(12)));
        assert_eq!(parse_version("canary").unwrap(), Some(VersionRef::Label("canary".into())));
        for bad in ["0", "-1", "1.5", "99999999999999999999999", "Stable", "../x", " 1"] {
            assert!(matches!(parse_version(bad), Err(Error::InvalidVersion { .. })), "{bad}");
        }
        assert_eq!(split_model_name("m@3").unwrap(), ("m", Some("3")));
        assert_eq!(split_model_name("m").unwrap(), ("m", None));
        assert!(split_model_name("m@").is_err());
    }

    #[test]
    fn a_split_picks_by_weight_and_is_sticky() {
        let t = LabelTarget::Split(vec![(3, 90), (4, 10)]);
        let fours = (0..10_000u64).filter(|k| t.pick(*k) == 4).count();
        assert_eq!(fours, 1000);
        assert_eq!(t.pick(12345), t.pick(12345));
        assert_eq!(split_target(vec![(4, 0), (3, 100)]).unwrap(), LabelTarget::One(3));
        assert!(split_target(vec![(3, 50), (3, 50)]).is_err());
    }
}
