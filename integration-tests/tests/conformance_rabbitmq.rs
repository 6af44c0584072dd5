//! The conformance suite on RabbitMQ.

mod common;
mod conformance;

use std::sync::Arc;

use common::rabbitmq::{delete_exchanges, shared_url, unique_exchange};
use tidings::{Backbone, RabbitMqBackbone, RabbitMqConfig};

/// Instances sharing the broker and an exchange of their own, so parallel tests do not see
/// each other's publications.
struct RabbitCluster {
    exchange: String,
}

#[async_trait::async_trait]
impl conformance::Cluster for RabbitCluster {
    fn backbone(&self) -> Arc<dyn Backbone> {
        Arc::new(RabbitMqBackbone::new(
            RabbitMqConfig::new(shared_url()).exchange(&self.exchange),
        ))
    }

    async fn cleanup(&self) {
        delete_exchanges(&shared_url(), &self.exchange).await;
    }
}

conformance_tests!(RabbitCluster {
    exchange: unique_exchange()
});

#[tokio::test]
async fn unreachable_broker_fails_attach() {
    common::init_tracing();
    // Nothing listens on port 9 of 127.0.0.1 (discard).
    let backbone =
        RabbitMqBackbone::from_url("amqp://guest:guest@127.0.0.1:9/%2f").expect("valid URL");
    let error = common::within("attach", tidings::Hub::builder().backbone(backbone).build())
        .await
        .expect_err("attach to an unreachable broker fails");
    assert!(
        matches!(error, tidings::BackboneError::Unavailable { .. }),
        "{error:?}"
    );
}

#[tokio::test]
async fn longest_topic_crosses_instances() {
    use futures_util::StreamExt;
    common::init_tracing();
    let cluster = RabbitCluster {
        exchange: unique_exchange(),
    };
    let a = conformance::Instance::start(&cluster).await;
    let b = conformance::Instance::start(&cluster).await;
    // 255 bytes: the longest topic the hub accepts, and the longest AMQP routing key.
    let topic = "t".repeat(255);
    let subscriber = b.client().await;
    let mut events = subscriber
        .subscribe([topic.clone()])
        .await
        .expect("subscribe");
    a.hub
        .publish([topic.clone()], &"long")
        .await
        .expect("publish");
    let event = common::within("event", events.next()).await.expect("open");
    assert_eq!(event.topic(), topic);
    let too_long = "t".repeat(256);
    assert!(a.hub.publish([too_long], &"x").await.is_err());
    conformance::Cluster::cleanup(&cluster).await;
}
