//! `torchwire-bench swap` and `torchwire-bench canary`: model versions under traffic (issue 16).
//!
//! ```text
//! swap    temp copy of models/{heart_disease,sentiment} ─▶ torchwire serve (child process)
//!         N closed-loop clients on one model ─▶ warm-up │ before │ publish v2 + Reload │ during │ after
//!         ─▶ failed requests, p50 / p99 per window, first v2 answer, share of answers per version
//! canary  temp copy with versions 1 and 2, default_version = "canary" = {1 = 90, 2 = 10}
//!         ─▶ R requests, each with its own x-request-id ─▶ share of answers per version
//! ```
//!
//! Windows of `swap`, each request counted in the window its send time falls in:
//! warm-up `[start, B)`, where `B` is when the warm-up has run and version N+1 is staged in its
//! dot-folder; before `[B, P)`; `P` (publish) is the `rename(.N+1.tmp, N+1)`, followed at once
//! by `Admin.ReloadRepository {wait: false}`; during `[P, F + settle)`, `F` being the arrival of
//! the first answer from the new version; after `[F + settle, F + settle + after)`. Every
//! request of every window (warm-up included) that ends in anything but OK is a failure.
//!
//! Every request sends `cache-control: no-cache`: the bodies repeat, and a server with a
//! response cache would otherwise answer them without the model (the server started here has
//! none: `--cache-bytes` defaults to 0).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use tonic::transport::{Channel, Endpoint};
use torchwire::proto;
use torchwire::proto::admin_client::AdminClient;
use torchwire::proto::inference_client::InferenceClient;

use crate::report::{Percentiles, percentiles};
use crate::workload::{DEFAULT_TEXT, synthetic_rows};

/// Which kind of model the clients call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Predict on a tabular model (default `heart_disease`), one row per request.
    Tabular,
    /// Sentiment on a text model (default `sentiment`), one ~12-token sentence per request.
    Sentiment,
}

impl Workload {
    fn default_model(self) -> &'static str {
        match self {
            Workload::Tabular => "heart_disease",
            Workload::Sentiment => "sentiment",
        }
    }
}

/// How the benchmark reaches a server: one it starts over a temp copy of the bundled models,
/// or one already running (`--addr`) over a repository it can write to (`--repo`).
#[derive(Debug, Args, Clone)]
pub struct ServerArgs {
    /// Drive a running server instead of starting one; needs --repo, the folder it serves.
    #[arg(long, requires = "repo")]
    pub addr: Option<String>,
    /// With --addr: the server's model repository (the new version is published into it).
    #[arg(long)]
    pub repo: Option<PathBuf>,
    /// Where the models copied into the temp repository come from.
    #[arg(long, default_value = "models")]
    pub source_dir: PathBuf,
    /// The torchwire binary to start. Default: `torchwire` beside this binary.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Extra flag for `torchwire serve` (repeatable), e.g. `--server-arg=--max-batch-size=1`.
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the temp repository and the server log (their path is printed).
    #[arg(long)]
    pub keep: bool,
}

