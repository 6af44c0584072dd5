//! The client's subscriptions: which local streams want which topics.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tidings_core::{CallContext, Event, Methods, ALL_TOPICS};
use tokio::sync::mpsc;

struct Stream {
    topics: Vec<String>,
    tx: mpsc::Sender<Event>,
}

#[derive(Default)]
struct State {
    streams: HashMap<u64, Stream>,
    by_topic: HashMap<String, HashSet<u64>>,
    next_id: u64,
}

pub(super) struct Registry {
    state: Mutex<State>,
    capacity: usize,
}

impl Registry {
    pub(super) fn new(capacity: usize) -> Self {
        Self {
            state: Mutex::new(State::default()),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Registers a stream for `topics`. Returns its id, its receiver, and the topics that no
    /// other stream had, which the server must be asked to subscribe.
    pub(super) fn add(&self, topics: &[String]) -> (u64, mpsc::Receiver<Event>, Vec<String>) {
        let (tx, rx) = mpsc::channel(self.capacity);
        let mut state = self.lock();
        let id = state.next_id;
        state.next_id += 1;
        let mut new_topics = Vec::new();
        for topic in topics {
            let ids = state.by_topic.entry(topic.clone()).or_default();
            if ids.is_empty() {
                new_topics.push(topic.clone());
            }
            ids.insert(id);
        }
        state.streams.insert(
            id,
            Stream {
                topics: topics.to_vec(),
                tx,
            },
        );
        (id, rx, new_topics)
    }

    /// Removes a stream and returns the topics no stream wants any more.
    pub(super) fn remove(&self, id: u64) -> Vec<String> {
        let mut state = self.lock();
        let Some(stream) = state.streams.remove(&id) else {
            return Vec::new();
        };
        let mut gone = Vec::new();
        for topic in stream.topics {
            if let Some(ids) = state.by_topic.get_mut(&topic) {
                ids.remove(&id);
                if ids.is_empty() {
                    state.by_topic.remove(&topic);
                    gone.push(topic);
                }
            }
        }
        gone
    }

    /// Returns true when some stream wants `topic`.
    pub(super) fn wants(&self, topic: &str) -> bool {
        self.lock().by_topic.contains_key(topic)
    }

    /// Returns every topic some stream wants.
    pub(super) fn topics(&self) -> Vec<String> {
        self.lock().by_topic.keys().cloned().collect()
    }

    /// Hands an event to every stream of its topic or of ALL_TOPICS, once each.
    fn deliver(&self, topic: &str, data: Bytes) {
        let state = self.lock();
        let exact = state.by_topic.get(topic).into_iter().flatten();
        let all = state.by_topic.get(ALL_TOPICS).into_iter().flatten();
        let ids: HashSet<u64> = exact.chain(all).copied().collect();
        if ids.is_empty() {
            tracing::debug!(topic, "event for a topic without subscription");
            return;
        }
        let event = Event::new(topic, data);
        for id in ids {
            let Some(stream) = state.streams.get(&id) else {
                continue;
            };
            if let Err(mpsc::error::TrySendError::Full(_)) = stream.tx.try_send(event.clone()) {
                tracing::warn!(topic, "subscription stream is full; dropping event (read faster or raise event_capacity)");
            }
        }
    }
}

#[derive(Deserialize)]
struct NotifyArgs {
    subscription: SubscriptionInfo,
    #[serde(default)]
    data: Option<Box<RawValue>>,
}

#[derive(Deserialize)]
struct SubscriptionInfo {
    topic: String,
}

/// The `notify` method the server calls on a client, acknowledged as the Python client does.
pub(super) fn notify_methods(registry: &Arc<Registry>) -> Methods {
    let registry = Arc::clone(registry);
    Methods::new().inline_method("notify", move |args: NotifyArgs, _ctx: &CallContext| {
        let data = args.data.map_or_else(
            || Bytes::from_static(b"null"),
            |raw| Bytes::from(raw.get().to_owned()),
        );
        registry.deliver(&args.subscription.topic, data);
        Ok("None")
    })
}
