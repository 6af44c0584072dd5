//! The connection authorizer, run on the upgrade request before upgrading.

use std::any::Any;
use std::future::Future;

use async_trait::async_trait;
use http::StatusCode;
use tidings_core::ConnContext;

/// Reason an authorizer rejected an upgrade request. The request gets a response with the
/// matching status and never upgraded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// The request carries no valid credentials, so it gets 401.
    #[error("unauthorized: {0}")]
    Unauthorized(String),
    /// The credentials are valid but not allowed here, so the request gets 403.
    #[error("forbidden: {0}")]
    Forbidden(String),
}

impl AuthRejection {
    /// Returns the HTTP status sent for this rejection.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) => StatusCode::FORBIDDEN,
        }
    }
}

/// Decides whether an upgrade request may connect, from its headers and query.
///
/// What it returns becomes the connection's [`ConnContext`], visible to RPC handlers and to
/// the per-topic authorizer. Implemented for closures
/// `Fn(&http::request::Parts) -> impl Future<Output = Result<T, AuthRejection>>`.
#[async_trait]
pub trait Authorizer: Send + Sync + 'static {
    /// Checks the request and returns the connection context, or a rejection.
    async fn authorize(&self, request: &http::request::Parts)
        -> Result<ConnContext, AuthRejection>;
}

#[async_trait]
impl<F, Fut, T> Authorizer for F
where
    F: Fn(&http::request::Parts) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<T, AuthRejection>> + Send + 'static,
    T: Any + Send + Sync,
{
    async fn authorize(
        &self,
        request: &http::request::Parts,
    ) -> Result<ConnContext, AuthRejection> {
        self(request).await.map(ConnContext::new)
    }
}
