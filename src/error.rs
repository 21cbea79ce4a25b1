//! The one error type of the request path and its one mapping to gRPC status codes.
//!
//! Every variant is named after what was violated and carries the data a client needs to fix
//! the request. `Display` is the client-facing message: it never contains a file path or a
//! libtorch trace. Those live in the `detail` fields, which only the server log sees (through
//! `Debug`). `code_label()` gives stable, low-cardinality labels for metrics.

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
    /// The RPC exists in the API but is not served by this build yet.
    #[error("{rpc} is not implemented by this server yet")]
    Unimplemented {
        /// The RPC name.
        rpc: &'static str,
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
    /// The server is shutting down and takes no new work.
    #[error("server is shutting down")]
    ShuttingDown,
    /// The model could not be loaded; `detail` (log only) says why.
    #[error("model `{model}` failed to load on {device}; the server log has the reason")]
    ModelLoad {
        /// Model name.
        model: String,
        /// Device name.
        device: String,
        /// Full reason, for the log only.
        detail: String,
    },
    /// The forward pass failed; `detail` (log only) says why.
    #[error("model `{model}` failed while running the request; the server log has the reason")]
    Forward {
        /// Model name.
        model: String,
        /// Full reason, for the log only.
        detail: String,
    },
    /// A server-side invariant broke; `detail` (log only) says which.
    #[error("internal error; the server log has the reason")]
    Internal {
        /// Full reason, for the log only.
        detail: String,
    },
}

/// Shorthand for the request path's results.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Builds an [`Error::InvalidInput`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidInput { field: field.into(), reason: reason.into() }
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
            | Error::InvalidInput { .. } => Code::InvalidArgument,
            Error::ModelNotFound { .. } | Error::NoTextModel => Code::NotFound,
            Error::DeviceUnavailable { .. } => Code::FailedPrecondition,
            Error::Unimplemented { .. } => Code::Unimplemented,
            Error::QueueFull { .. } | Error::InflightLimit { .. } | Error::RateLimited { .. } => {
                Code::ResourceExhausted
            }
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
            Error::InvalidDevice { .. } => "invalid_device",
            Error::DeviceUnavailable { .. } => "device_unavailable",
            Error::InvalidInput { .. } => "invalid_input",
            Error::Unimplemented { .. } => "unimplemented",
            Error::QueueFull { .. } => "queue_full",
            Error::InflightLimit { .. } => "inflight_limit",
            Error::RateLimited { .. } => "rate_limited",
            Error::DeadlineExceeded { .. } => "deadline_exceeded",
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
        let mut status = Status::new(err.code(), err.to_string());
        if let Error::RateLimited { retry_after_ms } = err {
            status.metadata_mut().insert("retry-after-ms", retry_after_ms.into());
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
            (Error::InvalidDevice { device: s() }, Code::InvalidArgument),
            (Error::DeviceUnavailable { device: s(), available: s() }, Code::FailedPrecondition),
            (Error::invalid("f", "r"), Code::InvalidArgument),
            (Error::Unimplemented { rpc: "Stats" }, Code::Unimplemented),
            (Error::QueueFull { model: s(), device: s(), capacity: 1 }, Code::ResourceExhausted),
            (Error::InflightLimit { model: s(), limit: 1 }, Code::ResourceExhausted),
            (Error::RateLimited { retry_after_ms: 5 }, Code::ResourceExhausted),
            (Error::DeadlineExceeded { stage: "queued" }, Code::DeadlineExceeded),
            (Error::ShuttingDown, Code::Unavailable),
            (Error::Unauthenticated { reason: "r" }, Code::Unauthenticated),
            (Error::PermissionDenied { rpc: s() }, Code::PermissionDenied),
            (Error::ModelLoad { model: s(), device: s(), detail: s() }, Code::Internal),
            (Error::Forward { model: s(), detail: s() }, Code::Internal),
            (Error::internal("x"), Code::Internal),
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
            detail: "open /secret/path/model.pt: no such file".into(),
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
