//! One hub's link to RabbitMQ: a connection with a publishing channel (in confirm mode) and a
//! consuming channel, rebuilt by a supervisor task whenever the connection drops.

use std::collections::BTreeSet;
use std::future::Future;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::StreamExt;
use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions, ExchangeBindOptions,
    ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer, Event,
    ExchangeKind,
};
use tidings_core::{
    Acceptance, BackboneError, BackboneLink, BackboneState, Envelope, Inbound, ALL_TOPICS,
};
use tokio::task::JoinHandle;

use crate::config::RabbitMqConfig;

const BACKBONE: &str = "rabbitmq";
/// Longest AMQP short string, and so the longest routing key.
const MAX_ROUTING_KEY: usize = 255;

/// Failure of an AMQP operation.
#[derive(Debug, thiserror::Error)]
enum LinkError {
    #[error(transparent)]
    Amqp(#[from] lapin::Error),
    #[error("{0} timed out after {1:?}")]
    TimedOut(&'static str, Duration),
    #[error("broker rejected the publication (basic.nack)")]
    Nack,
}

fn unavailable(error: LinkError) -> BackboneError {
    BackboneError::Unavailable {
        backbone: BACKBONE,
        source: Some(Box::new(error)),
    }
}

async fn bounded<T>(
    what: &'static str,
    limit: Duration,
    future: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, LinkError> {
    match tokio::time::timeout(limit, future).await {
        Ok(result) => result.map_err(LinkError::from),
        Err(_) => Err(LinkError::TimedOut(what, limit)),
    }
}

/// Topics this hub has local subscribers for.
#[derive(Default, Clone)]
struct Interest {
    topics: BTreeSet<String>,
    all: bool,
}

/// One live connection and what was declared on it.
struct Session {
    connection: Connection,
    publisher: Channel,
    consumer_channel: Channel,
    queue: String,
}

struct Shared {
    config: RabbitMqConfig,
    fanout: String,
    instance_id: String,
    inbound: Arc<dyn Inbound>,
    // Interest changes and (re)binding after a reconnect take this lock, so a new session is
    // bound to exactly the interest that subscribe and unsubscribe recorded.
    interest: tokio::sync::Mutex<Interest>,
    // Read on every publish, so it is a plain lock held only to clone the Arc.
    session: RwLock<Option<Arc<Session>>>,
}

impl Shared {
    fn session(&self) -> Option<Arc<Session>> {
        self.session
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn set_session(&self, session: Option<Arc<Session>>) {
        *self
            .session
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = session;
    }

    /// Opens a connection, declares the exchanges and a fresh queue, and starts consuming.
    /// Bindings are added by the caller.
    async fn open(&self) -> Result<(Session, Consumer), LinkError> {
        let limit = self.config.operation_timeout;
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("tidings-{}", self.instance_id).into());
        let connection = bounded(
            "connect",
            limit,
            Connection::connect(&self.config.url, properties),
        )
        .await?;
        let publisher = bounded("create channel", limit, connection.create_channel()).await?;
        bounded(
            "confirm.select",
            limit,
            publisher.confirm_select(ConfirmSelectOptions::default()),
        )
        .await?;
        let consumer_channel =
            bounded("create channel", limit, connection.create_channel()).await?;

        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        bounded(
            "exchange.declare",
            limit,
            publisher.exchange_declare(
                self.fanout.as_str().into(),
                ExchangeKind::Fanout,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        bounded(
            "exchange.declare",
            limit,
            publisher.exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Direct,
                durable,
                FieldTable::default(),
            ),
        )
        .await?;
        bounded(
            "exchange.bind",
            limit,
            publisher.exchange_bind(
                self.config.exchange.as_str().into(),
                self.fanout.as_str().into(),
                "".into(),
                ExchangeBindOptions::default(),
                FieldTable::default(),
            ),
        )
        .await?;

        let queue_options = QueueDeclareOptions {
            exclusive: true,
            auto_delete: true,
            ..QueueDeclareOptions::default()
        };
        let queue = bounded(
            "queue.declare",
            limit,
            consumer_channel.queue_declare("".into(), queue_options, FieldTable::default()),
        )
        .await?;
        let queue = queue.name().to_string();
        let consume_options = BasicConsumeOptions {
            no_ack: true,
            exclusive: true,
            ..BasicConsumeOptions::default()
        };
        let consumer = bounded(
            "basic.consume",
            limit,
            consumer_channel.basic_consume(
                queue.as_str().into(),
                "".into(),
                consume_options,
                FieldTable::default(),
            ),
        )
        .await?;
        let session = Session {
            connection,
            publisher,
            consumer_channel,
            queue,
        };
        Ok((session, consumer))
    }

    /// Binds or unbinds the queue for `topics` (ALL_TOPICS means the fanout exchange).
    async fn bind(
        &self,
        session: &Session,
        topics: &[String],
        bind: bool,
    ) -> Result<(), LinkError> {
        let limit = self.config.operation_timeout;
        for topic in topics {
            // AMQP short strings hold at most 255 bytes, and lapin panics on longer ones.
            if topic.len() > MAX_ROUTING_KEY {
                tracing::warn!(
                    backbone = BACKBONE,
                    topic_len = topic.len(),
                    "topic longer than an AMQP routing key; not bound"
                );
                continue;
            }
            let (exchange, key) = if topic == ALL_TOPICS {
                (self.fanout.as_str(), "")
            } else {
                (self.config.exchange.as_str(), topic.as_str())
            };
            let channel = &session.consumer_channel;
            if bind {
                bounded(
                    "queue.bind",
                    limit,
                    channel.queue_bind(
                        session.queue.as_str().into(),
                        exchange.into(),
                        key.into(),
                        QueueBindOptions::default(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            } else {
                bounded(
                    "queue.unbind",
                    limit,
                    channel.queue_unbind(
                        session.queue.as_str().into(),
                        exchange.into(),
                        key.into(),
                        FieldTable::default(),
                    ),
                )
                .await?;
            }
        }
        Ok(())
    }

    fn handle(&self, payload: &[u8]) {
        match Envelope::from_json(payload) {
            Ok(envelope) if envelope.notifier_id == self.instance_id => {}
            Ok(envelope) => self.inbound.deliver(envelope),
            Err(error) => {
                tracing::warn!(backbone = BACKBONE, error = %error, "dropping invalid RabbitMQ message")
            }
        }
    }
}

fn interest_topics(interest: &Interest) -> Vec<String> {
    let mut topics: Vec<String> = interest.topics.iter().cloned().collect();
    if interest.all {
        topics.push(ALL_TOPICS.to_owned());
    }
    topics
}

pub(crate) struct RabbitMqLink {
    shared: Arc<Shared>,
    supervisor: JoinHandle<()>,
}

impl RabbitMqLink {
    pub(crate) async fn connect(
        config: RabbitMqConfig,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Self, BackboneError> {
        let shared = Arc::new(Shared {
            fanout: config.fanout_exchange(),
            config,
            instance_id: instance_id.to_owned(),
            inbound,
            interest: tokio::sync::Mutex::new(Interest::default()),
            session: RwLock::new(None),
        });
        let (session, consumer) = shared.open().await.map_err(unavailable)?;
        let session = Arc::new(session);
        shared.set_session(Some(Arc::clone(&session)));
        shared.inbound.state_changed(BackboneState::Connected);
        tracing::debug!(
            backbone = BACKBONE,
            queue = session.queue.as_str(),
            "connected to RabbitMQ"
        );
        let supervisor = tokio::spawn(supervise(Arc::clone(&shared), session, consumer));
        Ok(Self { shared, supervisor })
    }
}

/// Consumes until the connection drops, then reconnects with backoff, binds every current
/// interest on the new queue, and consumes again.
async fn supervise(shared: Arc<Shared>, mut session: Arc<Session>, mut consumer: Consumer) {
    loop {
        let reason = consume(&shared, &session, &mut consumer).await;
        shared.set_session(None);
        tracing::warn!(
            backbone = BACKBONE,
            reason = reason.as_str(),
            "RabbitMQ connection lost; reconnecting"
        );
        shared
            .inbound
            .state_changed(BackboneState::Disconnected { reason });

        let mut delay = shared.config.reconnect_min_delay;
        (session, consumer) = loop {
            tokio::time::sleep(jitter(delay)).await;
            delay = (delay * 2).min(shared.config.reconnect_max_delay);
            match reconnect(&shared).await {
                Ok(reconnected) => break reconnected,
                Err(error) => {
                    tracing::debug!(backbone = BACKBONE, error = %error, "RabbitMQ reconnect failed")
                }
            }
        };
        tracing::info!(
            backbone = BACKBONE,
            queue = session.queue.as_str(),
            "reconnected to RabbitMQ and restored bindings"
        );
        shared.inbound.state_changed(BackboneState::Connected);
    }
}

async fn reconnect(shared: &Shared) -> Result<(Arc<Session>, Consumer), LinkError> {
    let (session, consumer) = shared.open().await?;
    let interest = shared.interest.lock().await;
    if let Err(error) = shared
        .bind(&session, &interest_topics(&interest), true)
        .await
    {
        let _ = session.connection.close(200, "binding failed".into()).await;
        return Err(error);
    }
    let session = Arc::new(session);
    shared.set_session(Some(Arc::clone(&session)));
    Ok((session, consumer))
}

/// Hands deliveries to the hub until the consumer or the connection fails; returns why.
async fn consume(shared: &Shared, session: &Session, consumer: &mut Consumer) -> String {
    let mut events = Box::pin(session.connection.events_listener());
    loop {
        tokio::select! {
            delivery = consumer.next() => match delivery {
                Some(Ok(delivery)) => shared.handle(&delivery.data),
                Some(Err(error)) => return error.to_string(),
                None => return "consumer cancelled".to_owned(),
            },
            event = events.next() => match event {
                Some(Event::Error(error)) => return error.to_string(),
                Some(Event::ConnectionBlocked(reason)) => {
                    tracing::warn!(backbone = BACKBONE, reason = reason.as_str(), "RabbitMQ blocked publishing on this connection");
                }
                Some(_) => {}
                None => return "connection closed".to_owned(),
            },
        }
    }
}

/// Spreads reconnect attempts of many instances: a delay between 50 % and 100 % of `delay`.
fn jitter(delay: Duration) -> Duration {
    let nanos = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
    let spread = nanos / 2;
    Duration::from_nanos(nanos - spread + random_below(spread.max(1)))
}

fn random_below(bound: u64) -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    hasher.finish() % bound
}

#[async_trait]
impl BackboneLink for RabbitMqLink {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BackboneError> {
        self.send(envelope).await?.wait().await
    }

    /// Writes one `basic.publish` per topic in call order and returns an acceptance that
    /// waits for their publisher confirms, so confirms of several publications overlap.
    async fn send(&self, envelope: &Envelope) -> Result<Acceptance, BackboneError> {
        let Some(session) = self.shared.session() else {
            return Err(BackboneError::Unavailable {
                backbone: BACKBONE,
                source: None,
            });
        };
        let limit = self.shared.config.operation_timeout;
        let mut confirms = Vec::with_capacity(envelope.topics.len());
        for topic in &envelope.topics {
            if topic.len() > MAX_ROUTING_KEY {
                return Err(BackboneError::Config(format!(
                    "topic of {} bytes is longer than an AMQP routing key ({MAX_ROUTING_KEY} bytes)",
                    topic.len()
                )));
            }
            let payload = envelope.encode_for_topic(topic)?;
            let confirm = bounded(
                "basic.publish",
                limit,
                session.publisher.basic_publish(
                    self.shared.fanout.as_str().into(),
                    topic.as_str().into(),
                    BasicPublishOptions::default(),
                    &payload,
                    BasicProperties::default().with_content_type("application/json".into()),
                ),
            )
            .await
            .map_err(unavailable)?;
            confirms.push(confirm);
        }
        Ok(Acceptance::pending(async move {
            for confirm in confirms {
                match bounded("publisher confirm", limit, confirm)
                    .await
                    .map_err(unavailable)?
                {
                    Confirmation::Nack(_) => return Err(unavailable(LinkError::Nack)),
                    Confirmation::Ack(_) | Confirmation::NotRequested => {}
                }
            }
            Ok(())
        }))
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let mut interest = self.shared.interest.lock().await;
        let mut added = Vec::new();
        for topic in topics {
            let new = if topic == ALL_TOPICS {
                !std::mem::replace(&mut interest.all, true)
            } else {
                interest.topics.insert(topic.clone())
            };
            if new {
                added.push(topic.clone());
            }
        }
        // While disconnected the interest is only recorded; the reconnect binds it.
        let Some(session) = self.shared.session() else {
            return Err(BackboneError::Unavailable {
                backbone: BACKBONE,
                source: None,
            });
        };
        self.shared
            .bind(&session, &added, true)
            .await
            .map_err(unavailable)
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let mut interest = self.shared.interest.lock().await;
        let mut removed = Vec::new();
        for topic in topics {
            let present = if topic == ALL_TOPICS {
                std::mem::replace(&mut interest.all, false)
            } else {
                interest.topics.remove(topic)
            };
            if present {
                removed.push(topic.clone());
            }
        }
        let Some(session) = self.shared.session() else {
            return Ok(());
        };
        self.shared
            .bind(&session, &removed, false)
            .await
            .map_err(unavailable)
    }

    async fn close(&self) {
        self.supervisor.abort();
        if let Some(session) = self.shared.session() {
            let _ = session.connection.close(200, "hub shut down".into()).await;
        }
        self.shared.set_session(None);
    }
}

impl Drop for RabbitMqLink {
    fn drop(&mut self) {
        self.supervisor.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jitter_stays_within_half_and_full_delay() {
        for _ in 0..100 {
            let delay = jitter(Duration::from_millis(100));
            assert!(delay >= Duration::from_millis(50), "{delay:?}");
            assert!(delay <= Duration::from_millis(100), "{delay:?}");
        }
    }

    #[test]
    fn all_topics_interest_is_listed() {
        let interest = Interest {
            topics: ["a".to_owned()].into(),
            all: true,
        };
        assert_eq!(
            interest_topics(&interest),
            vec!["a".to_owned(), ALL_TOPICS.to_owned()]
        );
    }
}
