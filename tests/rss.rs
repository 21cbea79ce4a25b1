//! Memory across 50 load / unload cycles of a real TorchScript model, measured as this
//! process's resident set. It is its own test binary (its own process, one test) so that no
//! other test allocating at the same time can move the figure.

#![allow(clippy::unwrap_used)]

#[path = "it/common.rs"]
mod common;

use std::time::Duration;

use common::{TestServer, fixtures_dir};
use torchwire::config::Config;
use torchwire::proto::{GetModelRequest, LoadModelRequest, UnloadModelRequest};

fn rss_kb() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .unwrap()
        .trim()
        .trim_end_matches(" kB")
        .trim()
        .parse()
        .unwrap()
}

#[tokio::test]
async fn fifty_load_unload_cycles_keep_memory_flat() {
    let server = TestServer::start(Config::for_tests(fixtures_dir())).await;
    let mut admin = server.admin();
    let cycle = |mut admin: torchwire::proto::admin_client::AdminClient<tonic::transport::Channel>| async move {
        admin
            .load_model(LoadModelRequest { model: "tiny_risk".into(), device: "cpu".into(), pin: false })
            .await
            .unwrap();
        admin.unload_model(UnloadModelRequest { model: "tiny_risk".into(), device: "cpu".into() }).await.unwrap();
    };
    cycle(admin.clone()).await;
    let after_first = rss_kb();
    for _ in 0..50 {
        cycle(admin.clone()).await;
    }
    // Let the last worker thread finish dropping its model.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_fifty = rss_kb();
    let info = admin.get_model(GetModelRequest { model: "tiny_risk".into() }).await.unwrap().into_inner();
    let cpu = info.devices.into_iter().find(|d| d.device == "cpu").unwrap();
    assert_eq!(cpu.loads, 51);
    eprintln!("RSS after the first load/unload: {after_first} kB; after 50 more: {after_fifty} kB");
    assert!(after_fifty < after_first + 20 * 1024, "RSS grew from {after_first} kB to {after_fifty} kB");
    admin.load_model(LoadModelRequest { model: "tiny_risk".into(), device: "cpu".into(), pin: false }).await.unwrap();
}
