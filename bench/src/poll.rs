//! `torchwire-bench poll`: what a repository poll costs (issue 16: under 5 ms of CPU for an
//! unchanged repository of 100 models).
//!
//! ```text
//! temp repository: m000 .. m099, each model.toml + 1/model.pt (+ 1/version.toml), copies of --source
//!   ─▶ Repository::scan(root, None)                      the first scan (reads every manifest)
//!   ─▶ Repository::scan(root, Some(&previous)) × polls   unchanged: every entry reused
//!   ─▶ touch one model's 1/model.pt, then rescan × touched-polls    the contrast: one model re-read
//! ```
//!
//! Runs on this thread, outside any async runtime, so the process has one busy thread and its
//! CPU time is the scan's. CPU per poll is this thread's on-CPU time in nanoseconds
//! (`/proc/thread-self/schedstat`, read right after a `sched_yield`, which makes the kernel
//! account the running slice first); the process's utime + stime over all polls
//! (`/proc/self/stat`, in clock ticks, too coarse for one poll) cross-checks the sum. This
//! crate forbids `unsafe`, so neither `getrusage` nor `clock_gettime` is called directly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, bail};
use clap::Args;
use torchwire::model::Repository;

use crate::swap::{copy_files, version_folders};

/// Flags of `torchwire-bench poll`.
#[derive(Debug, Args, Clone)]
pub struct PollArgs {
    /// The model folder copied (`model.toml` and its highest version folder, or a flat
    /// `model.pt`).
    #[arg(long, default_value = "models/heart_disease")]
    pub source: PathBuf,
    /// Models in the temp repository.
    #[arg(long, default_value_t = 100)]
    pub models: usize,
    /// Rescans of the unchanged repository timed.
    #[arg(long, default_value_t = 200)]
    pub polls: usize,
    /// Rescans timed after touching one model's version files (a different model each time).
    #[arg(long, default_value_t = 20)]
    pub touched_polls: usize,
    /// Create the temp repository under this folder (default: the system temp folder).
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Keep the temp repository.
    #[arg(long)]
    pub keep: bool,
    /// Print one JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

/// The on-CPU time of the calling thread in nanoseconds, accounted up to now.
fn thread_cpu_ns() -> anyhow::Result<u64> {
    // The yield goes through the scheduler, which adds the running slice to the thread's total.
    std::thread::yield_now();
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").context("reading /proc/thread-self/schedstat")?;
    text.split_whitespace().next().and_then(|v| v.parse().ok()).context("parsing /proc/thread-self/schedstat")
}

/// The process's utime + stime, in clock ticks (`/proc/self/stat` fields 14 and 15).
fn process_ticks() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/self/stat").context("reading /proc/self/stat")?;
    // The command name (field 2) may hold spaces; count fields after its closing parenthesis.
    let rest = text.rsplit_once(')').map(|(_, r)| r).context("parsing /proc/self/stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let field = |n: usize| f.get(n - 3).and_then(|v| v.parse::<u64>().ok()).context("parsing /proc/self/stat");
    Ok(field(14)? + field(15)?)
}

/// Clock ticks per second (USER_HZ): 100 on every Linux this runs on.
const TICKS_PER_S: f64 = 100.0;

/// One timed poll.
#[derive(Debug, Clone, Copy)]
struct Poll {
    cpu_ms: f64,
    wall_ms: f64,
    /// Entries kept from the previous scan (the same `Arc`).
    reused: usize,
}

fn timed_scan(root: &Path, previous: Option<&Repository>) -> anyhow::Result<(Repository, Poll)> {
    let (c0, w0) = (thread_cpu_ns()?, Instant::now());
    let repo = Repository::scan(root, previous).with_context(|| format!("scanning {}", root.display()))?;
    let wall_ms = w0.elapsed().as_secs_f64() * 1e3;
    let cpu_ms = thread_cpu_ns()?.saturating_sub(c0) as f64 / 1e6;
    let reused = previous
        .map_or(0, |p| repo.entries().filter(|e| p.entries().any(|o| o.name == e.name && Arc::ptr_eq(o, e))).count());
    Ok((repo, Poll { cpu_ms, wall_ms, reused }))
}

/// Median, p90 and largest of `v` (sorted in place; nearest rank).
fn quantiles(v: &mut [f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (0.0, 0.0, 0.0);
    }
    v.sort_by(f64::total_cmp);
    let at = |q: f64| v[((q * v.len() as f64).ceil() as usize).clamp(1, v.len()) - 1];
    (at(0.5), at(0.9), v[v.len() - 1])
}

/// `model.toml` and the version files of `source` into `<root>/<name>/`: version 1.
fn write_model(source: &Path, root: &Path, name: &str) -> anyhow::Result<()> {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("1"))?;
    std::fs::copy(source.join("model.toml"), dir.join("model.toml"))
        .with_context(|| format!("copying {}", source.join("model.toml").display()))?;
    match version_folders(source)?.last() {
        Some(v) => copy_files(&source.join(v.to_string()), &dir.join("1")),
        None => {
            std::fs::copy(source.join("model.pt"), dir.join("1/model.pt"))
                .with_context(|| format!("copying {}", source.join("model.pt").display()))?;
            Ok(())
        }
    }
}

