//! The pub/sub hub: local subscribers, fan-out, and the link to the backbone.

mod endpoint;
pub(crate) mod frame;

/// Internals exposed for the crate's benchmarks only; not a stable API.
#[doc(hidden)]
pub mod bench_support {
    pub use super::frame::{json_string, PreparedNotify};
}
mod subscription;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, watch};

pub use endpoint::{Endpoint, TopicAction, TopicAuthorizer};
pub use subscription::Subscription;

use crate::backbone::{Acceptance, Backbone, BackboneLink, BackboneState, Envelope, Inbound};
use crate::error::{BackboneError, PubSubError};
use crate::event::Event;
use crate::log_limit::LogLimit;
use crate::protocol;
use crate::rpc::RpcChannel;
use frame::{json_string, NotifyIds, NotifyJob, PreparedNotify, SharedNotify};

/// The topic that subscribes to every topic. Events reach its subscribers under their real
/// topic name. The value is the one fastapi-websocket-pubsub uses.
pub const ALL_TOPICS: &str = "__EventNotifier_ALL_TOPICS__";

/// Limits of a hub. Every field has a safe default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Maximum topic length in bytes (default 255, the longest AMQP routing key, so every
    /// backbone can carry every valid topic).
    pub max_topic_len: usize,
    /// Maximum number of topics one connection may subscribe to (default 1024).
    pub max_subscriptions_per_connection: usize,
    /// Capacity, in events, of each server-side [`Subscription`] (default 1024). Events beyond
    /// it are dropped, counted and logged.
    pub subscription_capacity: usize,
    /// Maximum number of distinct topics in one publication (default 64).
    pub max_topics_per_publish: usize,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            max_topic_len: 255,
            max_subscriptions_per_connection: 1024,
            subscription_capacity: 1024,
            max_topics_per_publish: 64,
        }
    }
}

/// Counters of a hub, for tests, metrics and health checks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct HubStats {
    /// Publications made on this hub, by connections or server-side code.
    pub published: u64,
    /// Frames or events handed to local subscribers.
    pub delivered: u64,
    /// Envelopes from other instances that the backbone handed to this hub.
    pub backbone_received: u64,
    /// Deliveries that did not fit a subscriber's queue.
    pub dropped: u64,
}

#[derive(Default)]
struct Counters {
    published: AtomicU64,
    delivered: AtomicU64,
    backbone_received: AtomicU64,
    dropped: AtomicU64,
}

/// One local subscriber of one topic.
enum Subscriber {
    /// A remote peer, notified with a `notify` frame.
    Connection {
        channel: RpcChannel,
        ids: Arc<NotifyIds>,
    },
    /// Server-side code holding a [`Subscription`].
    Local { tx: mpsc::Sender<Event> },
}

type SubscriberKey = u64;

/// The subscriber a publication skips, so a publishing connection does not hear itself.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Exclude<'a> {
    Nobody,
    /// A connection's key in the topic map.
    Key(SubscriberKey),
    /// A channel id, as a publish request's notifier id names it.
    Channel(&'a str),
}

type TopicMap = HashMap<Arc<str>, HashMap<SubscriberKey, Subscriber>>;

struct HubInner {
    id: String,
    topics: RwLock<TopicMap>,
    link: OnceLock<Box<dyn BackboneLink>>,
    backbone_name: &'static str,
    // Held across the backbone call of an interest change, so changes reach the backbone in
    // the order they were made in the topic map.
    interest: tokio::sync::Mutex<()>,
    state: watch::Sender<BackboneState>,
    counters: Counters,
    next_key: AtomicU64,
    /// Call ids of notify frames, one per publication and topic.
    call_ids: protocol::CallIds,
    config: HubConfig,
}

/// The pub/sub hub of one server instance. Cheap to clone.
///
/// ```
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use tidings_core::Hub;
///
/// let hub = Hub::new();
/// let mut news = hub.subscribe(["news"]).await?;
/// hub.publish(["news"], &serde_json::json!({"headline": "hi"})).await?;
/// let event = news.next().await.unwrap();
/// assert_eq!(event.topic(), "news");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Hub {
    inner: Arc<HubInner>,
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("id", &self.inner.id)
            .field("backbone", &self.inner.backbone_name)
            .finish_non_exhaustive()
    }
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

