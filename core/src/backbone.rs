//! The `Backbone` traits that carry publications between server instances.
//!
//! A [`Backbone`] is the shared medium (an in-process bus, a Redis server, a RabbitMQ
//! exchange...). Each hub attaches to it once and receives a [`BackboneLink`], its own handle
//! with its own interest set. Incoming publications reach the hub through [`Inbound`].

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::error::BackboneError;

/// A publication as it travels between instances.
///
/// Its JSON form, `{"notifier_id": ..., "topics": [...], "data": ...}`, is the message the
/// Python `EventBroadcaster` of fastapi-websocket-pubsub puts on its backbone.
#[derive(Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The id of the instance that published it; an instance drops its own envelopes.
    pub notifier_id: String,
    /// The topics it was published on.
    pub topics: Vec<String>,
    /// The data, encoded as JSON once by the publishing instance.
    pub data: Bytes,
}

#[derive(Serialize)]
struct EnvelopeRef<'a> {
    notifier_id: &'a str,
    topics: &'a [String],
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeOwned {
    notifier_id: String,
    topics: Vec<String>,
    data: Box<RawValue>,
}

impl Envelope {
    /// Encodes the envelope as JSON.
    pub fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
        let data: &RawValue = serde_json::from_slice(&self.data)?;
        serde_json::to_vec(&EnvelopeRef {
            notifier_id: &self.notifier_id,
            topics: &self.topics,
            data,
        })
    }

    /// Encodes the envelope for one of its topics, as `{"notifier_id", "topics": [topic],
    /// "data"}`: brokers carry one message per topic, the way Python instances publish.
    pub fn encode_for_topic(&self, topic: &str) -> Result<Vec<u8>, BackboneError> {
        let data: &RawValue = serde_json::from_slice(&self.data).map_err(|error| {
            BackboneError::Config(format!("publication data is not valid JSON: {error}"))
        })?;
        let topics = [topic.to_owned()];
        serde_json::to_vec(&EnvelopeRef {
            notifier_id: &self.notifier_id,
            topics: &topics,
            data,
        })
        .map_err(|error| {
            BackboneError::Config(format!("publication could not be encoded: {error}"))
        })
    }

    /// Decodes an envelope from JSON.
    pub fn from_json(json: &[u8]) -> Result<Self, serde_json::Error> {
        let owned: EnvelopeOwned = serde_json::from_slice(json)?;
        Ok(Self {
            notifier_id: owned.notifier_id,
            topics: owned.topics,
            data: Bytes::from(owned.data.get().to_owned()),
        })
    }
}

impl fmt::Debug for Envelope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Envelope")
            .field("notifier_id", &self.notifier_id)
            .field("topics", &self.topics)
            .field("data_len", &self.data.len())
            .finish()
    }
}

/// Returns `url` with its password replaced by `***`, for logs and error messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            format!("{}://***@{}", &url[..scheme_end], &url[at + 1..])
        }
        _ => url.to_owned(),
    }
}

/// Connection state of a backbone link, as reported to the hub.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum BackboneState {
    /// The hub has no backbone: it serves only its own connections.
    Local,
    /// The link is connecting or reconnecting.
    Connecting,
    /// The link is connected and every interest is in place.
    Connected,
    /// The link lost its broker; it keeps reconnecting by itself.
    Disconnected {
        /// Why, as reported by the broker client.
        reason: String,
    },
}

/// Receives what a backbone link delivers to its hub.
pub trait Inbound: Send + Sync + 'static {
    /// Delivers one envelope from another instance. Must not block.
    fn deliver(&self, envelope: Envelope);

    /// Reports a change of the link's connection state.
    fn state_changed(&self, state: BackboneState);
}

/// A medium that carries publications between hubs.
#[async_trait]
pub trait Backbone: Send + Sync + 'static {
    /// Returns a short name for logs and errors, such as `"memory"` or `"redis"`.
    fn name(&self) -> &'static str;

    /// Attaches one hub. The link delivers envelopes for the topics it is subscribed to into
    /// `inbound`, except those whose `notifier_id` is `instance_id`.
    async fn attach(
        &self,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Box<dyn BackboneLink>, BackboneError>;
}

/// A publication handed to the broker client whose acceptance by the broker may still be
/// pending; see [`BackboneLink::send`].
#[must_use = "an acceptance reports whether the broker took the publication"]
pub struct Acceptance(Option<Confirmation>);

type Confirmation = Pin<Box<dyn Future<Output = Result<(), BackboneError>> + Send>>;

impl Acceptance {
    /// Returns an acceptance that is already complete.
    pub fn accepted() -> Self {
        Self(None)
    }

    /// Returns an acceptance that completes with `confirmation`.
    pub fn pending(
        confirmation: impl Future<Output = Result<(), BackboneError>> + Send + 'static,
    ) -> Self {
        Self(Some(Box::pin(confirmation)))
    }

    /// Waits until the broker accepted the publication or failed to.
    pub async fn wait(self) -> Result<(), BackboneError> {
        match self.0 {
            Some(confirmation) => confirmation.await,
            None => Ok(()),
        }
    }
}

impl fmt::Debug for Acceptance {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acceptance")
            .field("pending", &self.0.is_some())
            .finish()
    }
}

/// One hub's handle on a backbone.
///
/// Topics are exact strings, except [`crate::ALL_TOPICS`], which subscribes to every topic.
#[async_trait]
pub trait BackboneLink: Send + Sync + 'static {
    /// Sends one publication to the other instances and waits until the broker accepted it.
    async fn publish(&self, envelope: &Envelope) -> Result<(), BackboneError>;

    /// Hands one publication to the broker client and returns without waiting for the broker
    /// to accept it. Publications sent one after another reach the broker in that order, so a
    /// caller can keep order while waiting for several acceptances at once.
    ///
    /// The default implementation waits in [`BackboneLink::publish`] and returns a completed
    /// acceptance.
    async fn send(&self, envelope: &Envelope) -> Result<Acceptance, BackboneError> {
        self.publish(envelope)
            .await
            .map(|()| Acceptance::accepted())
    }

    /// Adds interest in `topics`. The link keeps the interest across reconnects, even when
    /// this call fails because the broker is down.
    async fn subscribe(&self, topics: &[String]) -> Result<(), BackboneError>;

    /// Removes interest in `topics`.
    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BackboneError>;

    /// Detaches from the backbone. Called once when the hub shuts down.
    async fn close(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_hides_password() {
        assert_eq!(
            redact_url("redis://user:secret@host:6379"),
            "redis://***@host:6379"
        );
        assert_eq!(redact_url("redis://host:6379"), "redis://host:6379");
    }

    #[test]
    fn envelope_for_one_topic() {
        let envelope = Envelope {
            notifier_id: "n".into(),
            topics: vec!["a".into(), "b".into()],
            data: Bytes::from_static(b"1"),
        };
        assert_eq!(
            envelope.encode_for_topic("b").unwrap(),
            br#"{"notifier_id":"n","topics":["b"],"data":1}"#
        );
    }

    #[test]
    fn envelope_round_trips_in_python_format() {
        let envelope = Envelope {
            notifier_id: "30b7570bcf6b46ceb44098d984d07da6".into(),
            topics: vec!["shared".into()],
            data: Bytes::from_static(b"\"via-redis\""),
        };
        let json = envelope.to_json().unwrap();
        assert_eq!(
            json,
            br#"{"notifier_id":"30b7570bcf6b46ceb44098d984d07da6","topics":["shared"],"data":"via-redis"}"#
        );
        assert_eq!(Envelope::from_json(&json).unwrap(), envelope);
    }
}
