//! Assembly of `notify` frames from pre-encoded parts.
//!
//! A publication's data and topic are encoded once. The publisher queues a [`NotifyJob`] per
//! subscriber, which shares those parts, and each connection's writer builds its frame by
//! copying them around the subscription id, subscriber id and call id.

use std::sync::Arc;

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::{put_json_str, CallId};

const HEAD: &[u8] = br#"{"request":{"method":"notify","arguments":{"subscription":{"id":"#;
const SUBSCRIBER: &[u8] = br#","subscriber_id":"#;
const TOPIC: &[u8] = br#","topic":"#;
const DATA: &[u8] = br#","notifier_id":null},"data":"#;
const CALL_ID: &[u8] = br#"},"call_id":""#;
const TAIL: &[u8] = br#""},"response":null}"#;

/// The parts of a notify frame shared by every subscriber of one publication on one topic.
#[derive(Debug, Clone)]
pub struct PreparedNotify {
    topic_json: Bytes,
    data: Bytes,
}

impl PreparedNotify {
    /// Prepares a topic and already-encoded JSON data.
    pub fn new(topic: &str, data: Bytes) -> Self {
        let mut topic_json = BytesMut::with_capacity(topic.len() + 2);
        put_json_str(&mut topic_json, topic);
        Self {
            topic_json: topic_json.freeze(),
            data,
        }
    }

    /// Returns the length of a frame built by [`Self::frame`] with these parts.
    pub fn frame_len(
        &self,
        subscription_json: &[u8],
        subscriber_json: &[u8],
        call_id: &[u8],
    ) -> usize {
        HEAD.len()
            + subscription_json.len()
            + SUBSCRIBER.len()
            + subscriber_json.len()
            + TOPIC.len()
            + self.topic_json.len()
            + DATA.len()
            + self.data.len()
            + CALL_ID.len()
            + call_id.len()
            + TAIL.len()
    }

    /// Builds one subscriber's frame. `subscription_json` and `subscriber_json` are JSON
    /// string literals, quotes included; `call_id` is 32 hex characters.
    pub fn frame(&self, subscription_json: &[u8], subscriber_json: &[u8], call_id: &[u8]) -> Bytes {
        let len = self.frame_len(subscription_json, subscriber_json, call_id);
        let mut out = BytesMut::with_capacity(len);
        out.put_slice(HEAD);
        out.put_slice(subscription_json);
        out.put_slice(SUBSCRIBER);
        out.put_slice(subscriber_json);
        out.put_slice(TOPIC);
        out.put_slice(&self.topic_json);
        out.put_slice(DATA);
        out.put_slice(&self.data);
        out.put_slice(CALL_ID);
        out.put_slice(call_id);
        out.put_slice(TAIL);
        out.freeze()
    }
}

/// The ids of one subscription of one connection, as JSON string literals.
#[derive(Debug)]
pub(crate) struct NotifyIds {
    pub(crate) subscription_json: Bytes,
    pub(crate) subscriber_json: Bytes,
}

/// The parts of a publication's notify frames that every subscriber shares: topic, data and
/// call id. The call id is unique per publication, and the server awaits no response to it.
#[derive(Debug)]
pub(crate) struct SharedNotify {
    pub(crate) prepared: PreparedNotify,
    pub(crate) call_id: CallId,
}

/// One subscriber's notify, queued by the publisher and built into a frame by the writer, so
/// the publisher neither allocates nor copies the data per subscriber.
#[derive(Debug)]
pub(crate) struct NotifyJob {
    shared: Arc<SharedNotify>,
    ids: Arc<NotifyIds>,
}

impl NotifyJob {
    pub(crate) fn new(shared: Arc<SharedNotify>, ids: Arc<NotifyIds>) -> Self {
        Self { shared, ids }
    }

    /// Returns the length of the frame [`Self::build`] returns.
    pub(crate) fn len(&self) -> usize {
        self.shared.prepared.frame_len(
            &self.ids.subscription_json,
            &self.ids.subscriber_json,
            self.shared.call_id.as_bytes(),
        )
    }

    /// Builds the frame.
    pub(crate) fn build(&self) -> Bytes {
        self.shared.prepared.frame(
            &self.ids.subscription_json,
            &self.ids.subscriber_json,
            self.shared.call_id.as_bytes(),
        )
    }
}

/// Encodes `text` as a JSON string literal, quotes included.
pub fn json_string(text: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(text.len() + 2);
    put_json_str(&mut out, text);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};

    #[test]
    fn assembled_frame_equals_whole_serialization() {
        let prepared = PreparedNotify::new("news \"x\"", Bytes::from_static(br#"{"n":1}"#));
        let frame = prepared.frame(
            &json_string("712a8d8113b342b8892ebb97c36c4fd2"),
            &json_string("8c18fc588be54dc0a5cd008843449b53"),
            b"3cb38897bfe649b6a002a73c1a04cb86",
        );
        let parsed: Value = serde_json::from_slice(&frame).unwrap();
        let expected = json!({
            "request": {
                "method": "notify",
                "arguments": {
                    "subscription": {
                        "id": "712a8d8113b342b8892ebb97c36c4fd2",
                        "subscriber_id": "8c18fc588be54dc0a5cd008843449b53",
                        "topic": "news \"x\"",
                        "notifier_id": null
                    },
                    "data": {"n": 1}
                },
                "call_id": "3cb38897bfe649b6a002a73c1a04cb86"
            },
            "response": null
        });
        assert_eq!(parsed, expected);
    }
}
