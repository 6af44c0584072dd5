//! The conformance suite every backbone must pass, written once.
//!
//! A backbone crate's test file implements [`Cluster`] for its backbone and expands
//! [`conformance_tests!`], which instantiates every case below. Each case runs two or three
//! server instances in one process, each with its own hub and its own plain hyper server, and
//! real clients on real sockets.

#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use tidings::{Backbone, BackboneState, Client, ClientSubscription, Hub, PubSubLayer, ALL_TOPICS};

use crate::common::{self, eventually, within, TestServer};

/// Makes backbone handles that share one medium, one per server instance.
#[async_trait::async_trait]
pub trait Cluster: Send + Sync {
    /// Returns the backbone for one more instance of this cluster.
    fn backbone(&self) -> Arc<dyn Backbone>;

    /// Removes what the test left on the broker, such as exchanges.
    async fn cleanup(&self) {}
}

/// A broker the restart case can stop and start again.
#[async_trait::async_trait]
pub trait Restartable: Cluster {
    /// Stops the broker; connected links see their connection drop.
    async fn stop_broker(&mut self);
    /// Starts the broker again at the same address.
    async fn start_broker(&mut self);
}

/// One server instance: a hub on the backbone and a server for clients.
pub struct Instance {
    pub hub: Hub,
    pub server: TestServer,
}

impl Instance {
    pub async fn start(cluster: &dyn Cluster) -> Self {
        let hub = within(
            "hub attach",
            Hub::builder().backbone_arc(cluster.backbone()).build(),
        )
        .await
        .expect("hub attaches to the backbone");
        let server = TestServer::start(PubSubLayer::new(hub.clone()));
        Self { hub, server }
    }

    pub async fn client(&self) -> Client {
        common::client(&self.server.url()).await
    }
}

async fn instances(cluster: &dyn Cluster, count: usize) -> Vec<Instance> {
    let mut instances = Vec::new();
    for _ in 0..count {
        instances.push(Instance::start(cluster).await);
    }
    instances
}

async fn next_data(subscription: &mut ClientSubscription, what: &str) -> serde_json::Value {
    let event = within(what, subscription.next())
        .await
        .expect("subscription open");
    event.decode().expect("event data is JSON")
}

/// Publishes a marker and checks it is the next event of every subscription, so nothing
/// unexpected (a duplicate, an echo) came before it.
async fn assert_next_is_marker(
    publisher: &Client,
    topic: &str,
    subscriptions: &mut [&mut ClientSubscription],
) {
    let marker = format!("marker-{}", common::unique());
    publisher
        .publish([topic], &marker)
        .await
        .expect("publish marker");
    for subscription in subscriptions.iter_mut() {
        let data = next_data(subscription, "marker").await;
        assert_eq!(
            data,
            json!(marker),
            "an unexpected event arrived before the marker"
        );
    }
}

pub async fn delivers_across_instances_once(cluster: &dyn Cluster) {
    let instances = instances(cluster, 3).await;
    let mut clients = Vec::new();
    let mut subscriptions = Vec::new();
    for instance in &instances {
        let client = instance.client().await;
        subscriptions.push(client.subscribe(["shared"]).await.expect("subscribe"));
        clients.push(client);
    }
    let publisher = instances[0].client().await;
    publisher
        .publish(["shared"], &"one")
        .await
        .expect("publish");
    publisher
        .publish(["shared"], &"two")
        .await
        .expect("publish");
    for subscription in &mut subscriptions {
        assert_eq!(next_data(subscription, "first event").await, json!("one"));
        assert_eq!(
            next_data(subscription, "second event").await,
            json!("two"),
            "first event delivered twice"
        );
    }
    let mut all: Vec<&mut ClientSubscription> = subscriptions.iter_mut().collect();
    assert_next_is_marker(&publisher, "shared", &mut all).await;
}

pub async fn never_echoes_between_instances(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let on_a = instances[0].client().await;
    let on_b = instances[1].client().await;
    let mut events_a = on_a.subscribe(["echo"]).await.expect("subscribe");
    let mut events_b = on_b.subscribe(["echo"]).await.expect("subscribe");
    let publisher = instances[0].client().await;

    publisher.publish(["echo"], &1).await.expect("publish");
    assert_eq!(next_data(&mut events_a, "local event").await, json!(1));
    assert_eq!(next_data(&mut events_b, "remote event").await, json!(1));
    assert_next_is_marker(&publisher, "echo", &mut [&mut events_a, &mut events_b]).await;
    assert_eq!(
        instances[0].hub.stats().backbone_received,
        0,
        "instance received its own publications back"
    );
    assert_eq!(instances[1].hub.stats().backbone_received, 2);
}

