//! The server side of one pub/sub connection: `subscribe`, `unsubscribe`, `publish`, `ping`.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::Instrument;

use super::{Exclude, Hub, SubscriberKey};
use crate::error::{PubSubError, RpcError};
use crate::protocol;
use crate::rpc::{
    BoxFuture, CallContext, ConnContext, ConnectionConfig, Methods, NoArgs, RpcChannel,
};
use crate::transport::{CloseReason, Transport};

/// The operation a per-topic authorizer is asked about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TopicAction {
    /// The connection subscribes to the topic.
    Subscribe,
    /// The connection publishes on the topic.
    Publish,
}

/// Decides, per connection and topic, whether a subscribe or publish may go ahead.
///
/// Implemented for async closures `Fn(ConnContext, TopicAction, String) -> bool`.
#[async_trait]
pub trait TopicAuthorizer: Send + Sync + 'static {
    /// Returns true to allow `action` on `topic` for the connection whose context is `conn`.
    async fn authorize(&self, conn: &ConnContext, action: TopicAction, topic: &str) -> bool;
}

#[async_trait]
impl<F, Fut> TopicAuthorizer for F
where
    F: Fn(ConnContext, TopicAction, String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = bool> + Send + 'static,
{
    async fn authorize(&self, conn: &ConnContext, action: TopicAction, topic: &str) -> bool {
        self(conn.clone(), action, topic.to_owned()).await
    }
}

/// Serves pub/sub and user methods on connections to one hub. Cheap to clone.
///
/// Transports such as the WebSocket layer hand each accepted connection to
/// [`Endpoint::serve`]; tests can do the same with [`crate::transport::pair`].
#[derive(Clone)]
pub struct Endpoint {
    hub: Hub,
    methods: Methods,
    /// The application's methods with the pub/sub ones on top, shared by every connection.
    served: Methods,
    config: ConnectionConfig,
    topic_authorizer: Option<Arc<dyn TopicAuthorizer>>,
    on_connect: Option<OnConnect>,
    connections: Arc<Mutex<HashMap<SubscriberKey, RpcChannel>>>,
}

type OnConnect = Arc<dyn Fn(RpcChannel) -> BoxFuture<'static, ()> + Send + Sync>;

impl fmt::Debug for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Endpoint")
            .field("hub", &self.hub)
            .field("methods", &self.methods)
            .field("config", &self.config)
            .field("topic_authorizer", &self.topic_authorizer.is_some())
            .field("on_connect", &self.on_connect.is_some())
            .finish()
    }
}

#[derive(Deserialize)]
struct TopicsArgs {
    #[serde(default)]
    topics: Vec<String>,
}

#[derive(Deserialize)]
struct PublishArgs {
    #[serde(default)]
    topics: Vec<String>,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    // Accepted for compatibility and not acted on: every publish gets its response after the
    // publication was delivered locally and handed to the backbone, so that publications of
    // one connection cannot overtake each other.
    #[serde(default, rename = "sync")]
    _sync: Option<bool>,
    #[serde(default)]
    notifier_id: Option<String>,
}

/// Subscriptions of one connection.
struct Session {
    hub: Hub,
    key: SubscriberKey,
    topics: Mutex<HashSet<String>>,
    authorizer: Option<Arc<dyn TopicAuthorizer>>,
}

