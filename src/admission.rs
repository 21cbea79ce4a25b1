//! Admission control at the boundary: a global in-flight limit (a semaphore, `try_acquire`, so
//! an overloaded server says no at once instead of queueing) and an optional per-client rate
//! limit (token buckets keyed by the call's client identity: the verified key's fingerprint,
//! else the peer address). Per-model queue bounds live in the workers' channels.

use std::sync::Arc;
use std::time::{Duration, Instant};

use dashmap::DashMap;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::{Error, Result};

/// Buckets kept before idle ones are pruned.
const MAX_BUCKETS: usize = 10_000;

/// Settings for [`Admission`].
#[derive(Debug, Clone, Copy)]
pub struct AdmissionConfig {
    /// Requests being handled at once across the server.
    pub max_inflight: usize,
    /// Sustained requests per second per client; 0 = no rate limit.
    pub rate_limit_rps: f64,
    /// Requests a client may send in a burst.
    pub rate_limit_burst: f64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last: Instant,
}

/// Shared admission state.
pub struct Admission {
    config: AdmissionConfig,
    /// Permits for in-flight inference requests; held until the answer is sent.
    inflight: Arc<Semaphore>,
    buckets: DashMap<String, Bucket>,
}

impl Admission {
    /// Admission with the given limits.
    pub fn new(config: AdmissionConfig) -> Self {
        Admission { config, inflight: Arc::new(Semaphore::new(config.max_inflight)), buckets: DashMap::new() }
    }

    /// Admits one request from `client` for `model`, or says why not.
    pub fn admit(&self, client: &str, model: &str) -> Result<OwnedSemaphorePermit> {
        self.check_rate(client)?;
        Arc::clone(&self.inflight)
            .try_acquire_owned()
            .map_err(|_| Error::InflightLimit { model: crate::error::clip(model, 64), limit: self.config.max_inflight })
    }

    /// Requests in flight now.
    pub fn inflight(&self) -> usize {
        self.config.max_inflight - self.inflight.available_permits()
    }

    fn check_rate(&self, client: &str) -> Result<()> {
        let rps = self.config.rate_limit_rps;
        if rps <= 0.0 {
            return Ok(());
        }
        let burst = self.config.rate_limit_burst.max(1.0);
        let now = Instant::now();
        if self.buckets.len() > MAX_BUCKETS {
            // A full bucket is as good as none: drop those, keeping memory bounded.
            let full_after = Duration::from_secs_f64(burst / rps);
            self.buckets.retain(|_, b| now.duration_since(b.last) < full_after);
        }
        let mut bucket = self.buckets.entry(client.to_owned()).or_insert(Bucket { tokens: burst, last: now });
        let elapsed = now.duration_since(bucket.last).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * rps).min(burst);
        bucket.last = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / rps;
            Err(Error::RateLimited { retry_after_ms: (wait * 1000.0).ceil() as u64 })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_allows_the_burst_then_refuses_with_a_retry_hint() {
        let a = Admission::new(AdmissionConfig { max_inflight: 100, rate_limit_rps: 10.0, rate_limit_burst: 3.0 });
        for _ in 0..3 {
            drop(a.admit("k", "m").unwrap());
        }
        match a.admit("k", "m") {
            Err(Error::RateLimited { retry_after_ms }) => {
                assert!((1..=100).contains(&retry_after_ms), "{retry_after_ms}")
            }
            other => panic!("expected rate limit, got {other:?}"),
        }
        assert!(a.admit("other", "m").is_ok(), "buckets are per client");
    }

    #[test]
    fn inflight_limit_refuses_past_the_bound_and_frees_on_drop() {
        let a = Admission::new(AdmissionConfig { max_inflight: 2, rate_limit_rps: 0.0, rate_limit_burst: 0.0 });
        let p1 = a.admit("k", "m").unwrap();
        let _p2 = a.admit("k", "m").unwrap();
        assert_eq!(a.inflight(), 2);
        let err = a.admit("k", "m").unwrap_err();
        assert_eq!(err.code(), tonic::Code::ResourceExhausted);
        assert!(err.to_string().contains("`m`") && err.to_string().contains('2'), "{err}");
        drop(p1);
        assert!(a.admit("k", "m").is_ok());
    }
}