/// Builds a [`Hub`] attached to a backbone.
pub struct HubBuilder {
    backbone: Option<Arc<dyn Backbone>>,
    id: Option<String>,
    config: HubConfig,
}

impl fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HubBuilder")
            .field("backbone", &self.backbone.as_ref().map(|b| b.name()))
            .field("id", &self.id)
            .field("config", &self.config)
            .finish()
    }
}

impl HubBuilder {
    /// Sets the backbone shared with other instances. Without one, the hub is local only.
    pub fn backbone(mut self, backbone: impl Backbone) -> Self {
        self.backbone = Some(Arc::new(backbone));
        self
    }

    /// Sets the backbone from a shared handle, such as one built from a URL at run time.
    pub fn backbone_arc(mut self, backbone: Arc<dyn Backbone>) -> Self {
        self.backbone = Some(backbone);
        self
    }

    /// Sets the instance id used as `notifier_id` on the backbone (default: random 32 hex).
    pub fn instance_id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the hub's limits.
    pub fn config(mut self, config: HubConfig) -> Self {
        self.config = config;
        self
    }

    /// Attaches to the backbone and returns the hub.
    pub async fn build(self) -> Result<Hub, BackboneError> {
        let id = self.id.unwrap_or_else(protocol::new_id);
        let initial = if self.backbone.is_some() {
            BackboneState::Connecting
        } else {
            BackboneState::Local
        };
        let backbone_name = self.backbone.as_ref().map_or("none", |b| b.name());
        let inner = Arc::new(HubInner::new(id, backbone_name, initial, self.config));
        let Some(backbone) = self.backbone else {
            return Ok(Hub { inner });
        };

        let inbound = Arc::new(HubInbound(Arc::downgrade(&inner)));
        let link = backbone.attach(&inner.id, inbound).await?;
        if inner.link.set(link).is_err() {
            unreachable!("the link is set once, here");
        }
        tracing::debug!(
            backbone = backbone_name,
            instance_id = inner.id.as_str(),
            "hub attached to backbone"
        );
        Ok(Hub { inner })
    }
}

impl Hub {
    /// Creates a local hub with no backbone.
    pub fn new() -> Self {
        let inner = HubInner::new(
            protocol::new_id(),
            "none",
            BackboneState::Local,
            HubConfig::default(),
        );
        Self {
            inner: Arc::new(inner),
        }
    }

    /// Starts building a hub with a backbone or custom limits.
    pub fn builder() -> HubBuilder {
        HubBuilder {
            backbone: None,
            id: None,
            config: HubConfig::default(),
        }
    }

    /// Returns the instance id, the `notifier_id` of this hub's envelopes on the backbone.
    pub fn id(&self) -> &str {
        &self.inner.id
    }

    /// Returns the hub's limits.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Returns the backbone's current connection state.
    pub fn backbone_state(&self) -> BackboneState {
        self.inner.state.borrow().clone()
    }

    /// Returns a receiver that is notified of every backbone state change.
    pub fn watch_backbone_state(&self) -> watch::Receiver<BackboneState> {
        self.inner.state.subscribe()
    }

    /// Returns the hub's counters.
    pub fn stats(&self) -> HubStats {
        let counters = &self.inner.counters;
        HubStats {
            published: counters.published.load(Ordering::Relaxed),
            delivered: counters.delivered.load(Ordering::Relaxed),
            backbone_received: counters.backbone_received.load(Ordering::Relaxed),
            dropped: counters.dropped.load(Ordering::Relaxed),
        }
    }

    /// Returns the number of topics with at least one local subscriber.
    pub fn topic_count(&self) -> usize {
        self.inner.read_topics().len()
    }

    /// Returns the number of local subscribers of `topic`.
    pub fn subscriber_count(&self, topic: &str) -> usize {
        self.inner.read_topics().get(topic).map_or(0, HashMap::len)
    }