impl Session {
    fn topics(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.topics
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    async fn check(
        &self,
        ctx: &CallContext,
        action: TopicAction,
        topics: &[String],
    ) -> Result<(), RpcError> {
        for topic in topics {
            if let Err(error) = self.hub.inner.validate_topic(topic) {
                return Err(error.to_rpc_error());
            }
            if let Some(authorizer) = &self.authorizer {
                if !authorizer.authorize(ctx.conn(), action, topic).await {
                    tracing::debug!(topic = topic.as_str(), action = ?action, "topic authorizer rejected");
                    return Err(PubSubError::Forbidden(topic.clone()).to_rpc_error());
                }
            }
        }
        Ok(())
    }

    async fn subscribe(&self, ctx: CallContext, topics: Vec<String>) -> Result<bool, RpcError> {
        self.check(&ctx, TopicAction::Subscribe, &topics).await?;
        let added: Vec<String> = {
            let mut current = self.topics();
            let added: Vec<String> = topics
                .into_iter()
                .filter(|topic| !current.contains(topic))
                .collect::<HashSet<_>>()
                .into_iter()
                .collect();
            let max = self.hub.inner.config.max_subscriptions_per_connection;
            if current.len() + added.len() > max {
                return Err(RpcError::new(
                    crate::ErrorCode::TooLarge,
                    format!("more than {max} subscriptions on this connection; raise HubConfig::max_subscriptions_per_connection"),
                ));
            }
            current.extend(added.iter().cloned());
            added
        };
        if !added.is_empty() {
            self.hub
                .add_connection(self.key, ctx.channel(), &added)
                .await;
            // A connection that closed meanwhile has already been cleaned up, so undo.
            if ctx.channel().is_closed() {
                self.hub.remove(self.key, &added).await;
                return Ok(false);
            }
            tracing::debug!(topics = ?added, "subscribed");
        }
        Ok(true)
    }

    async fn unsubscribe(&self, topics: Vec<String>) -> Result<bool, RpcError> {
        let removed: Vec<String> = {
            let mut current = self.topics();
            topics
                .into_iter()
                .filter(|topic| current.remove(topic))
                .collect()
        };
        if !removed.is_empty() {
            self.hub.remove(self.key, &removed).await;
            tracing::debug!(topics = ?removed, "unsubscribed");
        }
        Ok(true)
    }

    /// Delivers locally and hands the publication to the backbone in arrival order; the
    /// returned future waits for the backbone's acceptance outside that order.
    async fn publish(
        &self,
        ctx: CallContext,
        mut args: PublishArgs,
    ) -> Result<impl Future<Output = Result<bool, RpcError>> + Send + 'static, RpcError> {
        args.topics = self
            .hub
            .inner
            .distinct_topics(args.topics)
            .map_err(|error| error.to_rpc_error())?;
        self.check(&ctx, TopicAction::Publish, &args.topics).await?;
        let data = args.data.map_or_else(
            || Bytes::from_static(b"null"),
            |raw| Bytes::from(raw.get().to_owned()),
        );
        // Python peers pass no notifier id and expect not to hear their own publication back.
        let exclude = match args.notifier_id.as_deref() {
            None => Exclude::Key(self.key),
            Some(id) if id == ctx.channel().id() => Exclude::Key(self.key),
            Some(id) => Exclude::Channel(id),
        };
        let pending = self
            .hub
            .start_publish_excluding(args.topics, data, exclude)
            .await
            .map_err(|error| error.to_rpc_error())?;
        Ok(async move {
            pending.wait().await.map_err(|error| error.to_rpc_error())?;
            Ok(true)
        })
    }
}

