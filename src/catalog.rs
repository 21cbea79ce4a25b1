//! The live catalog requests resolve against: the scanned repository plus, per model, its
//! route: which version(s) a request that names none goes to, and the live version labels.
//! A route changes only when its new versions are loaded and self-tested ([`crate::reload`]);
//! until then the old one stays in force, so a request never meets an unchecked version.
//!
//! Resolution is the hot path: one read lock and an `Arc` clone, then map lookups. A label
//! that splits traffic picks by a hash of the request id, so a client that sends its own
//! `x-request-id` stays on one version.

use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use crate::error::{Error, Result};
use crate::model::versions::{LabelTarget, VersionRef, parse_version, split_model_name};
use crate::model::{ModelEntry, ModelSpec, Repository};

/// Where a model's requests go.
#[derive(Debug, Clone, PartialEq)]
pub struct Route {
    /// Requests that name no version.
    pub default: LabelTarget,
    /// The live labels.
    pub labels: BTreeMap<String, LabelTarget>,
    /// Every version `default` and `labels` name, as it was checked; kept here so a version
    /// whose folder disappeared keeps serving until its replacement is ready.
    pub specs: BTreeMap<u64, Arc<ModelSpec>>,
}

impl Route {
    /// Whether `other` sends every request where this one does (same targets, same files).
    pub fn same_as(&self, other: &Route) -> bool {
        self.default == other.default
            && self.labels == other.labels
            && self.specs.len() == other.specs.len()
            && self.specs.iter().all(|(v, s)| other.specs.get(v).is_some_and(|o| o.generation == s.generation))
    }
}

/// How the last change of a model's route went, for GetModel.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwapStatus {
    /// The route being loaded and self-tested, described.
    pub pending: Option<String>,
    /// Why the last attempted change was refused (the old route stayed).
    pub error: Option<String>,
    /// The last change that went through, described.
    pub last: Option<String>,
}

/// One consistent picture: repository and routes, replaced whole on every change.
#[derive(Debug, Default)]
pub struct View {
    /// The scanned repository.
    pub repo: Arc<Repository>,
    /// Model -> route; a model with no servable version has none.
    pub routes: HashMap<String, Route>,
}

/// The catalog: the current [`View`], labels set through Admin.SetLabels, swap outcomes.
pub struct Catalog {
    root: Option<PathBuf>,
    view: RwLock<Arc<View>>,
    admin_labels: Mutex<HashMap<String, BTreeMap<String, LabelTarget>>>,
    swaps: Mutex<HashMap<String, SwapStatus>>,
}

impl Catalog {
    /// A catalog over `repo` (scanned from `root`, when it was scanned at all): every model's
    /// route is what its manifest asks for, at once (first loads are self-tested anyway).
    pub fn new(repo: Repository, root: Option<PathBuf>) -> Self {
        let catalog = Catalog {
            root,
            view: RwLock::new(Arc::default()),
            admin_labels: Mutex::default(),
            swaps: Mutex::default(),
        };
        let mut routes = HashMap::new();
        for entry in repo.entries() {
            if let Some(route) = catalog.initial_route(entry) {
                routes.insert(entry.name.clone(), route);
            }
        }
        *catalog.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(View { repo: Arc::new(repo), routes });
        catalog
    }

    /// The folder the repository is scanned from (`None`: built in code, never rescanned).
    pub fn root(&self) -> Option<&PathBuf> {
        self.root.as_ref()
    }

    /// The current view.
    pub fn view(&self) -> Arc<View> {
        Arc::clone(&self.view.read().unwrap_or_else(|p| p.into_inner()))
    }

    /// Replaces the view.
    pub fn install(&self, view: View) {
        *self.view.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(view);
    }

    /// Changes one model's route in the current view (a swap that went through).
    pub fn set_route(&self, name: &str, route: Route) {
        let mut guard = self.view.write().unwrap_or_else(|p| p.into_inner());
        if guard.repo.get(name).is_err() {
            return; // removed meanwhile: its route went with it
        }
        let mut routes = guard.routes.clone();
        routes.insert(name.to_owned(), route);
        *guard = Arc::new(View { repo: Arc::clone(&guard.repo), routes });
    }

