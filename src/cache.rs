//! The response cache, per row and per text, for models whose manifest opts in (`[cache]`).
//!
//! A request's rows (or texts) are looked up one by one: in process first (a byte-bounded
//! TinyLFU cache, `--cache-bytes`), then in the shared Redis tier (`--cache-redis-url`). Only
//! the rows found nowhere go to the model, as one smaller job, and the answer is put back
//! together in request order. Identical rows in flight at once, in one request or across
//! requests, are computed once: the first asks the model, the others wait for its answer (and
//! compute for themselves if it fails or its client leaves).
//!
//! A key is the model, its version, a digest of the version's files (model and tokenizer)
//! and the exact bytes the model would see for that row: its input tensors' bytes, dtypes and
//! shapes, or the text with the token limit it is cut to. A new version, a changed file or a
//! reload therefore changes the key space; an old answer is never served for a new model.

pub mod redis;

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio::sync::watch;

use crate::batch::{JobOutput, Payload, merge, split};
use crate::error::{Error, Result};
pub use crate::metrics::CacheMetrics;
use crate::model::{HostTensor, ModelSpec, Prediction};
use crate::tokenize::TextInfo;

/// One row's (or text's) answer, as cached.
#[derive(Debug, Clone)]
pub struct RowAnswer {
    /// The model's outputs for this row, each with a batch dimension of 1.
    pub outputs: Vec<HostTensor>,
    /// Its label, when the model is a classifier.
    pub prediction: Option<Prediction>,
    /// For texts: how it was tokenised.
    pub text: Option<TextInfo>,
}

impl RowAnswer {
    fn bytes(&self) -> usize {
        64 + self.outputs.iter().map(|t| t.data.len() + t.name.len() + 8 * t.shape.len()).sum::<usize>()
            + self.prediction.as_ref().map_or(0, |p| 8 + 4 * p.probabilities.len())
    }
}

/// How the cache is set up (`--cache-bytes`, `--cache-redis-url`, `--cache-redis-timeout-ms`).
#[derive(Debug, Clone, Default)]
pub struct CacheConfig {
    /// Bytes of the in-process tier; 0 = none.
    pub bytes: u64,
    /// The shared tier, when set.
    pub redis_url: Option<String>,
    /// How long a Redis call may take before the request computes instead.
    pub redis_timeout: Duration,
}

/// `None` while the owner computes; then its answer, or `None` if it could not give one.
type Flight = Option<Option<Arc<RowAnswer>>>;
type Key = Arc<[u8]>;
/// A version generation's file digest, computed once (`None`: a file could not be read).
type Digest = Arc<tokio::sync::OnceCell<Option<[u8; 32]>>>;

/// The response cache of a server.
pub struct ResponseCache {
    local: Option<moka::sync::Cache<Key, Arc<RowAnswer>>>,
    redis: Option<Arc<redis::RedisTier>>,
    inflight: Arc<DashMap<Key, watch::Receiver<Flight>>>,
    digests: DashMap<(String, u64, u64), Digest>,
    metrics: Arc<CacheMetrics>,
}

/// What a cached run answers: the rows' outputs as one job's, and how many came from a cache.
pub struct Served {
    /// The merged answer, in request order.
    pub out: JobOutput,
    /// Rows answered without a forward pass of their own.
    pub cached_rows: usize,
}

impl ResponseCache {
    /// A cache per `config`, its metrics registered beside the server's. A Redis URL that does not
    /// parse is logged and ignored (the server serves without the shared tier).
    pub fn new(config: &CacheConfig, metrics: &crate::metrics::Metrics) -> Self {
        let metrics = Arc::new(metrics.cache_metrics());
        let local = (config.bytes > 0).then(|| {
            let m = Arc::clone(&metrics);
            moka::sync::Cache::builder()
                .max_capacity(config.bytes)
                .weigher(|k: &Key, v: &Arc<RowAnswer>| u32::try_from(k.len() + v.bytes()).unwrap_or(u32::MAX))
                .eviction_listener(move |k: Arc<Key>, _v, cause: moka::notification::RemovalCause| {
                    if cause.was_evicted() {
                        m.evictions.with_label_values(&[model_of(&k)]).inc();
                    }
                })
                .build()
        });
        let redis = config.redis_url.as_deref().and_then(|url| {
            match redis::RedisTier::new(url, config.redis_timeout, Arc::clone(&metrics)) {
                Ok(t) => Some(Arc::new(t)),
                Err(e) => {
                    tracing::error!(error = %e, "--cache-redis-url refused; serving without the shared cache tier");
                    None
                }
            }
        });
        ResponseCache { local, redis, inflight: Arc::default(), digests: DashMap::new(), metrics }
    }

