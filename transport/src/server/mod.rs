//! The server side: a tower layer that serves the pub/sub + RPC endpoint on one path.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::Hub;
//! use tidings_ws::PubSubLayer;
//!
//! let hub = Hub::new();
//! let layer = PubSubLayer::new(hub.clone()).path("/pubsub");
//! // Router::new().route("/health", get(health)).layer(layer)
//! # let _ = layer; Ok(()) }
//! ```

mod auth;
mod future;
mod layer;
mod service;

pub use auth::{AuthRejection, Authorizer};
pub use future::ResponseFuture;
pub use layer::PubSubLayer;
pub use service::PubSubService;
