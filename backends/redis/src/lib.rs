//! Redis backbone for tidings, on the [fred](https://docs.rs/fred) client.
//!
//! # How it works
//!
//! Each hub attached to a [`RedisBackbone`] opens two Redis connections: one that publishes and
//! one in subscribe mode. With the default per-topic layout:
//!
//! - a publication on topic `t` is sent as `PUBLISH tidings:t <envelope>`, one message per
//!   topic;
//! - a hub subscribes (`SUBSCRIBE tidings:t`) only while it has local subscribers of `t`, and
//!   batches the topics of one interest change into one command;
//! - ALL_TOPICS subscribers are served by `PSUBSCRIBE tidings:*`.
//!
//! The envelope is the JSON object `{"notifier_id": ..., "topics": [...], "data": ...}` that the
//! Python `EventBroadcaster` uses. The data is encoded once by the publishing hub and copied
//! into each topic's message.
//!
//! With `?channel=EventNotifier` in the URL, every publication goes to that one channel, as the
//! Python packages do, so Python and tidings instances can share one Redis during a migration.
//! Each instance then receives every message and keeps those whose topics it has interest in.
//!
//! When Redis goes away, local delivery continues, publications to other instances fail with
//! [`BackboneError::Unavailable`], and the link reconnects with exponential backoff. After
//! reconnecting it subscribes every current interest again. Each change is logged and reported
//! to the hub ([`tidings_core::Hub::backbone_state`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::Hub;
//! use tidings_redis::RedisBackbone;
//!
//! let backbone = RedisBackbone::from_url("redis://127.0.0.1:6379")?;
//! let hub = Hub::builder().backbone(backbone).build().await?;
//! # Ok(()) }
//! ```

mod config;
mod link;

use std::sync::Arc;

use async_trait::async_trait;
use tidings_core::{Backbone, BackboneError, BackboneLink, Inbound};

pub use config::{ChannelLayout, RedisConfig};

/// A Redis pub/sub backbone. Every hub attached to it opens its own connections.
#[derive(Debug, Clone)]
pub struct RedisBackbone {
    config: RedisConfig,
}

impl RedisBackbone {
    /// Creates a backbone with the given settings.
    pub fn new(config: RedisConfig) -> Self {
        Self { config }
    }

    /// Creates a backbone from a URL; see [`RedisConfig::from_url`].
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        RedisConfig::from_url(url).map(Self::new)
    }

    /// Returns the settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }
}

#[async_trait]
impl Backbone for RedisBackbone {
    fn name(&self) -> &'static str {
        "redis"
    }

    async fn attach(
        &self,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Box<dyn BackboneLink>, BackboneError> {
        let link = link::RedisLink::connect(&self.config, instance_id, inbound).await?;
        Ok(Box::new(link))
    }
}
