//! The shared tier of the response cache: a Redis server several replicas read and write.
//!
//! Every call is bounded by a short timeout and never fails a request: a miss, a timeout, an
//! error, an unreadable or oversized value all fall through to the in-process tier or the
//! model, and are counted. After an error the tier rests for a moment instead of making every
//! request wait for a server that is down; the connection manager reconnects by itself.
//!
//! A value carries its full key and is checked on read, so an answer is only ever used for the
//! exact input it was computed for, whatever else is stored under that Redis key.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{CacheMetrics, RowAnswer};
use crate::model::{DType, HostTensor, Prediction};
use crate::tokenize::TextInfo;

/// Largest value read or written, in bytes.
pub const MAX_VALUE_BYTES: usize = 1 << 20;
const MAGIC: &[u8; 4] = b"TWC1";
/// How long the tier rests after an error.
const REST: Duration = Duration::from_secs(1);

/// A Redis connection with its timeout.
pub struct RedisTier {
    conn: ConnectionManager,
    timeout: Duration,
    /// Unix ms until which the tier is skipped after an error.
    resting_until: AtomicI64,
    metrics: Arc<CacheMetrics>,
    writes: Arc<tokio::sync::Semaphore>,
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl RedisTier {
    /// A tier over `url` (`redis://host:port/db`); connects lazily, so a server that is down at
    /// start-up only means misses until it comes up.
    pub fn new(url: &str, timeout: Duration, metrics: Arc<CacheMetrics>) -> redis::RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(timeout.max(Duration::from_millis(50))))
            .set_response_timeout(Some(timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_secs(1));
        let conn = ConnectionManager::new_lazy_with_config(client, config)?;
        Ok(RedisTier {
            conn,
            timeout,
            resting_until: AtomicI64::new(0),
            metrics,
            writes: Arc::new(tokio::sync::Semaphore::new(64)),
        })
    }

    fn resting(&self) -> bool {
        now_ms() < self.resting_until.load(Ordering::Relaxed)
    }

    fn failed(&self, model: &str, kind: &str, e: &dyn std::fmt::Display) {
        self.metrics.redis_errors.with_label_values(&[model, kind]).inc();
        let first = self.resting_until.swap(now_ms() + REST.as_millis() as i64, Ordering::Relaxed) == 0;
        if first {
            tracing::warn!(error = %e, kind, "redis cache tier failing; requests compute instead (logged once per outage)");
        }
    }

    /// The answers Redis has for `keys` (same order); `None` where it has none, or when it is
    /// slow, down or answers garbage.
    pub async fn get(&self, model: &str, keys: &[&[u8]]) -> Vec<Option<RowAnswer>> {
        let none = || keys.iter().map(|_| None).collect();
        if keys.is_empty() {
            return Vec::new();
        }
        if self.resting() {
            self.metrics.redis_errors.with_label_values(&[model, "skipped"]).inc_by(keys.len() as u64);
            return none();
        }
        let mut cmd = redis::cmd("MGET");
        for k in keys {
            cmd.arg(redis_key(k));
        }
        let started = Instant::now();
        let mut conn = self.conn.clone();
        let answer = tokio::time::timeout(self.timeout, cmd.query_async::<Vec<Option<Vec<u8>>>>(&mut conn)).await;
        self.metrics.redis_duration.with_label_values(&["get"]).observe(started.elapsed().as_secs_f64());
        let values = match answer {
            Ok(Ok(v)) if v.len() == keys.len() => v,
            Ok(Ok(v)) => {
                self.failed(model, "garbage", &format!("MGET answered {} values for {} keys", v.len(), keys.len()));
                return none();
            }
            Ok(Err(e)) => {
                self.failed(model, "error", &e);
                return none();
            }
            Err(_) => {
                self.failed(model, "timeout", &format!("no answer within {:?}", self.timeout));
                return none();
            }
        };
        self.resting_until.store(0, Ordering::Relaxed);
        keys.iter()
            .zip(values)
            .map(|(k, v)| {
                let v = v?;
                if v.len() > MAX_VALUE_BYTES {
                    self.metrics.redis_errors.with_label_values(&[model, "oversized"]).inc();
                    return None;
                }
                let decoded = decode(k, &v);
                if decoded.is_none() {
                    self.metrics.redis_errors.with_label_values(&[model, "garbage"]).inc();
                }
                decoded
            })
            .collect()
    }

    /// Stores answers in the background (bounded: past 64 writes in flight, skipped and
    /// counted); never waits.
    pub fn put(self: &Arc<Self>, model: &str, ttl_secs: u64, items: Vec<(Arc<[u8]>, Arc<RowAnswer>)>) {
        if items.is_empty() || self.resting() {
            return;
        }
        let Ok(permit) = Arc::clone(&self.writes).try_acquire_owned() else {
            self.metrics.redis_errors.with_label_values(&[model, "write_skipped"]).inc();
            return;
        };
        let tier = Arc::clone(self);
        let model = model.to_owned();
        tokio::spawn(async move {
            let _permit = permit;
            let mut pipe = redis::pipe();
            for (key, answer) in &items {
                let value = encode(key, answer);
                if value.len() <= MAX_VALUE_BYTES {
                    pipe.cmd("SET").arg(redis_key(key)).arg(value).arg("EX").arg(ttl_secs.max(1)).ignore();
                }
            }
            let started = Instant::now();
            let mut conn = tier.conn.clone();
            match tokio::time::timeout(tier.timeout * 4, pipe.query_async::<()>(&mut conn)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tier.failed(&model, "error", &e),
                Err(_) => tier.failed(&model, "timeout", &"SET took too long"),
            }
            tier.metrics.redis_duration.with_label_values(&["set"]).observe(started.elapsed().as_secs_f64());
        });
    }
}