    /// Publishes `data` on every topic in `topics`: to local subscribers at once, then to
    /// other instances through the backbone.
    ///
    /// The data is serialized once. Returns after every local frame is queued and the
    /// backbone accepted the publication.
    pub async fn publish<I, T, D>(&self, topics: I, data: &D) -> Result<(), PubSubError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
        D: Serialize + ?Sized,
    {
        let data = serde_json::to_vec(data).map_err(PubSubError::Encode)?;
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        self.publish_encoded(topics, Bytes::from(data), None).await
    }

    /// Publishes already-encoded JSON `data`. `exclude` names a subscriber id (a channel id)
    /// that does not receive it, so a publishing connection is not echoed.
    pub async fn publish_encoded(
        &self,
        topics: Vec<String>,
        data: Bytes,
        exclude: Option<&str>,
    ) -> Result<(), PubSubError> {
        self.start_publish(topics, data, exclude)
            .await?
            .wait()
            .await
    }

    /// Delivers a publication locally and hands it to the backbone, without waiting for the
    /// broker to accept it. Publications started one after another reach other instances in
    /// that order; [`PendingPublish::wait`] reports whether the broker accepted this one.
    pub async fn start_publish(
        &self,
        topics: Vec<String>,
        data: Bytes,
        exclude: Option<&str>,
    ) -> Result<PendingPublish, PubSubError> {
        let exclude = exclude.map_or(Exclude::Nobody, Exclude::Channel);
        self.start_publish_excluding(topics, data, exclude).await
    }

    pub(crate) async fn start_publish_excluding(
        &self,
        topics: Vec<String>,
        data: Bytes,
        exclude: Exclude<'_>,
    ) -> Result<PendingPublish, PubSubError> {
        let topics = self.inner.distinct_topics(topics)?;
        for topic in &topics {
            self.inner.validate_topic(topic)?;
        }
        self.inner
            .counters
            .published
            .fetch_add(1, Ordering::Relaxed);
        for topic in &topics {
            self.inner.deliver_local(topic, &data, exclude);
        }
        let Some(link) = self.inner.link.get() else {
            return Ok(PendingPublish {
                acceptance: Acceptance::accepted(),
                backbone: self.inner.backbone_name,
            });
        };
        let envelope = Envelope {
            notifier_id: self.inner.id.clone(),
            topics,
            data,
        };
        let backbone = self.inner.backbone_name;
        match link.send(&envelope).await {
            Ok(acceptance) => Ok(PendingPublish {
                acceptance,
                backbone,
            }),
            Err(error) => Err(backbone_failed(backbone, error)),
        }
    }

    /// Subscribes server-side code to `topics`. The returned [`Subscription`] is a `Stream` of
    /// events; dropping it unsubscribes.
    pub async fn subscribe<I, T>(&self, topics: I) -> Result<Subscription, PubSubError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        for topic in &topics {
            self.inner.validate_topic(topic)?;
        }
        let key = self.inner.next_key();
        let (tx, rx) = mpsc::channel(self.inner.config.subscription_capacity.max(1));
        self.inner
            .add_subscribers(&topics, key, |_| Subscriber::Local { tx: tx.clone() })
            .await;
        Ok(Subscription::new(self.clone(), key, topics, rx))
    }

    /// Detaches from the backbone. Local delivery keeps working afterwards.
    pub async fn shutdown(&self) {
        if let Some(link) = self.inner.link.get() {
            link.close().await;
        }
    }

    pub(crate) fn next_key(&self) -> SubscriberKey {
        self.inner.next_key()
    }

    pub(crate) async fn add_connection(
        &self,
        key: SubscriberKey,
        channel: &RpcChannel,
        topics: &[String],
    ) {
        let subscriber_json = json_string(channel.id());
        self.inner
            .add_subscribers(topics, key, |_| Subscriber::Connection {
                channel: channel.clone(),
                ids: Arc::new(NotifyIds {
                    subscription_json: json_string(&protocol::new_id()),
                    subscriber_json: subscriber_json.clone(),
                }),
            })
            .await;
    }

    pub(crate) async fn remove(&self, key: SubscriberKey, topics: &[String]) {
        self.inner.remove_subscribers(key, topics).await;
    }
}

