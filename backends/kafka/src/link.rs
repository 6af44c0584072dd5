//! One hub's link to Kafka: a producer, a consumer assigned to every partition, and a task
//! that follows the broker's health.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use tidings_core::{
    Acceptance, BackboneError, BackboneLink, BackboneState, Envelope, Inbound, ALL_TOPICS,
};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::config::KafkaConfig;

const BACKBONE: &str = "kafka";
/// How often the link checks that the broker responds to metadata requests.
// NOTE: librdkafka 2.12 crashes (SIGSEGV in rd_kafka_metadata_update_op) when a Fetch response
// carries a leader-change tag for a topic id of zero, which tansu sends after a restart that
// lost its topics. The link therefore unassigns a consumer as soon as it reports every broker
// down and rebuilds the clients. Restarts of 20 ms to 0.9 s no longer crash in the tests.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// Timeout of the health check's metadata request.
const PROBE_TIMEOUT: Duration = Duration::from_millis(750);

fn unavailable(error: KafkaError) -> BackboneError {
    BackboneError::Unavailable {
        backbone: BACKBONE,
        source: Some(Box::new(error)),
    }
}

/// Maps a failed produce of a `bytes`-byte record, naming the limit when the record is too
/// large, since librdkafka's own message does not say which setting to raise.
fn produce_failed(error: KafkaError, bytes: usize) -> BackboneError {
    if error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge) {
        return BackboneError::Other {
            backbone: BACKBONE,
            source: format!(
                "Kafka record of {bytes} bytes is too large: raise the producer's \
                 message.max.bytes (?message.max.bytes=N in the backbone URL) and the broker's \
                 or topic's max.message.bytes ({error})"
            )
            .into(),
        };
    }
    unavailable(error)
}

fn down() -> BackboneError {
    BackboneError::Unavailable {
        backbone: BACKBONE,
        source: None,
    }
}

/// Topics this hub has local subscribers for.
#[derive(Default)]
struct Interest {
    topics: BTreeSet<String>,
    all: bool,
}

struct Shared {
    config: KafkaConfig,
    instance_id: String,
    inbound: Arc<dyn Inbound>,
    interest: Mutex<Interest>,
    connected: AtomicBool,
}

impl Shared {
    fn interest(&self) -> std::sync::MutexGuard<'_, Interest> {
        self.interest
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn wants(&self, topic: &[u8]) -> bool {
        let interest = self.interest();
        interest.all
            || std::str::from_utf8(topic).is_ok_and(|topic| interest.topics.contains(topic))
    }

    /// Filters by the record key (the pub/sub topic) before decoding anything.
    fn handle(&self, key: Option<&[u8]>, payload: Option<&[u8]>) {
        let (Some(key), Some(payload)) = (key, payload) else {
            return;
        };
        if !self.wants(key) {
            return;
        }
        match Envelope::from_json(payload) {
            Ok(envelope) if envelope.notifier_id == self.instance_id => {}
            Ok(envelope) => self.inbound.deliver(envelope),
            Err(error) => {
                tracing::warn!(backbone = BACKBONE, error = %error, "dropping invalid Kafka record")
            }
        }
    }

    fn set_connected(&self, connected: bool, reason: impl FnOnce() -> String) {
        if self.connected.swap(connected, Ordering::AcqRel) == connected {
            return;
        }
        let state = if connected {
            BackboneState::Connected
        } else {
            BackboneState::Disconnected { reason: reason() }
        };
        self.inbound.state_changed(state);
    }

    fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &self.config.brokers)
            .set("socket.nagle.disable", "true")
            .set("reconnect.backoff.ms", "100")
            .set("reconnect.backoff.max.ms", "5000");
        config
    }

    fn with_settings(&self, mut config: ClientConfig) -> ClientConfig {
        for (key, value) in &self.config.settings {
            config.set(key, value);
        }
        config
    }
}

/// The clients of one connected period. They are dropped when the broker becomes
/// unreachable and built anew once it responds, because a broker that lost its topics (one
/// that keeps nothing across restarts) gives them new ids that old clients must not fetch with.
struct Session {
    producer: FutureProducer,
    consumer: Arc<StreamConsumer>,
    reader: JoinHandle<()>,
    partitions: i32,
    /// Signalled by the reader when the consumer reports that every broker is down.
    lost: Arc<Notify>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

type SessionSlot = Arc<std::sync::RwLock<Option<Arc<Session>>>>;

fn current(slot: &SessionSlot) -> Option<Arc<Session>> {
    slot.read()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .clone()
}

fn swap(slot: &SessionSlot, session: Option<Arc<Session>>) -> Option<Arc<Session>> {
    std::mem::replace(
        &mut *slot
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()),
        session,
    )
}

