//! Publish/subscribe between real clients over WebSockets on 127.0.0.1.

mod common;

use common::{client, eventually, init_tracing, within, RawPeer, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings::{Hub, PubSubLayer, ALL_TOPICS};

fn server() -> (Hub, TestServer) {
    init_tracing();
    let hub = Hub::new();
    let server = TestServer::start(PubSubLayer::new(hub.clone()));
    (hub, server)
}

#[tokio::test]
async fn event_reaches_other_client() {
    let (_hub, server) = server();
    let subscriber = client(&server.url()).await;
    let publisher = client(&server.url()).await;

    let mut news = subscriber.subscribe(["news", "sports"]).await.unwrap();
    publisher
        .publish(["news"], &json!({"headline": "hi"}))
        .await
        .unwrap();
    publisher.publish(["sports"], &json!(3)).await.unwrap();

    let first = within("news event", news.next()).await.unwrap();
    assert_eq!(first.topic(), "news");
    assert_eq!(first.decode::<Value>().unwrap(), json!({"headline": "hi"}));
    let second = within("sports event", news.next()).await.unwrap();
    assert_eq!(second.topic(), "sports");
    assert_eq!(second.decode::<i64>().unwrap(), 3);
}

#[tokio::test]
async fn all_topics_gets_real_topic() {
    let (_hub, server) = server();
    let watcher = client(&server.url()).await;
    let publisher = client(&server.url()).await;
    let mut everything = watcher.subscribe([ALL_TOPICS]).await.unwrap();

    publisher.publish(["alpha"], &1).await.unwrap();
    publisher.publish(["beta"], &2).await.unwrap();

    let first = within("alpha", everything.next()).await.unwrap();
    assert_eq!(first.topic(), "alpha");
    let second = within("beta", everything.next()).await.unwrap();
    assert_eq!(second.topic(), "beta");
}

#[tokio::test]
async fn topic_and_all_topics_deliver_once() {
    let (_hub, server) = server();
    let mut raw = RawPeer::connect(&server.url()).await;
    let subscribed = raw
        .call("subscribe", json!({"topics": ["t", ALL_TOPICS]}), "a1")
        .await;
    assert_eq!(subscribed["result"], true);
    let publisher = client(&server.url()).await;
    publisher.publish(["t"], &"first").await.unwrap();
    publisher.publish(["t"], &"second").await.unwrap();

    let notify = raw.recv_json().await;
    assert_eq!(notify["request"]["arguments"]["data"], "first");
    let notify = raw.recv_json().await;
    assert_eq!(
        notify["request"]["arguments"]["data"], "second",
        "first event was delivered twice"
    );
}

#[tokio::test]
async fn publisher_is_not_echoed() {
    let (_hub, server) = server();
    let peer = client(&server.url()).await;
    let other = client(&server.url()).await;
    let mut own = peer.subscribe(["echo"]).await.unwrap();
    let mut theirs = other.subscribe(["echo"]).await.unwrap();

    peer.publish(["echo"], &"from peer").await.unwrap();
    other.publish(["echo"], &"from other").await.unwrap();

    let seen_by_peer = within("other's event", own.next()).await.unwrap();
    assert_eq!(seen_by_peer.decode::<String>().unwrap(), "from other");
    let seen_by_other = within("peer's event", theirs.next()).await.unwrap();
    assert_eq!(seen_by_other.decode::<String>().unwrap(), "from peer");
    assert!(own.try_recv().is_none(), "publisher received its own event");
}

#[tokio::test]
async fn notifier_id_names_the_skipped_subscriber() {
    let (_hub, server) = server();
    let mut publisher = RawPeer::connect(&server.url()).await;
    let mut skipped = RawPeer::connect(&server.url()).await;
    let skipped_id = skipped.call("_get_channel_id_", json!({}), "c1").await;
    let skipped_id = skipped_id["result"]
        .as_str()
        .expect("channel id")
        .to_owned();
    assert_eq!(
        skipped
            .call("subscribe", json!({"topics": ["n"]}), "s1")
            .await["result"],
        true
    );
    assert_eq!(
        publisher
            .call("subscribe", json!({"topics": ["n"]}), "s2")
            .await["result"],
        true
    );

    let publish = json!({
        "request": {
            "method": "publish",
            "arguments": {"topics": ["n"], "data": "skip", "notifier_id": skipped_id},
            "call_id": "p1",
        },
        "response": null,
    });
    publisher.send_text(&publish.to_string()).await;
    // The publisher named another subscriber as the notifier, so it hears its own event; the
    // notify and the response may come in either order.
    let mut notified = false;
    let mut responded = false;
    while !(notified && responded) {
        let frame = publisher.recv_json().await;
        if frame["response"]["call_id"] == "p1" {
            assert_eq!(frame["response"]["result"], true);
            responded = true;
        } else {
            assert_eq!(frame["request"]["arguments"]["data"], "skip");
            notified = true;
        }
    }

    let marker = client(&server.url()).await;
    marker.publish(["n"], &"marker").await.unwrap();
    let notify = skipped.recv_json().await;
    assert_eq!(
        notify["request"]["arguments"]["data"], "marker",
        "the subscriber named as notifier received the event"
    );
}

#[tokio::test]
async fn unsubscribe_stops_and_resubscribe_restores() {
    let (hub, server) = server();
    let subscriber = client(&server.url()).await;
    let publisher = client(&server.url()).await;

    let subscription = subscriber.subscribe(["t"]).await.unwrap();
    subscription.unsubscribe().await;
    assert_eq!(hub.subscriber_count("t"), 0);
    assert_eq!(hub.topic_count(), 0, "topic entry left behind");

    let mut watcher = subscriber.subscribe(["other"]).await.unwrap();
    publisher.publish(["t"], &"lost").await.unwrap();
    publisher.publish(["other"], &"marker").await.unwrap();
    let marker = within("marker", watcher.next()).await.unwrap();
    assert_eq!(marker.topic(), "other");

    let mut again = subscriber.subscribe(["t"]).await.unwrap();
    publisher.publish(["t"], &"kept").await.unwrap();
    let event = within("event after resubscribe", again.next())
        .await
        .unwrap();
    assert_eq!(event.decode::<String>().unwrap(), "kept");
}

#[tokio::test]
async fn publish_right_after_subscribe_is_delivered() {
    let (_hub, server) = server();
    let subscriber = client(&server.url()).await;
    let publisher = client(&server.url()).await;
    for round in 0..50 {
        let topic = format!("race-{round}");
        let mut events = subscriber.subscribe([topic.clone()]).await.unwrap();
        publisher.publish([topic.clone()], &round).await.unwrap();
        let event = within("event right after subscribe", events.next())
            .await
            .unwrap();
        assert_eq!(event.decode::<i32>().unwrap(), round);
    }
}

#[tokio::test]
async fn server_side_publish_and_subscribe() {
    let (hub, server) = server();
    let remote = client(&server.url()).await;
    let mut from_server = remote.subscribe(["server-news"]).await.unwrap();
    let mut local = hub.subscribe(["client-news"]).await.unwrap();

    hub.publish(["server-news"], &json!({"from": "server"}))
        .await
        .unwrap();
    remote
        .publish(["client-news"], &json!({"from": "client"}))
        .await
        .unwrap();

    let event = within("server publication", from_server.next())
        .await
        .unwrap();
    assert_eq!(event.decode::<Value>().unwrap()["from"], "server");
    let event = within("client publication", local.next()).await.unwrap();
    assert_eq!(event.decode::<Value>().unwrap()["from"], "client");
}

#[tokio::test]
async fn closed_connection_leaves_no_topic() {
    let (hub, server) = server();
    let subscriber = client(&server.url()).await;
    let _events = subscriber.subscribe(["a", "b"]).await.unwrap();
    assert_eq!(hub.topic_count(), 2);
    subscriber.close();
    eventually("topics removed after close", || hub.topic_count() == 0).await;
}

#[tokio::test]
async fn browser_style_subscribe_without_call_id() {
    let (_hub, server) = server();
    let mut raw = RawPeer::connect(&server.url()).await;
    raw.send_text(r#"{"request":{"method":"subscribe","arguments":{"topics":["b"]}}}"#)
        .await;
    let answer = raw.recv_json().await;
    assert_eq!(answer["response"]["result"], true);
    assert_eq!(answer["response"]["call_id"], Value::Null);
    assert_eq!(answer["request"], Value::Null);
}

#[tokio::test]
async fn pipelined_publishes_keep_order() {
    let (_hub, server) = server();
    let subscriber = client(&server.url()).await;
    let mut events = subscriber.subscribe(["ordered"]).await.unwrap();
    let mut raw = RawPeer::connect(&server.url()).await;
    // Every frame goes out before any response is read, as a browser sending quickly would; 200
    // stays under the default limit of requests in flight per connection.
    for n in 0..200 {
        let frame = json!({
            "request": {"method": "publish", "arguments": {"topics": ["ordered"], "data": n}, "call_id": format!("p{n}")},
            "response": null,
        });
        raw.send_text(&frame.to_string()).await;
    }
    for expected in 0..200 {
        let event = within("ordered event", events.next()).await.unwrap();
        assert_eq!(event.decode::<i64>().unwrap(), expected);
    }
    // Responses may come in any order; each call id must get `true`.
    let mut answered = std::collections::HashSet::new();
    while answered.len() < 200 {
        let frame = raw.recv_json().await;
        let response = &frame["response"];
        assert_eq!(response["result"], true, "{frame}");
        assert!(
            answered.insert(response["call_id"].as_str().unwrap().to_owned()),
            "{frame}"
        );
    }
}

#[tokio::test]
async fn pipelined_unsubscribe_then_subscribe_ends_subscribed() {
    let (hub, server) = server();
    let mut raw = RawPeer::connect(&server.url()).await;
    let answer = raw.call("subscribe", json!({"topics": ["u"]}), "s0").await;
    assert_eq!(answer["result"], true);
    for round in 0..50 {
        let unsubscribe = json!({"request": {"method": "unsubscribe", "arguments": {"topics": ["u"]}, "call_id": format!("u{round}")}, "response": null});
        let subscribe = json!({"request": {"method": "subscribe", "arguments": {"topics": ["u"]}, "call_id": format!("s{round}")}, "response": null});
        raw.send_text(&unsubscribe.to_string()).await;
        raw.send_text(&subscribe.to_string()).await;
        let answer = raw.response_for(&format!("s{round}")).await;
        assert_eq!(answer["result"], true);
        assert_eq!(
            hub.subscriber_count("u"),
            1,
            "round {round} ended unsubscribed"
        );
    }
}

#[tokio::test]
async fn dropped_then_new_subscription_receives() {
    let (_hub, server) = server();
    let subscriber = client(&server.url()).await;
    let publisher = client(&server.url()).await;
    for round in 0..50 {
        let events = subscriber.subscribe(["x"]).await.unwrap();
        drop(events);
        let mut again = subscriber.subscribe(["x"]).await.unwrap();
        publisher.publish(["x"], &round).await.unwrap();
        let event = within("event after resubscribe", again.next())
            .await
            .unwrap();
        assert_eq!(event.decode::<i32>().unwrap(), round, "round {round}");
    }
}

#[tokio::test]
async fn repeated_topics_deliver_once() {
    let (_hub, server) = server();
    let subscriber = client(&server.url()).await;
    let mut events = subscriber.subscribe(["a"]).await.unwrap();
    let mut raw = RawPeer::connect(&server.url()).await;
    let topics = vec!["a"; 10_000];
    let answer = raw
        .call("publish", json!({"topics": topics, "data": "once"}), "r1")
        .await;
    assert_eq!(answer["result"], true);
    let publisher = client(&server.url()).await;
    publisher.publish(["a"], &"marker").await.unwrap();
    assert_eq!(
        within("event", events.next())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "once"
    );
    assert_eq!(
        within("marker", events.next())
            .await
            .unwrap()
            .decode::<String>()
            .unwrap(),
        "marker"
    );
}

#[tokio::test]
async fn close_all_sends_going_away() {
    init_tracing();
    let hub = Hub::new();
    let layer = PubSubLayer::new(hub.clone());
    let endpoint = layer.endpoint().clone();
    let server = TestServer::start(layer);
    let mut raw = RawPeer::connect(&server.url()).await;
    assert_usable_ping(&mut raw).await;
    assert_eq!(endpoint.connection_count(), 1);
    endpoint.close_all(tidings::transport::CloseReason::new(
        1001,
        "server shutting down",
    ));
    let close = loop {
        match within("close frame", raw.ws.next()).await {
            Some(Ok(tokio_tungstenite::tungstenite::Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.expect("close code").code), 1001);
    eventually("connection removed", || endpoint.connection_count() == 0).await;
}

async fn assert_usable_ping(raw: &mut RawPeer) {
    let answer = raw.call("_ping_", json!({}), "ping").await;
    assert_eq!(answer["result"], "pong");
}