    /// A model's entry.
    pub fn entry(&self, name: &str) -> Result<Arc<ModelEntry>> {
        self.view().repo.get(name)
    }

    /// The route for a model that has just appeared: what its manifest asks for, or, when that
    /// names versions that are not served, its latest version (and the reason is recorded).
    pub fn initial_route(&self, entry: &ModelEntry) -> Option<Route> {
        match self.desired(entry) {
            Ok(route) => Some(route),
            Err(reason) => {
                tracing::error!(model = %entry.name, %reason, "version settings refused; serving the latest version");
                self.record(&entry.name, |s| s.error = Some(reason));
                let latest = entry.latest()?;
                Some(Route {
                    default: LabelTarget::One(latest.version),
                    labels: BTreeMap::new(),
                    specs: BTreeMap::from([(latest.version, Arc::clone(latest))]),
                })
            }
        }
    }

    /// The route `entry`'s manifest (and SetLabels) ask for, or why it cannot be.
    pub fn desired(&self, entry: &ModelEntry) -> std::result::Result<Route, String> {
        let admin = self.admin_labels.lock().unwrap_or_else(|p| p.into_inner()).get(&entry.name).cloned();
        desired_route(entry, admin.unwrap_or_else(|| entry.versioning.labels.clone()))
    }

    /// The labels SetLabels set for `name`, replacing the manifest's; `None` forgets them.
    pub fn set_admin_labels(&self, name: &str, labels: Option<BTreeMap<String, LabelTarget>>) {
        let mut all = self.admin_labels.lock().unwrap_or_else(|p| p.into_inner());
        match labels {
            Some(l) => all.insert(name.to_owned(), l),
            None => all.remove(name),
        };
    }

    /// How swaps of `name` went.
    pub fn swap_status(&self, name: &str) -> SwapStatus {
        self.swaps.lock().unwrap_or_else(|p| p.into_inner()).get(name).cloned().unwrap_or_default()
    }

    /// Updates the swap status of `name`.
    pub fn record(&self, name: &str, f: impl FnOnce(&mut SwapStatus)) {
        f(self.swaps.lock().unwrap_or_else(|p| p.into_inner()).entry(name.to_owned()).or_default());
    }

    /// The version a request runs on. `name` may carry `@version`; `version` is the request's
    /// own version field (not both). An empty name with `text` picks the default text model.
    pub fn resolve(&self, name: &str, version: &str, request_id: &str, text: bool) -> Result<Arc<ModelSpec>> {
        let view = self.view();
        let (name, at) = split_model_name(name)?;
        let version = match (at, version) {
            (Some(v), "") => v,
            (None, v) => v,
            (Some(_), _) => {
                return Err(Error::InvalidVersion { given: format!("{name}@… with `version` also set; use one") });
            }
        };
        let entry = if name.is_empty() && text { view.repo.default_text_model()? } else { view.repo.get(name)? };
        let route = view.routes.get(&entry.name);
        let key = || request_key(request_id);
        match parse_version(version)? {
            None => {
                let route = route.ok_or_else(|| no_version(&entry))?;
                Ok(Arc::clone(&route.specs[&route.default.pick(key())]))
            }
            Some(VersionRef::Number(n)) => entry.version(n),
            Some(VersionRef::Label(label)) => {
                let target = route.and_then(|r| r.labels.get(&label)).ok_or_else(|| Error::LabelNotFound {
                    model: entry.name.clone(),
                    label: label.clone(),
                    available: route
                        .map_or_else(String::new, |r| r.labels.keys().cloned().collect::<Vec<_>>().join(", ")),
                })?;
                let v = target.pick(key());
                route.and_then(|r| r.specs.get(&v)).cloned().ok_or_else(|| no_version(&entry))
            }
        }
    }
}

fn no_version(entry: &ModelEntry) -> Error {
    let reasons: Vec<String> = entry.not_served.iter().map(|(v, r)| format!("version {v}: {r}")).collect();
    let available =
        if reasons.is_empty() { entry.available() } else { format!("{} ({})", entry.available(), reasons.join("; ")) };
    Error::VersionNotFound { model: entry.name.clone(), version: "(default)".to_owned(), available }
}