pub async fn skips_instances_without_interest(cluster: &dyn Cluster) {
    let instances = instances(cluster, 3).await;
    let subscriber = instances[1].client().await;
    let mut wanted = subscriber.subscribe(["wanted"]).await.expect("subscribe");
    let publisher = instances[0].client().await;

    for n in 0..5 {
        publisher.publish(["unwanted"], &n).await.expect("publish");
    }
    publisher
        .publish(["wanted"], &"yes")
        .await
        .expect("publish");
    assert_eq!(next_data(&mut wanted, "wanted event").await, json!("yes"));
    assert_eq!(
        instances[1].hub.stats().backbone_received,
        1,
        "instance received topics it has no subscriber for"
    );
    assert_eq!(
        instances[2].hub.stats().backbone_received,
        0,
        "instance without subscribers received publications"
    );
}

pub async fn unsubscribe_keeps_other_topics(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let subscriber = instances[1].client().await;
    let first = subscriber.subscribe(["t1"]).await.expect("subscribe t1");
    let mut second = subscriber.subscribe(["t2"]).await.expect("subscribe t2");
    first.unsubscribe().await;
    assert_eq!(instances[1].hub.subscriber_count("t1"), 0);

    let publisher = instances[0].client().await;
    publisher
        .publish(["t1"], &"gone")
        .await
        .expect("publish t1");
    publisher
        .publish(["t2"], &"kept")
        .await
        .expect("publish t2");
    assert_eq!(next_data(&mut second, "t2 event").await, json!("kept"));
    assert_eq!(
        instances[1].hub.stats().backbone_received,
        1,
        "unsubscribed topic still reached the instance"
    );
}

pub async fn delivers_publish_right_after_subscribe(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let subscriber = instances[1].client().await;
    let publisher = instances[0].client().await;
    for round in 0..20 {
        let topic = format!("fresh-{round}");
        let mut events = subscriber
            .subscribe([topic.clone()])
            .await
            .expect("subscribe");
        publisher.publish([topic], &round).await.expect("publish");
        assert_eq!(
            next_data(&mut events, "event right after subscribe").await,
            json!(round)
        );
    }
}

pub async fn keeps_order_of_many_events(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let subscriber = instances[1].client().await;
    let mut events = subscriber.subscribe(["ordered"]).await.expect("subscribe");
    let publisher = instances[0].hub.clone();
    let send = tokio::spawn(async move {
        for n in 0..1000 {
            publisher.publish(["ordered"], &n).await.expect("publish");
        }
    });
    for expected in 0..1000 {
        assert_eq!(
            next_data(&mut events, "ordered event").await,
            json!(expected)
        );
    }
    send.await.expect("publisher task");
}

pub async fn carries_large_payload(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let subscriber = instances[1].client().await;
    let mut events = subscriber.subscribe(["large"]).await.expect("subscribe");
    let payload = "x".repeat(512 * 1024);
    let publisher = instances[0].client().await;
    publisher
        .publish(["large"], &payload)
        .await
        .expect("publish 512 KiB");
    let data = next_data(&mut events, "large event").await;
    assert_eq!(data.as_str().map(str::len), Some(payload.len()));
}

pub async fn all_topics_across_instances(cluster: &dyn Cluster) {
    let instances = instances(cluster, 2).await;
    let watcher = instances[1].client().await;
    let mut everything = watcher
        .subscribe([ALL_TOPICS])
        .await
        .expect("subscribe ALL_TOPICS");
    let exact_client = instances[1].client().await;
    let mut exact = exact_client.subscribe(["x"]).await.expect("subscribe x");
    let publisher = instances[0].client().await;

    publisher.publish(["x"], &1).await.expect("publish");
    publisher.publish(["y"], &2).await.expect("publish");
    // Order is kept per topic only, so the two topics may arrive either way round.
    let mut topics = Vec::new();
    for _ in 0..2 {
        let event = within("ALL_TOPICS event", everything.next())
            .await
            .expect("open");
        topics.push(event.topic().to_owned());
    }
    topics.sort();
    assert_eq!(
        topics,
        ["x", "y"],
        "an event was delivered twice or not at all"
    );
    assert_eq!(next_data(&mut exact, "exact event").await, json!(1));
    assert_next_is_marker(&publisher, "x", &mut [&mut exact]).await;
}

