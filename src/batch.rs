//! Jobs: what a request hands its model's worker, and what comes back.
//!
//! A job carries its deadline and a oneshot reply. The worker checks both before compute: a job
//! whose deadline passed answers DEADLINE_EXCEEDED, a job whose client went away (reply closed)
//! is dropped, so no compute is spent on either.

use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use crate::deadline::Deadline;
use crate::error::Result;
use crate::model::{HostTensor, Prediction};
use crate::tokenize::TextInfo;

/// What a job asks the model to run on.
#[derive(Debug)]
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
    if job.reply.is_closed() {
        Some(Skip::Cancelled)
    } else if job.deadline.is_expired() {
        Some(Skip::Expired)
    } else {
        None
    }
}
