//! Interop with the real Python packages fastapi-websocket-pubsub 1.0.1 and
//! fastapi-websocket-rpc 0.1.29, in both directions, over sockets on 127.0.0.1.

mod common;

use common::python::PythonPeer;
use common::{eventually, init_tracing, within, TestServer};
use futures_util::StreamExt;
use serde::Deserialize;
use serde_json::{json, Value};
use tidings::{CallContext, Client, Hub, Methods, PubSubLayer, RpcError, ALL_TOPICS};

#[derive(Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

async fn pubsub_client(server: &TestServer, topics: &[&str]) -> PythonPeer {
    let mut peer = PythonPeer::spawn(&["pubsub-client", &server.url()]).await;
    peer.request(json!({"op": "subscribe", "topics": topics}))
        .await
        .unwrap();
    peer.request(json!({"op": "start"})).await.unwrap();
    peer
}

#[tokio::test]
async fn python_pubsub_client_against_tidings() {
    init_tracing();
    let hub = Hub::new();
    let server = TestServer::start(PubSubLayer::new(hub.clone()));
    let mut peer = pubsub_client(&server, &["news", "sports"]).await;
    assert_eq!(hub.subscriber_count("news"), 1);
    assert_eq!(hub.subscriber_count("sports"), 1);

    // Receive on several topics.
    hub.publish(["news"], &json!({"headline": "hi", "n": 1}))
        .await
        .unwrap();
    hub.publish(["sports"], &json!("goal")).await.unwrap();
    let event = peer.event("notify").await;
    assert_eq!(event["topic"], "news");
    assert_eq!(event["data"], json!({"headline": "hi", "n": 1}));
    let event = peer.event("notify").await;
    assert_eq!(event["topic"], "sports");
    assert_eq!(event["data"], "goal");

    // Publish with and without sync; the Python publisher is not echoed.
    let mut local = hub.subscribe(["from-python"]).await.unwrap();
    let published = peer
        .request(
            json!({"op": "publish", "topics": ["from-python"], "data": {"k": 1}, "sync": true}),
        )
        .await
        .unwrap();
    assert_eq!(published, true);
    let event = within("sync publication", local.next()).await.unwrap();
    assert_eq!(event.decode::<Value>().unwrap(), json!({"k": 1}));
    peer.request(
        json!({"op": "publish", "topics": ["from-python"], "data": [1, 2], "sync": false}),
    )
    .await
    .unwrap();
    let event = within("async publication", local.next()).await.unwrap();
    assert_eq!(event.decode::<Value>().unwrap(), json!([1, 2]));

    // Unsubscribe one topic; the other keeps flowing.
    peer.request(json!({"op": "unsubscribe", "topic": "news"}))
        .await
        .unwrap();
    eventually("news unsubscribed", || hub.subscriber_count("news") == 0).await;
    hub.publish(["news"], &"dropped").await.unwrap();
    hub.publish(["sports"], &"kept").await.unwrap();
    let event = peer.event("notify").await;
    assert_eq!(
        event["topic"], "sports",
        "unsubscribed topic still delivered: {event}"
    );
    assert_eq!(event["data"], "kept");

    // Restart the server: the Python client reconnects and subscribes again by itself.
    let addr = server.addr;
    server.stop();
    let hub = Hub::new();
    let _restarted = TestServer::start_on(addr, PubSubLayer::new(hub.clone()));
    let connected = peer.event("connected").await;
    assert_eq!(connected["count"], 1, "first connect reported late");
    let reconnected = peer.event("connected").await;
    assert_eq!(reconnected["count"], 2);
    eventually("Python client subscribed again", || {
        hub.subscriber_count("sports") == 1
    })
    .await;
    hub.publish(["sports"], &"after restart").await.unwrap();
    let event = peer.event("notify").await;
    assert_eq!(event["data"], "after restart");
    peer.finish().await;
}

#[tokio::test]
async fn python_all_topics_gets_real_topic() {
    init_tracing();
    let hub = Hub::new();
    let server = TestServer::start(PubSubLayer::new(hub.clone()));
    let mut peer = pubsub_client(&server, &[ALL_TOPICS]).await;
    hub.publish(["alpha"], &1).await.unwrap();
    hub.publish(["beta"], &2).await.unwrap();
    let event = peer.event("notify").await;
    assert_eq!(event["topic"], "alpha");
    let event = peer.event("notify").await;
    assert_eq!(event["topic"], "beta");
    peer.finish().await;
}

fn rpc_server_methods() -> Methods {
    Methods::new().method("add", |args: AddArgs, _ctx: CallContext| async move {
        Ok::<_, RpcError>(args.a + args.b)
    })
}

