//! Error types shared by every tidings crate.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Machine-readable reason carried in an error response (`"error": {"code": ...}`).
///
/// The codes are part of the wire protocol: peers in other languages match on the string form.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ErrorCode {
    /// The peer has no method of that name.
    MethodNotFound,
    /// The arguments did not match the method's parameters.
    InvalidArguments,
    /// The frame was not valid JSON or not a valid envelope.
    InvalidFrame,
    /// The method failed while running.
    InternalError,
    /// The authorizer rejected the call for this connection.
    Forbidden,
    /// The operation did not complete in time.
    Timeout,
    /// A frame, topic or payload exceeded a configured limit.
    TooLarge,
    /// The connection already runs its maximum number of concurrent requests.
    TooManyRequests,
    /// A code this version does not know, kept verbatim.
    #[serde(untagged)]
    Other(String),
}

impl ErrorCode {
    /// Returns the wire form of the code, such as `"method_not_found"`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::MethodNotFound => "method_not_found",
            Self::InvalidArguments => "invalid_arguments",
            Self::InvalidFrame => "invalid_frame",
            Self::InternalError => "internal_error",
            Self::Forbidden => "forbidden",
            Self::Timeout => "timeout",
            Self::TooLarge => "too_large",
            Self::TooManyRequests => "too_many_requests",
            Self::Other(code) => code,
        }
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error that a method returns to its caller, sent on the wire as
/// `"result_type": "error"` with `"error": {"code", "message"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct RpcError {
    /// The machine-readable reason.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

impl RpcError {
    /// Creates an error with the given code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }

    /// Creates a `method_not_found` error for `method`.
    pub fn method_not_found(method: &str) -> Self {
        Self::new(
            ErrorCode::MethodNotFound,
            format!("method {method:?} not found"),
        )
    }

    /// Creates an `invalid_arguments` error.
    pub fn invalid_arguments(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidArguments, message)
    }

    /// Creates an `internal_error` error.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InternalError, message)
    }

    /// Creates a `forbidden` error.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }
}

/// Failure of an outgoing call.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The peer responded with an error. Inspect its code to decide what to do.
    #[error("remote error: {0}")]
    Remote(RpcError),
    /// The peer did not respond within the call's timeout. The call may still run on the peer.
    #[error(
        "call to {method:?} timed out after {timeout:?}; raise the timeout with call_with_timeout"
    )]
    Timeout {
        /// The method that was called.
        method: String,
        /// The timeout that elapsed.
        timeout: std::time::Duration,
    },
    /// The connection closed before the response arrived. Retry once it is back.
    #[error("connection closed before {method:?} was answered")]
    ConnectionClosed {
        /// The method that was called.
        method: String,
    },
    /// There is no connection right now (a client between reconnects). Retry later.
    #[error("not connected")]
    NotConnected,
    /// The peer responded, but its result does not match the expected type.
    #[error("result of {method:?} has an unexpected shape")]
    InvalidResult {
        /// The method that was called.
        method: String,
        /// The decoding failure.
        #[source]
        source: serde_json::Error,
    },
    /// The arguments could not be serialized to a JSON object.
    #[error("arguments of {method:?} could not be encoded as a JSON object")]
    InvalidArguments {
        /// The method that was called.
        method: String,
        /// The encoding failure, if serde reported one.
        #[source]
        source: Option<serde_json::Error>,
    },
    /// The request would exceed the connection's outbound queue; the connection is closing.
    #[error("outbound queue of the connection is full")]
    QueueFull,
}

impl CallError {
    /// Returns the error code when the peer responded with an error.
    pub fn remote_code(&self) -> Option<&ErrorCode> {
        match self {
            Self::Remote(error) => Some(&error.code),
            _ => None,
        }
    }

    /// Returns true when retrying the same call later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Timeout { .. } | Self::ConnectionClosed { .. } | Self::NotConnected
        ) || matches!(self, Self::Remote(error) if error.code == ErrorCode::TooManyRequests)
    }
}

/// Failure of a backbone operation.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum BackboneError {
    /// The broker cannot be reached now; the backbone keeps reconnecting by itself.
    #[error("backbone {backbone} is unavailable")]
    Unavailable {
        /// The backbone's name, such as `redis`.
        backbone: &'static str,
        /// The underlying failure.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },
    /// The backbone URL or settings are invalid.
    #[error("invalid backbone configuration: {0}")]
    Config(String),
    /// Another failure reported by the broker client.
    #[error("backbone {backbone} failed")]
    Other {
        /// The backbone's name, such as `redis`.
        backbone: &'static str,
        /// The underlying failure.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Failure of a server-side publish or subscribe.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PubSubError {
    /// The data could not be serialized to JSON.
    #[error("publication data could not be encoded as JSON")]
    Encode(#[source] serde_json::Error),
    /// A topic was empty or longer than the configured maximum.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The rejected topic, cut to 64 characters.
        topic: String,
        /// The reason for the rejection.
        reason: String,
    },
    /// The per-topic authorizer rejected the operation.
    #[error("forbidden topic {0:?}")]
    Forbidden(String),
    /// A publication named more distinct topics than allowed.
    #[error("publication has {count} topics, over the maximum of {max}; raise HubConfig::max_topics_per_publish")]
    TooManyTopics {
        /// The number of distinct topics.
        count: usize,
        /// The configured maximum.
        max: usize,
    },
    /// The publication was delivered locally but the backbone failed to carry it to other
    /// instances.
    #[error("publication was not sent to other instances")]
    Backbone(#[source] BackboneError),
}

impl PubSubError {
    /// Converts the error into the response sent to a remote caller.
    pub fn to_rpc_error(&self) -> RpcError {
        match self {
            Self::Encode(error) => RpcError::invalid_arguments(error.to_string()),
            Self::InvalidTopic { .. } => RpcError::invalid_arguments(self.to_string()),
            Self::Forbidden(_) => RpcError::forbidden(self.to_string()),
            Self::TooManyTopics { .. } => RpcError::new(ErrorCode::TooLarge, self.to_string()),
            Self::Backbone(error) => RpcError::internal(format!("{self}: {error}")),
        }
    }
}
