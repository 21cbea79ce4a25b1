//! The model repository on disk: `models/<name>/model.toml` plus one folder per version,
//! `models/<name>/<N>/model.pt` (and an optional `version.toml` overlay); a model without
//! numbered folders is the flat layout, its `model.pt` being version 1.
//!
//! The scan is the only place that turns names into paths: a request only ever looks names up
//! in the scanned map, so no request can make the server read outside the model directory.
//! A numbered folder is only served once it is completely published: folders whose name
//! starts with `.` are ignored (publish by writing `.<N>.tmp/` and renaming it to `<N>`); a
//! model file (`model.pt`, or `model.pt2` for a manifest with `format = "pt2"`) that is not a
//! complete zip archive is refused as half-copied; a `<file>.sha256` beside it, when present,
//! must match. Rescans are cheap: a model whose
//! files' sizes, times and inodes are unchanged keeps its previous entry without a read.

use std::collections::BTreeMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::manifest::{ModelKind, ModelSpec, check_model_name, overlay, parse_version_spec};
use super::versions::{Versioning, take_versioning};
use crate::error::{Error, Result};

/// One model of the repository with its versions.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelEntry {
    /// The model name (its folder).
    pub name: String,
    /// Policy, default and labels from `model.toml`.
    pub versioning: Versioning,
    /// The served versions (the policy applied to the complete ones), ascending.
    pub versions: BTreeMap<u64, Arc<ModelSpec>>,
    /// Version folders that are not served, and why.
    pub not_served: BTreeMap<u64, String>,
    /// Set when `model.toml` stopped parsing on a rescan: this entry is the last good one,
    /// still in force.
    pub manifest_error: Option<String>,
    stamp: Vec<Stamp>,
}

impl ModelEntry {
    /// The highest served version.
    pub fn latest(&self) -> Option<&Arc<ModelSpec>> {
        self.versions.values().next_back()
    }

    /// What every served version is (kind, inputs): the latest's.
    pub fn kind(&self) -> Option<ModelKind> {
        self.latest().map(|s| s.kind)
    }

    /// Served version `n`, or why not: NOT_FOUND naming the versions that exist, or the reason
    /// a version on disk is not served.
    pub fn version(&self, n: u64) -> Result<Arc<ModelSpec>> {
        if let Some(spec) = self.versions.get(&n) {
            return Ok(Arc::clone(spec));
        }
        match self.not_served.get(&n) {
            Some(reason) => Err(Error::VersionNotServed {
                model: self.name.clone(),
                version: n,
                reason: reason.clone(),
                available: self.available(),
            }),
            None => Err(Error::VersionNotFound {
                model: self.name.clone(),
                version: n.to_string(),
                available: self.available(),
            }),
        }
    }

    /// The served versions, comma-separated.
    pub fn available(&self) -> String {
        let v: Vec<String> = self.versions.keys().map(u64::to_string).collect();
        if v.is_empty() { "none".to_owned() } else { v.join(", ") }
    }
}

/// The scanned repository: name -> entry, in name order.
#[derive(Debug, Clone, Default)]
pub struct Repository {
    models: BTreeMap<String, Arc<ModelEntry>>,
    /// Models skipped entirely (no good manifest ever), and why.
    skipped: BTreeMap<String, String>,
}

/// What identifies a file's content cheaply: (relative name, size, mtime ns, inode).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Stamp(String, u64, i128, u64);

fn stamp_of(name: String, path: &Path) -> Option<Stamp> {
    let meta = std::fs::metadata(path).ok()?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as i128);
    #[cfg(unix)]
    let ino = std::os::unix::fs::MetadataExt::ino(&meta);
    #[cfg(not(unix))]
    let ino = 0;
    Some(Stamp(name, meta.len(), mtime, ino))
}

/// Files whose changes a rescan notices, per version folder.
const VERSION_FILES: [&str; 6] =
    ["model.pt", "model.pt2", "version.toml", "model.pt.sha256", "model.pt2.sha256", "tokenizer.json"];