fn replace(slot: &SessionSlot, session: Option<Arc<Session>>) {
    let Some(old) = swap(slot, session) else {
        return;
    };
    // No more fetches from these clients, whatever the broker does next.
    let _ = old.consumer.unassign();
    // Dropping the producer flushes for up to 500 ms and destroying a client joins its
    // threads, so the last reference is released off the async workers.
    if let Ok(runtime) = tokio::runtime::Handle::try_current() {
        runtime.spawn_blocking(move || drop(old));
    }
}

pub(crate) struct KafkaLink {
    shared: Arc<Shared>,
    session: SessionSlot,
    health: JoinHandle<()>,
}

impl KafkaLink {
    pub(crate) async fn connect(
        config: KafkaConfig,
        instance_id: &str,
        inbound: Arc<dyn Inbound>,
    ) -> Result<Self, BackboneError> {
        let shared = Arc::new(Shared {
            config,
            instance_id: instance_id.to_owned(),
            inbound,
            interest: Mutex::new(Interest::default()),
            connected: AtomicBool::new(false),
        });
        let session = open_session(&shared).await?;
        tracing::debug!(
            backbone = BACKBONE,
            topic = shared.config.topic.as_str(),
            partitions = session.partitions,
            "attached to Kafka"
        );
        let slot: SessionSlot = Arc::new(std::sync::RwLock::new(Some(Arc::new(session))));
        shared.set_connected(true, String::new);
        let health = tokio::spawn(follow_health(Arc::clone(&shared), Arc::clone(&slot)));
        Ok(Self {
            shared,
            session: slot,
            health,
        })
    }
}

/// Builds the producer and consumer, makes sure the topic exists, and starts reading every
/// partition from its current end.
async fn open_session(shared: &Arc<Shared>) -> Result<Session, BackboneError> {
    let timeout_ms = shared.config.operation_timeout.as_millis().to_string();

    // One broker acknowledgement, and 5 ms of batching: measured against tansu at 5,000
    // records/s, linger.ms=0 overloaded the broker (p99 over 0.5 s, publishes refused) while
    // 5 ms kept up (p99 about 20 ms). Lower it with `?linger.ms=0` for brokers that keep up.
    let mut producer_config = shared.client_config();
    producer_config
        .set("linger.ms", "5")
        .set("acks", "1")
        .set("message.timeout.ms", &timeout_ms)
        .set("enable.idempotence", "false");
    let producer: FutureProducer =
        shared
            .with_settings(producer_config)
            .create()
            .map_err(|error| {
                BackboneError::Config(format!("invalid Kafka producer settings: {error}"))
            })?;

    // Manual assignment of every partition: no group join, so attaching is fast, and
    // nothing is committed because each instance starts at the end.
    let mut consumer_config = shared.client_config();
    consumer_config
        .set("group.id", format!("tidings-{}", shared.instance_id))
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "latest")
        .set("fetch.wait.max.ms", "10")
        .set("fetch.error.backoff.ms", "100")
        // Gives the link time to unassign a consumer that lost its broker before it connects
        // again (see HEALTH_INTERVAL). The link builds new clients once the broker responds.
        .set("reconnect.backoff.ms", "1000");
    let consumer: StreamConsumer =
        shared
            .with_settings(consumer_config)
            .create()
            .map_err(|error| {
                BackboneError::Config(format!("invalid Kafka consumer settings: {error}"))
            })?;
    let consumer = Arc::new(consumer);

    let partitions = ensure_topic(shared, &consumer).await?;
    assign_from_end(shared, &consumer, partitions).await?;
    let lost = Arc::new(Notify::new());
    let reader = tokio::spawn(read_records(
        Arc::clone(&consumer),
        Arc::clone(shared),
        Arc::clone(&lost),
    ));
    Ok(Session {
        producer,
        consumer,
        reader,
        partitions,
        lost,
    })
}

