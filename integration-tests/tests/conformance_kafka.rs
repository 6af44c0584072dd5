//! The conformance suite on a real Kafka-protocol broker: tansu, one private process per test.

mod common;
mod conformance;

use std::sync::Arc;

use common::kafka::PrivateTansu;
use tidings::{Backbone, KafkaBackbone, KafkaConfig};

struct TansuCluster {
    broker: PrivateTansu,
}

#[async_trait::async_trait]
impl conformance::Cluster for TansuCluster {
    fn backbone(&self) -> Arc<dyn Backbone> {
        Arc::new(KafkaBackbone::new(KafkaConfig::new(self.broker.brokers())))
    }
}

#[async_trait::async_trait]
impl conformance::Restartable for TansuCluster {
    async fn stop_broker(&mut self) {
        self.broker.stop();
    }

    async fn start_broker(&mut self) {
        self.broker.start_again();
    }
}

conformance_tests!(TansuCluster {
    broker: PrivateTansu::start()
});

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    common::init_tracing();
    let mut cluster = TansuCluster {
        broker: PrivateTansu::start(),
    };
    conformance::survives_broker_restart(&mut cluster).await;
}

#[tokio::test]
async fn missing_topic_without_creation_is_a_clear_error() {
    common::init_tracing();
    let broker = PrivateTansu::start();
    let backbone = KafkaBackbone::from_url(&format!(
        "kafka://{}/?topic=absent&create_topic=false",
        broker.brokers()
    ))
    .expect("valid URL");
    let error = common::within("attach", tidings::Hub::builder().backbone(backbone).build())
        .await
        .expect_err("attach without the topic fails");
    assert!(error.to_string().contains("absent"), "{error}");
    assert!(format!("{error}").contains("create"), "{error}");
}
