//! The integration tests, linked as one test binary (one link instead of ten; modules share the
//! harness in `common`). Each module starts the real server in-process on ephemeral ports,
//! except `e2e`, which drives the real `torchwire` binary. The test that measures this
//! process's memory lives in `tests/rss.rs`, its own binary, so other tests cannot move it.

mod abuse;
mod batching;
mod cache;
mod common;
mod doors;
mod e2e;
mod executors;
mod faults;
mod grpc;
mod http;
mod http_abuse;
mod lifecycle;
mod limits;
mod observability;
mod pt2;
mod security;
mod sentiment;
mod versions;