/// Runs `torchwire-bench poll` and prints its report.
pub fn run_poll(args: &PollArgs) -> anyhow::Result<()> {
    if args.models == 0 || args.polls == 0 {
        bail!("--models and --polls must be at least 1");
    }
    let base = args.dir.clone().unwrap_or_else(std::env::temp_dir);
    let nanos = SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let root = base.join(format!("torchwire-bench-poll-{}-{nanos}", std::process::id()));
    let result = measure(args, &root);
    if args.keep {
        eprintln!("kept {}", root.display());
    } else {
        let _ = std::fs::remove_dir_all(&root);
    }
    result
}

fn measure(args: &PollArgs, root: &Path) -> anyhow::Result<()> {
    for i in 0..args.models {
        write_model(&args.source, root, &format!("m{i:03}"))?;
    }
    let files = walk_count(root)?;

    // The cost of the measurement itself: two reads with nothing between them.
    let mut overhead: Vec<f64> = Vec::with_capacity(50);
    for _ in 0..50 {
        let c0 = thread_cpu_ns()?;
        overhead.push(thread_cpu_ns()?.saturating_sub(c0) as f64 / 1e6);
    }
    let (overhead_ms, _, _) = quantiles(&mut overhead);

    let (mut repo, first) = timed_scan(root, None)?;
    let served = repo.entries().filter(|e| e.versions.contains_key(&1)).count();
    if served != args.models {
        bail!("the first scan serves version 1 of {served} models of {}: {:?}", args.models, repo.skipped());
    }

    let ticks0 = process_ticks()?;
    let t0 = Instant::now();
    let mut unchanged = Vec::with_capacity(args.polls);
    for _ in 0..args.polls {
        let (next, poll) = timed_scan(root, Some(&repo))?;
        repo = next;
        unchanged.push(poll);
    }
    let total_wall_s = t0.elapsed().as_secs_f64();
    let ticks = process_ticks()?.saturating_sub(ticks0);
    let process_cpu_ms_per_poll = ticks as f64 / TICKS_PER_S * 1e3 / args.polls as f64;

    // The contrast: before each poll, one model's version files get a new mtime.
    let mut touched = Vec::with_capacity(args.touched_polls);
    for i in 0..args.touched_polls {
        let vdir = root.join(format!("m{:03}", i % args.models)).join("1");
        let when = SystemTime::now() + Duration::from_secs(1 + i as u64);
        for f in ["model.pt", "version.toml"] {
            if let Ok(file) = std::fs::File::options().write(true).open(vdir.join(f)) {
                file.set_modified(when).with_context(|| format!("touching {}", vdir.join(f).display()))?;
            }
        }
        let (next, poll) = timed_scan(root, Some(&repo))?;
        repo = next;
        touched.push(poll);
    }

    let stats = |v: &[Poll], f: fn(&Poll) -> f64| {
        let mut x: Vec<f64> = v.iter().map(f).collect();
        quantiles(&mut x)
    };
    let (cpu50, cpu90, cpumax) = stats(&unchanged, |p| p.cpu_ms);
    let (wall50, wall90, wallmax) = stats(&unchanged, |p| p.wall_ms);
    let (tcpu50, tcpu90, _) = stats(&touched, |p| p.cpu_ms);
    let (twall50, twall90, _) = stats(&touched, |p| p.wall_ms);
    let reused_min = unchanged.iter().map(|p| p.reused).min().unwrap_or(0);
    let touched_reused = touched.iter().map(|p| p.reused).min().unwrap_or(0);
    let met = cpu50 < 5.0 && cpu90 < 5.0;

    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "models": args.models, "files": files, "source": args.source.display().to_string(),
                "first_scan": { "cpu_ms": first.cpu_ms, "wall_ms": first.wall_ms },
                "unchanged": {
                    "polls": args.polls, "reused_min": reused_min,
                    "cpu_ms": { "median": cpu50, "p90": cpu90, "max": cpumax },
                    "wall_ms": { "median": wall50, "p90": wall90, "max": wallmax },
                    "process_cpu_ms_per_poll": process_cpu_ms_per_poll, "process_ticks": ticks,
                    "wall_s": total_wall_s,
                },
                "touched_one": {
                    "polls": args.touched_polls, "reused_min": touched_reused,
                    "cpu_ms": { "median": tcpu50, "p90": tcpu90 },
                    "wall_ms": { "median": twall50, "p90": twall90 },
                },
                "measurement_overhead_cpu_ms": overhead_ms,
                "target_cpu_ms": 5.0, "target_met": met,
            })
        );
    } else {
        println!(
            "poll: {} models (copies of {}: model.toml + 1/), {files} files and folders; Repository::scan on this thread",
            args.models,
            args.source.display()
        );
        println!("  first scan (no previous):        cpu {:.3} ms, wall {:.3} ms", first.cpu_ms, first.wall_ms);
        println!(
            "  unchanged, {} polls (reused {}/{} entries at least): cpu median {cpu50:.3} ms, p90 {cpu90:.3} ms, max {cpumax:.3} ms; wall median {wall50:.3} ms, p90 {wall90:.3} ms, max {wallmax:.3} ms",
            args.polls, reused_min, args.models
        );
        println!(
            "  process utime+stime over those polls: {ticks} ticks = {process_cpu_ms_per_poll:.3} ms per poll ({total_wall_s:.2} s wall in all)"
        );
        if args.touched_polls > 0 {
            println!(
                "  one model touched before each poll, {} polls (reused {touched_reused}/{}): cpu median {tcpu50:.3} ms, p90 {tcpu90:.3} ms; wall median {twall50:.3} ms, p90 {twall90:.3} ms",
                args.touched_polls, args.models
            );
        }
        println!("  measurement overhead (two CPU-time reads): {overhead_ms:.3} ms, included above");
        println!("  target: < 5 ms CPU per poll of unchanged models -> {}", if met { "met" } else { "NOT met" });
    }
    Ok(())
}

/// Files and folders under `root`.
fn walk_count(root: &Path) -> anyhow::Result<usize> {
    let mut n = 0;
    for entry in std::fs::read_dir(root)? {
        let entry = entry?;
        n += 1;
        if entry.file_type()?.is_dir() {
            n += walk_count(&entry.path())?;
        }
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let mut v: Vec<f64> = (1..=10).rev().map(f64::from).collect();
        assert_eq!(quantiles(&mut v), (5.0, 9.0, 10.0));
        assert_eq!(quantiles(&mut []), (0.0, 0.0, 0.0));
    }

    #[test]
    fn cpu_clocks_read_and_move_forward() {
        let a = thread_cpu_ns().unwrap_or(0);
        let mut x = 0u64;
        for i in 0..2_000_000u64 {
            x = x.wrapping_add(i.wrapping_mul(i));
        }
        std::hint::black_box(x);
        assert!(thread_cpu_ns().unwrap_or(0) > a);
        assert!(process_ticks().is_ok());
    }
}
