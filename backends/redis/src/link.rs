//! One hub's link to Redis: a publishing connection, a subscribing connection, and the tasks
//! that read messages and follow the connection state.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fred::clients::Client;
use fred::error::Error as RedisError;
use fred::interfaces::{ClientLike, EventInterface, PubsubInterface};
use fred::types::config::{Config, Options, ReconnectPolicy};
use fred::types::Value;
use fred::types::{Builder, Message, MessageKind, RespVersion};
use tidings_core::{BackboneError, BackboneLink, BackboneState, Envelope, Inbound, ALL_TOPICS};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::config::{ChannelLayout, RedisConfig};

const BACKBONE: &str = "redis";

fn unavailable(error: RedisError) -> BackboneError {
    BackboneError::Unavailable {
        backbone: BACKBONE,
        source: Some(Box::new(error)),
    }
}

/// Topics this hub has local subscribers for.
#[derive(Default)]
struct Interest {
    topics: BTreeSet<String>,
    all: bool,
}

struct Shared {
    instance_id: String,
    inbound: Arc<dyn Inbound>,
    layout: ChannelLayout,
    interest: Mutex<Interest>,
    dropped: AtomicU64,
}

impl Shared {
    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hands a message to the hub, unless it is this instance's own or of no interest.
    fn handle(&self, message: Message) {
        let Some(payload) = message.value.as_bytes() else {
            self.count_invalid(&message.channel, "payload is not a string");
            return;
        };
        let envelope = match Envelope::from_json(payload) {
            Ok(envelope) => envelope,
            Err(error) => {
                self.count_invalid(&message.channel, &error.to_string());
                return;
            }
        };
        if envelope.notifier_id == self.instance_id {
            return;
        }
        let envelope = {
            let interest = self.interest();
            match &self.layout {
                ChannelLayout::PerTopic { prefix } => {
                    // A channel with an exact subscription arrives as a message; with
                    // ALL_TOPICS active it arrives again through the pattern, and that copy is
                    // skipped. Exact interest is recorded only after Redis confirmed the
                    // SUBSCRIBE, so no copy is skipped before the exact one flows.
                    let topic = message
                        .channel
                        .strip_prefix(prefix.as_str())
                        .unwrap_or_default();
                    let exact = interest.topics.contains(topic);
                    let wanted = match message.kind {
                        MessageKind::PMessage => !exact,
                        _ => exact,
                    };
                    if !wanted {
                        return;
                    }
                    envelope
                }
                ChannelLayout::Single { .. } => {
                    if interest.all {
                        envelope
                    } else {
                        let topics: Vec<String> = envelope
                            .topics
                            .into_iter()
                            .filter(|topic| interest.topics.contains(topic))
                            .collect();
                        if topics.is_empty() {
                            return;
                        }
                        Envelope { topics, ..envelope }
                    }
                }
            }
        };
        self.inbound.deliver(envelope);
    }

    fn count_invalid(&self, channel: &str, reason: &str) {
        let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
        if dropped.is_power_of_two() {
            tracing::warn!(
                backbone = BACKBONE,
                channel,
                reason,
                dropped,
                "dropping invalid Redis message"
            );
        }
    }
}

pub(crate) struct RedisLink {
    publisher: Client,
    subscriber: Client,
    shared: Arc<Shared>,
    options: Options,
    tasks: Vec<JoinHandle<()>>,
}

/// Escapes the glob characters of a Redis pattern.
fn escape_pattern(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len() + 2);
    for character in text.chars() {
        if matches!(character, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(character);
    }
    escaped
}

