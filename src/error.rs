//! The one error type of the request path and its one mapping to gRPC status codes.
//!
//! Every variant is named after what was violated and carries the data a client needs to fix
//! the request. `Display` is the client-facing message: it never contains a file path or a
//! libtorch trace. Those live in the `detail` fields, which only the server log sees (through
//! `Debug`). `code_label()` gives stable, low-cardinality labels for metrics.
//!
//! Below the boundary, what went wrong inside a model (a libtorch error, a CUDA fault, a
//! tokenizer error, a panic) is a [`Cause`]: typed, so the worker can tell a CUDA fault from a
//! bad input by its variant, and logged in full, never shown to a client.

use tonic::{Code, Status};

/// Everything that can go wrong between a request arriving and its answer leaving.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request named no model.
    #[error("`model` is required")]
    EmptyModelName,
    /// The model name is not of the allowed form (it never reaches a path).
    #[error("`model` must match ^[a-z0-9][a-z0-9_.-]{{0,63}}$, got {name:?}")]
    InvalidModelName {
        /// The offending name, cut to a readable length.
        name: String,
    },
    /// No model of that name is in the repository.
    #[error("model `{name}` not found; available models: {available}")]
    ModelNotFound {
        /// The requested name.
        name: String,
        /// The names that exist, comma-separated.
        available: String,
    },
    /// The version part of a request is neither a positive integer nor a label name.
    #[error("`version` must be a positive integer or a version label (^[a-z][a-z0-9_-]{{0,31}}$), got {given:?}")]
    InvalidVersion {
        /// What was sent, cut to a readable length.
        given: String,
    },
    /// The model has no such version.
    #[error("model `{model}` has no version {version}; served versions: {available}")]
    VersionNotFound {
        /// Model name.
        model: String,
        /// The version asked for.
        version: String,
        /// The served versions, comma-separated.
        available: String,
    },
    /// The model has no such version label.
    #[error("model `{model}` has no version label `{label}`; labels: {available}")]
    LabelNotFound {
        /// Model name.
        model: String,
        /// The label asked for.
        label: String,
        /// The labels that exist, comma-separated.
        available: String,
    },
    /// The version is on disk but not served (outside the policy, incompletely published, ...).
    #[error("version {version} of model `{model}` is not served: {reason}; served versions: {available}")]
    VersionNotServed {
        /// Model name.
        model: String,
        /// The version asked for.
        version: u64,
        /// Why it is not served.
        reason: String,
        /// The served versions, comma-separated.
        available: String,
    },
    /// SetLabels was asked for something that cannot be.
    #[error("version labels of model `{model}` refused: {reason}")]
    InvalidLabels {
        /// Model name.
        model: String,
        /// What is wrong.
        reason: String,
    },
    /// The model repository could not be read on a reload; `detail` (log only) says why.
    #[error("the model repository could not be read; the previous one stays in force (the server log has the reason)")]
    RepositoryUnreadable {
        /// Full reason, for the log only.
        detail: String,
    },
    /// The request named no model and the repository has no text model to default to.
    #[error("no text-classification model in this server's repository; name one in `model`")]
    NoTextModel,
    /// The device string is not `auto`, `cpu` or `cuda:N`.
    #[error("`device` must be \"auto\", \"cpu\" or \"cuda:N\", got {device:?}")]
    InvalidDevice {
        /// The offending device string, cut to a readable length.
        device: String,
    },
    /// The device is well-formed but this machine does not have it.
    #[error("device `{device}` is not available on this server; available devices: {available}")]
    DeviceUnavailable {
        /// The requested device.
        device: String,
        /// The devices this server has, comma-separated.
        available: String,
    },
    /// A request field holds a value the model cannot take.
    #[error("{field}: {reason}")]
    InvalidInput {
        /// Where in the request, e.g. `inputs[0].shape` or `rows[2]`.
        field: String,
        /// What is wrong and what would be right.
        reason: String,
    },
    /// The model's queue is full; the request was not admitted.
    #[error("model `{model}` on {device} is at capacity ({capacity} queued requests); retry later")]
    QueueFull {
        /// Model name.
        model: String,
        /// Device name.
        device: String,
        /// The queue bound that was hit.
        capacity: usize,
    },
    /// The server is handling as many requests as it may.
    #[error("server is at its limit of {limit} requests in flight; model `{model}` request refused, retry later")]
    InflightLimit {
        /// The model the request was for.
        model: String,
        /// The in-flight bound.
        limit: usize,
    },
    /// The client sent more than its rate allows.
    #[error("rate limit exceeded; retry after {retry_after_ms} ms")]
    RateLimited {
        /// When a token will be available again.
        retry_after_ms: u64,
    },
    /// The request's deadline passed before it was answered.
    #[error("deadline exceeded while {stage}")]
    DeadlineExceeded {
        /// Where the time ran out: `queued`, `computing`, `loading`.
        stage: &'static str,
    },
    /// The call carried no valid key where one is required.
    #[error("unauthenticated: {reason}")]
    Unauthenticated {
        /// What was missing or wrong (never the key itself).
        reason: &'static str,
    },
    /// The key is valid but does not open this RPC.
    #[error("{rpc} needs an admin key; the key sent opens inference RPCs only")]
    PermissionDenied {
        /// The RPC path.
        rpc: String,
    },
    /// A request message larger than `--max-message-bytes` (answered by the transport).
    #[error("the request message is larger than this server's limit of {limit} bytes (--max-message-bytes)")]
    MessageTooLarge {
        /// The configured limit.
        limit: usize,
    },
    /// An HTTP request to a path no endpoint answers.
    #[error("no endpoint at {path}; the API roots are /v2 (KServe v2 REST), /v1 (torchwire JSON) and / (status page)")]
    NoSuchPath {
        /// The path asked for (clipped).
        path: String,
    },
    /// An HTTP request with a method its path does not take.
    #[error("{method} is not allowed on {path}; use {allowed}")]
    MethodNotAllowed {
        /// The method sent.
        method: String,
        /// The path (clipped).
        path: String,
        /// The methods the path takes, as for an `Allow` header.
        allowed: &'static str,
    },
    /// An HTTP request body in a format the endpoint does not read.
    #[error("{reason}")]
    UnsupportedMediaType {
        /// What was sent and what is expected.
        reason: String,
    },
    /// The server is shutting down and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The model could not be loaded; `cause` (log only) says why.
    #[error("model `{model}` failed to load on {device}; the server log has the reason")]
    ModelLoad {
        /// Model name.
        model: String,
        /// Device name.
        device: String,
        /// Full reason, for the log only (shared: every waiter of one load gets it).
        cause: std::sync::Arc<Cause>,
    },
    /// The forward pass failed; `cause` (log only) says why.
    #[error("model `{model}` failed while running the request; the server log has the reason")]
    Forward {
        /// Model name.
        model: String,
        /// Full reason, for the log only (shared by every job of the failed batch).
        cause: std::sync::Arc<Cause>,
    },
    /// A server-side invariant broke; `detail` (log only) says which.
    #[error("internal error; the server log has the reason")]
    Internal {
        /// Full reason, for the log only.
        detail: String,
    },
}

