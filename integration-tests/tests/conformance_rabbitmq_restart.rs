//! The broker restart case on RabbitMQ: `rabbitmqctl stop_app` and `start_app`.
//!
//! It has a test binary of its own because it stops the shared broker; cargo runs test
//! binaries one after another, so no other test runs during the outage.

mod common;
mod conformance;

use std::sync::Arc;

use common::rabbitmq::{delete_exchanges, shared_url, start_app, stop_app, unique_exchange};
use tidings::{Backbone, RabbitMqBackbone, RabbitMqConfig};

struct RestartableRabbit {
    exchange: String,
}

#[async_trait::async_trait]
impl conformance::Cluster for RestartableRabbit {
    fn backbone(&self) -> Arc<dyn Backbone> {
        Arc::new(RabbitMqBackbone::new(
            RabbitMqConfig::new(shared_url()).exchange(&self.exchange),
        ))
    }

    async fn cleanup(&self) {
        delete_exchanges(&shared_url(), &self.exchange).await;
    }
}

#[async_trait::async_trait]
impl conformance::Restartable for RestartableRabbit {
    async fn stop_broker(&mut self) {
        tokio::task::spawn_blocking(stop_app)
            .await
            .expect("stop_app");
    }

    async fn start_broker(&mut self) {
        start_app().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_broker_restart() {
    common::init_tracing();
    let mut cluster = RestartableRabbit {
        exchange: unique_exchange(),
    };
    conformance::survives_broker_restart(&mut cluster).await;
    conformance::Cluster::cleanup(&cluster).await;
}