#[tokio::test]
async fn python_rpc_client_against_tidings() {
    init_tracing();
    let (seen_tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel();
    let layer = PubSubLayer::new(Hub::new())
        .methods(rpc_server_methods())
        .on_connect(move |channel| {
            let seen = seen_tx.clone();
            async move {
                // The server calls methods the Python client exposes, built-in ones included.
                let greeting = channel
                    .call::<String>("greet", json!({"name": "tidings"}))
                    .await;
                let product = channel
                    .call::<i64>("multiply", json!({"a": 6, "b": 7}))
                    .await;
                let channel_id = channel.call::<String>("_get_channel_id_", json!({})).await;
                let _ = seen.send((greeting, product, channel_id));
            }
        });
    let server = TestServer::start(layer);
    let mut peer = PythonPeer::spawn(&["rpc-client", &server.url()]).await;
    let connected = peer.event("connected").await;

    let (greeting, product, channel_id) = within("server-to-client calls", seen_rx.recv())
        .await
        .unwrap();
    assert_eq!(greeting.unwrap(), "hello tidings");
    assert_eq!(product.unwrap(), 42);
    assert_eq!(
        channel_id.unwrap(),
        connected["channel_id"].as_str().unwrap()
    );

    let response = peer
        .request(json!({"op": "call", "method": "add", "args": {"a": 2, "b": 3}}))
        .await
        .unwrap();
    assert_eq!(response, json!({"result": 5, "result_type": "int"}));

    // Errors reach Python as a None result; the connection stays up.
    let response = peer
        .request(json!({"op": "call", "method": "no_such_method", "args": {}}))
        .await
        .unwrap();
    assert_eq!(response, json!({"result": null, "result_type": "error"}));
    let response = peer
        .request(json!({"op": "call", "method": "add", "args": {"a": "x", "b": 1}}))
        .await
        .unwrap();
    assert_eq!(response["result"], Value::Null);
    let response = peer
        .request(json!({"op": "call", "method": "add", "args": {"a": 1, "b": 1}}))
        .await
        .unwrap();
    assert_eq!(response["result"], 2, "connection unusable after errors");
    peer.finish().await;
}

#[derive(Deserialize)]
struct DoubleArgs {
    n: i64,
}

#[tokio::test]
async fn tidings_client_against_python_server() {
    init_tracing();
    let mut server = PythonPeer::spawn(&["server"]).await;
    let listening = server.event("listening").await;
    let url = format!("ws://127.0.0.1:{}/pubsub", listening["port"]);

    let methods = Methods::new()
        .method("double", |args: DoubleArgs, _ctx: CallContext| async move {
            Ok::<_, RpcError>(args.n * 2)
        });
    // Connecting sends `_ping_` first and waits for the Python server's pong.
    let client = within("connect", Client::builder(&url).methods(methods).connect())
        .await
        .expect("tidings client connects to the Python server");
    let pong: String = client.call("_ping_", json!({})).await.unwrap();
    assert_eq!(pong, "pong");

    // RPC both ways: the Python server calls double() on this client.
    let sum: i64 = client.call("add", json!({"a": 2, "b": 3})).await.unwrap();
    assert_eq!(sum, 5);
    let doubled = server
        .request(json!({"op": "call_client", "method": "double", "args": {"n": 21}}))
        .await
        .unwrap();
    assert_eq!(doubled, 42);
    let client_id = server
        .request(json!({"op": "call_client", "method": "_get_channel_id_"}))
        .await
        .unwrap();
    assert_eq!(client_id, client.channel().unwrap().id());

    // Subscribe, receive and acknowledge notify, publish.
    let mut events = client.subscribe(["x"]).await.unwrap();
    server
        .request(json!({"op": "publish", "topics": ["x"], "data": {"from": "python"}}))
        .await
        .unwrap();
    let event = within("server-side publication", events.next())
        .await
        .unwrap();
    assert_eq!(event.topic(), "x");
    assert_eq!(event.decode::<Value>().unwrap(), json!({"from": "python"}));

    // With sync publish the Python server responds only after every subscriber acknowledged its
    // notify, so this returning proves the acknowledgement was accepted.
    let publisher = within("second client", Client::builder(&url).connect())
        .await
        .unwrap();
    within(
        "publish acknowledged",
        publisher.publish(["x"], &"from tidings"),
    )
    .await
    .unwrap();
    let event = within("client publication", events.next()).await.unwrap();
    assert_eq!(event.decode::<String>().unwrap(), "from tidings");
    assert!(events.try_recv().is_none(), "duplicate delivery");

    let server_id: String = client.call("_get_channel_id_", json!({})).await.unwrap();
    assert!(!server_id.is_empty());
    server.finish().await;
}
