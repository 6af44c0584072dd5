//! Core of tidings: the wire protocol, the symmetric RPC channel, the pub/sub hub and the
//! traits that transports and backbones implement.
//!
//! Most applications use the `tidings` facade crate, which re-exports this crate together with
//! the WebSocket layer and the backbones picked by feature flags.
//!
//! # How it fits together
//!
//! - A [`Transport`](transport::Transport) carries frames (a WebSocket, or the in-process
//!   [`transport::pair`] in tests).
//! - [`rpc::spawn_connection`] runs a transport's reader and writer in one task and
//!   returns an [`RpcChannel`]: either side registers [`Methods`] and calls the other.
//! - A [`Hub`] keeps local subscribers and fans publications out; an [`Endpoint`] serves the
//!   pub/sub methods (`subscribe`, `unsubscribe`, `publish`, `ping`) on each connection.
//! - A [`Backbone`] carries publications between hubs of different
//!   instances.

pub mod backbone;
pub mod error;
pub mod event;
pub mod hub;
mod log_limit;
pub mod protocol;
pub mod rpc;
pub mod transport;

pub use backbone::{Acceptance, Backbone, BackboneLink, BackboneState, Envelope, Inbound};
pub use error::{BackboneError, CallError, ErrorCode, PubSubError, RpcError};
pub use event::Event;
pub use hub::{
    Endpoint, Hub, HubBuilder, HubConfig, HubStats, Subscription, TopicAction, TopicAuthorizer,
    ALL_TOPICS,
};
pub use rpc::{
    CallContext, ConnContext, ConnectionConfig, Methods, NoArgs, OverflowPolicy, RpcChannel,
};