impl RedisLink {
    pub(crate) async fn connect(
        config: &RedisConfig,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Self, BackboneError> {
        let redis_config = Config::from_url(&config.url).map_err(|error| {
            BackboneError::Config(format!("invalid Redis URL {:?}: {error}", config.url))
        })?;
        let mut builder = Builder::from_config(redis_config);
        let command_timeout = config.command_timeout;
        let buffer = config.message_buffer;
        // NOTE: a Redis that stops responding without closing its sockets (a hung process) is
        // not detected: the state stays connected and each command waits out its timeout.
        builder
            .with_connection_config(|connection| {
                connection.connection_timeout = command_timeout;
                connection.internal_command_timeout = command_timeout;
            })
            .with_performance_config(|performance| {
                performance.default_command_timeout = command_timeout;
                performance.broadcast_channel_capacity = buffer;
            })
            .set_policy(ReconnectPolicy::new_exponential(
                0,
                millis(config.reconnect_min_delay),
                millis(config.reconnect_max_delay),
                2,
            ));
        let publisher = builder.build().map_err(unavailable)?;
        // fred completes SUBSCRIBE once it is written, before Redis has applied it. The
        // subscribing connection speaks RESP3 so a PING can follow each SUBSCRIBE on it: Redis
        // responds in order, so the PONG proves the subscription is in place.
        builder.with_config(|redis| redis.version = RespVersion::RESP3);
        let subscriber = builder.build().map_err(unavailable)?;
        publisher.init().await.map_err(unavailable)?;
        if let Err(error) = subscriber.init().await {
            let _ = publisher.quit().await;
            return Err(unavailable(error));
        }

        let shared = Arc::new(Shared {
            instance_id: instance_id.to_owned(),
            inbound,
            layout: config.layout.clone(),
            interest: Mutex::new(Interest::default()),
            dropped: AtomicU64::new(0),
        });
        let options = Options {
            fail_fast: true,
            timeout: Some(command_timeout),
            ..Options::default()
        };
        let mut link = Self {
            publisher,
            subscriber,
            shared,
            options,
            tasks: Vec::new(),
        };
        if let ChannelLayout::Single { channel } = &link.shared.layout {
            let channel = channel.clone();
            link.subscriber
                .subscribe(channel)
                .await
                .map_err(unavailable)?;
            let _: Value = link.subscriber.ping(None).await.map_err(unavailable)?;
        }
        link.tasks.push(tokio::spawn(read_messages(
            link.subscriber.clone(),
            Arc::clone(&link.shared),
        )));
        link.tasks.push(tokio::spawn(follow_state(
            link.publisher.clone(),
            link.subscriber.clone(),
            Arc::clone(&link.shared),
        )));
        link.shared.inbound.state_changed(BackboneState::Connected);
        tracing::debug!(backbone = BACKBONE, url = %tidings_core::backbone::redact_url(&config.url), "connected to Redis");
        Ok(link)
    }

    fn channel_of(&self, topic: &str) -> String {
        match &self.shared.layout {
            ChannelLayout::PerTopic { prefix } => format!("{prefix}{topic}"),
            ChannelLayout::Single { channel } => channel.clone(),
        }
    }
}

fn millis(duration: Duration) -> u32 {
    u32::try_from(duration.as_millis()).unwrap_or(u32::MAX)
}

async fn read_messages(subscriber: Client, shared: Arc<Shared>) {
    let mut messages = subscriber.message_rx();
    loop {
        match messages.recv().await {
            Ok(message) => shared.handle(message),
            Err(RecvError::Lagged(skipped)) => {
                shared.dropped.fetch_add(skipped, Ordering::Relaxed);
                tracing::warn!(
                    backbone = BACKBONE,
                    skipped,
                    "hub fell behind Redis; messages dropped (raise RedisConfig::message_buffer)"
                );
            }
            Err(RecvError::Closed) => return,
        }
    }
}

/// Whether each connection is up, and the state last reported to the hub.
struct Health {
    publisher_up: bool,
    subscriber_up: bool,
    reported: BackboneState,
}

impl Health {
    /// Reports the combined state to the hub when it changed: connected only when both
    /// connections are. Repeated failures while down are not reported again.
    fn report(&mut self, shared: &Shared, reason: Option<String>) {
        let state = if self.publisher_up && self.subscriber_up {
            BackboneState::Connected
        } else {
            BackboneState::Disconnected {
                reason: reason.unwrap_or_else(|| "a Redis connection is down".to_owned()),
            }
        };
        let changed = std::mem::discriminant(&state) != std::mem::discriminant(&self.reported);
        if changed {
            self.reported = state.clone();
            shared.inbound.state_changed(state);
        }
    }
}

/// Follows both connections: reports disconnects, and subscribes every current interest
/// again after each reconnect of the subscribing connection.
async fn follow_state(publisher: Client, subscriber: Client, shared: Arc<Shared>) {
    let mut publisher_errors = publisher.error_rx();
    let mut publisher_reconnects = publisher.reconnect_rx();
    let mut subscriber_errors = subscriber.error_rx();
    let mut subscriber_reconnects = subscriber.reconnect_rx();
    let mut health = Health {
        publisher_up: true,
        subscriber_up: true,
        reported: BackboneState::Connected,
    };
    loop {
        tokio::select! {
            error = publisher_errors.recv() => match error {
                Ok((error, _)) => {
                    health.publisher_up = false;
                    health.report(&shared, Some(error.to_string()));
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            error = subscriber_errors.recv() => match error {
                Ok((error, _)) => {
                    health.subscriber_up = false;
                    health.report(&shared, Some(error.to_string()));
                }
                Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            },
            reconnect = publisher_reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => {
                    tracing::debug!(backbone = BACKBONE, "Redis publishing connection restored");
                    health.publisher_up = true;
                    health.report(&shared, None);
                }
                Err(RecvError::Closed) => return,
            },
            reconnect = subscriber_reconnects.recv() => match reconnect {
                Ok(_) | Err(RecvError::Lagged(_)) => match resubscribe(&subscriber, &shared).await {
                    Ok(count) => {
                        tracing::info!(backbone = BACKBONE, channels = count, "Redis subscribing connection restored with its subscriptions");
                        health.subscriber_up = true;
                        health.report(&shared, None);
                    }
                    Err(error) => {
                        tracing::warn!(backbone = BACKBONE, error = %error, "restoring subscriptions failed; waiting for the next reconnect");
                        health.subscriber_up = false;
                        health.report(&shared, Some(error.to_string()));
                    }
                },
                Err(RecvError::Closed) => return,
            },
        }
    }
}

async fn resubscribe(subscriber: &Client, shared: &Shared) -> Result<usize, RedisError> {
    let (channels, pattern) = {
        let interest = shared.interest();
        match &shared.layout {
            ChannelLayout::PerTopic { prefix } => (
                interest
                    .topics
                    .iter()
                    .map(|topic| format!("{prefix}{topic}"))
                    .collect::<Vec<_>>(),
                interest.all.then(|| format!("{}*", escape_pattern(prefix))),
            ),
            ChannelLayout::Single { channel } => (vec![channel.clone()], None),
        }
    };
    let count = channels.len() + usize::from(pattern.is_some());
    if !channels.is_empty() {
        subscriber.subscribe(channels).await?;
    }
    if let Some(pattern) = pattern {
        subscriber.psubscribe(pattern).await?;
    }
    let _: Value = subscriber.ping(None).await?;
    Ok(count)
}

#[async_trait]
impl BackboneLink for RedisLink {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BackboneError> {
        let client = self.publisher.with_options(&self.options);
        for topic in &envelope.topics {
            let payload = envelope.encode_for_topic(topic)?;
            let _: i64 = client
                .publish(self.channel_of(topic), Bytes::from(payload))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let (new_topics, all) = {
            let interest = self.shared.interest();
            let new_topics: Vec<String> = topics
                .iter()
                .filter(|topic| *topic != ALL_TOPICS && !interest.topics.contains(*topic))
                .cloned()
                .collect();
            let all = topics.iter().any(|topic| topic == ALL_TOPICS) && !interest.all;
            (new_topics, all)
        };
        let record = |shared: &Shared| {
            let mut interest = shared.interest();
            interest.topics.extend(new_topics.iter().cloned());
            interest.all |= all;
        };
        let ChannelLayout::PerTopic { prefix } = &self.shared.layout else {
            record(&self.shared);
            return Ok(());
        };
        let client = self.subscriber.with_options(&self.options);
        let channels: Vec<String> = new_topics
            .iter()
            .map(|topic| self.channel_of(topic))
            .collect();
        let confirmed = async {
            if !channels.is_empty() {
                client.subscribe(channels).await?;
            }
            if all {
                client
                    .psubscribe(format!("{}*", escape_pattern(prefix)))
                    .await?;
            }
            let _: Value = client.ping(None).await?;
            Ok::<(), RedisError>(())
        }
        .await;
        // Recorded even when Redis is down, so the reconnect subscribes them.
        record(&self.shared);
        confirmed.map_err(unavailable)
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let (channels, all) = {
            let mut interest = self.shared.interest();
            let mut channels = Vec::new();
            let mut all = false;
            for topic in topics {
                if topic == ALL_TOPICS {
                    all = interest.all;
                    interest.all = false;
                } else if interest.topics.remove(topic) {
                    channels.push(self.channel_of(topic));
                }
            }
            (channels, all)
        };
        let ChannelLayout::PerTopic { prefix } = &self.shared.layout else {
            return Ok(());
        };
        let client = self.subscriber.with_options(&self.options);
        if !channels.is_empty() {
            client.unsubscribe(channels).await.map_err(unavailable)?;
        }
        if all {
            client
                .punsubscribe(format!("{}*", escape_pattern(prefix)))
                .await
                .map_err(unavailable)?;
        }
        Ok(())
    }

    async fn close(&self) {
        for task in &self.tasks {
            task.abort();
        }
        let _ = self.subscriber.quit().await;
        let _ = self.publisher.quit().await;
    }
}

impl Drop for RedisLink {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_escapes_glob_characters() {
        assert_eq!(escape_pattern("tidings:"), "tidings:");
        assert_eq!(escape_pattern("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