/// The stamps of everything a model's entry is built from, and its numbered folders.
fn model_stamp(dir: &Path) -> std::io::Result<(Vec<Stamp>, Vec<u64>)> {
    let mut stamps = Vec::new();
    let mut versions = Vec::new();
    for f in ["model.toml", "model.pt", "model.pt2", "tokenizer.json"] {
        stamps.extend(stamp_of(f.to_owned(), &dir.join(f)));
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        // Only canonical numbers: `01` and `.3.tmp` are not versions.
        let Some(n) = name.parse::<u64>().ok().filter(|n| *n > 0 && n.to_string() == name) else { continue };
        // `is_dir` follows symlinks, as an operator's linked folders (and Kubernetes volumes) need.
        if !entry.path().is_dir() {
            continue;
        }
        versions.push(n);
        stamps.push(Stamp(name.clone(), 0, 0, 0));
        for f in VERSION_FILES {
            stamps.extend(stamp_of(format!("{name}/{f}"), &entry.path().join(f)));
        }
    }
    versions.sort_unstable();
    stamps.sort_by(|a, b| a.0.cmp(&b.0));
    Ok((stamps, versions))
}

impl Repository {
    /// Reads every `<dir>/<name>/model.toml` and its versions. A folder whose name is not a
    /// valid model name, or whose manifest does not parse, is skipped with a log line, so one
    /// broken model never stops the others; on a rescan (`previous` given) a model whose
    /// manifest stops parsing keeps its previous entry, marked with the error.
    pub fn scan(dir: &Path, previous: Option<&Repository>) -> std::io::Result<Self> {
        let mut repo = Repository::default();
        for entry in std::fs::read_dir(dir)? {
            let entry = entry?;
            let path = entry.path();
            if !path.is_dir() || !path.join("model.toml").is_file() {
                continue;
            }
            let Some(name) = entry.file_name().to_str().map(str::to_owned) else {
                tracing::warn!(dir = %path.display(), "skipping model folder: name is not UTF-8");
                continue;
            };
            if check_model_name(&name).is_err() {
                tracing::warn!(%name, "skipping model folder: not a valid model name");
                continue;
            }
            let old = previous.and_then(|p| p.models.get(&name));
            match read_model(&name, &path, old) {
                Ok(entry) => {
                    repo.models.insert(name, entry);
                }
                Err(reason) => {
                    tracing::error!(model = %name, %reason, "skipping model: bad model.toml");
                    repo.skipped.insert(name, reason);
                }
            }
        }
        Ok(repo)
    }

    /// A repository from specs built in code (tests): each spec is a served version.
    pub fn from_specs(specs: impl IntoIterator<Item = ModelSpec>) -> Self {
        Self::from_specs_with(specs, Versioning::default())
    }

    /// [`Repository::from_specs`] with the same version settings for every model.
    pub fn from_specs_with(specs: impl IntoIterator<Item = ModelSpec>, versioning: Versioning) -> Self {
        let mut models: BTreeMap<String, ModelEntry> = BTreeMap::new();
        for s in specs {
            let e = models.entry(s.name.clone()).or_insert_with(|| ModelEntry {
                name: s.name.clone(),
                versioning: versioning.clone(),
                versions: BTreeMap::new(),
                not_served: BTreeMap::new(),
                manifest_error: None,
                stamp: Vec::new(),
            });
            e.versions.insert(s.version, Arc::new(s));
        }
        Repository { models: models.into_iter().map(|(k, v)| (k, Arc::new(v))).collect(), skipped: BTreeMap::new() }
    }

    /// Looks a model up by a client-supplied name; checks the name first.
    pub fn get(&self, name: &str) -> Result<Arc<ModelEntry>> {
        check_model_name(name)?;
        self.models
            .get(name)
            .cloned()
            .ok_or_else(|| Error::ModelNotFound { name: name.to_owned(), available: self.names().join(", ") })
    }

    /// The text model Sentiment uses when a request names none: `sentiment` when it exists,
    /// else the first text-classification model by name.
    pub fn default_text_model(&self) -> Result<Arc<ModelEntry>> {
        let text = |e: &&Arc<ModelEntry>| e.kind() == Some(ModelKind::TextClassification);
        self.models
            .get("sentiment")
            .filter(text)
            .or_else(|| self.models.values().find(text))
            .cloned()
            .ok_or(Error::NoTextModel)
    }

    /// Every model name, sorted.
    pub fn names(&self) -> Vec<String> {
        self.models.keys().cloned().collect()
    }

    /// Every entry, in name order.
    pub fn entries(&self) -> impl Iterator<Item = &Arc<ModelEntry>> {
        self.models.values()
    }

    /// Every served version of every model.
    pub fn specs(&self) -> impl Iterator<Item = &Arc<ModelSpec>> {
        self.models.values().flat_map(|e| e.versions.values())
    }

