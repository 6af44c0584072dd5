//! The conformance suite on Redis with every publication on one channel, the layout Python
//! instances use.

mod common;
mod conformance;

use std::sync::Arc;

use common::redis::shared_url;
use tidings::{Backbone, RedisBackbone, RedisConfig};
use tidings_redis::ChannelLayout;

struct SingleChannelCluster {
    channel: String,
}

#[async_trait::async_trait]
impl conformance::Cluster for SingleChannelCluster {
    fn backbone(&self) -> Arc<dyn Backbone> {
        let config = RedisConfig::new(shared_url()).layout(ChannelLayout::Single {
            channel: self.channel.clone(),
        });
        Arc::new(RedisBackbone::new(config))
    }
}

conformance_tests!(SingleChannelCluster {
    channel: format!("tidings-test-{}-{}", std::process::id(), common::unique()),
});
