//! Server-side subscriptions: a `Stream` of events that unsubscribes when dropped.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use tokio::sync::mpsc;

use super::{Hub, SubscriberKey};
use crate::event::Event;

/// A server-side subscription to one or more topics; see [`Hub::subscribe`].
///
/// Dropping it removes its topics from the hub (and from the backbone when it was their last
/// subscriber). Events beyond its capacity are dropped and counted in
/// [`super::HubStats::dropped`].
pub struct Subscription {
    hub: Hub,
    key: SubscriberKey,
    topics: Vec<String>,
    rx: mpsc::Receiver<Event>,
}

impl fmt::Debug for Subscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subscription")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl Subscription {
    pub(super) fn new(
        hub: Hub,
        key: SubscriberKey,
        topics: Vec<String>,
        rx: mpsc::Receiver<Event>,
    ) -> Self {
        Self {
            hub,
            key,
            topics,
            rx,
        }
    }

    /// Returns the subscribed topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Waits for the next event.
    ///
    /// Cancel safe: dropping the future loses no event.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Returns the next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Unsubscribes and waits until the hub and backbone have dropped the interest.
    pub async fn unsubscribe(mut self) {
        let topics = std::mem::take(&mut self.topics);
        self.hub.remove(self.key, &topics).await;
    }
}

impl Stream for Subscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        if self.topics.is_empty() {
            return;
        }
        let topics = std::mem::take(&mut self.topics);
        let hub = self.hub.clone();
        let key = self.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move { hub.remove(key, &topics).await });
            }
            Err(_) => tracing::warn!(
                topics = ?topics,
                "subscription dropped outside a tokio runtime; its topics stay registered"
            ),
        }
    }
}