/// A stable hash of the request id: the same id always picks the same side of a split.
fn request_key(request_id: &str) -> u64 {
    let mut h = std::hash::DefaultHasher::new();
    request_id.hash(&mut h);
    h.finish()
}

/// The route for `entry` with `labels`: every version they and the default name must be served.
pub fn desired_route(entry: &ModelEntry, labels: BTreeMap<String, LabelTarget>) -> std::result::Result<Route, String> {
    let default = match &entry.versioning.default {
        Some(VersionRef::Number(n)) => LabelTarget::One(*n),
        Some(VersionRef::Label(l)) => {
            labels.get(l).cloned().ok_or_else(|| format!("default_version names label `{l}`, which is not set"))?
        }
        None => LabelTarget::One(entry.latest().ok_or_else(|| "no version can be served".to_owned())?.version),
    };
    let mut specs = BTreeMap::new();
    let named = default.versions().into_iter().map(|v| ("default".to_owned(), v));
    let named = named.chain(labels.iter().flat_map(|(l, t)| t.versions().into_iter().map(move |v| (l.clone(), v))));
    for (label, v) in named {
        let spec = entry.version(v).map_err(|e| format!("{label} -> version {v}: {e}"))?;
        specs.insert(v, spec);
    }
    Ok(Route { default, labels, specs })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::manifest::parse_manifest;
    use std::path::Path;

    fn catalog(versions: &[u64], extra: &str) -> Catalog {
        let manifest = format!(
            "kind = \"tabular\"\n{extra}\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\nshape = [-1, 1]\nfeatures = [{{ name = \"a\" }}]\n"
        );
        let mut table: toml::Table = toml::from_str(&manifest).unwrap();
        let versioning = crate::model::versions::take_versioning(&mut table).unwrap();
        let specs = versions.iter().map(|v| {
            let mut s = parse_manifest("m", Path::new("/nonexistent"), &manifest).unwrap();
            s.version = *v;
            s.generation = *v;
            s
        });
        let repo = Repository::from_specs_with(specs, versioning);
        Catalog::new(repo, None)
    }

    #[test]
    fn requests_pick_versions_by_number_label_and_split() {
        let c = catalog(&[3, 4], "version_policy = \"all\"\n[version_labels]\nstable = 3\ncanary = { 3 = 90, 4 = 10 }");
        assert_eq!(c.resolve("m", "", "r", false).unwrap().version, 4, "no default_version: the latest");
        assert_eq!(c.resolve("m@3", "", "r", false).unwrap().version, 3);
        assert_eq!(c.resolve("m", "stable", "r", false).unwrap().version, 3);
        let fours =
            (0..10_000).filter(|i| c.resolve("m@canary", "", &format!("id-{i}"), false).unwrap().version == 4).count();
        assert!((800..=1200).contains(&fours), "{fours} of 10000 on the 10% side");
        let sticky = c.resolve("m", "canary", "client-7", false).unwrap().version;
        assert!((0..20).all(|_| c.resolve("m", "canary", "client-7", false).unwrap().version == sticky));
        for (name, version, code) in [
            ("m", "9", tonic::Code::NotFound),
            ("m", "beta", tonic::Code::NotFound),
            ("m", "0", tonic::Code::InvalidArgument),
            ("m@", "", tonic::Code::InvalidArgument),
            ("m@3", "4", tonic::Code::InvalidArgument),
            ("m", "18446744073709551616", tonic::Code::InvalidArgument),
        ] {
            let err = c.resolve(name, version, "r", false).unwrap_err();
            assert_eq!(err.code(), code, "{name} {version}: {err}");
        }
        let err = c.resolve("m", "9", "r", false).unwrap_err().to_string();
        assert!(err.contains("served versions: 3, 4"), "{err}");
    }

    #[test]
    fn a_default_label_that_names_a_missing_version_falls_back_to_the_latest_and_says_why() {
        let c = catalog(&[1, 2], "default_version = \"stable\"\n[version_labels]\nstable = 7");
        assert_eq!(c.resolve("m", "", "r", false).unwrap().version, 2);
        assert!(c.swap_status("m").error.unwrap().contains("version 7"));
    }
}