/// What went wrong inside a model or its worker: the detail behind an INTERNAL answer (or a
/// FAILED model state), for the log and for operators, never for a client of Predict.
#[derive(Debug, thiserror::Error)]
pub enum Cause {
    /// libtorch refused an operation.
    #[error("libtorch: {0}")]
    Torch(tch::TchError),
    /// A CUDA error: the device context can no longer be trusted; the worker stops and the
    /// model is reloaded on the next request.
    #[error("CUDA fault: {0}")]
    Cuda(tch::TchError),
    /// A backend declared its state untrustworthy (see [`crate::model::WorkerFault`]).
    #[error("worker fault: {0}")]
    WorkerFault(String),
    /// The tokenizer could not be loaded or could not encode.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// The model returned something other than tensors, or tensors of a shape that cannot be
    /// split back into the batch's requests.
    #[error("model output: {0}")]
    Output(String),
    /// The model or tokenizer code panicked.
    #[error("panicked: {0}")]
    Panic(String),
    /// The model is larger than the whole memory budget.
    #[error(
        "the model needs {needed} bytes of parameters and buffers, more than the whole model memory budget of {budget} bytes"
    )]
    OverBudget {
        /// Parameter and buffer bytes of the model.
        needed: u64,
        /// `--memory-budget-bytes`.
        budget: u64,
    },
    /// The worker thread could not be started.
    #[error("spawning the worker thread: {0}")]
    Spawn(std::io::Error),
    /// The load ended without reporting an outcome (its thread died).
    #[error("the load thread ended without reporting an outcome")]
    Vanished,
    /// A failed load is remembered until the back-off passes.
    #[error("load failed recently ({0}); retry after the back-off")]
    RecentFailure(String),
    /// A forward pass was asked of a worker that has stopped.
    #[error("the worker has stopped")]
    WorkerStopped,
    /// The `.pt2` loader or a compiled package refused or failed (the C++ exception's message).
    #[error("pt2: {0}")]
    Pt2(String),
    /// A pass's input lies outside the range the `.pt2` package was exported for; the message
    /// names the range and is the client's (INVALID_ARGUMENT, see [`Error::from_forward`]).
    #[error("input outside the exported range: {0}")]
    OutOfRange(String),
    /// The version's self-test did not reproduce its golden outputs.
    #[error("self-test failed: {0}")]
    SelfTest(String),
}

