//! The reconnecting WebSocket client.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use futures_util::StreamExt;
//! use tidings_ws::Client;
//!
//! let client = Client::builder("ws://127.0.0.1:8000/pubsub").connect().await?;
//! let mut news = client.subscribe(["news"]).await?;
//! client.publish(["news"], &serde_json::json!({"n": 1})).await?;
//! while let Some(event) = news.next().await {
//!     println!("{}: {}", event.topic(), String::from_utf8_lossy(event.data_json()));
//! }
//! # Ok(()) }
//! ```

mod registry;
mod subscription;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tidings_core::protocol::PING_METHOD;
use tidings_core::rpc::{spawn_connection, Connection};
use tidings_core::transport::CloseReason;
use tidings_core::{CallError, ConnContext, ConnectionConfig, Methods, RpcChannel};
use tokio::sync::{watch, Notify};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Error as WsError;
use tracing::Instrument;

pub use subscription::{ClientSubscription, SubscriptionTask};

use crate::ws::{ws_config, WsTransport};
use registry::Registry;

/// Failure to connect a client.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The URL or a header is invalid. Fix the configuration; retrying cannot help.
    #[error("invalid request: {0}")]
    InvalidRequest(String),
    /// The server rejected the upgrade with 401 or 403. The client does not retry.
    #[error("server rejected the connection with {status}")]
    Rejected {
        /// The HTTP status of the response.
        status: StatusCode,
    },
    /// The server responded to the upgrade with another HTTP status.
    #[error("server answered the upgrade with {status}")]
    UnexpectedStatus {
        /// The HTTP status of the response.
        status: StatusCode,
    },
    /// The server could not be reached or the handshake failed.
    #[error("could not connect")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The WebSocket opened but the server did not respond to the first `_ping_`.
    #[error("server did not answer the first _ping_")]
    NoPong(#[source] CallError),
    /// Opening the WebSocket took longer than the connect timeout.
    #[error("connecting timed out after {0:?}; raise ClientBuilder::connect_timeout")]
    TimedOut(Duration),
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

impl ConnectError {
    /// Returns true when a later attempt may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            Self::Io(_) | Self::UnexpectedStatus { .. } | Self::NoPong(_) | Self::TimedOut(_)
        )
    }
}

/// Connection state of a [`Client`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClientState {
    /// Connected and every subscription restored.
    Connected,
    /// The connection dropped; the client is reconnecting. Calls fail with `NotConnected`.
    Reconnecting {
        /// Attempts made since the connection dropped.
        attempt: u32,
    },
    /// The client stopped for good: closed by the application or rejected by the server.
    Closed {
        /// Why.
        reason: String,
    },
}

/// Delays between reconnect attempts: exponential, with jitter.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ReconnectPolicy {
    /// Delay before the first attempt (default 100 ms).
    pub min_delay: Duration,
    /// Maximum delay between attempts (default 10 s).
    pub max_delay: Duration,
    /// Attempts before giving up, or `None` to retry forever (the default).
    pub max_attempts: Option<usize>,
}

impl Default for ReconnectPolicy {
    fn default() -> Self {
        Self {
            min_delay: Duration::from_millis(100),
            max_delay: Duration::from_secs(10),
            max_attempts: None,
        }
    }
}

impl ReconnectPolicy {
    /// Sets the delay before the first attempt.
    pub fn min_delay(mut self, delay: Duration) -> Self {
        self.min_delay = delay;
        self
    }

    /// Sets the longest delay between attempts.
    pub fn max_delay(mut self, delay: Duration) -> Self {
        self.max_delay = delay;
        self
    }

    /// Sets the number of attempts before giving up.
    pub fn max_attempts(mut self, attempts: Option<usize>) -> Self {
        self.max_attempts = attempts;
        self
    }

    fn delays(&self) -> impl Iterator<Item = Duration> {
        let builder = ExponentialBuilder::new()
            .with_min_delay(self.min_delay)
            .with_max_delay(self.max_delay)
            .with_jitter();
        let builder = match self.max_attempts {
            Some(attempts) => builder.with_max_times(attempts),
            None => builder.without_max_times(),
        };
        builder.build()
    }
}

/// Configures and connects a [`Client`].
#[derive(Debug)]
pub struct ClientBuilder {
    url: String,
    headers: Vec<(String, String)>,
    methods: Methods,
    config: ConnectionConfig,
    reconnect: ReconnectPolicy,
    event_capacity: usize,
    connect_timeout: Duration,
}

