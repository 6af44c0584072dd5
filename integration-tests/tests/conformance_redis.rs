//! The conformance suite on Redis, with one channel per topic (the default layout).

mod common;
mod conformance;

use std::sync::Arc;

use common::redis::{shared_url, PrivateRedis};
use tidings::{Backbone, RedisBackbone, RedisConfig};
use tidings_redis::ChannelLayout;

/// Instances sharing one Redis and a channel prefix of their own, so parallel tests do not
/// see each other's publications.
struct RedisCluster {
    url: String,
    prefix: String,
}

impl RedisCluster {
    fn new(url: String) -> Self {
        Self {
            url,
            prefix: format!("tidings-test-{}-{}:", std::process::id(), common::unique()),
        }
    }
}

#[async_trait::async_trait]
impl conformance::Cluster for RedisCluster {
    fn backbone(&self) -> Arc<dyn Backbone> {
        let config = RedisConfig::new(&self.url).layout(ChannelLayout::PerTopic {
            prefix: self.prefix.clone(),
        });
        Arc::new(RedisBackbone::new(config))
    }
}

conformance_tests!(RedisCluster::new(shared_url()));

struct RestartableRedis {
    redis: PrivateRedis,
    cluster: RedisCluster,
}

#[async_trait::async_trait]
impl conformance::Cluster for RestartableRedis {
    fn backbone(&self) -> Arc<dyn Backbone> {
        self.cluster.backbone()
    }
}

#[async_trait::async_trait]
impl conformance::Restartable for RestartableRedis {
    async fn stop_broker(&mut self) {
        self.redis.stop();
    }

    async fn start_broker(&mut self) {
        self.redis.start_again();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    common::init_tracing();
    let redis = PrivateRedis::start();
    let cluster = RedisCluster::new(redis.url());
    let mut restartable = RestartableRedis { redis, cluster };
    conformance::survives_broker_restart(&mut restartable).await;
}

#[tokio::test]
async fn unreachable_redis_fails_attach() {
    common::init_tracing();
    let redis = PrivateRedis::start();
    let url = redis.url();
    drop(redis);
    let backbone = RedisBackbone::from_url(&url).expect("valid URL");
    let error = common::within("attach", tidings::Hub::builder().backbone(backbone).build())
        .await
        .expect_err("attach to a stopped Redis fails");
    assert!(
        matches!(error, tidings::BackboneError::Unavailable { .. }),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toggling_all_topics_keeps_exact_deliveries() {
    use futures_util::StreamExt;
    common::init_tracing();
    let cluster = RedisCluster::new(shared_url());
    let a = conformance::Instance::start(&cluster).await;
    let b = conformance::Instance::start(&cluster).await;
    let exact_client = b.client().await;
    let mut exact = exact_client.subscribe(["x"]).await.expect("subscribe x");
    let toggler = b.client().await;
    let publisher = a.hub.clone();

    let publishing = tokio::spawn(async move {
        for n in 0..2000 {
            publisher.publish(["x"], &n).await.expect("publish");
        }
    });
    // Subscribing and unsubscribing ALL_TOPICS on the receiving instance while events flow
    // must not drop or repeat any event of the exact subscription.
    for _ in 0..20 {
        let all = toggler
            .subscribe([tidings::ALL_TOPICS])
            .await
            .expect("subscribe all");
        all.unsubscribe().await;
    }
    for expected in 0..2000 {
        let event = common::within("exact event", exact.next())
            .await
            .expect("open");
        assert_eq!(event.decode::<i64>().expect("JSON"), expected);
    }
    publishing.await.expect("publisher");
}