    /// Models skipped because their manifest never parsed, and why.
    pub fn skipped(&self) -> &BTreeMap<String, String> {
        &self.skipped
    }

    /// Number of models.
    pub fn len(&self) -> usize {
        self.models.len()
    }

    /// True when there are no models.
    pub fn is_empty(&self) -> bool {
        self.models.is_empty()
    }
}

/// Builds a model's entry, reusing `old` when nothing it was built from changed.
fn read_model(name: &str, dir: &Path, old: Option<&Arc<ModelEntry>>) -> Result<Arc<ModelEntry>, String> {
    let (stamp, on_disk) = model_stamp(dir).map_err(|e| format!("reading the model folder: {e}"))?;
    if let Some(old) = old.filter(|o| o.stamp == stamp) {
        return Ok(Arc::clone(old));
    }
    let parsed = std::fs::read_to_string(dir.join("model.toml"))
        .map_err(|e| format!("reading model.toml: {e}"))
        .and_then(|text| toml::from_str::<toml::Table>(&text).map_err(|e| e.to_string()))
        .and_then(|mut table| take_versioning(&mut table).map(|v| (table, v)).map_err(|e| e.0));
    let (base, versioning) = match (parsed, old) {
        (Ok(x), _) => x,
        (Err(reason), Some(old)) => {
            tracing::error!(model = %name, %reason, "model.toml no longer parses; the previous manifest stays in force");
            let mut kept = ModelEntry::clone(old);
            kept.manifest_error = Some(reason);
            kept.stamp = stamp;
            return Ok(Arc::new(kept));
        }
        (Err(reason), None) => return Err(reason),
    };
    let mut complete = BTreeMap::new();
    let mut not_served = BTreeMap::new();
    let candidates: Vec<(u64, PathBuf)> = if on_disk.is_empty() {
        // The flat layout: version 1 in the model's own folder, read as before.
        vec![(1, dir.to_owned())]
    } else {
        on_disk.iter().map(|n| (*n, dir.join(n.to_string()))).collect()
    };
    for (n, vdir) in candidates {
        // The manifest says which file the version serves, so it is read before that file's
        // publish checks.
        let spec = version_table(&base, &vdir)
            .and_then(|table| parse_version_spec(name, dir, &vdir, n, table).map_err(|e| e.0))
            .and_then(|spec| if on_disk.is_empty() { Ok(spec) } else { check_published(&spec.file).map(|()| spec) });
        match spec {
            // A version unchanged since the last scan keeps its Arc (and so its identity).
            Ok(mut spec) => {
                let flat = on_disk.is_empty();
                let same = old
                    .filter(|o| version_stamps(&o.stamp, n, flat) == version_stamps(&stamp, n, flat))
                    .and_then(|o| o.versions.get(&n))
                    .filter(|o| {
                        let mut s = spec.clone();
                        s.generation = o.generation;
                        ***o == s
                    })
                    .cloned();
                let spec = same.unwrap_or_else(|| {
                    spec.generation = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    Arc::new(spec)
                });
                complete.insert(n, spec);
            }
            Err(reason) => {
                tracing::warn!(model = %name, version = n, %reason, "version not served");
                not_served.insert(n, reason);
            }
        }
    }
    let ready: Vec<u64> = complete.keys().copied().collect();
    let served = versioning.policy.select(&ready);
    let mut versions = BTreeMap::new();
    for (n, spec) in complete {
        if served.contains(&n) {
            versions.insert(n, spec);
        } else {
            not_served.insert(n, format!("outside the version policy ({})", versioning.policy.describe()));
        }
    }
    Ok(Arc::new(ModelEntry { name: name.to_owned(), versioning, versions, not_served, manifest_error: None, stamp }))
}

/// Generations of specs read from disk; 0 is left to specs built in code.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// The stamps of version `n`'s own files (the model's folder's for the flat layout).
fn version_stamps(stamps: &[Stamp], n: u64, flat: bool) -> Vec<&Stamp> {
    let prefix = if flat { String::new() } else { format!("{n}/") };
    stamps.iter().filter(|s| s.0.starts_with(&prefix) && (!flat || !s.0.contains('/'))).collect()
}

