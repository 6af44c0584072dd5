//! WebSocket transport for tidings: the tower layer that serves the endpoint, and the
//! reconnecting client.
//!
//! - [`PubSubLayer`] serves pub/sub and RPC on one path of an axum `Router` or a plain hyper
//!   server, and passes every other request to the inner service.
//! - [`Client`] connects, calls, publishes and subscribes, and reconnects with exponential
//!   backoff and jitter, restoring every subscription.
//! - [`WsTransport`] adapts any tokio-tungstenite stream to the core `Transport` trait.

pub mod client;
pub mod server;
mod ws;

pub use client::{
    Client, ClientBuilder, ClientState, ClientSubscription, ConnectError, ReconnectPolicy,
    SubscriptionTask,
};
pub use server::{AuthRejection, Authorizer, PubSubLayer, PubSubService};
pub use ws::WsTransport;