impl HubInner {
    fn new(
        id: String,
        backbone_name: &'static str,
        state: BackboneState,
        config: HubConfig,
    ) -> Self {
        Self {
            id,
            topics: RwLock::new(HashMap::new()),
            link: OnceLock::new(),
            backbone_name,
            interest: tokio::sync::Mutex::new(()),
            state: watch::channel(state).0,
            counters: Counters::default(),
            next_key: AtomicU64::new(1),
            call_ids: protocol::CallIds::new(),
            config,
        }
    }

    fn read_topics(&self) -> std::sync::RwLockReadGuard<'_, TopicMap> {
        self.topics
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn write_topics(&self) -> std::sync::RwLockWriteGuard<'_, TopicMap> {
        self.topics
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn next_key(&self) -> SubscriberKey {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    /// Removes repeated topics, keeping the first of each, and enforces
    /// [`HubConfig::max_topics_per_publish`].
    fn distinct_topics(&self, mut topics: Vec<String>) -> Result<Vec<String>, PubSubError> {
        let max = self.config.max_topics_per_publish;
        let mut seen = std::collections::HashSet::with_capacity(topics.len().min(max + 1));
        let mut count = 0usize;
        topics.retain(|topic| {
            let fresh = seen.insert(topic.clone());
            count += usize::from(fresh);
            fresh && count <= max
        });
        if count > max {
            return Err(PubSubError::TooManyTopics { count, max });
        }
        Ok(topics)
    }

    fn validate_topic(&self, topic: &str) -> Result<(), PubSubError> {
        let reason = if topic.is_empty() {
            "topic is empty".to_owned()
        } else if topic.len() > self.config.max_topic_len {
            format!(
                "topic is {} bytes, over the maximum of {}; raise HubConfig::max_topic_len",
                topic.len(),
                self.config.max_topic_len
            )
        } else {
            return Ok(());
        };
        Err(PubSubError::InvalidTopic {
            topic: topic.chars().take(64).collect(),
            reason,
        })
    }

    async fn add_subscribers(
        &self,
        topics: &[String],
        key: SubscriberKey,
        mut make: impl FnMut(&str) -> Subscriber,
    ) {
        let _order = self.interest.lock().await;
        let mut new_topics = Vec::new();
        {
            let mut map = self.write_topics();
            for topic in topics {
                let entry = map.entry(Arc::from(topic.as_str())).or_default();
                if entry.is_empty() {
                    new_topics.push(topic.clone());
                }
                entry.entry(key).or_insert_with(|| make(topic));
            }
        }
        if let (Some(link), false) = (self.link.get(), new_topics.is_empty()) {
            // The link keeps the interest and restores it on reconnect, so local delivery
            // goes on while the broker is down.
            if let Err(error) = link.subscribe(&new_topics).await {
                tracing::warn!(backbone = self.backbone_name, error = %error, topics = ?new_topics, "backbone subscribe failed");
            }
        }
    }

    async fn remove_subscribers(&self, key: SubscriberKey, topics: &[String]) {
        let _order = self.interest.lock().await;
        let mut gone = Vec::new();
        {
            let mut map = self.write_topics();
            for topic in topics {
                let Some(entry) = map.get_mut(topic.as_str()) else {
                    continue;
                };
                entry.remove(&key);
                if entry.is_empty() {
                    map.remove(topic.as_str());
                    gone.push(topic.clone());
                }
            }
        }
        if let (Some(link), false) = (self.link.get(), gone.is_empty()) {
            if let Err(error) = link.unsubscribe(&gone).await {
                tracing::warn!(backbone = self.backbone_name, error = %error, topics = ?gone, "backbone unsubscribe failed");
            }
        }
    }

    /// Hands one publication on `topic` to every local subscriber of it or of ALL_TOPICS,
    /// once each, without waiting for any of them.
    fn deliver_local(&self, topic: &str, data: &Bytes, exclude: Exclude<'_>) {
        let map = self.read_topics();
        let exact = map.get(topic);
        let all = if topic == ALL_TOPICS {
            None
        } else {
            map.get(ALL_TOPICS)
        };
        if exact.is_none() && all.is_none() {
            return;
        }
        let notify = Arc::new(SharedNotify {
            prepared: PreparedNotify::new(topic, data.clone()),
            call_id: self.call_ids.next(),
        });
        let event_topic: Arc<str> = Arc::from(topic);
        let mut delivered = 0u64;
        let mut dropped = 0u64;
        let mut send = |key: SubscriberKey, subscriber: &Subscriber| {
            let ok = match subscriber {
                Subscriber::Connection { channel, ids } => {
                    let excluded = match exclude {
                        Exclude::Nobody => false,
                        // Compares the map key, which is at hand, not the channel's id.
                        Exclude::Key(excluded) => key == excluded,
                        Exclude::Channel(id) => channel.id() == id,
                    };
                    if excluded {
                        return;
                    }
                    let job = NotifyJob::new(Arc::clone(&notify), Arc::clone(ids));
                    channel.push_notify(job).is_ok()
                }
                Subscriber::Local { tx } => match tx
                    .try_send(Event::new(Arc::clone(&event_topic), data.clone()))
                {
                    Ok(()) => true,
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        tracing::warn!(topic, "server-side subscription is full; dropping event");
                        false
                    }
                    // The subscription is being dropped; its removal is under way.
                    Err(mpsc::error::TrySendError::Closed(_)) => return,
                },
            };
            if ok {
                delivered += 1;
            } else {
                dropped += 1;
            }
        };
        if let Some(exact) = exact {
            for (key, subscriber) in exact {
                send(*key, subscriber);
            }
        }
        if let Some(all) = all {
            for (key, subscriber) in all {
                // A subscriber of both the topic and ALL_TOPICS gets the event once.
                if exact.is_some_and(|exact| exact.contains_key(key)) {
                    continue;
                }
                send(*key, subscriber);
            }
        }
        self.counters
            .delivered
            .fetch_add(delivered, Ordering::Relaxed);
        if dropped > 0 {
            self.counters.dropped.fetch_add(dropped, Ordering::Relaxed);
        }
    }
}

