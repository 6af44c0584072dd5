//! Events delivered to subscribers.

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::de::DeserializeOwned;

/// One publication on one topic, as a subscriber receives it.
///
/// The data stays JSON-encoded until [`Event::decode`] is called, so forwarding an event costs
/// no re-encoding.
#[derive(Clone, PartialEq, Eq)]
pub struct Event {
    topic: Arc<str>,
    data: Bytes,
}

impl Event {
    /// Creates an event from a topic and JSON-encoded data.
    pub fn new(topic: impl Into<Arc<str>>, data: Bytes) -> Self {
        Self {
            topic: topic.into(),
            data,
        }
    }

    /// Returns the topic the event was published on (never the ALL_TOPICS marker).
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// Returns the event's data as encoded JSON.
    pub fn data_json(&self) -> &[u8] {
        &self.data
    }

    /// Returns the event's data as shared bytes of encoded JSON.
    pub fn data_bytes(&self) -> Bytes {
        self.data.clone()
    }

    /// Decodes the data into `T`.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        serde_json::from_slice(&self.data)
    }
}

impl fmt::Debug for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Event")
            .field("topic", &self.topic)
            .field("data", &String::from_utf8_lossy(&self.data))
            .finish()
    }
}
