//! The RPC channel and pub/sub endpoint over the in-process transport pair.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tidings_core::rpc::spawn_connection;
use tidings_core::transport::{
    self, CloseReason, FrameSink, FrameStream, Incoming, Transport, TransportError,
};
use tidings_core::{
    CallContext, CallError, ConnContext, ConnectionConfig, Endpoint, Hub, Methods, RpcChannel,
    RpcError,
};

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

fn span() -> tracing::Span {
    tracing::debug_span!("connection", conn_id = "test")
}

#[tokio::test]
async fn both_sides_call_each_other() {
    let (left, right) = transport::pair();
    let adder = Methods::new().method("add", |args: AddArgs, _ctx: CallContext| async move {
        Ok::<_, RpcError>(args.a + args.b)
    });
    let left = spawn_connection(
        Box::new(left),
        adder.clone(),
        ConnContext::default(),
        ConnectionConfig::default(),
        span(),
    );
    let right = spawn_connection(
        Box::new(right),
        adder,
        ConnContext::default(),
        ConnectionConfig::default(),
        span(),
    );

    let sum: i64 = left
        .channel()
        .call("add", json!({"a": 1, "b": 2}))
        .await
        .unwrap();
    assert_eq!(sum, 3);
    let sum: i64 = right
        .channel()
        .call("add", json!({"a": 4, "b": 5}))
        .await
        .unwrap();
    assert_eq!(sum, 9);
    let id: String = left
        .channel()
        .call("_get_channel_id_", json!({}))
        .await
        .unwrap();
    assert_eq!(id, right.channel().id());
}

#[tokio::test]
async fn endpoint_serves_pubsub_in_process() {
    let hub = Hub::new();
    let endpoint = Endpoint::new(hub.clone());
    let (server_side, client_side) = transport::pair();
    tokio::spawn(async move {
        endpoint
            .serve(Box::new(server_side), ConnContext::default())
            .await
    });

    let notify_seen = std::sync::Arc::new(tokio::sync::Notify::new());
    let seen = std::sync::Arc::clone(&notify_seen);
    let methods = Methods::new().inline_method(
        "notify",
        move |args: serde_json::Value, _ctx: &CallContext| {
            assert_eq!(args["subscription"]["topic"], "t");
            assert_eq!(args["data"], json!({"x": 1}));
            seen.notify_one();
            Ok("None")
        },
    );
    let client = spawn_connection(
        Box::new(client_side),
        methods,
        ConnContext::default(),
        ConnectionConfig::default(),
        span(),
    );
    let subscribed: bool = client
        .channel()
        .call("subscribe", json!({"topics": ["t"]}))
        .await
        .unwrap();
    assert!(subscribed);
    hub.publish(["t"], &json!({"x": 1})).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), notify_seen.notified())
        .await
        .unwrap();
}