/// The manifest table of one version: `model.toml` with `version.toml`'s keys over it.
fn version_table(base: &toml::Table, vdir: &Path) -> Result<toml::Table, String> {
    match std::fs::read_to_string(vdir.join("version.toml")) {
        Ok(text) => overlay(base, &text).map_err(|e| e.0),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(base.clone()),
        Err(e) => Err(format!("reading version.toml: {e}")),
    }
}

/// The publish checks of a numbered folder's model file (`model.pt` or `model.pt2`, whichever
/// the manifest serves): it is there, is a complete zip archive (TorchScript files and
/// AOTInductor packages both are), and matches `<file>.sha256` when that file exists.
pub fn check_published(file: &Path) -> Result<(), String> {
    let name = file.file_name().map_or_else(String::new, |n| n.to_string_lossy().into_owned());
    let mut f = std::fs::File::open(file).map_err(|e| format!("no readable {name} ({})", e.kind()))?;
    let len = f.metadata().map_err(|e| e.to_string())?.len();
    // The end-of-central-directory record closes every zip; a half-copied file lacks it.
    let tail = len.min(22 + 65_535);
    let mut buf = vec![0u8; tail as usize];
    f.seek(SeekFrom::Start(len - tail)).and_then(|_| f.read_exact(&mut buf)).map_err(|e| e.to_string())?;
    if !buf.windows(4).any(|w| w == b"PK\x05\x06") {
        return Err(format!(
            "{name} is not a complete archive (still being copied?): publish a version by writing it into a \
             dot-folder and renaming that to the version number"
        ));
    }
    let sums = file.with_file_name(format!("{name}.sha256"));
    match std::fs::read_to_string(&sums) {
        Ok(want) => {
            let want = want.split_whitespace().next().unwrap_or_default().to_ascii_lowercase();
            let got = sha256_file(file).map_err(|e| format!("hashing {name}: {e}"))?;
            if want == got { Ok(()) } else { Err(format!("{name} does not match {name}.sha256 ({want})")) }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(format!("reading {name}.sha256: {e}")),
    }
}

fn sha256_file(path: &Path) -> std::io::Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().iter().map(|b| format!("{b:02x}")).collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    const MANIFEST: &str = "kind = \"tabular\"\nlabels = [\"no\", \"yes\"]\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\nshape = [-1, 1]\nfeatures = [{ name = \"a\" }]\n";

    /// A minimal complete zip: just the end-of-central-directory record.
    const EMPTY_ZIP: &[u8] = b"PK\x05\x06\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0";

    fn model(root: &Path, name: &str, manifest: &str, versions: &[(u64, &[u8])]) -> PathBuf {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("model.toml"), manifest).unwrap();
        for (n, bytes) in versions {
            std::fs::create_dir_all(dir.join(n.to_string())).unwrap();
            std::fs::write(dir.join(format!("{n}/model.pt")), bytes).unwrap();
        }
        dir
    }

    fn tmp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("tw-repo-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn versions_policy_and_publish_checks() {
        let root = tmp("versions");
        let dir = model(&root, "m", MANIFEST, &[(1, EMPTY_ZIP), (2, EMPTY_ZIP), (3, b"PK\x03\x04 half")]);
        std::fs::create_dir_all(dir.join(".4.tmp")).unwrap();
        std::fs::create_dir_all(dir.join("05")).unwrap();
        let repo = Repository::scan(&root, None).unwrap();
        let e = repo.get("m").unwrap();
        assert_eq!(e.versions.keys().copied().collect::<Vec<_>>(), vec![2], "latest complete version");
        assert!(e.not_served[&3].contains("not a complete archive"), "{:?}", e.not_served);
        assert!(e.not_served[&1].contains("outside the version policy"));
        assert!(matches!(e.version(3), Err(Error::VersionNotServed { .. })));
        assert!(matches!(e.version(9), Err(Error::VersionNotFound { .. })));
        assert_eq!(e.versions[&2].file, dir.join("2/model.pt"));

        // A digest beside the file must match.
        std::fs::write(dir.join("2/model.pt.sha256"), "00ff  model.pt\n").unwrap();
        let again = Repository::scan(&root, Some(&repo)).unwrap();
        assert!(again.get("m").unwrap().not_served[&2].contains("does not match"));
        let good = sha256_file(&dir.join("2/model.pt")).unwrap();
        std::fs::write(dir.join("2/model.pt.sha256"), format!("{good}  model.pt\n")).unwrap();
        let fixed = Repository::scan(&root, Some(&again)).unwrap();
        assert_eq!(fixed.get("m").unwrap().latest().unwrap().version, 2);
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn a_pt2_version_gets_the_same_publish_checks_on_its_own_file() {
        let root = tmp("pt2");
        let manifest = format!("format = \"pt2\"\n{MANIFEST}");
        // Version 1 ships a complete model.pt but a half-copied model.pt2: the manifest serves
        // the .pt2, so version 1 is not served; version 2's package is complete.
        let dir = model(&root, "m", &manifest, &[(1, EMPTY_ZIP), (2, b"PK\x03\x04")]);
        std::fs::write(dir.join("1/model.pt2"), b"PK\x03\x04 half").unwrap();
        std::fs::write(dir.join("2/model.pt2"), EMPTY_ZIP).unwrap();
        std::fs::write(dir.join("2/version.toml"), "description = \"two\"\n").unwrap();
        let toml = std::fs::read_to_string(dir.join("model.toml")).unwrap();
        std::fs::write(dir.join("model.toml"), format!("version_policy = \"all\"\n{toml}")).unwrap();
        let repo = Repository::scan(&root, None).unwrap();
        let e = repo.get("m").unwrap();
        assert!(e.not_served[&1].contains("model.pt2 is not a complete archive"), "{:?}", e.not_served);
        assert_eq!(e.versions[&2].file, dir.join("2/model.pt2"));
        std::fs::write(dir.join("2/model.pt2.sha256"), "00ff  model.pt2\n").unwrap();
        let again = Repository::scan(&root, Some(&repo)).unwrap();
        assert!(again.get("m").unwrap().not_served[&2].contains("model.pt2 does not match model.pt2.sha256"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn an_unchanged_model_keeps_its_entry_and_a_broken_manifest_keeps_the_last_good_one() {
        let root = tmp("rescan");
        let dir = model(&root, "m", MANIFEST, &[(1, EMPTY_ZIP)]);
        std::fs::write(dir.join("1/version.toml"), "description = \"first\"\n").unwrap();
        let first = Repository::scan(&root, None).unwrap();
        let second = Repository::scan(&root, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.get("m").unwrap(), &second.get("m").unwrap()));
        assert_eq!(second.get("m").unwrap().versions[&1].description, "first");

        std::fs::write(dir.join("model.toml"), "kind = \"tabular\"\n[[inputs\n").unwrap();
        let broken = Repository::scan(&root, Some(&second)).unwrap();
        let e = broken.get("m").unwrap();
        assert!(e.manifest_error.is_some());
        assert_eq!(e.versions.len(), 1, "the previous manifest stays in force");
        assert!(Repository::scan(&root, None).unwrap().get("m").is_err(), "no previous: skipped");

        std::fs::write(dir.join("model.toml"), MANIFEST).unwrap();
        std::fs::write(dir.join("1/version.toml"), "version_policy = \"all\"\n").unwrap();
        let bad_overlay = Repository::scan(&root, Some(&broken)).unwrap();
        assert!(bad_overlay.get("m").unwrap().not_served[&1].contains("may not set version_policy"));
        std::fs::remove_dir_all(&root).unwrap();
    }

    #[cfg(unix)]
    #[test]
    fn linked_model_and_version_folders_are_read() {
        let root = tmp("links");
        let real = tmp("links-real");
        model(&real, "m", MANIFEST, &[(1, EMPTY_ZIP)]);
        std::os::unix::fs::symlink(real.join("m"), root.join("m")).unwrap();
        std::os::unix::fs::symlink(real.join("m/1"), real.join("m/2")).unwrap();
        let repo = Repository::scan(&root, None).unwrap();
        assert_eq!(repo.get("m").unwrap().versions.keys().copied().collect::<Vec<_>>(), vec![2]);
        std::fs::remove_dir_all(&root).unwrap();
        std::fs::remove_dir_all(&real).unwrap();
    }

    #[test]
    fn the_flat_layout_is_version_one() {
        let root = tmp("flat");
        let dir = model(&root, "m", MANIFEST, &[]);
        std::fs::write(dir.join("model.pt"), b"anything: loaded as before").unwrap();
        let repo = Repository::scan(&root, None).unwrap();
        let e = repo.get("m").unwrap();
        assert_eq!(e.versions[&1].file, dir.join("model.pt"));
        std::fs::remove_dir_all(&root).unwrap();
    }
}