impl Endpoint {
    /// Creates an endpoint serving `hub` with default limits and no extra methods.
    pub fn new(hub: Hub) -> Self {
        Self {
            hub,
            methods: Methods::new(),
            served: pubsub_methods(),
            config: ConnectionConfig::default(),
            topic_authorizer: None,
            on_connect: None,
            connections: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    fn connections(&self) -> std::sync::MutexGuard<'_, HashMap<SubscriberKey, RpcChannel>> {
        self.connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Returns the number of connections this endpoint is serving.
    pub fn connection_count(&self) -> usize {
        self.connections().len()
    }

    /// Starts closing every connection with `reason`, for example
    /// [`CloseReason::GOING_AWAY`] on shutdown. [`Endpoint::serve`] returns for each once it
    /// has closed.
    pub fn close_all(&self, reason: CloseReason) {
        for channel in self.connections().values() {
            channel.close(reason.clone());
        }
    }

    /// Sets the application's own methods, served beside the pub/sub ones.
    pub fn methods(mut self, methods: Methods) -> Self {
        self.served = methods.clone().merge(pubsub_methods());
        self.methods = methods;
        self
    }

    /// Sets the per-connection limits and timers.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the authorizer called on every `subscribe` and `publish`, per topic.
    pub fn topic_authorizer(mut self, authorizer: impl TopicAuthorizer) -> Self {
        self.topic_authorizer = Some(Arc::new(authorizer));
        self
    }

    /// Sets a callback run on its own task for every new connection, with the connection's
    /// channel, for example to call methods the client exposes.
    pub fn on_connect<F, Fut>(mut self, callback: F) -> Self
    where
        F: Fn(RpcChannel) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.on_connect = Some(Arc::new(move |channel| Box::pin(callback(channel))));
        self
    }

    /// Returns the hub.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Returns the per-connection limits.
    pub fn connection_config(&self) -> &ConnectionConfig {
        &self.config
    }

    /// Serves one connection until it closes, then removes its subscriptions.
    pub async fn serve(&self, transport: Box<dyn Transport>, context: ConnContext) -> CloseReason {
        let conn_id = protocol::new_id();
        let span = tracing::debug_span!("connection", conn_id = conn_id.as_str());
        let session = Arc::new(Session {
            hub: self.hub.clone(),
            key: self.hub.next_key(),
            topics: Mutex::new(HashSet::new()),
            authorizer: self.topic_authorizer.clone(),
        });
        // The connection runs inside this future, not in tasks of its own, because every task
        // adds to the memory an idle connection holds.
        let (channel, run) = crate::rpc::connection_with_id(
            transport,
            self.served.clone(),
            context,
            Some(Arc::clone(&session) as crate::rpc::LocalState),
            self.config.clone(),
            span.clone(),
            conn_id,
        );
        self.connections().insert(session.key, channel.clone());
        // Removes the connection from the registry and the hub even when this future is
        // dropped before the connection ends (serve raced against a shutdown signal).
        let mut registered = Registered {
            endpoint: self,
            session: Arc::clone(&session),
            span: span.clone(),
            done: false,
        };
        if let Some(on_connect) = &self.on_connect {
            tokio::spawn(on_connect(channel).instrument(span.clone()));
        }
        let reason = run.await;
        let topics = registered.release();
        if !topics.is_empty() {
            self.hub.remove(session.key, &topics).instrument(span).await;
        }
        reason
    }
}

/// A connection in an endpoint's registry and the hub, until [`Endpoint::serve`] removes it.
struct Registered<'a> {
    endpoint: &'a Endpoint,
    session: Arc<Session>,
    span: tracing::Span,
    done: bool,
}

impl Registered<'_> {
    /// Removes the connection from the registry and returns the topics it was subscribed to,
    /// which the caller removes from the hub.
    fn release(&mut self) -> Vec<String> {
        self.done = true;
        self.endpoint.connections().remove(&self.session.key);
        self.session.topics().drain().collect()
    }
}

impl Drop for Registered<'_> {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        let topics = self.release();
        if topics.is_empty() {
            return;
        }
        let hub = self.endpoint.hub.clone();
        let key = self.session.key;
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(
                    async move { hub.remove(key, &topics).await }.instrument(self.span.clone()),
                );
            }
            Err(_) => tracing::warn!(
                parent: &self.span,
                topics = ?topics,
                "connection dropped outside a tokio runtime; its topics stay registered"
            ),
        }
    }
}

fn pubsub_methods() -> Methods {
    Methods::new()
        .ordered_method("subscribe", |args: TopicsArgs, ctx: CallContext| async move {
            session(&ctx)?.subscribe(ctx, args.topics).await
        })
        .ordered_method("unsubscribe", |args: TopicsArgs, ctx: CallContext| async move {
            session(&ctx)?.unsubscribe(args.topics).await
        })
        .pipelined_method("publish", |args: PublishArgs, ctx: CallContext| async move {
            session(&ctx)?.publish(ctx, args).await
        })
        .inline_method("ping", |_: NoArgs, _ctx: &CallContext| Ok("pong"))
}

/// Returns the pub/sub session of the connection a call arrived on.
fn session(ctx: &CallContext) -> Result<Arc<Session>, RpcError> {
    ctx.local::<Session>()
        .ok_or_else(|| RpcError::internal("connection has no pub/sub session"))
}
