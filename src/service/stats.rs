//! The `Stats` answer: request statistics, process and system figures, per-model and
//! per-device state, and the devices' settings, turned into their proto form.

use std::time::{SystemTime, UNIX_EPOCH};

use super::AppState;
use crate::proto;
use crate::registry::LoadState;
use crate::stats::{Summary, SystemSample};

fn latency(s: Summary) -> proto::LatencySummary {
    proto::LatencySummary {
        avg_ms: s.avg_ms,
        min_ms: s.min_ms,
        max_ms: s.max_ms,
        p50_ms: s.p50_ms,
        p95_ms: s.p95_ms,
        p99_ms: s.p99_ms,
    }
}

fn unix_ms(t: SystemTime) -> i64 {
    i64::try_from(t.duration_since(UNIX_EPOCH).unwrap_or_default().as_millis()).unwrap_or(i64::MAX)
}

/// Response-cache figures for every served model with `[cache]`.
fn cache_stats(state: &AppState) -> Vec<proto::CacheStats> {
    let m = state.cache.metrics();
    let view = state.registry.catalog().view();
    let mut names: Vec<&str> = view.repo.specs().filter(|s| s.cache.is_some()).map(|s| s.name.as_str()).collect();
    names.dedup();
    names
        .into_iter()
        .map(|model| {
            let lookups = |r: &str| m.lookups.with_label_values(&[model, r]).get();
            let kinds = ["timeout", "error", "garbage", "oversized", "skipped", "write_skipped"];
            proto::CacheStats {
                model: model.to_owned(),
                hits: lookups("hit"),
                redis_hits: lookups("redis_hit"),
                coalesced: lookups("coalesced"),
                misses: lookups("miss"),
                evictions: m.evictions.with_label_values(&[model]).get(),
                redis_errors: kinds.iter().map(|k| m.redis_errors.with_label_values(&[model, k]).get()).sum(),
            }
        })
        .collect()
}

/// Per model version figures.
fn version_stats(snap: &crate::stats::Snapshot) -> Vec<proto::VersionStats> {
    snap.versions
        .iter()
        .map(|((m, v), f)| proto::VersionStats {
            model: m.clone(),
            version: v.to_string(),
            requests: f.requests,
            errors: f.errors,
            latency: Some(latency(f.latency)),
        })
        .collect()
}

/// Every device with its default settings.
fn devices(state: &AppState) -> Vec<proto::DeviceInfo> {
    state
        .registry
        .devices()
        .all()
        .into_iter()
        .map(|d| proto::DeviceInfo {
            name: d.label(),
            description: if d == crate::device::Device::Cpu { "cpu".to_owned() } else { format!("CUDA device {d}") },
            total_memory_bytes: 0,
            settings: Some(super::admin::settings(&state.registry.settings(None, d))),
        })
        .collect()
}

/// Builds the Stats answer, for every model or for `model` only.
pub fn stats_response(state: &AppState, model: Option<&str>, now: SystemSample) -> proto::StatsResponse {
    let snap = state.stats.snapshot(model);
    let mut models: Vec<proto::ModelStats> = Vec::new();
    // One row per (model, device): the state of the version its default routes to.
    let view = state.registry.catalog().view();
    let defaults =
        view.repo.entries().filter(|e| model.is_none_or(|m| m == e.name)).filter_map(|e| {
            view.routes.get(&e.name).and_then(|r| r.specs.get(&r.default.pick(0))).or_else(|| e.latest())
        });
    for spec in defaults {
        for d in state.registry.status(spec) {
            let device = d.device.label();
            let figures = snap.models.iter().find(|((m, dev), _)| *m == spec.name && *dev == device).map(|(_, f)| f);
            if figures.is_none() && d.state == LoadState::Unloaded && d.loads == 0 {
                continue; // never used on this device: nothing to report
            }
            let f = figures.cloned().unwrap_or_default();
            let state = match d.state {
                LoadState::Unloaded => proto::ModelState::Unloaded,
                LoadState::Loading => proto::ModelState::Loading,
                LoadState::Ready => proto::ModelState::Ready,
                LoadState::Failed => proto::ModelState::Failed,
            };
            models.push(proto::ModelStats {
                model: spec.name.clone(),
                device,
                requests: f.requests,
                errors: f.errors,
                latency: Some(latency(f.latency)),
                avg_batch_size: f.avg_batch_size,
                state: state as i32,
                load_ms: i64::try_from(d.load_ms).unwrap_or(i64::MAX),
                last_used_unix_ms: d.last_used_unix_ms,
                settings: Some(super::admin::settings(&d.settings)),
            });
        }
    }
    // Requests refused before a device was chosen (bad input, unknown model) keep device "".
    for ((m, dev), f) in snap.models.iter().filter(|((_, dev), _)| dev.is_empty()) {
        models.push(proto::ModelStats {
            model: m.clone(),
            device: dev.clone(),
            requests: f.requests,
            errors: f.errors,
            latency: Some(latency(f.latency)),
            ..Default::default()
        });
    }
    let versions = version_stats(&snap);
    let devices = devices(state);
    proto::StatsResponse {
        total_requests: snap.total,
        latency: Some(latency(snap.latency)),
        requests_per_minute: snap.requests_per_minute,
        error_rate_percent: snap.error_rate_percent,
        requests_by_status: snap.by_status.into_iter().collect(),
        errors_by_type: snap.errors_by_type.into_iter().collect(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        process_memory_mb: now.rss_bytes as f64 / (1024.0 * 1024.0),
        cpu_percent: now.cpu_percent,
        memory_percent: now.memory_percent,
        threads: now.threads,
        memory_history: state
            .sampler
            .history()
            .into_iter()
            .map(|s| proto::MemorySample { unix_ms: s.unix_ms, rss_bytes: s.rss_bytes })
            .collect(),
        models,
        devices,
        versions,
        cache: {
            state.cache.refresh();
            cache_stats(state)
        },
        cache_bytes: u64::try_from(state.cache.metrics().bytes.get()).unwrap_or(0),
        since_unix_ms: unix_ms(snap.since),
    }
}
