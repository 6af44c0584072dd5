//! Kafka backbone for tidings, on [rdkafka](https://docs.rs/rdkafka) with a bundled
//! librdkafka (no system library needed).
//!
//! # How it works
//!
//! One Kafka topic (default `tidings`) carries every envelope, the JSON object
//! `{"notifier_id", "topics", "data"}`, one record per pub/sub topic, keyed by that topic so
//! one topic's records share a partition and keep their order.
//!
//! Every instance reads every partition, starting at the end as it was when the instance
//! attached, and hands the hub only records whose key is a topic it has subscribers for.
//! Partitions are assigned by hand rather than through a consumer group: attaching needs no
//! group join (which takes seconds), and each instance must read every partition anyway.
//! The trade-off is that partitions added to the topic later are picked up only by the
//! health check, which compares the partition count four times a second and reassigns, and no
//! offsets are committed, so nothing is replayed after a restart, as on the other backbones.
//!
//! The producer waits for the partition leader's acknowledgement only (`acks=1`) and batches
//! for at most 5 ms (`linger.ms=5`); BENCHMARKS.md has the measurements behind that choice.
//! Any librdkafka setting can be overridden, for example `?linger.ms=0` in the URL. The Kafka topic is created when it is missing
//! (3 partitions, replication 1, both configurable); with `create_topic=false` a missing topic
//! is a configuration error that says how to create it.
//!
//! When the broker goes away, local delivery continues and publications to other instances
//! fail with [`BackboneError::Unavailable`]. librdkafka reconnects by itself; once the broker
//! answers again the link creates the topic if it was lost and reassigns every partition from
//! its end. Each change is logged and reported to the hub
//! ([`tidings_core::Hub::backbone_state`]).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use tidings_core::Hub;
//! use tidings_kafka::KafkaBackbone;
//!
//! let backbone = KafkaBackbone::from_url("kafka://127.0.0.1:9092/?topic=tidings")?;
//! let hub = Hub::builder().backbone(backbone).build().await?;
//! # Ok(()) }
//! ```

mod config;
mod link;

use std::sync::Arc;

use async_trait::async_trait;
use tidings_core::{Backbone, BackboneError, BackboneLink, Inbound};

pub use config::KafkaConfig;

/// A Kafka backbone. Every hub attached to it has its own producer and consumer.
#[derive(Debug, Clone)]
pub struct KafkaBackbone {
    config: KafkaConfig,
}

impl KafkaBackbone {
    /// Creates a backbone with the given settings.
    pub fn new(config: KafkaConfig) -> Self {
        Self { config }
    }

    /// Creates a backbone from a URL; see [`KafkaConfig::from_url`].
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        KafkaConfig::from_url(url).map(Self::new)
    }

    /// Returns the settings.
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }
}

#[async_trait]
impl Backbone for KafkaBackbone {
    fn name(&self) -> &'static str {
        "kafka"
    }

    async fn attach(
        &self,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Box<dyn BackboneLink>, BackboneError> {
        let link = link::KafkaLink::connect(self.config.clone(), instance_id, inbound).await?;
        Ok(Box::new(link))
    }
}
