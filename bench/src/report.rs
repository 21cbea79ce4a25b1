//! What a load run measured and how it is shown: nearest-rank latency percentiles, the
//! [`Report`] of one run (a line for people, a JSON object for `benches/suite.py`), and the
//! per-task [`Sample`] the sending loops fill before it becomes a report.
//!
//! Pure data: no networking, no clock. `load.rs` times the requests and hands the outcomes here.

use std::collections::BTreeMap;

use crate::peers::{BenchRpc, BenchTarget, Outcome};

/// Latency percentiles in microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Percentiles {
    /// Median.
    pub p50: f64,
    /// 90th.
    pub p90: f64,
    /// 99th.
    pub p99: f64,
    /// 99.9th.
    pub p999: f64,
    /// Largest.
    pub max: f64,
}

/// Nearest-rank percentiles of `us` (sorted in place).
pub fn percentiles(us: &mut [u64]) -> Percentiles {
    if us.is_empty() {
        return Percentiles::default();
    }
    us.sort_unstable();
    let at = |q: f64| us[((q * us.len() as f64).ceil() as usize).clamp(1, us.len()) - 1] as f64;
    Percentiles { p50: at(0.50), p90: at(0.90), p99: at(0.99), p999: at(0.999), max: us[us.len() - 1] as f64 }
}

/// What one `torchwire-bench load` run measured.
#[derive(Debug, Clone)]
pub struct Report {
    /// Server kind driven.
    pub target: BenchTarget,
    /// RPC driven.
    pub rpc: BenchRpc,
    /// Model name sent (empty: the server's default).
    pub model: String,
    /// Requests in flight (closed loop) or the cap on outstanding requests (open loop).
    pub concurrency: usize,
    /// HTTP/2 connections.
    pub connections: usize,
    /// Rows (or texts) per request.
    pub rows: usize,
    /// Open-loop rate asked for, requests/s; 0 for a closed loop.
    pub rate: f64,
    /// Seconds measured (after the warm-up).
    pub duration_s: f64,
    /// Requests answered OK in the measured window.
    pub requests: u64,
    /// Requests answered with anything else (a gRPC error, or an OK answer with nothing in
    /// it). Open-loop requests never sent (`client_overrun`) are in `codes` only.
    pub errors: u64,
    /// OK requests per second.
    pub requests_per_s: f64,
    /// Rows (or texts) answered OK per second.
    pub rows_per_s: f64,
    /// Latency of OK requests.
    pub latency_us: Percentiles,
    /// Latency of failed requests.
    pub error_latency_us: Percentiles,
    /// Outcomes by code: `OK`, gRPC code names, answer-check labels, `client_overrun`.
    pub codes: BTreeMap<String, u64>,
}

impl Report {
    /// The `--json` object: the fields `load` has always printed plus target, connections,
    /// duration, request and error counts.
    pub fn to_json(&self) -> serde_json::Value {
        let tenth = |v: f64| (v * 10.0).round() / 10.0;
        serde_json::json!({
            "target": self.target.name(),
            "rpc": format!("{:?}", self.rpc),
            "model": self.model,
            "concurrency": self.concurrency,
            "connections": self.connections,
            "rows": self.rows,
            "rate": self.rate,
            "duration_s": self.duration_s,
            "requests": self.requests,
            "errors": self.errors,
            "requests_per_s": tenth(self.requests_per_s),
            "rows_per_s": tenth(self.rows_per_s),
            "p50_us": self.latency_us.p50,
            "p90_us": self.latency_us.p90,
            "p99_us": self.latency_us.p99,
            "p999_us": self.latency_us.p999,
            "max_us": self.latency_us.max,
            "error_p99_us": self.error_latency_us.p99,
            "codes": self.codes,
        })
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let errors = if self.errors == 0 {
            String::new()
        } else {
            format!(
                "; {} errors answered in p50 {} p99 {} us",
                self.errors, self.error_latency_us.p50, self.error_latency_us.p99
            )
        };
        let model = if self.model.is_empty() { "(default model)" } else { &self.model };
        let lat = self.latency_us;
        format!(
            "{} {:?} {model} concurrency {} connections {} rows {}: {} OK in {} s, {:.1} req/s, {:.1} rows/s; latency us p50 {} p90 {} p99 {} p99.9 {} max {}; codes {:?}{errors}",
            self.target.name(),
            self.rpc,
            self.concurrency,
            self.connections,
            self.rows,
            self.requests,
            self.duration_s,
            self.requests_per_s,
            self.rows_per_s,
            lat.p50,
            lat.p90,
            lat.p99,
            lat.p999,
            lat.max,
            self.codes,
        )
    }
}

/// What the sending tasks collect: latencies of OK and failed requests, outcomes by code, rows
/// answered. Merged across tasks, then turned into a [`Report`].
#[derive(Default)]
pub(crate) struct Sample {
    pub(crate) ok_us: Vec<u64>,
    pub(crate) err_us: Vec<u64>,
    pub(crate) codes: BTreeMap<String, u64>,
    pub(crate) rows: u64,
}

impl Sample {
    pub(crate) fn merge(&mut self, s: Sample) {
        self.ok_us.extend(s.ok_us);
        self.err_us.extend(s.err_us);
        self.rows += s.rows;
        for (k, v) in s.codes {
            *self.codes.entry(k).or_default() += v;
        }
    }

    pub(crate) fn record(&mut self, outcome: Outcome, rows: u64, us: u64) {
        let code = match outcome {
            Ok(()) => {
                self.ok_us.push(us);
                self.rows += rows;
                "OK".to_owned()
            }
            Err(label) => {
                self.err_us.push(us);
                label
            }
        };
        *self.codes.entry(code).or_default() += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<u64> = (1..=1000).rev().collect();
        let p = percentiles(&mut v);
        assert_eq!((p.p50, p.p90, p.p99, p.p999, p.max), (500.0, 900.0, 990.0, 999.0, 1000.0));
        assert_eq!(percentiles(&mut []).p50, 0.0);
    }

    #[test]
    fn json_report_keeps_the_old_fields_and_adds_counts() {
        let report = Report {
            target: BenchTarget::Python,
            rpc: BenchRpc::Predict,
            model: "tabular".into(),
            concurrency: 4,
            connections: 2,
            rows: 1,
            rate: 0.0,
            duration_s: 2.0,
            requests: 10,
            errors: 1,
            requests_per_s: 5.0,
            rows_per_s: 5.0,
            latency_us: Percentiles { p50: 1.0, p90: 2.0, p99: 3.0, p999: 4.0, max: 5.0 },
            error_latency_us: Percentiles::default(),
            codes: [("OK".to_owned(), 10), ("Unavailable".to_owned(), 1)].into(),
        };
        let j = report.to_json();
        assert_eq!(j["target"], "python");
        assert_eq!(j["rpc"], "Predict");
        assert_eq!((j["requests"].as_u64(), j["errors"].as_u64()), (Some(10), Some(1)));
        assert_eq!(j["codes"]["Unavailable"], 1);
        for key in ["concurrency", "connections", "duration_s", "rows_per_s", "p999_us", "max_us", "error_p99_us"] {
            assert!(j.get(key).is_some(), "{key} missing");
        }
        assert!(report.summary().contains("5.0 req/s"));
    }
}