impl Cause {
    /// A panic payload as a cause: a [`crate::model::WorkerFault`] stays one.
    pub fn from_panic(payload: &(dyn std::any::Any + Send)) -> Self {
        if let Some(crate::model::WorkerFault(reason)) = payload.downcast_ref::<crate::model::WorkerFault>() {
            return Cause::WorkerFault(reason.clone());
        }
        let what = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()));
        Cause::Panic(what.unwrap_or_else(|| "a non-string payload".to_owned()))
    }

    /// Whether the worker that met this cause must stop (its model is reloaded afresh).
    pub fn is_fatal(&self) -> bool {
        matches!(self, Cause::Cuda(_) | Cause::WorkerFault(_))
    }
}

/// Shorthand for the request path's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), reason: reason.into() }
    }

    /// The answer to a failed forward pass: INVALID_ARGUMENT naming the range for an input the
    /// model was not exported for (checked before any kernel ran), else INTERNAL.
    pub fn from_forward(model: &str, cause: &std::sync::Arc<Cause>) -> Self {
        match &**cause {
            Cause::OutOfRange(reason) => Error::invalid("inputs", reason.clone()),
            _ => Error::Forward { model: model.to_owned(), cause: std::sync::Arc::clone(cause) },
        }
    }

    /// Builds an [`Error::Internal`].
    pub fn internal(detail: impl Into<String>) -> Self {
        Error::Internal { detail: detail.into() }
    }

    /// The gRPC code this error answers with.
    pub fn code(&self) -> Code {
        match self {
            Error::EmptyModelName
            | Error::InvalidModelName { .. }
            | Error::InvalidDevice { .. }
            | Error::InvalidInput { .. }
            | Error::InvalidVersion { .. }
            | Error::InvalidLabels { .. }
            | Error::UnsupportedMediaType { .. } => Code::InvalidArgument,
            Error::ModelNotFound { .. }
            | Error::NoTextModel
            | Error::VersionNotFound { .. }
            | Error::LabelNotFound { .. }
            | Error::NoSuchPath { .. } => Code::NotFound,
            Error::MethodNotAllowed { .. } => Code::Unimplemented,
            Error::DeviceUnavailable { .. } | Error::VersionNotServed { .. } | Error::RepositoryUnreadable { .. } => {
                Code::FailedPrecondition
            }
            Error::QueueFull { .. }
            | Error::InflightLimit { .. }
            | Error::RateLimited { .. }
            | Error::MessageTooLarge { .. } => Code::ResourceExhausted,
            Error::DeadlineExceeded { .. } => Code::DeadlineExceeded,
            Error::ShuttingDown => Code::Unavailable,
            Error::Unauthenticated { .. } => Code::Unauthenticated,
            Error::PermissionDenied { .. } => Code::PermissionDenied,
            Error::ModelLoad { .. } | Error::Forward { .. } | Error::Internal { .. } => Code::Internal,
        }
    }

    /// A stable label naming the kind of error, for metrics and `errors_by_type`.
    pub fn code_label(&self) -> &'static str {
        match self {
            Error::EmptyModelName => "empty_model_name",
            Error::InvalidModelName { .. } => "invalid_model_name",
            Error::ModelNotFound { .. } => "model_not_found",
            Error::NoTextModel => "no_text_model",
            Error::InvalidVersion { .. } => "invalid_version",
            Error::VersionNotFound { .. } => "version_not_found",
            Error::LabelNotFound { .. } => "label_not_found",
            Error::VersionNotServed { .. } => "version_not_served",
            Error::InvalidLabels { .. } => "invalid_labels",
            Error::RepositoryUnreadable { .. } => "repository_unreadable",
            Error::InvalidDevice { .. } => "invalid_device",
            Error::DeviceUnavailable { .. } => "device_unavailable",
            Error::InvalidInput { .. } => "invalid_input",
            Error::QueueFull { .. } => "queue_full",
            Error::InflightLimit { .. } => "inflight_limit",
            Error::RateLimited { .. } => "rate_limited",
            Error::MessageTooLarge { .. } => "message_too_large",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
            Error::NoSuchPath { .. } => "no_such_path",
            Error::MethodNotAllowed { .. } => "method_not_allowed",
            Error::UnsupportedMediaType { .. } => "unsupported_media_type",
            Error::ShuttingDown => "shutting_down",
            Error::Unauthenticated { .. } => "unauthenticated",
            Error::PermissionDenied { .. } => "permission_denied",
            Error::ModelLoad { .. } => "model_load_failed",
            Error::Forward { .. } => "forward_failed",
            Error::Internal { .. } => "internal",
        }
    }
}