/// Returns the partition count of the Kafka topic, creating the topic when it is missing and
/// creation is allowed.
async fn ensure_topic(
    shared: &Arc<Shared>,
    consumer: &Arc<StreamConsumer>,
) -> Result<i32, BackboneError> {
    if let Some(partitions) = partition_count(shared, consumer).await? {
        return Ok(partitions);
    }
    let topic = &shared.config.topic;
    if !shared.config.create_topic {
        return Err(BackboneError::Config(format!(
            "Kafka topic {topic:?} does not exist; create it (kafka-topics.sh --create --topic {topic}) \
             or allow tidings to create it (create_topic=true)"
        )));
    }
    let admin: AdminClient<DefaultClientContext> = shared
        .with_settings(shared.client_config())
        .create()
        .map_err(|error| BackboneError::Config(format!("invalid Kafka admin settings: {error}")))?;
    let new_topic = NewTopic::new(
        topic,
        shared.config.partitions,
        TopicReplication::Fixed(shared.config.replication),
    );
    let options = AdminOptions::new().operation_timeout(Some(shared.config.operation_timeout));
    let results = admin
        .create_topics([&new_topic], &options)
        .await
        .map_err(unavailable)?;
    for result in results {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => {
                return Err(BackboneError::Config(format!(
                    "creating Kafka topic {topic:?} failed ({code}); create it by hand \
                     (kafka-topics.sh --create --topic {topic})"
                )))
            }
        }
    }
    tracing::info!(
        backbone = BACKBONE,
        topic = topic.as_str(),
        partitions = shared.config.partitions,
        "created Kafka topic"
    );
    // Metadata of a new topic may take a moment to reach every broker.
    for _ in 0..50 {
        if let Some(partitions) = partition_count(shared, consumer).await? {
            return Ok(partitions);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(BackboneError::Config(format!(
        "Kafka topic {topic:?} was created but has no partitions yet"
    )))
}

/// Returns the partition count of the Kafka topic, or `None` when it does not exist.
async fn partition_count(
    shared: &Arc<Shared>,
    consumer: &Arc<StreamConsumer>,
) -> Result<Option<i32>, BackboneError> {
    let consumer = Arc::clone(consumer);
    let topic = shared.config.topic.clone();
    // Short, so an unreachable broker is noticed (and the clients dropped) within a second.
    let timeout = shared.config.operation_timeout.min(PROBE_TIMEOUT);
    let metadata =
        tokio::task::spawn_blocking(move || consumer.fetch_metadata(Some(&topic), timeout))
            .await
            .map_err(|error| BackboneError::Config(format!("metadata task failed: {error}")))?
            .map_err(unavailable)?;
    let Some(topic) = metadata.topics().first() else {
        return Ok(None);
    };
    if topic.error().is_some() || topic.partitions().is_empty() {
        return Ok(None);
    }
    Ok(Some(topic.partitions().len() as i32))
}

/// Assigns every partition at its current end, so the consumer reads exactly what is
/// published from now on.
async fn assign_from_end(
    shared: &Arc<Shared>,
    consumer: &Arc<StreamConsumer>,
    partitions: i32,
) -> Result<(), BackboneError> {
    let reader = Arc::clone(consumer);
    let topic = shared.config.topic.clone();
    let timeout = shared.config.operation_timeout;
    let assignment =
        tokio::task::spawn_blocking(move || -> Result<TopicPartitionList, KafkaError> {
            let mut assignment = TopicPartitionList::new();
            for partition in 0..partitions {
                let (_low, high) = reader.fetch_watermarks(&topic, partition, timeout)?;
                assignment.add_partition_offset(&topic, partition, Offset::Offset(high))?;
            }
            Ok(assignment)
        })
        .await
        .map_err(|error| BackboneError::Config(format!("watermark task failed: {error}")))?
        .map_err(unavailable)?;
    consumer.assign(&assignment).map_err(unavailable)
}

async fn read_records(consumer: Arc<StreamConsumer>, shared: Arc<Shared>, lost: Arc<Notify>) {
    loop {
        match consumer.recv().await {
            Ok(record) => shared.handle(record.key(), record.payload()),
            Err(error) if error.rdkafka_error_code() == Some(RDKafkaErrorCode::AllBrokersDown) => {
                tracing::debug!(backbone = BACKBONE, "Kafka consumer lost every broker");
                // Stop fetching before the broker can come back, because a Fetch response from a
                // broker that lost its topics crashes librdkafka (see HEALTH_INTERVAL).
                if let Err(error) = consumer.unassign() {
                    tracing::debug!(backbone = BACKBONE, error = %error, "Kafka unassign failed");
                }
                lost.notify_one();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => {
                tracing::debug!(backbone = BACKBONE, error = %error, "Kafka consume failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// Checks the broker four times a second, and drops the clients at once when the consumer
/// reports that every broker is down. When the broker stops responding, the clients are dropped;
/// once it responds again, new ones are built, the topic is created again if it was lost, and every
/// partition is read from its end. A change of the partition count also rebuilds them.
async fn follow_health(shared: Arc<Shared>, slot: SessionSlot) {
    let mut ticker = tokio::time::interval(HEALTH_INTERVAL);
    loop {
        let lost = current(&slot).map(|session| Arc::clone(&session.lost));
        let broker_lost = match lost {
            Some(lost) => tokio::select! {
                _ = ticker.tick() => false,
                () = lost.notified() => true,
            },
            None => {
                ticker.tick().await;
                false
            }
        };
        if broker_lost {
            tracing::warn!(
                backbone = BACKBONE,
                "Kafka connection lost; dropping the clients until it responds again"
            );
            replace(&slot, None);
            shared.set_connected(false, || "every Kafka broker is down".to_owned());
            continue;
        }
        let Some(session) = current(&slot) else {
            match open_session(&shared).await {
                Ok(session) => {
                    tracing::info!(
                        backbone = BACKBONE,
                        partitions = session.partitions,
                        "Kafka reachable again; reading every partition from its end"
                    );
                    replace(&slot, Some(Arc::new(session)));
                    shared.set_connected(true, String::new);
                }
                Err(error) => {
                    tracing::debug!(backbone = BACKBONE, error = %error, "Kafka still unreachable")
                }
            }
            continue;
        };
        match partition_count(&shared, &session.consumer).await {
            Ok(Some(count)) if count == session.partitions => {}
            Ok(_) => {
                tracing::info!(
                    backbone = BACKBONE,
                    "Kafka topic changed; rebuilding the clients"
                );
                replace(&slot, None);
            }
            Err(error) => {
                tracing::warn!(backbone = BACKBONE, error = %error, "Kafka unreachable; dropping the clients until it responds again");
                replace(&slot, None);
                shared.set_connected(false, || error.to_string());
            }
        }
    }
}

#[async_trait]
impl BackboneLink for KafkaLink {
    async fn publish(&self, envelope: &Envelope) -> Result<(), BackboneError> {
        self.send(envelope).await?.wait().await
    }

    /// Enqueues one record per topic, keyed by the pub/sub topic so one topic's records stay
    /// in one partition and in order, and returns an acceptance waiting for their delivery
    /// reports.
    async fn send(&self, envelope: &Envelope) -> Result<Acceptance, BackboneError> {
        let Some(session) = current(&self.session) else {
            return Err(down());
        };
        let mut deliveries = Vec::with_capacity(envelope.topics.len());
        for topic in &envelope.topics {
            let payload = envelope.encode_for_topic(topic)?;
            let bytes = payload.len() + topic.len();
            let record = FutureRecord::to(&self.shared.config.topic)
                .key(topic.as_bytes())
                .payload(&payload);
            let delivery = session
                .producer
                .send_result(record)
                .map_err(|(error, _)| produce_failed(error, bytes))?;
            deliveries.push((delivery, bytes));
        }
        let limit = self.shared.config.operation_timeout;
        Ok(Acceptance::pending(async move {
            for (delivery, bytes) in deliveries {
                match tokio::time::timeout(limit + Duration::from_secs(1), delivery).await {
                    Ok(Ok(Ok(_))) => {}
                    Ok(Ok(Err((error, _)))) => return Err(produce_failed(error, bytes)),
                    Ok(Err(_)) | Err(_) => return Err(down()),
                }
            }
            Ok(())
        }))
    }

    async fn subscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let mut interest = self.shared.interest();
        for topic in topics {
            if topic == ALL_TOPICS {
                interest.all = true;
            } else {
                interest.topics.insert(topic.clone());
            }
        }
        Ok(())
    }

    async fn unsubscribe(&self, topics: &[String]) -> Result<(), BackboneError> {
        let mut interest = self.shared.interest();
        for topic in topics {
            if topic == ALL_TOPICS {
                interest.all = false;
            } else {
                interest.topics.remove(topic);
            }
        }
        Ok(())
    }

    async fn close(&self) {
        self.health.abort();
        if let Some(session) = swap(&self.session, None) {
            let _ = tokio::task::spawn_blocking(move || drop(session)).await;
        }
    }
}

impl Drop for KafkaLink {
    fn drop(&mut self) {
        self.health.abort();
    }
}
