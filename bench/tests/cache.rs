//! `torchwire-bench cache` end to end in a tiny quick mode: one pair per scenario of half a
//! second each, against a temp repository holding the `tiny_bert` fixture with `[cache]`
//! appended to its manifest. Checks that the run completes and its JSON parses and adds up;
//! nothing about speed. The server is the `torchwire` binary of the same build (built by
//! `cargo test --workspace`); the test says so and returns when it is missing, and leaves out
//! the Redis scenario when `redis-server` is not installed.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

fn lookups(run: &serde_json::Value) -> u64 {
    ["hit", "redis_hit", "coalesced", "miss"].iter().map(|k| run["lookups"][k].as_u64().unwrap_or(0)).sum()
}

#[test]
fn cache_quick_mode_prints_json_that_adds_up() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_torchwire-bench"));
    let server = bench.with_file_name("torchwire");
    if !server.is_file() {
        eprintln!("skipped: {} is not built (cargo build -p torchwire)", server.display());
        return;
    }
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/tiny_bert");
    if !fixture.join("tokenizer.json").is_file() {
        eprintln!("skipped: {} has no tokenizer.json (scripts/setup.sh copies it)", fixture.display());
        return;
    }
    let repo = std::env::temp_dir().join(format!("torchwire-bench-cache-test-{}", std::process::id()));
    let model = repo.join("tiny_bert");
    std::fs::create_dir_all(&model).unwrap();
    for f in ["model.pt", "tokenizer.json"] {
        std::fs::copy(fixture.join(f), model.join(f)).unwrap();
    }
    let manifest = std::fs::read_to_string(fixture.join("model.toml")).unwrap();
    std::fs::write(model.join("model.toml"), format!("{manifest}\n[cache]\n")).unwrap();

    let redis = Command::new("redis-server").arg("--version").output().is_ok_and(|o| o.status.success());
    let scenarios = if redis { "zipf,distinct,redis" } else { "zipf,distinct" };
    let out = Command::new(&bench)
        .args(["cache", "--scenarios", scenarios, "--model", "tiny_bert", "--pairs", "1", "--concurrency", "2"])
        .args(["--duration", "0.5", "--warmup", "0.2", "--tail", "0.25", "--distinct", "40", "--json"])
        .args(["--server-cpus=", "--redis-cpus="])
        .arg("--server-bin")
        .arg(&server)
        .arg("--model-dir")
        .arg(&repo)
        .output()
        .unwrap();
    std::fs::remove_dir_all(&repo).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["model"], "tiny_bert");
    let results = report["scenarios"].as_array().unwrap();
    assert_eq!(results.len(), scenarios.split(',').count(), "{report}");
    for s in results {
        let pairs = s["pairs"].as_array().unwrap();
        assert_eq!(pairs.len(), 1, "{s}");
        let (off, on) = (&pairs[0][0], &pairs[0][1]);
        for run in [off, on] {
            assert!(run["requests"].as_u64().unwrap() > 0, "{run}");
            assert_eq!(run["errors"], 0, "{run}");
            assert_eq!(run["codes"].as_object().unwrap().keys().collect::<Vec<_>>(), vec!["OK"], "{run}");
        }
        assert_eq!((off["cache"].as_str(), on["cache"].as_str()), (Some("off"), Some("on")));
        // The server without cache flags looks nothing up; the one with them looks up every text.
        assert_eq!(lookups(off), 0, "{off}");
        assert!(lookups(on) > 0, "{on}");
        assert!(s["ratio_median"].as_f64().unwrap() > 0.0, "{s}");
    }
    if redis {
        let r = &results[2];
        assert_eq!(r["scenario"], "redis");
        // Every pool text was put in Redis before the pairs, so the replica finds them there.
        assert!(r["pairs"][0][1]["lookups"]["redis_hit"].as_u64().unwrap() > 0, "{r}");
    }
}