impl ClientBuilder {
    /// Adds a header to the upgrade request, for example `Authorization`.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Sets the methods this client serves to the server.
    pub fn methods(mut self, methods: Methods) -> Self {
        self.methods = methods;
        self
    }

    /// Sets the connection limits and timers, including the default call timeout.
    pub fn config(mut self, config: ConnectionConfig) -> Self {
        self.config = config;
        self
    }

    /// Sets the reconnect delays.
    pub fn reconnect(mut self, policy: ReconnectPolicy) -> Self {
        self.reconnect = policy;
        self
    }

    /// Sets how many events each subscription buffers before dropping (default 1024).
    pub fn event_capacity(mut self, events: usize) -> Self {
        self.event_capacity = events.max(1);
        self
    }

    /// Sets how long opening the WebSocket may take, TCP and upgrade included (default 10 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// Connects once. Fails at once if the server is unreachable or rejects the upgrade;
    /// after that first success the client reconnects by itself.
    pub async fn connect(self) -> Result<Client, ConnectError> {
        let registry = Arc::new(Registry::new(self.event_capacity));
        let methods = self
            .methods
            .clone()
            .merge(registry::notify_methods(&registry));
        let dialer = Dialer {
            connect_timeout: self.connect_timeout,
            url: self.url,
            headers: self.headers,
            methods,
            config: self.config,
        };
        let connection = dialer.dial().await?;
        let (channel_tx, _) = watch::channel(Some(connection.channel().clone()));
        let (state, _) = watch::channel(ClientState::Connected);
        let inner = Arc::new(Inner {
            channel: channel_tx,
            state,
            registry,
            shutdown: Notify::new(),
            closing: std::sync::atomic::AtomicBool::new(false),
            order: tokio::sync::Mutex::new(()),
        });
        let span = tracing::debug_span!("client", url = dialer.url.as_str());
        tokio::spawn(
            supervise(Arc::clone(&inner), dialer, self.reconnect, connection).instrument(span),
        );
        Ok(Client {
            _closer: Arc::new(Closer(Arc::clone(&inner))),
            inner,
        })
    }
}

struct Dialer {
    connect_timeout: Duration,
    url: String,
    headers: Vec<(String, String)>,
    methods: Methods,
    config: ConnectionConfig,
}

impl Dialer {
    async fn dial(&self) -> Result<Connection, ConnectError> {
        let mut request = self
            .url
            .as_str()
            .into_client_request()
            .map_err(|error| ConnectError::InvalidRequest(error.to_string()))?;
        for (name, value) in &self.headers {
            let name = HeaderName::try_from(name.as_str()).map_err(|error| {
                ConnectError::InvalidRequest(format!("header name {name:?}: {error}"))
            })?;
            let value = HeaderValue::try_from(value.as_str())
                .map_err(|error| ConnectError::InvalidRequest(format!("header {name}: {error}")))?;
            request.headers_mut().append(name, value);
        }
        let max_frame_size = self.config.max_frame_size;
        let opening = tokio_tungstenite::connect_async_with_config(
            request,
            Some(ws_config(max_frame_size)),
            true,
        );
        let opened = tokio::time::timeout(self.connect_timeout, opening)
            .await
            .map_err(|_| ConnectError::TimedOut(self.connect_timeout))?;
        let (ws, _response) = opened.map_err(|error| match error {
            WsError::Http(response) => {
                let status = response.status();
                if status == StatusCode::UNAUTHORIZED || status == StatusCode::FORBIDDEN {
                    ConnectError::Rejected { status }
                } else {
                    ConnectError::UnexpectedStatus { status }
                }
            }
            WsError::Url(error) => ConnectError::InvalidRequest(error.to_string()),
            other => ConnectError::Io(Box::new(other)),
        })?;
        let conn_id = tidings_core::protocol::new_id();
        let span = tracing::debug_span!("connection", conn_id = conn_id.as_str());
        let connection = spawn_connection(
            Box::new(WsTransport::new(ws, max_frame_size)),
            self.methods.clone(),
            ConnContext::default(),
            self.config.clone(),
            span,
        );
        // Like the Python client, open with `_ping_`. Any response, even an error from a server
        // without the method, proves the channel works both ways.
        match connection
            .channel()
            .call::<serde_json::Value>(PING_METHOD, serde_json::json!({}))
            .await
        {
            Ok(_) | Err(CallError::Remote(_)) | Err(CallError::InvalidResult { .. }) => {
                Ok(connection)
            }
            Err(error) => {
                connection
                    .channel()
                    .close(CloseReason::new(CloseReason::NORMAL, "no answer to _ping_"));
                Err(ConnectError::NoPong(error))
            }
        }
    }
}