    /// Whether requests for `spec` go through the cache.
    pub fn enabled_for(&self, spec: &ModelSpec) -> bool {
        spec.cache.is_some_and(|c| self.local.is_some() || (c.redis && self.redis.is_some()))
    }

    /// The cache's metrics.
    pub fn metrics(&self) -> &CacheMetrics {
        &self.metrics
    }

    /// Brings the size gauge up to date (moka settles its bookkeeping lazily); called before a
    /// scrape and a Stats answer.
    pub fn refresh(&self) {
        if let Some(c) = &self.local {
            c.run_pending_tasks();
            self.metrics.bytes.set(i64::try_from(c.weighted_size()).unwrap_or(i64::MAX));
        }
    }

    /// Runs `payload` (`rows` rows of `spec`) through the cache: cached rows are answered from
    /// it, the rest computed with `compute` (one job) and stored.
    pub async fn serve<F, Fut>(&self, spec: &ModelSpec, payload: Payload, rows: usize, compute: F) -> Result<Served>
    where
        F: Fn(Payload, usize) -> Fut,
        Fut: Future<Output = Result<JobOutput>>,
    {
        let Some(digest) = self.digest(spec).await else {
            return compute(payload, rows).await.map(|out| Served { out, cached_rows: 0 });
        };
        let singles = split_payload(payload, rows);
        let keys: Vec<Key> = singles.iter().map(|p| key(spec, &digest, p)).collect();
        let mut plan = self.plan(spec, &keys);
        self.ask_redis(spec, &keys, &mut plan).await;
        let mut job = None;
        let missing: Vec<usize> = plan.owned.iter().filter(|o| o.answer.is_none()).map(|o| o.row).collect();
        if !missing.is_empty() {
            let out = compute(merge(missing.iter().map(|&i| singles[i].clone()).collect()), missing.len()).await?;
            let answers = row_answers(&spec.name, out.outputs.clone(), &out, missing.len())?;
            self.store(spec, &keys, &mut plan, &missing, answers);
            job = Some(out);
        }
        let fallback = plan.await_flights().await;
        if !fallback.is_empty() {
            // Their owner failed or left: compute them here, uncoalesced.
            let out = compute(merge(fallback.iter().map(|&i| singles[i].clone()).collect()), fallback.len()).await?;
            for (i, a) in fallback.iter().zip(row_answers(&spec.name, out.outputs.clone(), &out, fallback.len())?) {
                plan.found[*i] = Some(Arc::new(a));
            }
            job.get_or_insert(out);
        }
        let computed = missing.len() + fallback.len();
        let found: Vec<Arc<RowAnswer>> = (0..rows)
            .map(|i| plan.found[i].clone().or_else(|| plan.found[plan.same_as[i]].clone()))
            .collect::<Option<_>>()
            .ok_or_else(|| Error::internal("a cached row had no answer; this is a bug"))?;
        let model = spec.name.as_str();
        self.metrics.lookups.with_label_values(&[model, "miss"]).inc_by(computed as u64);
        Ok(Served { out: merge_rows(&found, job), cached_rows: rows - computed })
    }

    /// Local lookups, duplicates within the request, and the single-flight claims.
    fn plan(&self, spec: &ModelSpec, keys: &[Key]) -> Plan {
        let mut plan = Plan::new(keys.len());
        let mut first: HashMap<&[u8], usize> = HashMap::new();
        let (mut hits, mut coalesced) = (0u64, 0u64);
        for (i, k) in keys.iter().enumerate() {
            if let Some(&j) = first.get(&k[..]) {
                plan.same_as[i] = j;
                coalesced += 1;
                continue;
            }
            first.insert(k, i);
            if let Some(a) = self.local.as_ref().and_then(|c| c.get(k)) {
                plan.found[i] = Some(a);
                hits += 1;
                continue;
            }
            match self.inflight.entry(Arc::clone(k)) {
                dashmap::Entry::Occupied(e) => {
                    plan.waits.push((i, e.get().clone()));
                    coalesced += 1;
                }
                dashmap::Entry::Vacant(e) => {
                    let (tx, rx) = watch::channel(None);
                    e.insert(rx);
                    plan.owned.push(Owned {
                        row: i,
                        answer: None,
                        guard: FlightGuard { key: Arc::clone(k), tx, inflight: Arc::clone(&self.inflight) },
                    });
                }
            }
        }
        let model = spec.name.as_str();
        self.metrics.lookups.with_label_values(&[model, "hit"]).inc_by(hits);
        self.metrics.lookups.with_label_values(&[model, "coalesced"]).inc_by(coalesced);
        plan
    }