#[tokio::test]
async fn server_side_subscription_stream() {
    let hub = Hub::new();
    let mut events = hub.subscribe(["a", "b"]).await.unwrap();
    hub.publish(["a", "b"], &1).await.unwrap();
    assert_eq!(events.next().await.unwrap().topic(), "a");
    assert_eq!(events.next().await.unwrap().topic(), "b");
    drop(events);
    tokio::task::yield_now().await;
    tokio::time::timeout(Duration::from_secs(5), async {
        while hub.topic_count() != 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("dropped subscription removes its topics");
}

/// A peer that accepts every frame and never sends anything back, as a dead host would.
struct Silent;
struct SilentSink;
struct SilentStream;

#[async_trait]
impl FrameSink for SilentSink {
    async fn send_batch(&mut self, frames: &mut Vec<Bytes>) -> Result<(), TransportError> {
        frames.clear();
        Ok(())
    }
    async fn ping(&mut self) -> Result<(), TransportError> {
        Ok(())
    }
    async fn close(&mut self, _reason: CloseReason) -> Result<(), TransportError> {
        Ok(())
    }
}

#[async_trait]
impl FrameStream for SilentStream {
    async fn recv(&mut self) -> Option<Result<Incoming, TransportError>> {
        std::future::pending().await
    }
}

impl Transport for Silent {
    fn split(self: Box<Self>) -> (Box<dyn FrameSink>, Box<dyn FrameStream>) {
        (Box::new(SilentSink), Box::new(SilentStream))
    }
}

#[tokio::test(start_paused = true)]
async fn silent_peer_is_closed_by_keepalive() {
    let config =
        ConnectionConfig::default().keepalive(Some(Duration::from_secs(1)), Duration::from_secs(1));
    let connection = spawn_connection(
        Box::new(Silent),
        Methods::new(),
        ConnContext::default(),
        config,
        span(),
    );
    let channel = connection.channel().clone();
    let call = tokio::spawn(async move { channel.call::<String>("_ping_", json!({})).await });
    let reason = connection.wait().await;
    assert_eq!(reason.code, 1011);
    assert!(reason.reason.contains("keep-alive"));
    let error = call.await.unwrap().unwrap_err();
    assert!(
        matches!(error, CallError::ConnectionClosed { .. }),
        "{error:?}"
    );
}

// Connections whose peer or owner misbehaves: a keep-alive ping that never completes, and a
// `serve` future dropped before its connection ends.

fn keepalive_config() -> ConnectionConfig {
    ConnectionConfig::default().keepalive(Some(Duration::from_secs(1)), Duration::from_secs(1))
}

/// A peer that stopped reading just before a keep-alive ping: frames are accepted, but the
/// ping never completes, like a WebSocket write into a full TCP send buffer.
struct StuckPing;
struct StuckPingSink;

#[async_trait]
impl FrameSink for StuckPingSink {
    async fn send_batch(&mut self, frames: &mut Vec<Bytes>) -> Result<(), TransportError> {
        frames.clear();
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), TransportError> {
        std::future::pending().await
    }

    async fn close(&mut self, _reason: CloseReason) -> Result<(), TransportError> {
        Ok(())
    }
}

impl Transport for StuckPing {
    fn split(self: Box<Self>) -> (Box<dyn FrameSink>, Box<dyn FrameStream>) {
        (Box::new(StuckPingSink), Box::new(SilentStream))
    }
}

#[tokio::test(start_paused = true)]
async fn stuck_ping_closes_by_keepalive() {
    let connection = spawn_connection(
        Box::new(StuckPing),
        Methods::new(),
        ConnContext::default(),
        keepalive_config(),
        tracing::Span::none(),
    );
    let reason = tokio::time::timeout(Duration::from_secs(60), connection.wait())
        .await
        .expect("closed within the keep-alive limit");
    assert_eq!(reason.code, CloseReason::INTERNAL_ERROR);
}

#[tokio::test(start_paused = true)]
async fn stuck_ping_yields_to_close() {
    let connection = spawn_connection(
        Box::new(StuckPing),
        Methods::new(),
        ConnContext::default(),
        ConnectionConfig::default()
            .keepalive(Some(Duration::from_secs(1)), Duration::from_secs(600)),
        tracing::Span::none(),
    );
    // Past the first ping, which blocks.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    connection
        .channel()
        .close(CloseReason::new(CloseReason::GOING_AWAY, "shutdown"));
    let reason = tokio::time::timeout(Duration::from_secs(10), connection.wait())
        .await
        .expect("close() ends the connection");
    assert_eq!(reason.code, CloseReason::GOING_AWAY);
}

#[tokio::test(start_paused = true)]
async fn stuck_ping_ends_serve() {
    let endpoint = Endpoint::new(Hub::new()).config(keepalive_config());
    let served = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .serve(Box::new(StuckPing), ConnContext::default())
                .await
        })
    };
    tokio::time::timeout(Duration::from_secs(60), served)
        .await
        .expect("serve returns within the keep-alive limit")
        .expect("serve task");
    assert_eq!(endpoint.connection_count(), 0);
}

async fn wait_for(what: &str, mut condition: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(5), async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("timed out waiting for {what}"));
}

/// Serve raced against a shutdown signal, a common graceful-shutdown pattern: dropping the
/// serve future must remove the connection from the hub and the registry and close it.
#[tokio::test]
async fn dropped_serve_cleans_up() {
    let hub = Hub::new();
    let server_channel = Arc::new(Mutex::new(None::<RpcChannel>));
    let slot = Arc::clone(&server_channel);
    let endpoint = Endpoint::new(hub.clone()).on_connect(move |channel| {
        let slot = Arc::clone(&slot);
        async move {
            *slot.lock().unwrap() = Some(channel);
        }
    });
    let (server_side, client_side) = transport::pair();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = {
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            tokio::select! {
                reason = endpoint.serve(Box::new(server_side), ConnContext::default()) => Some(reason),
                _ = stopped => None,
            }
        })
    };
    let client = spawn_connection(
        Box::new(client_side),
        Methods::new().inline_method("notify", |_: Value, _ctx: &CallContext| Ok("None")),
        ConnContext::default(),
        ConnectionConfig::default(),
        tracing::Span::none(),
    );
    let subscribed: bool = client
        .channel()
        .call("subscribe", json!({"topics": ["t"]}))
        .await
        .expect("subscribe");
    assert!(subscribed);
    wait_for("on_connect", || server_channel.lock().unwrap().is_some()).await;
    let channel = server_channel.lock().unwrap().clone().expect("channel");

    stop.send(()).expect("serve still running");
    assert!(served.await.expect("serve task").is_none());

    wait_for("hub cleanup", || hub.subscriber_count("t") == 0).await;
    assert_eq!(endpoint.connection_count(), 0);
    assert!(channel.is_closed());
    tokio::time::timeout(Duration::from_secs(1), channel.closed())
        .await
        .expect("closed() returns");
    let call = channel.call::<Value>("anything", json!({})).await;
    assert!(call.is_err(), "a call on a dropped connection succeeded");
}