/// Limits "backbone publish failed" to one line a second: while a broker is down, every
/// publication fails.
static PUBLISH_FAILED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));

fn backbone_failed(backbone: &'static str, error: BackboneError) -> PubSubError {
    if let Some(suppressed) = PUBLISH_FAILED_LOG.check() {
        tracing::warn!(backbone, error = %error, suppressed, "backbone publish failed");
    }
    PubSubError::Backbone(error)
}

/// A publication delivered locally whose acceptance by the backbone may still be pending.
#[derive(Debug)]
#[must_use = "a pending publication reports whether other instances will receive it"]
pub struct PendingPublish {
    acceptance: Acceptance,
    backbone: &'static str,
}

impl PendingPublish {
    /// Waits until the backbone accepted the publication for other instances.
    pub async fn wait(self) -> Result<(), PubSubError> {
        let backbone = self.backbone;
        self.acceptance
            .wait()
            .await
            .map_err(|error| backbone_failed(backbone, error))
    }
}

/// The hub's side of its backbone link. Holds the hub weakly, so the backbone does not keep a
/// dropped hub alive.
struct HubInbound(Weak<HubInner>);

impl Inbound for HubInbound {
    fn deliver(&self, envelope: Envelope) {
        let Some(hub) = self.0.upgrade() else {
            return;
        };
        if envelope.notifier_id == hub.id {
            return;
        }
        hub.counters
            .backbone_received
            .fetch_add(1, Ordering::Relaxed);
        for topic in &envelope.topics {
            hub.deliver_local(topic, &envelope.data, Exclude::Nobody);
        }
    }

    fn state_changed(&self, state: BackboneState) {
        let Some(hub) = self.0.upgrade() else {
            return;
        };
        match &state {
            BackboneState::Disconnected { reason } => {
                tracing::warn!(
                    backbone = hub.backbone_name,
                    reason = reason.as_str(),
                    "backbone disconnected"
                );
            }
            other => {
                tracing::info!(backbone = hub.backbone_name, state = ?other, "backbone state changed")
            }
        }
        hub.state.send_replace(state);
    }
}
