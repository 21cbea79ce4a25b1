//! The registry's single-flight loads, failed-load back-off and shutdown, on the fake backend.
use super::*;
use crate::model::fake::FakeFactory;
use crate::model::manifest::parse_manifest;
use std::path::Path;

fn registry(factory: FakeFactory) -> ModelRegistry {
    registry_with(factory, RegistryConfig { queue_capacity: 4, ..RegistryConfig::for_tests() })
}

fn registry_with(factory: FakeFactory, config: RegistryConfig) -> ModelRegistry {
    let spec = parse_manifest(
        "m",
        Path::new("/nonexistent"),
        "kind = \"tabular\"\n[[inputs]]\nname = \"x\"\ndtype = \"float32\"\nshape = [-1, 1]\nfeatures = [{ name = \"a\" }]\n",
    )
    .unwrap();
    ModelRegistry::new(
        Catalog::new(crate::model::Repository::from_specs([spec]), None),
        Devices::cpu_only(),
        Arc::new(factory),
        config,
        Arc::new(Metrics::new()),
    )
}

/// A load whose thread panics (as tch's `set_eval` does on a libtorch error) leaves the slot
/// FAILED with the reason, frees its place, and is retried after the back-off; before the
/// fix the slot stayed LOADING for good and every request failed INTERNAL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_load_that_panics_fails_the_slot_and_is_retried_after_the_back_off() {
    let factory = FakeFactory { panic_on_load: true, ..FakeFactory::default() };
    let loads = Arc::clone(&factory.loads);
    let backoff = Duration::from_millis(200);
    let config = RegistryConfig { load_retry_backoff: backoff, max_loaded_models: 1, ..RegistryConfig::for_tests() };
    let reg = registry_with(factory, config);
    let spec = reg.spec("m").unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), reg.get_or_load(&spec, Device::Cpu))
        .await
        .expect("a panicking load must answer, not hang");
    let Err(Error::ModelLoad { cause, .. }) = first else { panic!("expected ModelLoad, got {first:?}") };
    assert!(matches!(*cause, Cause::Panic(_)), "{cause:?}");
    let st = &reg.status(&spec)[0];
    assert_eq!(st.state, LoadState::Failed);
    assert!(st.error.contains("panicked"), "{}", st.error);
    assert!(reg.resident_figures().is_empty(), "a failed load holds no place among the loaded models");
    // Within the back-off: refused at once, no new load.
    assert!(reg.get_or_load(&spec, Device::Cpu).await.is_err());
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    tokio::time::sleep(backoff + Duration::from_millis(50)).await;
    assert!(reg.get_or_load(&spec, Device::Cpu).await.is_err());
    assert_eq!(loads.load(Ordering::SeqCst), 2, "retried after the back-off");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_first_requests_share_one_load() {
    let factory = FakeFactory { load_delay: Duration::from_millis(100), ..FakeFactory::default() };
    let loads = Arc::clone(&factory.loads);
    let reg = Arc::new(registry(factory));
    let spec = reg.spec("m").unwrap();
    let tasks: Vec<_> = (0..64)
        .map(|_| {
            let reg = Arc::clone(&reg);
            let spec = Arc::clone(&spec);
            tokio::spawn(async move { reg.get_or_load(&spec, Device::Cpu).await.map(|_| ()) })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1);
    let st = &reg.status(&spec)[0];
    assert_eq!(st.state, LoadState::Ready);
    assert_eq!(st.loads, 1);
    let reg2 = Arc::clone(&reg);
    tokio::task::spawn_blocking(move || reg2.shutdown()).await.unwrap();
    assert!(matches!(reg.get_or_load(&spec, Device::Cpu).await, Err(Error::ShuttingDown)));
}
