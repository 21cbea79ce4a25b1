//! Jobs: what a request hands its model's worker, and what comes back.
//!
//! A job carries its deadline and a oneshot reply. The worker checks both before compute: a job
//! whose deadline passed answers DEADLINE_EXCEEDED, a job whose client went away (reply closed)
//! is dropped, so no compute is spent on either. Also how batches form ([`BatchPolicy`],
//! [`Refill`]), and how payloads merge into one batch and split back.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::deadline::Deadline;
use crate::error::{Cause, Result};
use crate::model::{HostTensor, Prediction};
use crate::tokenize::TextInfo;

/// What a job asks the model to run on.
#[derive(Debug, Clone)]
pub enum Payload {
    /// Tensors in the manifest's input order, sharing the batch dimension.
    Tensors(Vec<HostTensor>),
    /// Texts for a text model, tokenised on the worker thread.
    Texts {
        /// The texts, one row each.
        texts: Vec<String>,
        /// Tokens per text, special tokens included.
        max_length: usize,
    },
}

/// One request's work for a worker.
#[derive(Debug)]
pub struct Job {
    /// The RPC it came from, for metric labels.
    pub rpc: &'static str,
    /// The inputs.
    pub payload: Payload,
    /// Rows (the batch dimension of the inputs).
    pub rows: usize,
    /// When the answer is no longer wanted.
    pub deadline: Deadline,
    /// When the job entered the queue, for queue time.
    pub enqueued: Instant,
    /// Where the answer goes; closed when the client went away.
    pub reply: oneshot::Sender<Result<JobOutput>>,
}

/// What the worker answers a job with.
#[derive(Debug, Clone)]
pub struct JobOutput {
    /// The model's outputs for this job's rows.
    pub outputs: Vec<HostTensor>,
    /// One per row when the model is a classifier.
    pub predictions: Vec<Prediction>,
    /// Time spent queued.
    pub queue: Duration,
    /// Time of the forward pass.
    pub compute: Duration,
    /// Rows in the batch the job ran in.
    pub batch_size: usize,
    /// Text jobs: how each text was tokenised.
    pub texts: Vec<TextInfo>,
}

/// Why a job was not run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Skip {
    /// The client went away.
    Cancelled,
    /// The deadline passed while queued.
    Expired,
}

/// Decides whether a job is still worth computing.
pub fn check_live(job: &Job) -> Option<Skip> {
    // Deadline first: a handler whose deadline passed has already answered and closed the
    // reply, and the drop belongs to the queue stage, not to a client that went away.
    if job.deadline.is_expired() {
        Some(Skip::Expired)
    } else if job.reply.is_closed() {
        Some(Skip::Cancelled)
    } else {
        None
    }
}

/// How a worker forms batches.
#[derive(Debug, Clone, Copy)]
pub struct BatchPolicy {
    /// Most rows (tabular rows or texts) one forward pass takes; a single larger job runs alone.
    pub max_rows: usize,
    /// How long the worker may wait for more jobs once it has one; zero = never wait.
    pub max_delay: Duration,
}

/// Longest a worker waits for a batch to refill (see [`Refill`]).
pub const MAX_REFILL_WAIT: Duration = Duration::from_millis(5);

/// Below this a refill wait is not attempted: no request crosses a network that fast, and a
/// timed wait costs a system call (this keeps sub-millisecond tabular models out of it).
const MIN_REFILL_WAIT: Duration = Duration::from_micros(50);

/// The load the previous batch saw, so the next one can wait briefly for requests on their way.
///
/// Under steady load from N clients a batch's answers leave together and those clients' next
/// requests arrive over the following fraction of a millisecond. A worker that starts its next
/// forward pass on the first arrival runs a small batch while the rest queue for a whole pass,
/// and the clients split into cohorts that never share a pass again. So the worker records the
/// demand around each pass (its rows plus the jobs left queued behind it), and while a forming
/// batch is smaller than that, waits for it to fill, up to a tenth of the previous pass (at
/// most [`MAX_REFILL_WAIT`]). One client, or a falling load, makes the demand small and nothing
/// waits; sub-millisecond models never wait. Combined with the manifest's `max_queue_delay_ms`.
#[derive(Debug, Clone, Copy, Default)]
pub struct Refill {
    demand: usize,
    took: Duration,
}

impl Refill {
    /// Remembers the pass that just ran: its rows plus the jobs queued behind it when it ended,
    /// and how long it took.
    pub fn record(&mut self, demand: usize, took: Duration) {
        *self = Refill { demand, took };
    }

    /// Rows the next batch waits for (never more than `max_rows`), and for how long after its
    /// first job arrived; `None` when it should not wait.
    pub fn target(&self, max_rows: usize) -> Option<(usize, Duration)> {
        let wait = (self.took / 10).min(MAX_REFILL_WAIT);
        (self.demand > 1 && wait >= MIN_REFILL_WAIT).then(|| (self.demand.min(max_rows), wait))
    }
}

/// Whether `b` can run in one forward pass with `a`: same kind, same input dtypes and
/// trailing dimensions (tensors), or the same max length (texts).
pub fn compatible(a: &Payload, b: &Payload) -> bool {
    match (a, b) {
        (Payload::Tensors(x), Payload::Tensors(y)) => {
            x.len() == y.len()
                && x.iter().zip(y).all(|(s, t)| s.dtype == t.dtype && s.shape.get(1..) == t.shape.get(1..))
        }
        (Payload::Texts { max_length: m, .. }, Payload::Texts { max_length: n, .. }) => m == n,
        _ => false,
    }
}