    /// Asks the shared tier for the rows this request owns.
    async fn ask_redis(&self, spec: &ModelSpec, keys: &[Key], plan: &mut Plan) {
        let Some(redis) = self.redis.as_ref().filter(|_| spec.cache.is_some_and(|c| c.redis)) else { return };
        if plan.owned.is_empty() {
            return;
        }
        let wanted: Vec<&[u8]> = plan.owned.iter().map(|o| &keys[o.row][..]).collect();
        let answers = redis.get(&spec.name, &wanted).await;
        let mut hits = 0;
        for (owned, answer) in plan.owned.iter_mut().zip(answers) {
            if let Some(a) = answer {
                let a = Arc::new(a);
                if let Some(c) = &self.local {
                    c.insert(Arc::clone(&keys[owned.row]), Arc::clone(&a));
                }
                plan.found[owned.row] = Some(Arc::clone(&a));
                owned.guard.finish(Some(Arc::clone(&a)));
                owned.answer = Some(a);
                hits += 1;
            }
        }
        self.metrics.lookups.with_label_values(&[&spec.name, "redis_hit"]).inc_by(hits);
    }

    /// Keeps computed rows: in process, in Redis, and for whoever waits on them.
    fn store(&self, spec: &ModelSpec, keys: &[Key], plan: &mut Plan, rows: &[usize], answers: Vec<RowAnswer>) {
        let mut shared = Vec::with_capacity(rows.len());
        for (&i, a) in rows.iter().zip(answers) {
            let a = Arc::new(a);
            if let Some(c) = &self.local {
                c.insert(Arc::clone(&keys[i]), Arc::clone(&a));
            }
            if let Some(o) = plan.owned.iter_mut().find(|o| o.row == i) {
                o.guard.finish(Some(Arc::clone(&a)));
                o.answer = Some(Arc::clone(&a));
            }
            shared.push((Arc::clone(&keys[i]), Arc::clone(&a)));
            plan.found[i] = Some(a);
        }
        if let (Some(redis), Some(c)) = (&self.redis, spec.cache.filter(|c| c.redis)) {
            redis.put(&spec.name, c.ttl_secs, shared);
        }
    }

    /// A digest of `spec`'s files, computed once per version generation off the runtime;
    /// `None` when a file cannot be read (the request is then served uncached).
    async fn digest(&self, spec: &ModelSpec) -> Option<[u8; 32]> {
        let cell =
            Arc::clone(self.digests.entry((spec.name.clone(), spec.version, spec.generation)).or_default().value());
        let files: Vec<std::path::PathBuf> =
            std::iter::once(spec.model_path()).chain(spec.text.as_ref().map(|t| t.tokenizer.clone())).collect();
        *cell
            .get_or_init(|| async move {
                tokio::task::spawn_blocking(move || digest_files(&files)).await.ok().and_then(|r| {
                    r.inspect_err(
                        |e| tracing::warn!(error = %e, "cannot digest a model file; its requests are not cached"),
                    )
                    .ok()
                })
            })
            .await
    }
}