impl From<Error> for Status {
    fn from(err: Error) -> Self {
        Status::from(&err)
    }
}

impl From<&Error> for Status {
    fn from(err: &Error) -> Self {
        let mut status = Status::new(err.code(), err.to_string());
        if let Error::RateLimited { retry_after_ms } = err {
            status.metadata_mut().insert("retry-after-ms", (*retry_after_ms).into());
        }
        status
    }
}

/// Cuts client-supplied text to at most `max` characters for an error message.
pub fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((i, _)) => format!("{}…", &s[..i]),
        None => s.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_error_maps_to_its_code() {
        let s = || "x".to_owned();
        let table = [
            (Error::EmptyModelName, Code::InvalidArgument),
            (Error::InvalidModelName { name: s() }, Code::InvalidArgument),
            (Error::ModelNotFound { name: s(), available: s() }, Code::NotFound),
            (Error::NoTextModel, Code::NotFound),
            (Error::InvalidVersion { given: s() }, Code::InvalidArgument),
            (Error::VersionNotFound { model: s(), version: s(), available: s() }, Code::NotFound),
            (Error::LabelNotFound { model: s(), label: s(), available: s() }, Code::NotFound),
            (Error::VersionNotServed { model: s(), version: 1, reason: s(), available: s() }, Code::FailedPrecondition),
            (Error::InvalidLabels { model: s(), reason: s() }, Code::InvalidArgument),
            (Error::RepositoryUnreadable { detail: s() }, Code::FailedPrecondition),
            (Error::InvalidDevice { device: s() }, Code::InvalidArgument),
            (Error::DeviceUnavailable { device: s(), available: s() }, Code::FailedPrecondition),
            (Error::invalid("f", "r"), Code::InvalidArgument),
            (Error::QueueFull { model: s(), device: s(), capacity: 1 }, Code::ResourceExhausted),
            (Error::InflightLimit { model: s(), limit: 1 }, Code::ResourceExhausted),
            (Error::RateLimited { retry_after_ms: 5 }, Code::ResourceExhausted),
            (Error::MessageTooLarge { limit: 5 }, Code::ResourceExhausted),
            (Error::DeadlineExceeded { stage: "queued" }, Code::DeadlineExceeded),
            (Error::NoSuchPath { path: s() }, Code::NotFound),
            (Error::MethodNotAllowed { method: s(), path: s(), allowed: "GET" }, Code::Unimplemented),
            (Error::UnsupportedMediaType { reason: s() }, Code::InvalidArgument),
            (Error::ShuttingDown, Code::Unavailable),
            (Error::Unauthenticated { reason: "r" }, Code::Unauthenticated),
            (Error::PermissionDenied { rpc: s() }, Code::PermissionDenied),
            (Error::ModelLoad { model: s(), device: s(), cause: Cause::Vanished.into() }, Code::Internal),
            (Error::Forward { model: s(), cause: Cause::WorkerStopped.into() }, Code::Internal),
            (Error::internal("x"), Code::Internal),
            (Error::from_forward("m", &Cause::OutOfRange("dim 1".into()).into()), Code::InvalidArgument),
            (Error::from_forward("m", &Cause::Pt2("kernel threw".into()).into()), Code::Internal),
        ];
        for (err, code) in table {
            let label = err.code_label();
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{label}");
        }
    }

    #[test]
    fn client_messages_never_carry_the_detail() {
        let err = Error::ModelLoad {
            model: "m".into(),
            device: "cpu".into(),
            cause: Cause::Tokenizer("open /secret/path/tokenizer.json: no such file".into()).into(),
        };
        let status = Status::from(err);
        assert!(!status.message().contains("/secret"), "{}", status.message());
        assert!(status.message().contains("`m`"));
    }

    #[test]
    fn clip_cuts_long_text_on_char_boundaries() {
        assert_eq!(clip("abc", 5), "abc");
        assert_eq!(clip("ééééé", 2), "éé…");
    }
}
