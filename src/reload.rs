//! Changing what is served without a restart: rescanning the repository (on
//! `Admin.ReloadRepository` or every `--repository-poll-secs`), label changes
//! (`Admin.SetLabels`), and the gated swap both lead to.
//!
//! A swap loads every version the new route names on the devices the model is resident on
//! (or the one it would be picked for), warm-up and self-test included, and only then moves
//! the route, in one step: a version that fails never takes a request and the old route
//! stays, with the reason in GetModel, the log and `torchwire_version_swaps_total`. The
//! versions no longer routed to are retired: they finish what they were given and unload.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::catalog::{Route, View};
use crate::device::DeviceRequest;
use crate::error::{Error, Result};
use crate::model::Repository;
use crate::model::versions::LabelTarget;
use crate::registry::{ModelKey, ModelRegistry};

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadSummary {
    /// Models that appeared.
    pub added: Vec<String>,
    /// Models that disappeared (their versions unload once drained).
    pub removed: Vec<String>,
    /// Models whose manifest or versions changed.
    pub changed: Vec<String>,
    /// Models whose route is being swapped.
    pub swapping: Vec<String>,
    /// Model -> why its manifest or versions were refused.
    pub errors: BTreeMap<String, String>,
}

/// Serialises reloads: one scan and its swaps at a time.
static RELOAD: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Rescans the repository and applies what changed. With `wait`, returns once every swap it
/// started is done (its outcome is in GetModel either way).
pub async fn reload(registry: &Arc<ModelRegistry>, wait: bool) -> Result<ReloadSummary> {
    let _one = RELOAD.lock().await;
    let Some(root) = registry.catalog().root().cloned() else {
        return Ok(ReloadSummary::default());
    };
    let old = registry.catalog().view();
    let previous = Arc::clone(&old.repo);
    let repo = tokio::task::spawn_blocking(move || Repository::scan(&root, Some(&previous)))
        .await
        .map_err(|e| Error::internal(format!("repository scan task: {e}")))?
        .map_err(|e| Error::RepositoryUnreadable { detail: e.to_string() })?;
    let (summary, swaps) = apply(registry, &old, repo);
    if !summary.added.is_empty() || !summary.removed.is_empty() || !summary.changed.is_empty() {
        tracing::info!(added = ?summary.added, removed = ?summary.removed, changed = ?summary.changed, swapping = ?summary.swapping, "repository reloaded");
    }
    let tasks: Vec<_> =
        swaps.into_iter().map(|(name, route)| tokio::spawn(swap(Arc::clone(registry), name, route))).collect();
    if wait {
        for t in tasks {
            let _ = t.await;
        }
    }
    Ok(summary)
}

/// Installs the new repository: new models get their route at once, removed ones retire,
/// changed ones keep their route and get a swap when what they ask for differs.
fn apply(registry: &ModelRegistry, old: &View, repo: Repository) -> (ReloadSummary, Vec<(String, Route)>) {
    let catalog = registry.catalog();
    let mut summary = ReloadSummary::default();
    let mut routes = HashMap::new();
    let mut swaps = Vec::new();
    for entry in repo.entries() {
        let name = entry.name.clone();
        if let Some(e) = &entry.manifest_error {
            summary.errors.insert(name.clone(), format!("model.toml: {e} (the previous manifest stays in force)"));
        }
        let Ok(before) = old.repo.get(&name) else {
            summary.added.push(name.clone());
            routes.extend(catalog.initial_route(entry).map(|r| (name, r)));
            continue;
        };
        if !Arc::ptr_eq(&before, entry) {
            summary.changed.push(name.clone());
        }
        let current = old.routes.get(&name).cloned();
        match catalog.desired(entry) {
            Ok(want) if current.as_ref().is_some_and(|c| c.same_as(&want)) => {}
            Ok(want) => {
                summary.swapping.push(name.clone());
                swaps.push((name.clone(), want));
            }
            Err(reason) => {
                summary.errors.insert(name.clone(), reason.clone());
                catalog.record(&name, |s| s.error = Some(reason));
            }
        }
        if let Some(current) = current {
            // Versions neither served nor routed to any more are retired.
            let keep: Vec<(u64, u64)> =
                entry.versions.values().chain(current.specs.values()).map(|s| (s.version, s.generation)).collect();
            registry.retire(&name, |k| keep.contains(&(k.version, k.generation)), false);
            routes.insert(name, current);
        }
    }
    for name in old.repo.names() {
        if repo.get(&name).is_err() {
            registry.retire(&name, |_| false, true);
            summary.removed.push(name);
        }
    }
    for (name, reason) in repo.skipped() {
        summary.errors.insert(name.clone(), format!("model.toml: {reason}"));
    }
    catalog.install(View { repo: Arc::new(repo), routes });
    (summary, swaps)
}