fn digest_files(files: &[std::path::PathBuf]) -> std::io::Result<[u8; 32]> {
    use sha2::{Digest, Sha256};
    use std::io::Read;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    for f in files {
        let mut file = std::fs::File::open(f)?;
        loop {
            let n = file.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
    }
    Ok(h.finalize().into())
}

/// A row this request computes for everyone who asks meanwhile.
struct Owned {
    row: usize,
    answer: Option<Arc<RowAnswer>>,
    guard: FlightGuard,
}

/// Announces the owner's answer; if the owner goes away without one, its waiters learn that
/// and compute for themselves. Removes the in-flight entry either way.
struct FlightGuard {
    key: Key,
    tx: watch::Sender<Flight>,
    inflight: Arc<DashMap<Key, watch::Receiver<Flight>>>,
}

impl FlightGuard {
    fn finish(&self, answer: Option<Arc<RowAnswer>>) {
        self.inflight.remove_if(&self.key, |_, rx| rx.same_channel(&self.tx.subscribe()));
        self.tx.send_replace(Some(answer));
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        if self.tx.borrow().is_none() {
            self.finish(None);
        }
    }
}

/// Where each row of a request gets its answer.
struct Plan {
    found: Vec<Option<Arc<RowAnswer>>>,
    /// For a row repeated within the request: the first one (itself otherwise).
    same_as: Vec<usize>,
    owned: Vec<Owned>,
    waits: Vec<(usize, watch::Receiver<Flight>)>,
}

impl Plan {
    fn new(rows: usize) -> Self {
        Plan { found: vec![None; rows], same_as: (0..rows).collect(), owned: Vec::new(), waits: Vec::new() }
    }

    /// Waits for rows other requests compute; returns those whose owner gave no answer.
    async fn await_flights(&mut self) -> Vec<usize> {
        let mut failed = Vec::new();
        for (i, mut rx) in std::mem::take(&mut self.waits) {
            match rx.wait_for(Option::is_some).await.ok().and_then(|f| f.clone().flatten()) {
                Some(a) => self.found[i] = Some(a),
                None => failed.push(i),
            }
        }
        failed
    }
}

/// The model a key belongs to (for eviction metrics).
fn model_of(key: &[u8]) -> &str {
    let rest = key.strip_prefix(b"tw1\0").unwrap_or_default();
    let end = rest.iter().position(|b| *b == 0).unwrap_or(0);
    std::str::from_utf8(&rest[..end]).unwrap_or("_unknown")
}

/// The cache key of a one-row payload.
fn key(spec: &ModelSpec, digest: &[u8; 32], p: &Payload) -> Key {
    let mut k = Vec::with_capacity(96);
    k.extend_from_slice(b"tw1\0");
    k.extend_from_slice(spec.name.as_bytes());
    k.push(0);
    k.extend_from_slice(&spec.version.to_le_bytes());
    k.extend_from_slice(digest);
    match p {
        Payload::Tensors(ts) => {
            k.push(b'T');
            for t in ts {
                k.extend_from_slice(&(t.name.len() as u32).to_le_bytes());
                k.extend_from_slice(t.name.as_bytes());
                k.extend_from_slice(t.dtype.name().as_bytes());
                k.push(0);
                k.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
                for d in &t.shape[1..] {
                    k.extend_from_slice(&d.to_le_bytes());
                }
                k.extend_from_slice(&(t.data.len() as u64).to_le_bytes());
                k.extend_from_slice(&t.data);
            }
        }
        Payload::Texts { texts, max_length } => {
            k.push(b'S');
            k.extend_from_slice(&(*max_length as u64).to_le_bytes());
            for t in texts {
                k.extend_from_slice(t.as_bytes());
            }
        }
    }
    k.into()
}

/// One payload per row.
fn split_payload(payload: Payload, rows: usize) -> Vec<Payload> {
    match payload {
        Payload::Texts { texts, max_length } => {
            texts.into_iter().map(|t| Payload::Texts { texts: vec![t], max_length }).collect()
        }
        Payload::Tensors(ts) => (0..rows)
            .map(|i| {
                Payload::Tensors(
                    ts.iter()
                        .map(|t| {
                            let row = t.data.len() / rows.max(1);
                            let mut shape = t.shape.clone();
                            shape[0] = 1;
                            HostTensor {
                                name: t.name.clone(),
                                dtype: t.dtype,
                                shape,
                                data: t.data[i * row..(i + 1) * row].to_vec(),
                            }
                        })
                        .collect(),
                )
            })
            .collect(),
    }
}

/// A job's answer cut into rows.
fn row_answers(model: &str, outputs: Vec<HostTensor>, out: &JobOutput, rows: usize) -> Result<Vec<RowAnswer>> {
    let per_row = split(outputs, &vec![1; rows])
        .map_err(|cause| Error::Forward { model: model.to_owned(), cause: Arc::new(cause) })?;
    Ok(per_row
        .into_iter()
        .enumerate()
        .map(|(i, outputs)| RowAnswer {
            outputs,
            prediction: out.predictions.get(i).cloned(),
            text: out.texts.get(i).copied(),
        })
        .collect())
}

/// Rows back into one job's answer (timings from the job that computed, if any).
fn merge_rows(rows: &[Arc<RowAnswer>], job: Option<JobOutput>) -> JobOutput {
    let n = rows.len();
    let outputs = rows.first().map_or_else(Vec::new, |first| {
        (0..first.outputs.len())
            .map(|j| {
                let t = &first.outputs[j];
                let mut shape = t.shape.clone();
                shape[0] = n as i64;
                let data = rows.iter().flat_map(|r| r.outputs[j].data.iter().copied()).collect();
                HostTensor { name: t.name.clone(), dtype: t.dtype, shape, data }
            })
            .collect()
    });
    let (queue, compute, batch_size) =
        job.map_or((Duration::ZERO, Duration::ZERO, 0), |j| (j.queue, j.compute, j.batch_size));
    JobOutput {
        outputs,
        predictions: rows.iter().filter_map(|r| r.prediction.clone()).collect(),
        texts: rows.iter().filter_map(|r| r.text).collect(),
        queue,
        compute,
        batch_size,
    }
}