struct Inner {
    channel: watch::Sender<Option<RpcChannel>>,
    // Held while a subscription change is sent to the server, and while a reconnect restores
    // the subscriptions.
    order: tokio::sync::Mutex<()>,
    state: watch::Sender<ClientState>,
    registry: Arc<Registry>,
    shutdown: Notify,
    closing: std::sync::atomic::AtomicBool,
}

impl Inner {
    fn close(&self, reason: &str) {
        self.closing
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.shutdown.notify_waiters();
        if let Some(channel) = self.channel.send_replace(None) {
            channel.close(CloseReason::new(CloseReason::NORMAL, reason));
        }
        self.state.send_replace(ClientState::Closed {
            reason: reason.to_owned(),
        });
    }

    fn is_closing(&self) -> bool {
        self.closing.load(std::sync::atomic::Ordering::SeqCst)
    }
}

/// Closes the client when the last [`Client`] handle is dropped.
struct Closer(Arc<Inner>);

impl Drop for Closer {
    fn drop(&mut self) {
        if !self.0.is_closing() {
            self.0.close("client dropped");
        }
    }
}

/// A tidings client: RPC calls, publications and subscriptions over one WebSocket, restored
/// after every reconnect. Cheap to clone; the connection closes when the last clone drops.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
    _closer: Arc<Closer>,
}

impl fmt::Debug for Client {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Client")
            .field("state", &*self.inner.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Starts configuring a client for `url`, such as `ws://127.0.0.1:8000/pubsub`.
    pub fn builder(url: impl Into<String>) -> ClientBuilder {
        ClientBuilder {
            url: url.into(),
            headers: Vec::new(),
            methods: Methods::new(),
            config: ConnectionConfig::default(),
            reconnect: ReconnectPolicy::default(),
            event_capacity: 1024,
            connect_timeout: Duration::from_secs(10),
        }
    }

    /// Returns the current connection, or `NotConnected` while reconnecting.
    pub fn channel(&self) -> Result<RpcChannel, CallError> {
        self.inner
            .channel
            .borrow()
            .clone()
            .ok_or(CallError::NotConnected)
    }

    /// Returns the connection state.
    pub fn state(&self) -> ClientState {
        self.inner.state.borrow().clone()
    }

    /// Returns a receiver that is notified of every state change.
    pub fn watch_state(&self) -> watch::Receiver<ClientState> {
        self.inner.state.subscribe()
    }

    /// Waits until the client is connected, or returns the final state if it closed.
    pub async fn wait_connected(&self) -> Result<(), ClientState> {
        let mut watcher = self.inner.state.subscribe();
        let state = watcher
            .wait_for(|state| matches!(state, ClientState::Connected | ClientState::Closed { .. }))
            .await
            .map(|state| state.clone())
            .unwrap_or(ClientState::Closed {
                reason: "client dropped".into(),
            });
        match state {
            ClientState::Connected => Ok(()),
            other => Err(other),
        }
    }

    /// Calls `method` on the server with keyword arguments `args`.
    ///
    /// Fails with `NotConnected` while the client reconnects; the call is not queued.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, CallError> {
        self.channel()?.call(method, args).await
    }

    /// Calls `method` like [`Self::call`], with its own timeout.
    pub async fn call_with_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<R, CallError> {
        self.channel()?
            .call_with_timeout(method, args, timeout)
            .await
    }