/// Loads and self-tests every version `route` names, then moves the model's route to it and
/// retires what it no longer names; on any failure the old route stays.
pub async fn swap(registry: Arc<ModelRegistry>, name: String, route: Route) {
    let catalog = registry.catalog();
    let describe = describe(&route);
    catalog.record(&name, |s| s.pending = Some(describe.clone()));
    let metrics = Arc::clone(registry.metrics());
    let mut devices = registry.ready_devices(&name);
    if devices.is_empty() {
        let first = route.specs.values().next().cloned();
        devices.extend(first.and_then(|s| registry.pick_device(&s, DeviceRequest::Auto).ok()));
    }
    for spec in route.specs.values() {
        for &device in &devices {
            if let Err(e) = registry.get_or_load(spec, device).await {
                let reason = match &e {
                    Error::ModelLoad { cause, .. } => format!("version {} on {device}: {cause}", spec.version),
                    other => format!("version {} on {device}: {other}", spec.version),
                };
                let reason = reason.lines().next().unwrap_or_default().to_owned();
                tracing::error!(model = %name, %reason, "swap refused; the previous versions keep serving");
                metrics.version_swaps.with_label_values(&[&name, "refused"]).inc();
                catalog.record(&name, |s| {
                    s.pending = None;
                    s.error = Some(reason);
                });
                return;
            }
        }
    }
    let keep: Vec<(u64, u64)> = route.specs.values().map(|s| (s.version, s.generation)).collect();
    catalog.set_route(&name, route);
    tracing::info!(model = %name, route = %describe, "swapped: new requests go to the new route");
    metrics.version_swaps.with_label_values(&[&name, "ok"]).inc();
    catalog.record(&name, |s| {
        s.pending = None;
        s.error = None;
        s.last = Some(describe);
    });
    // Versions still served but no longer routed to (the `all` policy) load again on request.
    registry.retire(&name, |k: &ModelKey| keep.contains(&(k.version, k.generation)), false);
}

/// Sets (or, with an empty target, removes) version labels of `name` through SetLabels: every
/// label must name served versions; a change of what the default routes to is a gated swap.
pub async fn set_labels(
    registry: &Arc<ModelRegistry>,
    name: &str,
    changes: BTreeMap<String, Option<LabelTarget>>,
    wait: bool,
) -> Result<()> {
    let _one = RELOAD.lock().await;
    let catalog = registry.catalog();
    let entry = catalog.entry(name)?;
    let view = catalog.view();
    let mut labels = view.routes.get(name).map(|r| r.labels.clone()).unwrap_or_default();
    for (label, target) in changes {
        match target {
            Some(t) => labels.insert(label, t),
            None => labels.remove(&label),
        };
    }
    let want = crate::catalog::desired_route(&entry, labels.clone())
        .map_err(|reason| Error::InvalidLabels { model: name.to_owned(), reason })?;
    catalog.set_admin_labels(name, Some(labels));
    if view.routes.get(name).is_some_and(|c| c.same_as(&want)) {
        return Ok(());
    }
    let task = tokio::spawn(swap(Arc::clone(registry), name.to_owned(), want));
    if wait {
        let _ = task.await;
    }
    Ok(())
}

/// `3` or `stable = 3, canary = {3 = 90, 4 = 10}`: a route in one line.
pub fn describe(route: &Route) -> String {
    let mut parts = vec![format!("default -> {}", route.default.describe())];
    parts.extend(route.labels.iter().map(|(l, t)| format!("{l} -> {}", t.describe())));
    parts.join(", ")
}

/// Background upkeep: every second unloads drained retired versions; every `poll` (when set)
/// rescans the repository.
pub async fn maintain(registry: Arc<ModelRegistry>, poll: Option<Duration>, shutdown: CancellationToken) {
    let mut sweep = tokio::time::interval(Duration::from_millis(500));
    let mut rescan = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)).max(Duration::from_millis(100)));
    rescan.tick().await; // the first tick is immediate; the start-up scan just ran
    loop {
        tokio::select! {
            _ = sweep.tick() => {
                registry.sweep_retired(Duration::from_millis(500));
            }
            _ = rescan.tick(), if poll.is_some() => {
                if let Err(e) = reload(&registry, false).await {
                    tracing::error!(error = ?e, "repository poll failed; the previous repository stays in force");
                }
            }
            () = shutdown.cancelled() => return,
        }
    }
}