/// The Redis key of a cache key: a prefix and the SHA-256 of the full key, so keys stay short.
fn redis_key(key: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    let mut k = b"torchwire:v1:".to_vec();
    k.extend(Sha256::digest(key).iter().flat_map(|b| [hex(b >> 4), hex(b & 15)]));
    k
}

fn hex(n: u8) -> u8 {
    if n < 10 { b'0' + n } else { b'a' + n - 10 }
}

/// `MAGIC | key | outputs | prediction | text info`, lengths little-endian.
pub fn encode(key: &[u8], a: &RowAnswer) -> Vec<u8> {
    let mut out = Vec::with_capacity(64 + key.len() + a.outputs.iter().map(|t| t.data.len() + 32).sum::<usize>());
    out.extend_from_slice(MAGIC);
    bytes(&mut out, key);
    out.extend_from_slice(&(a.outputs.len() as u32).to_le_bytes());
    for t in &a.outputs {
        bytes(&mut out, t.name.as_bytes());
        bytes(&mut out, t.dtype.name().as_bytes());
        out.extend_from_slice(&(t.shape.len() as u32).to_le_bytes());
        for d in &t.shape {
            out.extend_from_slice(&d.to_le_bytes());
        }
        bytes(&mut out, &t.data);
    }
    match &a.prediction {
        None => out.push(0),
        Some(p) => {
            out.push(1);
            out.extend_from_slice(&(p.index as u32).to_le_bytes());
            out.extend_from_slice(&p.score.to_le_bytes());
            out.extend_from_slice(&(p.probabilities.len() as u32).to_le_bytes());
            for x in &p.probabilities {
                out.extend_from_slice(&x.to_le_bytes());
            }
        }
    }
    match &a.text {
        None => out.push(0),
        Some(t) => {
            out.push(1);
            out.extend_from_slice(&(t.tokens as u32).to_le_bytes());
            out.push(u8::from(t.truncated));
        }
    }
    out
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

/// Reads a value back; `None` unless it is well-formed and was stored for exactly `key`.
pub fn decode(key: &[u8], v: &[u8]) -> Option<RowAnswer> {
    let mut r = Reader(v);
    if r.take(4)? != MAGIC || r.bytes()? != key {
        return None;
    }
    let n = r.u32()? as usize;
    let mut outputs = Vec::with_capacity(n.min(16));
    for _ in 0..n {
        let name = String::from_utf8(r.bytes()?.to_vec()).ok()?;
        let dtype = DType::from_name(std::str::from_utf8(r.bytes()?).ok()?)?;
        let dims = r.u32()? as usize;
        let shape = (0..dims)
            .map(|_| r.take(8).map(|b| i64::from_le_bytes(b.try_into().unwrap_or_default())))
            .collect::<Option<Vec<_>>>()?;
        let data = r.bytes()?.to_vec();
        let numel = shape.iter().try_fold(1usize, |acc, d| acc.checked_mul(usize::try_from(*d).ok()?))?;
        if numel.checked_mul(dtype.size())? != data.len() {
            return None;
        }
        outputs.push(HostTensor { name, dtype, shape, data });
    }
    let prediction = match r.take(1)?[0] {
        0 => None,
        1 => {
            let index = r.u32()? as usize;
            let score = r.f32()?;
            let k = r.u32()? as usize;
            let probabilities = (0..k).map(|_| r.f32()).collect::<Option<Vec<_>>>()?;
            Some(Prediction { index, score, probabilities })
        }
        _ => return None,
    };
    let text = match r.take(1)?[0] {
        0 => None,
        1 => Some(TextInfo { tokens: r.u32()? as usize, truncated: r.take(1)?[0] != 0 }),
        _ => return None,
    };
    r.0.is_empty().then_some(RowAnswer { outputs, prediction, text })
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }

    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn f32(&mut self) -> Option<f32> {
        self.take(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn bytes(&mut self) -> Option<&'a [u8]> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_and_garbage_or_another_key_is_refused() {
        let a = RowAnswer {
            outputs: vec![HostTensor::from_f32("logits", vec![1, 2], &[0.25, -1.5])],
            prediction: Some(Prediction { index: 1, score: 0.9, probabilities: vec![0.1, 0.9] }),
            text: Some(TextInfo { tokens: 7, truncated: false }),
        };
        let v = encode(b"key-1", &a);
        let back = decode(b"key-1", &v).unwrap();
        assert_eq!(back.outputs[0].data, a.outputs[0].data);
        assert_eq!(back.prediction.unwrap().probabilities, vec![0.1, 0.9]);
        assert_eq!(back.text.unwrap().tokens, 7);
        assert!(decode(b"key-2", &v).is_none(), "stored for another input");
        for cut in [0, 3, 10, v.len() - 1] {
            assert!(decode(b"key-1", &v[..cut]).is_none(), "truncated at {cut}");
        }
        let mut extra = v.clone();
        extra.push(0);
        assert!(decode(b"key-1", &extra).is_none());
        assert!(decode(b"key-1", b"hello world, not a value").is_none());
    }
}