/// Flags of `torchwire-bench swap`.
#[derive(Debug, Args, Clone)]
pub struct SwapArgs {
    /// The server and its repository.
    #[command(flatten)]
    pub server: ServerArgs,
    /// Which model the clients call.
    #[arg(long, value_enum, default_value = "tabular")]
    pub workload: Workload,
    /// Model name. Default: heart_disease (tabular) or sentiment.
    #[arg(long)]
    pub model: Option<String>,
    /// Closed-loop clients.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// HTTP/2 connections the clients are spread over.
    #[arg(long, default_value_t = 1)]
    pub connections: usize,
    /// Seconds of warm-up (not measured; the new version is staged meanwhile).
    #[arg(long, default_value_t = 5.0)]
    pub warmup: f64,
    /// Seconds of the "before" window.
    #[arg(long, default_value_t = 10.0)]
    pub before: f64,
    /// Seconds the "during" window runs past the first answer from the new version.
    #[arg(long, default_value_t = 3.0)]
    pub settle: f64,
    /// Seconds of the "after" window.
    #[arg(long, default_value_t = 10.0)]
    pub after: f64,
    /// Give up when the new version has not answered this many seconds after the publish.
    #[arg(long, default_value_t = 120.0)]
    pub swap_timeout: f64,
    /// Per-request deadline in milliseconds.
    #[arg(long, default_value_t = 10_000)]
    pub timeout_ms: u64,
    /// Text of the Sentiment requests.
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `torchwire-bench canary`.
#[derive(Debug, Args, Clone)]
pub struct CanaryArgs {
    /// Where the model copied into the temp repository comes from.
    #[arg(long, default_value = "models")]
    pub source_dir: PathBuf,
    /// The torchwire binary to start. Default: `torchwire` beside this binary.
    #[arg(long)]
    pub server_bin: Option<PathBuf>,
    /// Extra flag for `torchwire serve` (repeatable).
    #[arg(long = "server-arg", allow_hyphen_values = true)]
    pub server_args: Vec<String>,
    /// Keep the temp repository and the server log.
    #[arg(long)]
    pub keep: bool,
    /// Which model the requests call.
    #[arg(long, value_enum, default_value = "tabular")]
    pub workload: Workload,
    /// Model name. Default: heart_disease (tabular) or sentiment.
    #[arg(long)]
    pub model: Option<String>,
    /// Percent of traffic the `canary` label sends to version 2 (the rest to version 1).
    #[arg(long, default_value_t = 10)]
    pub canary_percent: u32,
    /// Requests, each with its own x-request-id.
    #[arg(long, default_value_t = 10_000)]
    pub requests: usize,
    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Requests re-sent with an id already used, to check that a split is sticky by id.
    #[arg(long, default_value_t = 500)]
    pub sticky_checks: usize,
    /// Prefix of the x-request-id values (`<prefix>-<n>`). Default: `canary-<unix ms>`.
    #[arg(long)]
    pub id_prefix: Option<String>,
    /// Allowed distance, in percentage points, of each version's share from its weight.
    #[arg(long, default_value_t = 2.0)]
    pub tolerance: f64,
    /// Text of the Sentiment requests.
    #[arg(long, default_value = DEFAULT_TEXT)]
    pub text: String,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

// ---------------------------------------------------------------------------------------------
// The repository copy and the server process.

/// A temp folder removed on drop unless kept.
struct TempDir {
    path: PathBuf,
    keep: bool,
}

impl TempDir {
    fn new(kind: &str, keep: bool) -> anyhow::Result<TempDir> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
        let path = std::env::temp_dir().join(format!("torchwire-bench-{kind}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(TempDir { path, keep })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if self.keep {
            eprintln!("kept {}", self.path.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// The plain files of `from` copied into `to` (created); subfolders are not copied.
pub fn copy_files(from: &Path, to: &Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(to).with_context(|| format!("creating {}", to.display()))?;
    for entry in std::fs::read_dir(from).with_context(|| format!("reading {}", from.display()))? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            std::fs::copy(entry.path(), to.join(entry.file_name()))
                .with_context(|| format!("copying {}", entry.path().display()))?;
        }
    }
    Ok(())
}

/// The numbered version folders of a model folder, ascending.
pub fn version_folders(model_dir: &Path) -> anyhow::Result<Vec<u64>> {
    let mut v = Vec::new();
    for entry in std::fs::read_dir(model_dir).with_context(|| format!("reading {}", model_dir.display()))? {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_owned) else { continue };
        if let Some(n) = name.parse::<u64>().ok().filter(|n| *n > 0 && n.to_string() == name)
            && entry.file_type()?.is_dir()
        {
            v.push(n);
        }
    }
    v.sort_unstable();
    Ok(v)
}

/// `<source>/<name>` into `<repo>/<name>`: model.toml, tokenizer.json when there is one, and
/// the highest version folder as version 1.
fn copy_model(source: &Path, repo: &Path, name: &str) -> anyhow::Result<()> {
    let from = source.join(name);
    let to = repo.join(name);
    std::fs::create_dir_all(&to)?;
    for f in ["model.toml", "tokenizer.json"] {
        if from.join(f).is_file() {
            std::fs::copy(from.join(f), to.join(f)).with_context(|| format!("copying {}", from.join(f).display()))?;
        }
    }
    let Some(latest) = version_folders(&from)?.last().copied() else {
        bail!("{} has no version folder (<N>/model.pt); build the models first", from.display());
    };
    copy_files(&from.join(latest.to_string()), &to.join("1"))
}

/// A `torchwire serve` child process, killed on drop.
struct Server {
    child: Child,
    addr: String,
    log: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn server_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p.to_owned());
    }
    let me = std::env::current_exe().context("locating this binary")?;
    let bin = me.with_file_name("torchwire");
    if !bin.is_file() {
        bail!("{} not found: build it (cargo build --release -p torchwire) or pass --server-bin", bin.display());
    }
    Ok(bin)
}

/// Starts `torchwire serve --cpu-only` over `repo` on a free local port, logging into
/// `<log_dir>/server.log`, and waits until it answers ListModels.
async fn start_server(bin: &Path, repo: &Path, log_dir: &Path, extra: &[String]) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let addr = format!("127.0.0.1:{port}");
    let log = log_dir.join("server.log");
    let out = std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
    let child = Command::new(bin)
        .args(["serve", "--cpu-only", "--metrics-addr", "off", "--log-level", "info", "--grpc-addr", &addr])
        .arg("--model-dir")
        .arg(repo)
        .args(extra)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let mut server = Server { child, addr: format!("http://{addr}"), log };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = server.child.try_wait()? {
            bail!("the server exited ({status}) at start-up; see {}", server.log.display());
        }
        if let Ok(ch) = Endpoint::from_shared(server.addr.clone())?.connect().await
            && AdminClient::new(ch).list_models(proto::ListModelsRequest {}).await.is_ok()
        {
            return Ok(server);
        }
        if Instant::now() > deadline {
            bail!("the server did not answer within 60 s; see {}", server.log.display());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn connect(addr: &str, n: usize) -> anyhow::Result<Vec<Channel>> {
    let addr = if addr.contains("://") { addr.to_owned() } else { format!("http://{addr}") };
    let mut out = Vec::with_capacity(n);
    for _ in 0..n.max(1) {
        out.push(
            Endpoint::from_shared(addr.clone())?.connect().await.with_context(|| format!("connecting to {addr}"))?,
        );
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Requests.

/// The one request body a run sends, and how to send it.
#[derive(Clone)]
enum Body {
    Predict(proto::PredictRequest),
    Sentiment(proto::SentimentRequest),
}

/// What one request came back with: the answering version, or the gRPC code's name.
type Answer = Result<String, String>;

impl Body {
    async fn for_model(workload: Workload, model: &str, text: &str, channel: &Channel) -> anyhow::Result<Body> {
        Ok(match workload {
            Workload::Sentiment => Body::Sentiment(proto::SentimentRequest {
                text: text.to_owned(),
                model: model.to_owned(),
                ..Default::default()
            }),
            Workload::Tabular => {
                let info = AdminClient::new(channel.clone())
                    .get_model(proto::GetModelRequest { model: model.to_owned() })
                    .await
                    .with_context(|| format!("Admin.GetModel {model:?}"))?
                    .into_inner();
                let input = info.inputs.first().context("the model has no inputs")?;
                let width: i64 = input.shape.iter().skip(1).product();
                if input.shape.len() < 2 || width <= 0 {
                    bail!("{model} is not a tabular model with fixed features (input shape {:?})", input.shape);
                }
                let row = synthetic_rows(1, usize::try_from(width)?);
                Body::Predict(proto::PredictRequest {
                    model: model.to_owned(),
                    inputs: vec![proto::Tensor {
                        name: input.name.clone(),
                        dtype: proto::DataType::Float32 as i32,
                        shape: std::iter::once(1).chain(input.shape[1..].iter().copied()).collect(),
                        float_data: row.concat(),
                        ..Default::default()
                    }],
                    ..Default::default()
                })
            }
        })
    }

    async fn send(&self, client: &mut InferenceClient<Channel>, timeout: Duration, request_id: Option<&str>) -> Answer {
        let id = request_id.and_then(|id| id.parse::<tonic::metadata::MetadataValue<_>>().ok());
        let answer = match self {
            Body::Predict(b) => client.predict(request(b.clone(), timeout, id)).await.map(|r| {
                let r = r.into_inner();
                (r.version, !r.outputs.is_empty())
            }),
            Body::Sentiment(b) => client.sentiment(request(b.clone(), timeout, id)).await.map(|r| {
                let r = r.into_inner();
                (r.version, !r.results.is_empty())
            }),
        };
        match answer {
            Ok((version, true)) => Ok(version),
            Ok((_, false)) => Err("empty_answer".to_owned()),
            Err(status) => Err(format!("{:?}", status.code())),
        }
    }
}

/// A request with its deadline, its id when given, and `cache-control: no-cache`: every request
/// runs a forward pass on the version that answers, even on a server with a response cache
/// (`--cache-bytes`) for a model whose manifest has `[cache]`, since the bodies repeat.
fn request<T>(
    body: T,
    timeout: Duration,
    id: Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>,
) -> tonic::Request<T> {
    let mut req = tonic::Request::new(body);
    req.set_timeout(timeout);
    req.metadata_mut().insert("cache-control", tonic::metadata::MetadataValue::from_static("no-cache"));
    if let Some(id) = id {
        req.metadata_mut().insert("x-request-id", id);
    }
    req
}

// ---------------------------------------------------------------------------------------------
// swap

/// One request of a swap run: send and answer times in µs since the start, and the answer.
struct Rec {
    sent_us: u64,
    done_us: u64,
    answer: Answer,
}

/// What every client shares.
struct Shared {
    start: Instant,
    /// Clients stop sending at this time (µs since start); `u64::MAX` until the controller knows.
    end_us: AtomicU64,
    /// Arrival of the first answer from `new_version` (µs since start); `u64::MAX` until then.
    first_new_us: AtomicU64,
    new_version: String,
    body: Body,
    timeout: Duration,
}

fn us_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

async fn client_loop(channel: Channel, shared: Arc<Shared>) -> Vec<Rec> {
    let mut client = InferenceClient::new(channel);
    let mut recs = Vec::with_capacity(1 << 16);
    loop {
        let sent_us = us_since(shared.start);
        if sent_us >= shared.end_us.load(Ordering::Relaxed) {
            return recs;
        }
        let answer = shared.body.send(&mut client, shared.timeout, None).await;
        let done_us = us_since(shared.start);
        if answer.as_deref() == Ok(shared.new_version.as_str()) {
            shared.first_new_us.fetch_min(done_us, Ordering::Relaxed);
        }
        recs.push(Rec { sent_us, done_us, answer });
    }
}

/// The figures of one window.
#[derive(Debug, Default)]
struct Window {
    name: &'static str,
    from_us: u64,
    to_us: u64,
    ok_us: Vec<u64>,
    failed: BTreeMap<String, u64>,
    versions: BTreeMap<String, u64>,
}

impl Window {
    fn failed_total(&self) -> u64 {
        self.failed.values().sum()
    }

    fn summary(&mut self) -> (Percentiles, f64) {
        let secs = (self.to_us.saturating_sub(self.from_us)) as f64 / 1e6;
        let n = self.ok_us.len() as f64;
        (percentiles(&mut self.ok_us), if secs > 0.0 { n / secs } else { 0.0 })
    }
}

fn ms(us: f64) -> f64 {
    (us / 10.0).round() / 100.0
}

fn shares(versions: &BTreeMap<String, u64>) -> String {
    let total: u64 = versions.values().sum();
    if total == 0 {
        return "-".into();
    }
    versions
        .iter()
        .map(|(v, n)| format!("v{} {:.1}% ({n})", if v.is_empty() { "?" } else { v }, 100.0 * *n as f64 / total as f64))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Runs `torchwire-bench swap` and prints its report.
pub async fn run_swap(args: SwapArgs) -> anyhow::Result<()> {
    if args.concurrency == 0 || args.connections == 0 {
        bail!("--concurrency and --connections must be at least 1");
    }
    for (flag, v) in
        [("--warmup", args.warmup), ("--before", args.before), ("--settle", args.settle), ("--after", args.after)]
    {
        if !(v.is_finite() && v >= 0.0) {
            bail!("{flag} must be a non-negative number of seconds");
        }
    }
    let model = args.model.clone().unwrap_or_else(|| args.workload.default_model().to_owned());
    let tmp = TempDir::new("swap", args.server.keep)?;
    // The repository and the server: a temp copy and a child, or the ones given.
    let (repo, server) = match (&args.server.addr, &args.server.repo) {
        (Some(_), Some(repo)) => (repo.clone(), None),
        _ => {
            let repo = tmp.path.join("models");
            for name in ["heart_disease", "sentiment"] {
                copy_model(&args.server.source_dir, &repo, name)?;
            }
            if !repo.join(&model).is_dir() {
                copy_model(&args.server.source_dir, &repo, &model)?;
            }
            let bin = server_bin(args.server.server_bin.as_deref())?;
            let server = start_server(&bin, &repo, &tmp.path, &args.server.server_args).await?;
            (repo, Some(server))
        }
    };
    let addr = server.as_ref().map_or_else(|| args.server.addr.clone().unwrap_or_default(), |s| s.addr.clone());
    let channels = connect(&addr, args.connections).await?;
    let mut admin = AdminClient::new(channels[0].clone());
    let before_info =
        admin.get_model(proto::GetModelRequest { model: model.clone() }).await.context("Admin.GetModel")?.into_inner();
    let model_dir = repo.join(&model);
    let on_disk = version_folders(&model_dir)?;
    let Some(&old) = on_disk.last() else { bail!("{} has no version folder", model_dir.display()) };
    let new = old + 1;
    let body = Body::for_model(args.workload, &model, &args.text, &channels[0]).await?;

    let shared = Arc::new(Shared {
        start: Instant::now(),
        end_us: AtomicU64::new(u64::MAX),
        first_new_us: AtomicU64::new(u64::MAX),
        new_version: new.to_string(),
        body,
        timeout: Duration::from_millis(args.timeout_ms),
    });
    let clients: Vec<_> = (0..args.concurrency)
        .map(|i| tokio::spawn(client_loop(channels[i % channels.len()].clone(), Arc::clone(&shared))))
        .collect();

    // Warm-up, with version `new` staged in its dot-folder meanwhile (a copy of `old`).
    let staging = model_dir.join(format!(".{new}.tmp"));
    let (from, to) = (model_dir.join(old.to_string()), staging.clone());
    let stage = tokio::task::spawn_blocking(move || copy_files(&from, &to));
    tokio::time::sleep(Duration::from_secs_f64(args.warmup)).await;
    stage.await.context("staging task")??;
    let before_from = us_since(shared.start);
    tokio::time::sleep(Duration::from_secs_f64(args.before)).await;

    // Publish: the rename makes version `new` visible; the reload is asked for at once.
    std::fs::rename(&staging, model_dir.join(new.to_string())).context("publishing the new version")?;
    let publish_us = us_since(shared.start);
    let t_reload = Instant::now();
    let reload = admin.reload_repository(proto::ReloadRepositoryRequest { wait: false }).await;
    let reload_ms = t_reload.elapsed().as_secs_f64() * 1e3;
    let reload = match reload {
        Ok(r) => format!("{:?}", r.into_inner()),
        Err(status) => format!("error {:?}: {}", status.code(), status.message()),
    };
    let deadline = Instant::now() + Duration::from_secs_f64(args.swap_timeout);
    let first_new_us = loop {
        let f = shared.first_new_us.load(Ordering::Relaxed);
        if f != u64::MAX {
            break Some(f);
        }
        if Instant::now() > deadline {
            break None;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    };
    let during_to = match first_new_us {
        Some(f) => f + (args.settle * 1e6) as u64,
        None => us_since(shared.start),
    };
    let after_to = if first_new_us.is_some() { during_to + (args.after * 1e6) as u64 } else { during_to };
    shared.end_us.store(after_to, Ordering::Relaxed);
    let mut recs = Vec::new();
    for c in clients {
        recs.extend(c.await.context("a client task failed")?);
    }
    let after_info =
        admin.get_model(proto::GetModelRequest { model: model.clone() }).await.context("Admin.GetModel")?.into_inner();
    if server.is_none() {
        // A run against a given repository leaves it as it found it, but for the new version,
        // which the server now serves: say so rather than removing it under the server.
        eprintln!("note: published {} (left in place)", model_dir.join(new.to_string()).display());
    }

    // Windows by send time.
    let mut windows = [
        Window { name: "warm-up", from_us: 0, to_us: before_from, ..Default::default() },
        Window { name: "before", from_us: before_from, to_us: publish_us, ..Default::default() },
        Window { name: "during", from_us: publish_us, to_us: during_to, ..Default::default() },
        Window { name: "after", from_us: during_to, to_us: after_to, ..Default::default() },
    ];
    let mut last_old_us = None::<u64>;
    for r in &recs {
        // The last window that starts at or before the send (the warm-up starts at 0).
        let at = windows.iter().rposition(|w| r.sent_us >= w.from_us).unwrap_or(0);
        let w = &mut windows[at];
        match &r.answer {
            Ok(v) => {
                w.ok_us.push(r.done_us - r.sent_us);
                *w.versions.entry(v.clone()).or_default() += 1;
                if *v == old.to_string() && r.done_us >= publish_us {
                    last_old_us = Some(last_old_us.map_or(r.done_us, |l| l.max(r.done_us)));
                }
            }
            Err(code) => *w.failed.entry(code.clone()).or_default() += 1,
        }
    }
    let total = recs.len() as u64;
    let failed: u64 = windows.iter().map(Window::failed_total).sum();
    let mut all_versions = BTreeMap::<String, u64>::new();
    for w in &windows[1..] {
        for (v, n) in &w.versions {
            *all_versions.entry(v.clone()).or_default() += n;
        }
    }
    let mut figures = Vec::new();
    for w in windows.iter_mut() {
        let (p, rps) = w.summary();
        figures.push((w.name, w.from_us, w.to_us, w.ok_us.len(), w.failed_total(), p, rps, shares(&w.versions)));
    }
    let p99 = |name: &str| figures.iter().find(|f| f.0 == name).map_or(0.0, |f| f.5.p99);
    let ratio = if p99("before") > 0.0 { p99("during") / p99("before") } else { f64::NAN };
    let rel = |us: u64| (us as f64 - publish_us as f64) / 1e6;
    let first_new_s = first_new_us.map(rel);
    let last_old_s = last_old_us.map(rel);

    if args.json {
        let wins: Vec<_> = figures
            .iter()
            .map(|(name, from, to, n, bad, p, rps, sh)| {
                serde_json::json!({
                    "window": name, "from_s": rel(*from), "to_s": rel(*to), "ok": n, "failed": bad,
                    "p50_ms": ms(p.p50), "p99_ms": ms(p.p99), "max_ms": ms(p.max), "requests_per_s": rps.round(),
                    "versions": sh,
                })
            })
            .collect();
        println!(
            "{}",
            serde_json::json!({
                "model": model, "workload": format!("{:?}", args.workload), "concurrency": args.concurrency,
                "old_version": old, "new_version": new, "requests": total, "failed": failed,
                "p99_during_over_before": ratio, "first_new_answer_s": first_new_s, "last_old_answer_s": last_old_s,
                "reload_rpc_ms": reload_ms, "windows": wins,
                "default_version_after": after_info.default_version, "swap_error": after_info.swap_error,
            })
        );
    } else {
        println!(
            "swap: model {model} ({:?}), {} closed-loop clients over {} connection(s), version {old} -> {new}; server {}",
            args.workload,
            args.concurrency,
            args.connections,
            if server.is_some() { "started by the bench (--cpu-only)" } else { "given by --addr" },
        );
        println!("  default before: {:?}, policy {:?}", before_info.default_version, before_info.version_policy);
        println!(
            "  windows by send time, t = 0 at the publish (rename .{new}.tmp -> {new}, then ReloadRepository wait=false):"
        );
        println!(
            "    warm-up [start, B), before [B, 0), during [0, first v{new} answer + {} s), after [that, + {} s)",
            args.settle, args.after
        );
        println!("  ReloadRepository answered in {reload_ms:.1} ms: {reload}");
        match first_new_s {
            Some(s) => println!("  first answer from v{new}: {s:.3} s after the publish"),
            None => println!("  no answer from v{new} within {} s of the publish", args.swap_timeout),
        }
        if let Some(s) = last_old_s {
            println!("  last answer from v{old}:  {s:.3} s after the publish");
        }
        println!(
            "  {:<8} {:>17} {:>8} {:>6} {:>9} {:>9} {:>9} {:>8}  versions",
            "window", "t (s)", "ok", "failed", "p50 ms", "p99 ms", "max ms", "req/s"
        );
        for (name, from, to, n, bad, p, rps, sh) in &figures {
            println!(
                "  {name:<8} {:>17} {n:>8} {bad:>6} {:>9.2} {:>9.2} {:>9.2} {rps:>8.0}  {sh}",
                format!("[{:.2}, {:.2})", rel(*from), rel(*to)),
                ms(p.p50),
                ms(p.p99),
                ms(p.max),
            );
        }
        println!("  requests: {total} in all, {failed} failed (any non-OK status, warm-up included)");
        for w in &windows {
            for (code, n) in &w.failed {
                println!("    {}: {code} x{n}", w.name);
            }
        }
        println!("  answers by version (before+during+after): {}", shares(&all_versions));
        println!(
            "  p99 during / before: {ratio:.2} (target <= 2); failed: {failed} (target 0) -> {}",
            if failed == 0 && ratio <= 2.0 && first_new_s.is_some() { "met" } else { "NOT met" }
        );
        println!(
            "  after the run: default_version {:?}, swap_error {:?}",
            after_info.default_version, after_info.swap_error
        );
    }
    if let Some(s) = &server {
        print_log_lines(&s.log, &["swap", "version", "ERROR", "WARN"], 12);
    }
    drop(server);
    Ok(())
}

/// Up to `max` lines of the server log that mention one of `words`, on stderr.
fn print_log_lines(log: &Path, words: &[&str], max: usize) {
    let Ok(text) = std::fs::read_to_string(log) else { return };
    let lines: Vec<String> = text.lines().map(strip_ansi).filter(|l| words.iter().any(|w| l.contains(w))).collect();
    if !lines.is_empty() {
        eprintln!("server log ({} matching lines, the last {}):", lines.len(), max.min(lines.len()));
        for l in &lines[lines.len().saturating_sub(max)..] {
            eprintln!("  {l}");
        }
    }
}

/// `line` without its terminal colour codes (`ESC [ ... m`): the server colours its text log
/// even into a file.
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// canary

/// Prepends the version settings to a copied `model.toml` (top-level keys must come before its
/// first table) and appends the label table.
fn canary_manifest(text: &str, canary_percent: u32) -> String {
    format!(
        "version_policy = \"all\"\ndefault_version = \"canary\"\n{text}\n[version_labels]\ncanary = {{ 1 = {}, 2 = {} }}\n",
        100 - canary_percent,
        canary_percent
    )
}

/// Runs `torchwire-bench canary` and prints its report.
pub async fn run_canary(args: CanaryArgs) -> anyhow::Result<()> {
    if !(1..=99).contains(&args.canary_percent) {
        bail!("--canary-percent must be between 1 and 99");
    }
    if args.concurrency == 0 || args.requests == 0 {
        bail!("--concurrency and --requests must be at least 1");
    }
    let model = args.model.clone().unwrap_or_else(|| args.workload.default_model().to_owned());
    let tmp = TempDir::new("canary", args.keep)?;
    let repo = tmp.path.join("models");
    copy_model(&args.source_dir, &repo, &model)?;
    let dir = repo.join(&model);
    copy_files(&dir.join("1"), &dir.join("2"))?;
    let manifest = std::fs::read_to_string(dir.join("model.toml"))?;
    std::fs::write(dir.join("model.toml"), canary_manifest(&manifest, args.canary_percent))?;
    let bin = server_bin(args.server_bin.as_deref())?;
    let server = start_server(&bin, &repo, &tmp.path, &args.server_args).await?;
    let channels = connect(&server.addr, 1).await?;
    let info = AdminClient::new(channels[0].clone())
        .get_model(proto::GetModelRequest { model: model.clone() })
        .await
        .context("Admin.GetModel")?
        .into_inner();
    let body = Arc::new(Body::for_model(args.workload, &model, &args.text, &channels[0]).await?);
    let prefix = args.id_prefix.clone().unwrap_or_else(|| {
        let ms = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis());
        format!("canary-{ms}")
    });
    let timeout = Duration::from_secs(30);

    // The run: request i carries id `<prefix>-i`; then the first `sticky_checks` ids again.
    let total = args.requests + args.sticky_checks.min(args.requests);
    let next = Arc::new(AtomicU64::new(0));
    let t0 = Instant::now();
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|_| {
            let (body, next, prefix, channel) =
                (Arc::clone(&body), Arc::clone(&next), prefix.clone(), channels[0].clone());
            let requests = args.requests;
            tokio::spawn(async move {
                let mut client = InferenceClient::new(channel);
                let mut out = Vec::new();
                loop {
                    let k = next.fetch_add(1, Ordering::Relaxed) as usize;
                    if k >= total {
                        return out;
                    }
                    let id = format!("{prefix}-{}", if k < requests { k } else { k - requests });
                    out.push((k, body.send(&mut client, timeout, Some(&id)).await));
                }
            })
        })
        .collect();
    let mut answers: Vec<Option<Answer>> = vec![None; total];
    for t in tasks {
        for (k, a) in t.await.context("a canary task failed")? {
            answers[k] = Some(a);
        }
    }
    let secs = t0.elapsed().as_secs_f64();
    let mut by_version = BTreeMap::<String, u64>::new();
    let mut failed = BTreeMap::<String, u64>::new();
    for a in answers[..args.requests].iter().flatten() {
        match a {
            Ok(v) => *by_version.entry(v.clone()).or_default() += 1,
            Err(code) => *failed.entry(code.clone()).or_default() += 1,
        }
    }
    let (mut sticky_same, mut sticky_checked) = (0u64, 0u64);
    for k in args.requests..total {
        if let (Some(Ok(first)), Some(Ok(again))) = (&answers[k - args.requests], &answers[k]) {
            sticky_checked += 1;
            sticky_same += u64::from(first == again);
        }
    }
    let ok: u64 = by_version.values().sum();
    let weights = [("1", 100 - args.canary_percent), ("2", args.canary_percent)];
    let share = |v: &str| 100.0 * by_version.get(v).copied().unwrap_or(0) as f64 / ok.max(1) as f64;
    let within = weights.iter().all(|(v, w)| (share(v) - f64::from(*w)).abs() <= args.tolerance);
    let failed_n: u64 = failed.values().sum();
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "model": model, "default_version": info.default_version, "requests": args.requests,
                "ok": ok, "failed": failed_n, "failed_by_code": failed, "answers_by_version": by_version,
                "share_v1": share("1"), "share_v2": share("2"), "tolerance_points": args.tolerance,
                "within_tolerance": within, "sticky_checked": sticky_checked, "sticky_same": sticky_same,
                "seconds": secs, "id_prefix": prefix,
            })
        );
    } else {
        println!(
            "canary: model {model} ({:?}), default_version {:?} (policy {:?}), {} requests each with its own x-request-id ({prefix}-<n>), {} in flight",
            args.workload, info.default_version, info.version_policy, args.requests, args.concurrency
        );
        println!("  answered OK: {ok}, failed: {failed_n} {failed:?}, in {secs:.1} s");
        for (v, w) in weights {
            println!(
                "  v{v}: {} answers, share {:.2}% (weight {w}%, off by {:+.2} points)",
                by_version.get(v).copied().unwrap_or(0),
                share(v),
                share(v) - f64::from(w)
            );
        }
        let others: Vec<_> = by_version.keys().filter(|v| *v != "1" && *v != "2").collect();
        if !others.is_empty() {
            println!("  other versions answered: {others:?}");
        }
        println!(
            "  each share within ±{} points: {}; sticky by id: {sticky_same}/{sticky_checked} repeated ids answered by the same version",
            args.tolerance,
            if within { "yes" } else { "NO" }
        );
    }
    drop(server);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_stripped() {
        assert_eq!(strip_ansi("\u{1b}[2mt\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m swapped"), "t  INFO swapped");
    }

    #[test]
    fn the_canary_manifest_keeps_top_level_keys_above_the_tables() {
        let text = canary_manifest("kind = \"tabular\"\n[provenance]\ndataset = \"x\"\n", 10);
        let first_table = text.find("\n[").unwrap_or(text.len());
        assert!(text.find("default_version = \"canary\"").is_some_and(|at| at < first_table), "{text}");
        assert!(text.find("version_policy = \"all\"").is_some_and(|at| at < first_table), "{text}");
        assert!(text.ends_with("[version_labels]\ncanary = { 1 = 90, 2 = 10 }\n"), "{text}");
    }
}
