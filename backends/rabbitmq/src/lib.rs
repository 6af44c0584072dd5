//! RabbitMQ (AMQP 0-9-1) backbone for tidings, on the [lapin](https://docs.rs/lapin) client.
//!
//! # How it works
//!
//! Two exchanges, declared by every instance (names configurable):
//!
//! - `tidings.all`, a fanout exchange where every publication enters, with the pub/sub topic
//!   as routing key;
//! - `tidings`, a direct exchange bound to `tidings.all` (an exchange-to-exchange binding), so
//!   it receives every publication and routes it by exact topic.
//!
//! Each instance consumes from one exclusive, auto-delete, server-named queue. While the hub
//! has local subscribers of a topic, the queue has a binding on `tidings` with that topic as
//! binding key; the binding is removed when the last subscriber leaves. While the hub has
//! ALL_TOPICS subscribers, the queue is also bound to `tidings.all`, which delivers everything.
//!
//! Why two exchanges: one publish reaches both exact and ALL_TOPICS queues, and the direct
//! exchange keeps topic matching exact. A topic exchange would serve ALL_TOPICS with a `#`
//! binding, but it treats `.`, `*` and `#` in binding keys as pattern syntax, so a topic such
//! as `orders.*` would match other topics. RabbitMQ puts a message into a queue once even when
//! several bindings of the same publication match it.
//!
//! Messages carry the JSON envelope `{"notifier_id", "topics", "data"}`, one message per
//! topic. Publishing uses publisher confirms: [`BackboneLink::publish`] returns after the broker
//! accepted the message. Consumption is without acknowledgements (`no_ack`), so prefetch
//! limits do not apply and the broker streams messages as fast as the connection carries
//! them; delivery between instances is at most once, as on every tidings backbone.
//!
//! When the broker goes away, local delivery continues, publications to other instances fail
//! with [`BackboneError::Unavailable`], and the link reconnects with exponential backoff. After
//! reconnecting it declares the exchanges and a new queue, and binds every current interest.
//! Each change is logged and reported to the hub ([`tidings_core::Hub::backbone_state`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::Hub;
//! use tidings_rabbitmq::RabbitMqBackbone;
//!
//! let backbone = RabbitMqBackbone::from_url("amqp://guest:guest@127.0.0.1:5672/%2f")?;
//! let hub = Hub::builder().backbone(backbone).build().await?;
//! # Ok(()) }
//! ```

mod config;
mod link;

use std::sync::Arc;

use async_trait::async_trait;
use tidings_core::{Backbone, BackboneError, BackboneLink, Inbound};

pub use config::RabbitMqConfig;

/// A RabbitMQ backbone. Every hub attached to it opens its own connection and queue.
#[derive(Debug, Clone)]
pub struct RabbitMqBackbone {
    config: RabbitMqConfig,
}

impl RabbitMqBackbone {
    /// Creates a backbone with the given settings.
    pub fn new(config: RabbitMqConfig) -> Self {
        Self { config }
    }

    /// Creates a backbone from a URL; see [`RabbitMqConfig::from_url`].
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        RabbitMqConfig::from_url(url).map(Self::new)
    }

    /// Returns the settings.
    pub fn config(&self) -> &RabbitMqConfig {
        &self.config
    }
}

#[async_trait]
impl Backbone for RabbitMqBackbone {
    fn name(&self) -> &'static str {
        "rabbitmq"
    }

    async fn attach(
        &self,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Box<dyn BackboneLink>, BackboneError> {
        let link = link::RabbitMqLink::connect(self.config.clone(), instance_id, inbound).await?;
        Ok(Box::new(link))
    }
}