/// Concatenates compatible payloads along the batch dimension.
pub fn merge(payloads: Vec<Payload>) -> Payload {
    let mut it = payloads.into_iter();
    let Some(first) = it.next() else { return Payload::Tensors(Vec::new()) };
    it.fold(first, |acc, p| match (acc, p) {
        (Payload::Tensors(mut xs), Payload::Tensors(ys)) => {
            for (x, y) in xs.iter_mut().zip(ys) {
                x.shape[0] += y.shape[0];
                x.data.extend_from_slice(&y.data);
            }
            Payload::Tensors(xs)
        }
        (Payload::Texts { mut texts, max_length }, Payload::Texts { texts: more, .. }) => {
            texts.extend(more);
            Payload::Texts { texts, max_length }
        }
        (acc, _) => acc, // `compatible` keeps kinds apart; unreachable in practice.
    })
}

/// Splits a batch's outputs back into one set per job, by the jobs' row counts. Every output
/// must have the batch as its first dimension, except when there is only one job.
pub fn split(outputs: Vec<HostTensor>, rows: &[usize]) -> Result<Vec<Vec<HostTensor>>, Cause> {
    if rows.len() == 1 {
        return Ok(vec![outputs]);
    }
    let total: usize = rows.iter().sum();
    let mut per_job: Vec<Vec<HostTensor>> = rows.iter().map(|_| Vec::with_capacity(outputs.len())).collect();
    for out in outputs {
        if out.shape.first().and_then(|d| usize::try_from(*d).ok()) != Some(total) || out.data.len() % total != 0 {
            return Err(Cause::Output(format!(
                "`{}` has shape {:?}; its first dimension must be the batch ({total}) to split it",
                out.name, out.shape
            )));
        }
        let row_bytes = out.data.len() / total;
        let mut offset = 0;
        for (job, &n) in per_job.iter_mut().zip(rows) {
            let mut shape = out.shape.clone();
            shape[0] = n as i64;
            job.push(HostTensor {
                name: out.name.clone(),
                dtype: out.dtype,
                shape,
                data: out.data[offset..offset + n * row_bytes].to_vec(),
            });
            offset += n * row_bytes;
        }
    }
    Ok(per_job)
}

/// Splits per-row items (predictions, text infos) by the jobs' row counts.
pub fn split_rows<T>(items: Vec<T>, rows: &[usize]) -> Vec<Vec<T>> {
    let mut it = items.into_iter();
    rows.iter().map(|&n| it.by_ref().take(n).collect()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(rows: i64, values: &[f32]) -> Payload {
        Payload::Tensors(vec![HostTensor::from_f32("x", vec![rows, 2], values)])
    }

    #[test]
    fn merge_then_split_gives_each_job_its_rows() {
        let merged = merge(vec![t(1, &[1.0, 2.0]), t(2, &[3.0, 4.0, 5.0, 6.0])]);
        let Payload::Tensors(xs) = merged else { panic!("tensors") };
        assert_eq!(xs[0].shape, vec![3, 2]);
        assert_eq!(xs[0].to_f32(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
        let parts = split(xs, &[1, 2]).unwrap();
        assert_eq!(parts[0][0].to_f32(), vec![1.0, 2.0]);
        assert_eq!(parts[1][0].shape, vec![2, 2]);
        assert_eq!(parts[1][0].to_f32(), vec![3.0, 4.0, 5.0, 6.0]);
        assert_eq!(split_rows(vec!['a', 'b', 'c'], &[1, 2]), vec![vec!['a'], vec!['b', 'c']]);
    }

    #[test]
    fn only_like_payloads_batch_together() {
        assert!(compatible(&t(1, &[0.0; 2]), &t(3, &[0.0; 6])));
        let wide = Payload::Tensors(vec![HostTensor::from_f32("x", vec![1, 3], &[0.0; 3])]);
        assert!(!compatible(&t(1, &[0.0; 2]), &wide));
        let text = |m| Payload::Texts { texts: vec!["a".into()], max_length: m };
        assert!(compatible(&text(16), &text(16)));
        assert!(!compatible(&text(16), &text(32)));
        assert!(!compatible(&text(16), &t(1, &[0.0; 2])));
    }

    #[test]
    fn a_batch_waits_to_refill_only_after_a_batched_pass_that_took_long_enough() {
        let mut r = Refill::default();
        assert_eq!(r.target(8), None, "nothing ran yet");
        r.record(1, Duration::from_millis(40));
        assert_eq!(r.target(8), None, "one client: never wait");
        r.record(16, Duration::from_millis(40));
        assert_eq!(r.target(8), Some((8, Duration::from_millis(4))), "a tenth of the pass, at most max_rows");
        r.record(6, Duration::from_secs(2));
        assert_eq!(r.target(8), Some((6, MAX_REFILL_WAIT)));
        r.record(8, Duration::from_micros(30));
        assert_eq!(r.target(8), None, "a microsecond model never waits");
    }

    #[test]
    fn an_output_without_the_batch_dimension_cannot_be_split() {
        let odd = HostTensor::from_f32("y", vec![2], &[1.0, 2.0]);
        assert!(split(vec![odd.clone()], &[1]).is_ok(), "one job takes any output");
        assert!(split(vec![odd], &[1, 2]).unwrap_err().to_string().contains("first dimension"));
    }
}