async fn wait_state(hub: &Hub, what: &str, accept: impl Fn(&BackboneState) -> bool) {
    let mut states = hub.watch_backbone_state();
    within(what, states.wait_for(|state| accept(state)))
        .await
        .expect("hub alive");
}

pub async fn survives_broker_restart(cluster: &mut dyn Restartable) {
    let instances = instances(cluster, 2).await;

    // Steady local load on the first instance for the whole test: every publication must
    // reach the local subscriber, broker or not.
    let load_client = instances[0].client().await;
    let mut load_events = load_client
        .subscribe(["load"])
        .await
        .expect("subscribe load");
    let load_hub = instances[0].hub.clone();
    let (stop_load, mut load_stopped) = tokio::sync::oneshot::channel::<()>();
    let load = tokio::spawn(async move {
        let mut published = 0u64;
        loop {
            // The backbone may refuse while the broker is down; local delivery happens first.
            let _ = load_hub.publish(["load"], &published).await;
            published += 1;
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(2)) => {}
                _ = &mut load_stopped => return published,
            }
        }
    });

    let remote = instances[1].client().await;
    let mut remote_events = remote.subscribe(["r"]).await.expect("subscribe remote");
    let local = instances[0].client().await;
    let mut local_events = local.subscribe(["r"]).await.expect("subscribe local");
    let publisher = instances[0].client().await;
    publisher
        .publish(["r"], &"before")
        .await
        .expect("publish before");
    assert_eq!(
        next_data(&mut remote_events, "event before restart").await,
        json!("before")
    );
    assert_eq!(
        next_data(&mut local_events, "local event before restart").await,
        json!("before")
    );

    cluster.stop_broker().await;
    for instance in &instances {
        wait_state(&instance.hub, "disconnect reported", |state| {
            matches!(state, BackboneState::Disconnected { .. })
        })
        .await;
    }
    // Local delivery goes on; the publish reports that other instances were not reached.
    let result = publisher.publish(["r"], &"during").await;
    assert_eq!(
        next_data(&mut local_events, "local event during outage").await,
        json!("during")
    );
    if let Err(error) = result {
        assert_eq!(
            error.remote_code(),
            Some(&tidings::ErrorCode::InternalError),
            "{error}"
        );
    }

    cluster.start_broker().await;
    for instance in &instances {
        wait_state(&instance.hub, "reconnect reported", |state| {
            *state == BackboneState::Connected
        })
        .await;
    }
    // Subscriptions are restored by the link itself; retry until the first event crosses,
    // because a publication racing the resubscription may be lost (delivery is at most once).
    let mut crossed = false;
    for attempt in 0..50 {
        publisher
            .publish(["r"], &format!("after-{attempt}"))
            .await
            .expect("publish after restart");
        assert_eq!(
            next_data(&mut local_events, "local event after restart").await,
            json!(format!("after-{attempt}"))
        );
        if let Ok(Some(event)) =
            tokio::time::timeout(Duration::from_millis(200), remote_events.next()).await
        {
            let data: serde_json::Value = event.decode().expect("JSON");
            // A publication made during the outage may still arrive, if the broker client
            // held it until the broker came back.
            assert!(
                data.as_str()
                    .is_some_and(|text| text.starts_with("after-") || text == "during"),
                "{data}"
            );
            crossed = true;
            break;
        }
    }
    assert!(
        crossed,
        "no publication crossed instances after the broker restart"
    );
    eventually("no stale interest", || {
        instances[1].hub.subscriber_count("r") == 1
    })
    .await;

    let _ = stop_load.send(());
    let published = load.await.expect("load task");
    for expected in 0..published {
        assert_eq!(
            next_data(&mut load_events, "local load event").await,
            json!(expected)
        );
    }
}

/// Expands one `#[tokio::test]` per conformance case, each with a fresh cluster from `$make`.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@case $make, delivers_across_instances_once);
        $crate::conformance_tests!(@case $make, never_echoes_between_instances);
        $crate::conformance_tests!(@case $make, skips_instances_without_interest);
        $crate::conformance_tests!(@case $make, unsubscribe_keeps_other_topics);
        $crate::conformance_tests!(@case $make, delivers_publish_right_after_subscribe);
        $crate::conformance_tests!(@case $make, keeps_order_of_many_events);
        $crate::conformance_tests!(@case $make, carries_large_payload);
        $crate::conformance_tests!(@case $make, all_topics_across_instances);
    };
    (@case $make:expr, $case:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $case() {
            $crate::common::init_tracing();
            let cluster = $make;
            $crate::conformance::$case(&cluster).await;
            $crate::conformance::Cluster::cleanup(&cluster).await;
        }
    };
}
