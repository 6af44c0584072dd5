//! The conformance suite on a real Kafka-protocol broker: tansu, one private process per test.

mod common;
mod conformance;

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;

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

/// librdkafka 2.12 crashes the process when a broker that lost its topics sends Fetch
/// responses to clients that still use the old topic ids. Before the link unassigned its
/// consumer on losing every broker, restarts of 0.1 to 0.9 s under load crashed this test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_quick_broker_restarts() {
    common::init_tracing();
    let mut cluster = TansuCluster {
        broker: PrivateTansu::start(),
    };
    let sender = conformance::Instance::start(&cluster).await;
    let receiver = conformance::Instance::start(&cluster).await;
    let subscriber = receiver.client().await;
    let mut events = subscriber.subscribe(["quick"]).await.expect("subscribe");
    let publisher = sender.client().await;

    let load_hub = sender.hub.clone();
    let load = tokio::spawn(async move {
        for sequence in 0u64.. {
            // Refusals while the broker is away are expected.
            let _ = load_hub.publish(["load"], &sequence).await;
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    });

    for (round, pause_ms) in [20u64, 100, 300, 600, 900].into_iter().enumerate() {
        cluster.broker.stop();
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        cluster.broker.start_again();
        // Delivery across a reconnect is at most once: retry until one event crosses.
        let mut crossed = false;
        for attempt in 0..100 {
            let _ = publisher
                .publish(["quick"], &format!("{round}-{attempt}"))
                .await;
            if let Ok(Some(_event)) =
                tokio::time::timeout(Duration::from_millis(200), events.next()).await
            {
                crossed = true;
                break;
            }
        }
        assert!(
            crossed,
            "no event crossed instances after a restart of {pause_ms} ms"
        );
        // Skip events of this round that arrive late.
        while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(50), events.next()).await
        {
        }
    }
    load.abort();
}
