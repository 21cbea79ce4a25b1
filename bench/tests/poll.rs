//! `torchwire-bench poll` as a user runs it: the binary over a few copies of the committed
//! `tiny_risk` fixture (flat layout), its JSON output parsed. No timed assertion: the figures
//! depend on the machine; only their presence and consistency are checked.

#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::Command;

#[test]
fn poll_prints_figures_that_parse() {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../models/fixtures/tiny_risk");
    let out = Command::new(env!("CARGO_BIN_EXE_torchwire-bench"))
        .args(["poll", "--models", "5", "--polls", "10", "--touched-polls", "3", "--json", "--source"])
        .arg(&source)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "stdout: {stdout}\nstderr: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["models"], 5);
    assert_eq!(v["unchanged"]["polls"], 10);
    // Nothing changed between the unchanged polls: every entry is the previous scan's.
    assert_eq!(v["unchanged"]["reused_min"], 5);
    // Before each touched poll one model's files got a new mtime: that one is read again.
    assert_eq!(v["touched_one"]["reused_min"], 4);
    for path in [
        &["unchanged", "cpu_ms", "median"][..],
        &["unchanged", "cpu_ms", "p90"],
        &["unchanged", "wall_ms", "median"],
        &["touched_one", "cpu_ms", "median"],
        &["first_scan", "wall_ms"],
    ] {
        let x = path.iter().fold(&v, |v, k| &v[*k]);
        assert!(x.as_f64().is_some_and(|x| x.is_finite() && x >= 0.0), "{path:?} = {x}");
    }
    assert!(v["unchanged"]["cpu_ms"]["median"].as_f64().unwrap() <= v["unchanged"]["cpu_ms"]["p90"].as_f64().unwrap());
}

#[test]
fn poll_refuses_a_source_without_a_model() {
    let out = Command::new(env!("CARGO_BIN_EXE_torchwire-bench"))
        .args(["poll", "--models", "2", "--source", "/nonexistent/model"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/model"));
}
