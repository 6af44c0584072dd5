//! tidings: realtime channels for Rust. Bidirectional RPC and publish/subscribe over
//! WebSockets, served as a tower layer, with a cross-instance backbone picked by a feature
//! flag.
//!
//! tidings speaks the wire protocol of the Python packages fastapi-websocket-rpc and
//! fastapi-websocket-pubsub, so their clients and servers work with it.
//!
//! # Example
//!
//! ```no_run
//! use axum::{routing::get, Router};
//! use tidings::{Hub, Methods, PubSubLayer, RpcError};
//!
//! #[derive(serde::Deserialize)]
//! struct AddArgs { a: i64, b: i64 }
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::builder().backbone(tidings::MemoryBackbone::new()).build().await?;
//! let methods = Methods::new().method("add", |args: AddArgs, _ctx| async move {
//!     Ok::<_, RpcError>(args.a + args.b)
//! });
//! let app: Router = Router::new()
//!     .route("/health", get(|| async { "ok" }))
//!     .layer(PubSubLayer::new(hub.clone()).path("/pubsub").methods(methods));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```
//!
//! # Feature flags
//!
//! | feature | default | backbone |
//! |---|---|---|
//! | `memory` | yes | `MemoryBackbone`: hubs in one process |
//! | `redis` | no | `RedisBackbone`: Redis pub/sub, through the fred client |
//! | `rabbitmq` | no | `RabbitMqBackbone`: RabbitMQ exchanges, through the lapin client |
//! | `kafka` | no | `KafkaBackbone`: one Kafka topic, through rdkafka (bundled librdkafka) |
//!
//! Choose the backbone at run time from a URL with [`backbone_from_url`].

use std::sync::Arc;

pub use tidings_core::{
    backbone, error, event, hub, protocol, rpc, transport, Backbone, BackboneError, BackboneLink,
    BackboneState, CallContext, CallError, ConnContext, ConnectionConfig, Endpoint, Envelope,
    ErrorCode, Event, Hub, HubBuilder, HubConfig, HubStats, Inbound, Methods, NoArgs,
    OverflowPolicy, PubSubError, RpcChannel, RpcError, Subscription, TopicAction, TopicAuthorizer,
    ALL_TOPICS,
};
#[cfg(feature = "kafka")]
pub use tidings_kafka::{KafkaBackbone, KafkaConfig};
#[cfg(feature = "memory")]
pub use tidings_memory::MemoryBackbone;
#[cfg(feature = "rabbitmq")]
pub use tidings_rabbitmq::{RabbitMqBackbone, RabbitMqConfig};
#[cfg(feature = "redis")]
pub use tidings_redis::{RedisBackbone, RedisConfig};
pub use tidings_ws::{
    client, server, AuthRejection, Authorizer, Client, ClientBuilder, ClientState,
    ClientSubscription, ConnectError, PubSubLayer, PubSubService, ReconnectPolicy,
    SubscriptionTask, WsTransport,
};

/// Builds a backbone from a URL, chosen by its scheme.
///
/// | scheme | backbone | feature |
/// |---|---|---|
/// | `memory://` | `MemoryBackbone`, shared by hubs of this process | `memory` |
/// | `redis://` | `RedisBackbone`; `?prefix=` sets the channel prefix, `?channel=EventNotifier` shares one channel with Python instances | `redis` |
/// | `amqp://`, `amqps://` (with the `tls` feature of tidings-rabbitmq) | `RabbitMqBackbone`; `?exchange=` sets the exchange name | `rabbitmq` |
/// | `kafka://host:9092,host2:9092` | `KafkaBackbone`; `?topic=` sets the Kafka topic, other parameters are librdkafka settings | `kafka` |
///
/// A scheme whose feature is off, or an unknown scheme, returns
/// [`BackboneError::Config`] naming the feature to enable.
pub fn backbone_from_url(url: &str) -> Result<Arc<dyn Backbone>, BackboneError> {
    let scheme = url
        .split_once("://")
        .map(|(scheme, _)| scheme)
        .ok_or_else(|| {
            BackboneError::Config(format!(
                "backbone URL {url:?} has no scheme; expected for example memory://"
            ))
        })?;
    match scheme {
        #[cfg(feature = "memory")]
        "memory" => Ok(Arc::new(MemoryBackbone::new())),
        #[cfg(not(feature = "memory"))]
        "memory" => Err(BackboneError::Config(
            "backbone memory:// needs the \"memory\" feature of tidings".into(),
        )),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => Ok(Arc::new(RedisBackbone::from_url(url)?)),
        #[cfg(not(feature = "redis"))]
        "redis" | "rediss" => Err(BackboneError::Config(
            "backbone redis:// needs the \"redis\" feature of tidings".into(),
        )),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => Ok(Arc::new(RabbitMqBackbone::from_url(url)?)),
        #[cfg(not(feature = "rabbitmq"))]
        "amqp" | "amqps" => Err(BackboneError::Config(
            "backbone amqp:// needs the \"rabbitmq\" feature of tidings".into(),
        )),
        #[cfg(feature = "kafka")]
        "kafka" => Ok(Arc::new(KafkaBackbone::from_url(url)?)),
        #[cfg(not(feature = "kafka"))]
        "kafka" => Err(BackboneError::Config(
            "backbone kafka:// needs the \"kafka\" feature of tidings".into(),
        )),
        other => Err(BackboneError::Config(format!(
            "unknown backbone scheme {other:?} in {url:?}; supported schemes: memory, redis, rediss, amqp, amqps, kafka"
        ))),
    }
}

/// Compiles the README's Rust examples as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_url_builds_memory_backbone() {
        let backbone = backbone_from_url("memory://").unwrap();
        assert_eq!(backbone.name(), "memory");
    }

    #[test]
    fn unknown_scheme_is_a_config_error() {
        let error = backbone_from_url("carrier-pigeon://coop").err().unwrap();
        assert!(matches!(error, BackboneError::Config(_)));
        assert!(error.to_string().contains("carrier-pigeon"));
    }

    #[test]
    fn url_without_scheme_is_a_config_error() {
        let error = backbone_from_url("localhost").err().unwrap();
        assert!(error.to_string().contains("no scheme"));
    }
}
