//! Three server instances sharing one memory backbone, each with clients on real sockets.

mod common;

use common::{client, init_tracing, within, TestServer};
use futures_util::StreamExt;
use tidings::{Hub, MemoryBackbone, PubSubLayer, ALL_TOPICS};

async fn cluster() -> (Vec<Hub>, Vec<TestServer>) {
    init_tracing();
    let bus = MemoryBackbone::new();
    let mut hubs = Vec::new();
    let mut servers = Vec::new();
    for _ in 0..3 {
        let hub = Hub::builder().backbone(bus.clone()).build().await.unwrap();
        servers.push(TestServer::start(PubSubLayer::new(hub.clone())));
        hubs.push(hub);
    }
    (hubs, servers)
}

#[tokio::test]
async fn publication_reaches_every_instance_once() {
    let (_hubs, servers) = cluster().await;
    let mut subscriptions = Vec::new();
    let mut clients = Vec::new();
    for server in &servers {
        let client = client(&server.url()).await;
        subscriptions.push(client.subscribe(["shared"]).await.unwrap());
        clients.push(client);
    }
    let publisher = client(&servers[0].url()).await;
    publisher.publish(["shared"], &"one").await.unwrap();
    publisher.publish(["shared"], &"two").await.unwrap();

    for subscription in &mut subscriptions {
        let first = within("first event", subscription.next()).await.unwrap();
        assert_eq!(first.decode::<String>().unwrap(), "one");
        let second = within("second event", subscription.next()).await.unwrap();
        assert_eq!(
            second.decode::<String>().unwrap(),
            "two",
            "first event delivered twice"
        );
    }
}

#[tokio::test]
async fn instance_without_subscribers_receives_nothing() {
    let (hubs, servers) = cluster().await;
    let subscriber = client(&servers[1].url()).await;
    let mut events = subscriber.subscribe(["wanted"]).await.unwrap();
    let publisher = client(&servers[0].url()).await;

    publisher.publish(["unwanted"], &0).await.unwrap();
    publisher.publish(["wanted"], &1).await.unwrap();
    let event = within("wanted event", events.next()).await.unwrap();
    assert_eq!(event.decode::<i32>().unwrap(), 1);

    assert_eq!(hubs[1].stats().backbone_received, 1);
    assert_eq!(hubs[2].stats().backbone_received, 0);
}

#[tokio::test]
async fn all_topics_subscriber_on_other_instance() {
    let (_hubs, servers) = cluster().await;
    let watcher = client(&servers[2].url()).await;
    let mut everything = watcher.subscribe([ALL_TOPICS]).await.unwrap();
    let publisher = client(&servers[0].url()).await;
    publisher.publish(["anything"], &true).await.unwrap();
    let event = within("event", everything.next()).await.unwrap();
    assert_eq!(event.topic(), "anything");
}
