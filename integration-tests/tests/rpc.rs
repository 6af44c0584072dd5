//! RPC in both directions over real WebSockets on 127.0.0.1.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{eventually, init_tracing, within, TestServer};
use serde::Deserialize;
use serde_json::json;
use tidings::{CallContext, CallError, Client, Hub, Methods, NoArgs, PubSubLayer, RpcError};

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

#[derive(Deserialize)]
struct SleepArgs {
    millis: u64,
}

fn server_methods() -> Methods {
    Methods::new()
        .method("add", |args: AddArgs, _ctx: CallContext| async move {
            Ok::<_, RpcError>(args.a + args.b)
        })
        .method("sleep", |args: SleepArgs, _ctx: CallContext| async move {
            tokio::time::sleep(Duration::from_millis(args.millis)).await;
            Ok::<_, RpcError>(args.millis)
        })
        .method("ask_client", |args: AddArgs, ctx: CallContext| async move {
            // Calls back over the same connection while this request is still open.
            let doubled: i64 = ctx
                .channel()
                .call("double", json!({"n": args.a + args.b}))
                .await
                .map_err(|error| RpcError::internal(error.to_string()))?;
            Ok(doubled)
        })
        .method("whoami", |_: NoArgs, ctx: CallContext| async move {
            let peer_id: String = ctx
                .channel()
                .call("_get_channel_id_", json!({}))
                .await
                .map_err(|error| RpcError::internal(error.to_string()))?;
            Ok(peer_id)
        })
}

#[derive(Deserialize)]
struct DoubleArgs {
    n: i64,
}

fn client_methods() -> Methods {
    Methods::new().method("double", |args: DoubleArgs, _ctx: CallContext| async move {
        Ok::<_, RpcError>(args.n * 2)
    })
}

fn server() -> TestServer {
    init_tracing();
    TestServer::start(PubSubLayer::new(Hub::new()).methods(server_methods()))
}

async fn connect(server: &TestServer) -> Client {
    within(
        "connect",
        Client::builder(server.url())
            .methods(client_methods())
            .connect(),
    )
    .await
    .expect("client connects")
}

#[tokio::test]
async fn client_calls_server() {
    let server = server();
    let client = connect(&server).await;
    let sum: i64 = client.call("add", json!({"a": 2, "b": 3})).await.unwrap();
    assert_eq!(sum, 5);
    let pong: String = client.call("_ping_", json!({})).await.unwrap();
    assert_eq!(pong, "pong");
}

#[tokio::test]
async fn server_calls_client_back() {
    let server = server();
    let client = connect(&server).await;
    let doubled: i64 = client
        .call("ask_client", json!({"a": 2, "b": 3}))
        .await
        .unwrap();
    assert_eq!(doubled, 10);
}

#[tokio::test]
async fn server_reads_client_channel_id() {
    let server = server();
    let client = connect(&server).await;
    let id: String = client.call("whoami", json!({})).await.unwrap();
    assert_eq!(id, client.channel().unwrap().id());
    assert_eq!(id.len(), 32);
}

#[tokio::test]
async fn hundred_concurrent_calls_on_one_connection() {
    let server = server();
    let client = connect(&server).await;
    let calls = (0..100).map(|i| {
        let client = client.clone();
        async move {
            // Each call sleeps, so they only finish quickly if they run concurrently.
            let slept: u64 = client.call("sleep", json!({"millis": 50})).await?;
            let sum: i64 = client.call("add", json!({"a": i, "b": 1})).await?;
            Ok::<_, CallError>((slept, sum, i))
        }
    });
    let results = within("100 calls", futures_util::future::join_all(calls)).await;
    for result in results {
        let (slept, sum, i) = result.unwrap();
        assert_eq!(slept, 50);
        assert_eq!(sum, i + 1);
    }
    assert_eq!(client.channel().unwrap().pending_calls(), 0);
}

#[tokio::test]
async fn timed_out_call_leaves_no_pending_entry() {
    let server = server();
    let client = connect(&server).await;
    let error = client
        .call_with_timeout::<u64>("sleep", json!({"millis": 2_000}), Duration::from_millis(50))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::Timeout { .. }), "{error:?}");
    assert!(error.is_retryable());
    assert_eq!(client.channel().unwrap().pending_calls(), 0);
}

#[tokio::test]
async fn cancelled_call_leaves_no_pending_entry() {
    let server = server();
    let client = connect(&server).await;
    let channel = client.channel().unwrap();
    let call = channel.call::<u64>("sleep", json!({"millis": 2_000}));
    let cancelled = tokio::time::timeout(Duration::from_millis(50), call).await;
    assert!(cancelled.is_err());
    assert_eq!(channel.pending_calls(), 0);
}

#[tokio::test]
async fn remote_error_is_typed() {
    let server = server();
    let client = connect(&server).await;
    let error = client
        .call::<i64>("add", json!({"a": "x", "b": 1}))
        .await
        .unwrap_err();
    assert_eq!(
        error.remote_code(),
        Some(&tidings::ErrorCode::InvalidArguments)
    );
    let error = client.call::<i64>("missing", json!({})).await.unwrap_err();
    assert_eq!(
        error.remote_code(),
        Some(&tidings::ErrorCode::MethodNotFound)
    );
}

#[tokio::test]
async fn closed_connection_fails_pending_calls() {
    let server = server();
    let client = connect(&server).await;
    let channel = client.channel().unwrap();
    let slow = tokio::spawn({
        let channel = channel.clone();
        async move { channel.call::<u64>("sleep", json!({"millis": 5_000})).await }
    });
    eventually("call pending", || channel.pending_calls() == 1).await;
    server.stop();
    let error = within("call failure", slow).await.unwrap().unwrap_err();
    assert!(
        matches!(error, CallError::ConnectionClosed { .. }),
        "{error:?}"
    );
    assert_eq!(channel.pending_calls(), 0);
}

#[tokio::test]
async fn panicking_handler_answers_internal_error() {
    init_tracing();
    let calls = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&calls);
    let methods = Methods::new().method("boom", move |_: NoArgs, _ctx: CallContext| {
        counter.fetch_add(1, Ordering::SeqCst);
        async move {
            if true {
                panic!("handler bug");
            }
            Ok::<_, RpcError>(())
        }
    });
    let server = TestServer::start(PubSubLayer::new(Hub::new()).methods(methods));
    let client = tidings::Client::builder(server.url())
        .connect()
        .await
        .unwrap();
    let error = client.call::<()>("boom", json!({})).await.unwrap_err();
    assert_eq!(
        error.remote_code(),
        Some(&tidings::ErrorCode::InternalError)
    );
    let pong: String = client.call("ping", json!({})).await.unwrap();
    assert_eq!(pong, "pong");
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}
