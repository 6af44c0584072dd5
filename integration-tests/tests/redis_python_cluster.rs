//! A mixed cluster on one Redis: a Python PubSubEndpoint with an EventBroadcaster and a tidings
//! instance in the Python-compatible single-channel layout deliver to each other's subscribers.

mod common;

use common::python::PythonPeer;
use common::redis::shared_url;
use common::{init_tracing, within, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings::{Client, Hub, PubSubLayer, RedisBackbone};

#[tokio::test]
async fn python_and_tidings_share_redis() {
    init_tracing();
    let channel = format!(
        "tidings-test-python-{}-{}",
        std::process::id(),
        common::unique()
    );

    let mut python = PythonPeer::spawn(&[
        "server",
        "--broadcaster",
        &shared_url(),
        "--channel",
        &channel,
    ])
    .await;
    let listening = python.event("listening").await;
    let python_url = format!("ws://127.0.0.1:{}/pubsub", listening["port"]);

    let backbone =
        RedisBackbone::from_url(&format!("{}/?channel={channel}", shared_url())).unwrap();
    let hub = Hub::builder().backbone(backbone).build().await.unwrap();
    let server = TestServer::start(PubSubLayer::new(hub.clone()));

    // The Python broadcaster listens and shares only while a client is connected to it.
    let on_python = within("connect to Python", Client::builder(&python_url).connect())
        .await
        .unwrap();
    let mut python_events = on_python.subscribe(["shared"]).await.unwrap();
    let on_tidings = common::client(&server.url()).await;
    let mut tidings_events = on_tidings.subscribe(["shared"]).await.unwrap();
    // Publishers are not echoed their own publications, so each side publishes from a client
    // of its own.
    let tidings_publisher = common::client(&server.url()).await;
    let python_publisher = within("connect to Python", Client::builder(&python_url).connect())
        .await
        .unwrap();

    // The Python broadcaster's subscription to the channel starts in the background, so
    // publish until the first event crosses.
    let mut crossed = false;
    for attempt in 0..100 {
        tidings_publisher
            .publish(["shared"], &json!({"from": "tidings", "attempt": attempt}))
            .await
            .unwrap();
        let local = within("local delivery", tidings_events.next())
            .await
            .unwrap();
        assert_eq!(local.decode::<Value>().unwrap()["attempt"], attempt);
        if let Ok(Some(event)) =
            tokio::time::timeout(std::time::Duration::from_millis(100), python_events.next()).await
        {
            assert_eq!(event.decode::<Value>().unwrap()["from"], "tidings");
            crossed = true;
            break;
        }
    }
    assert!(
        crossed,
        "no tidings publication reached the Python instance"
    );

    python_publisher
        .publish(["shared"], &json!({"from": "python"}))
        .await
        .unwrap();
    let on_python_side = within("Python local delivery", python_events.next())
        .await
        .unwrap();
    assert_eq!(
        on_python_side.decode::<Value>().unwrap(),
        json!({"from": "python"})
    );
    let crossed_to_tidings = within("Python publication on tidings", tidings_events.next())
        .await
        .unwrap();
    assert_eq!(
        crossed_to_tidings.decode::<Value>().unwrap(),
        json!({"from": "python"})
    );

    // Exactly once each way: a marker from each side is the next event everywhere.
    tidings_publisher
        .publish(["shared"], &"marker")
        .await
        .unwrap();
    assert_eq!(
        within("marker", tidings_events.next())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "marker"
    );
    assert_eq!(
        within("marker", python_events.next())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "marker"
    );
    assert_eq!(
        hub.stats().backbone_received,
        1,
        "tidings received its own publications back from Python"
    );
    python.finish().await;
}
