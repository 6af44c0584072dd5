//! The conformance suite on the in-process memory backbone.

mod common;
mod conformance;

use std::sync::Arc;

use tidings::{Backbone, MemoryBackbone};

struct MemoryCluster(MemoryBackbone);

#[async_trait::async_trait]
impl conformance::Cluster for MemoryCluster {
    fn backbone(&self) -> Arc<dyn Backbone> {
        Arc::new(self.0.clone())
    }
}

conformance_tests!(MemoryCluster(MemoryBackbone::new()));
