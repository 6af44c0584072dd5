//! Client-side subscription handles: a `Stream` of events, or a callback task.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll};

use futures_core::Stream;
use futures_util::StreamExt;
use tidings_core::Event;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use super::Client;

/// A `Stream` of the events of one or more topics; see [`Client::subscribe`].
///
/// Dropping it unsubscribes topics no other subscription of the client uses.
pub struct ClientSubscription {
    client: Option<Client>,
    id: u64,
    topics: Vec<String>,
    rx: mpsc::Receiver<Event>,
}

impl fmt::Debug for ClientSubscription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSubscription")
            .field("topics", &self.topics)
            .finish_non_exhaustive()
    }
}

impl ClientSubscription {
    pub(super) fn new(
        client: Client,
        id: u64,
        topics: Vec<String>,
        rx: mpsc::Receiver<Event>,
    ) -> Self {
        Self {
            client: Some(client),
            id,
            topics,
            rx,
        }
    }

    /// Returns the subscribed topics.
    pub fn topics(&self) -> &[String] {
        &self.topics
    }

    /// Waits for the next event. Cancel safe.
    pub async fn recv(&mut self) -> Option<Event> {
        self.rx.recv().await
    }

    /// Returns the next event if one is already waiting.
    pub fn try_recv(&mut self) -> Option<Event> {
        self.rx.try_recv().ok()
    }

    /// Unsubscribes and waits until the server confirmed it.
    pub async fn unsubscribe(mut self) {
        if let Some(client) = self.client.take() {
            let candidates = client.forget(self.id);
            client.release(candidates).await;
        }
    }
}

impl Stream for ClientSubscription {
    type Item = Event;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Event>> {
        self.rx.poll_recv(cx)
    }
}

impl Drop for ClientSubscription {
    fn drop(&mut self) {
        let Some(client) = self.client.take() else {
            return;
        };
        // Events stop at once; the server is notified on a task, in order with later changes.
        let candidates = client.forget(self.id);
        if candidates.is_empty() {
            return;
        }
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { client.release(candidates).await });
        }
    }
}

/// A subscription whose events go to a callback on a background task. Dropping it
/// unsubscribes.
#[derive(Debug)]
pub struct SubscriptionTask {
    task: JoinHandle<()>,
}

impl SubscriptionTask {
    pub(super) fn spawn<F>(mut subscription: ClientSubscription, mut callback: F) -> Self
    where
        F: FnMut(Event) + Send + 'static,
    {
        let task = tokio::spawn(async move {
            while let Some(event) = subscription.next().await {
                callback(event);
            }
        });
        Self { task }
    }
}

impl Drop for SubscriptionTask {
    fn drop(&mut self) {
        self.task.abort();
    }
}
