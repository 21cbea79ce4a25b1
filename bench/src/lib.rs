//! torchwire-bench: everything `make bench` needs that the server does not. The `torchwire`
//! binary and its container image link none of it; this crate depends on the server library
//! (proto types and clients, the model backend, the tokenizer, signal handling), never the
//! other way round.
//!
//! ```text
//! torchwire-bench load   ──▶ load      connections, closed / open loop, progress bar → Report
//!                             ├▶ workload  rows / texts (files or synthetic) cut into batches
//!                             └▶ peers     request bodies per target server; one call = send + check
//! torchwire-bench raw    ──▶ raw       a model's forward pass in-process through libtorch
//! torchwire-bench floor  ──▶ floor     torchwire.v1.Inference with constant answers, no model
//! torchwire-bench chart  ──▶ chart     a PNG of throughput against concurrency from a results file
//! torchwire-bench swap   ──▶ swap      publish a new version under load: failures, p99 before / during / after
//! torchwire-bench canary ──▶ swap      a 90/10 label split: answers per version over many request ids
//! torchwire-bench poll   ──▶ poll      CPU and wall time of rescanning an unchanged repository
//! torchwire-bench cache  ──▶ cache     response cache off / on in interleaved pairs of fresh servers
//! ```
//!
//! `benches/suite.py` drives these subcommands against torchwire and its peers.

pub mod cache;
pub mod chart;
pub mod cli;
pub mod floor;
pub mod load;
pub mod peers;
pub mod poll;
pub mod raw;
pub mod report;
pub mod swap;
pub mod workload;