    /// Publishes `data` on `topics` and waits until the server accepted it.
    pub async fn publish<I, T, D>(&self, topics: I, data: &D) -> Result<(), CallError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
        D: Serialize + ?Sized,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        let args = serde_json::json!({
            "topics": topics,
            "data": serde_json::to_value(data).map_err(|source| CallError::InvalidArguments {
                method: "publish".into(),
                source: Some(source),
            })?,
            "sync": true,
            "notifier_id": null,
        });
        let _: serde_json::Value = self.call("publish", args).await?;
        Ok(())
    }

    /// Subscribes to `topics` and returns a `Stream` of their events.
    ///
    /// Events published after this returns are delivered. The subscription is restored after
    /// every reconnect; events published while disconnected are lost. Dropping the stream
    /// unsubscribes.
    pub async fn subscribe<I, T>(&self, topics: I) -> Result<ClientSubscription, CallError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        let topics: Vec<String> = topics.into_iter().map(Into::into).collect();
        let channel = self.channel()?;
        // Changes of the server-side subscription go out one at a time, in the order they were
        // made, so an unsubscribe cannot overtake a later subscribe of the same topic.
        let _order = self.inner.order.lock().await;
        let (id, rx, new_topics) = self.inner.registry.add(&topics);
        if !new_topics.is_empty() {
            let result: Result<serde_json::Value, CallError> = channel
                .call("subscribe", serde_json::json!({ "topics": new_topics }))
                .await;
            if let Err(error) = result {
                self.inner.registry.remove(id);
                return Err(error);
            }
        }
        Ok(ClientSubscription::new(self.clone(), id, topics, rx))
    }

    /// Subscribes to `topics` and calls `callback` for each event on a background task.
    /// Dropping the returned handle unsubscribes.
    pub async fn subscribe_with<I, T, F>(
        &self,
        topics: I,
        callback: F,
    ) -> Result<SubscriptionTask, CallError>
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
        F: FnMut(tidings_core::Event) + Send + 'static,
    {
        let subscription = self.subscribe(topics).await?;
        Ok(SubscriptionTask::spawn(subscription, callback))
    }

    /// Closes the connection and stops reconnecting.
    pub fn close(&self) {
        self.inner.close("closed by client");
    }

    /// Removes a subscription at once and returns the topics no other subscription uses.
    fn forget(&self, id: u64) -> Vec<String> {
        self.inner.registry.remove(id)
    }

    /// Unsubscribes on the server the topics of `candidates` that no subscription wants by the
    /// time the request goes out.
    async fn release(&self, candidates: Vec<String>) {
        if candidates.is_empty() {
            return;
        }
        let _order = self.inner.order.lock().await;
        let gone: Vec<String> = candidates
            .into_iter()
            .filter(|topic| !self.inner.registry.wants(topic))
            .collect();
        if gone.is_empty() {
            return;
        }
        if let Ok(channel) = self.channel() {
            let result: Result<serde_json::Value, CallError> = channel
                .call("unsubscribe", serde_json::json!({ "topics": gone }))
                .await;
            if let Err(error) = result {
                tracing::debug!(error = %error, topics = ?gone, "unsubscribe failed");
            }
        }
    }
}

/// Keeps the client connected: waits for the connection to end, then reconnects with backoff
/// and restores every subscription, until the client closes or the server rejects it.
async fn supervise(
    inner: Arc<Inner>,
    dialer: Dialer,
    policy: ReconnectPolicy,
    mut connection: Connection,
) {
    loop {
        let closed = tokio::select! {
            reason = connection.wait() => Some(reason),
            _ = inner.shutdown.notified() => None,
        };
        let Some(reason) = closed else { return };
        if inner.is_closing() {
            return;
        }
        inner.channel.send_replace(None);
        inner
            .state
            .send_replace(ClientState::Reconnecting { attempt: 0 });
        tracing::info!(close_code = reason.code, close_reason = %reason.reason, "connection lost; reconnecting");

        let mut delays = policy.delays();
        let mut attempt = 0u32;
        connection = loop {
            let Some(delay) = delays.next() else {
                inner.close("gave up reconnecting");
                tracing::warn!(attempts = attempt, "gave up reconnecting");
                return;
            };
            tokio::select! {
                _ = tokio::time::sleep(delay) => {}
                _ = inner.shutdown.notified() => return,
            }
            if inner.is_closing() {
                return;
            }
            attempt += 1;
            inner
                .state
                .send_replace(ClientState::Reconnecting { attempt });
            match dialer.dial().await {
                Ok(connection) => break connection,
                Err(ConnectError::Rejected { status }) => {
                    tracing::warn!(
                        status = status.as_u16(),
                        "server rejected the reconnect; not retrying"
                    );
                    inner.close(&format!("server rejected the connection with {status}"));
                    return;
                }
                Err(error) => {
                    tracing::debug!(attempt, error = %error, "reconnect failed");
                }
            }
        };

        let channel = connection.channel().clone();
        let _order = inner.order.lock().await;
        let topics = inner.registry.topics();
        if !topics.is_empty() {
            let result: Result<serde_json::Value, CallError> = channel
                .call("subscribe", serde_json::json!({ "topics": topics }))
                .await;
            if let Err(error) = result {
                // The connection is dropped so the next attempt restores the topics again.
                tracing::warn!(error = %error, "restoring subscriptions failed; reconnecting");
                channel.close(CloseReason::new(
                    CloseReason::NORMAL,
                    "restoring subscriptions failed",
                ));
                continue;
            }
        }
        inner.channel.send_replace(Some(channel));
        inner.state.send_replace(ClientState::Connected);
        drop(_order);
        tracing::info!(attempts = attempt, topics = topics.len(), "reconnected");
    }
}
