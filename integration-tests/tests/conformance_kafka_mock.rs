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
