//! The conformance suite on Kafka against rdkafka's in-process mock cluster (a mock: no
//! broker process), so it runs anywhere.

mod common;
mod conformance;

use std::sync::Arc;

use rdkafka::mocking::MockCluster;
use tidings::{Backbone, KafkaBackbone, KafkaConfig};

/// A mock cluster kept alive on a thread of its own, because its handle cannot move between
/// threads; dropping `_keep` ends the thread and the cluster.
struct MockKafka {
    bootstrap: String,
    topic: String,
    _keep: std::sync::mpsc::Sender<()>,
}

impl MockKafka {
    fn new() -> Self {
        let topic = format!("tidings-test-{}", common::unique());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let (keep, until_dropped) = std::sync::mpsc::channel::<()>();
        let name = topic.clone();
        std::thread::spawn(move || {
            let cluster = MockCluster::new(1).expect("start the mock cluster");
            // The mock broker does not support CreateTopics, so the topic is made here.
            cluster
                .create_topic(&name, 3, 1)
                .expect("create topic on the mock cluster");
            ready_tx
                .send(cluster.bootstrap_servers())
                .expect("report bootstrap servers");
            let _ = until_dropped.recv();
        });
        let bootstrap = ready_rx.recv().expect("mock cluster started");
        Self {
            bootstrap,
            topic,
            _keep: keep,
        }
    }
}

#[async_trait::async_trait]
impl conformance::Cluster for MockKafka {
    fn backbone(&self) -> Arc<dyn Backbone> {
        let config = KafkaConfig::new(&self.bootstrap).topic(&self.topic);
        Arc::new(KafkaBackbone::new(config))
    }
}

conformance_tests!(MockKafka::new());

#[tokio::test]
async fn oversized_record_names_the_limit() {
    common::init_tracing();
    let kafka = MockKafka::new();
    let backbone = conformance::Cluster::backbone(&kafka);
    let hub = common::within(
        "attach",
        tidings::Hub::builder().backbone_arc(backbone).build(),
    )
    .await
    .expect("hub attaches");
    // Above librdkafka's default message.max.bytes (1,000,000), below the 1 MiB frame limit.
    let data = "x".repeat(1_010_000);
    let error = common::within("publish", hub.publish(["big"], &data))
        .await
        .expect_err("a record over message.max.bytes is refused");
    let chain = std::iter::successors(Some(&error as &dyn std::error::Error), |error| {
        error.source()
    })
    .map(ToString::to_string)
    .collect::<Vec<_>>()
    .join(": ");
    assert!(chain.contains("message.max.bytes"), "{chain}");
    assert!(chain.contains("1010"), "{chain}");

    // The link stays usable for records within the limit.
    hub.publish(["small"], &"fits")
        .await
        .expect("a small record is accepted");
}
