//! Assembly of `notify` frames from pre-encoded parts.
//!
//! A publication's data and topic are encoded once. Each subscriber's frame is then built by
//! copying those parts around the per-subscriber subscription id, subscriber id and call id.

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::put_json_str;

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

    /// Builds one subscriber's frame. `subscription_json` and `subscriber_json` are JSON
    /// string literals, quotes included; `call_id` is 32 hex characters.
    pub fn frame(&self, subscription_json: &[u8], subscriber_json: &[u8], call_id: &[u8]) -> Bytes {
        let len = HEAD.len()
            + subscription_json.len()
            + SUBSCRIBER.len()
            + subscriber_json.len()
            + TOPIC.len()
            + self.topic_json.len()
            + DATA.len()
            + self.data.len()
            + CALL_ID.len()
            + call_id.len()
            + TAIL.len();
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
