//! A subscriber that never reads is closed once its queue passes the cap, while healthy
//! subscribers keep receiving every event.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::{eventually, init_tracing, within, TestServer};
use futures_util::{SinkExt, StreamExt};
use tidings::{ConnectionConfig, Hub, PubSubLayer};
use tokio::net::TcpSocket;
use tokio_tungstenite::tungstenite::Message;

const QUEUE_CAP: usize = 256 * 1024;
const PAYLOAD: usize = 8 * 1024;
const BATCH: u64 = 16;
const MAX_ROUNDS: u64 = 2_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_subscriber_is_closed_and_others_keep_up() {
    init_tracing();
    let hub = Hub::new();
    let layer = PubSubLayer::new(hub.clone())
        .config(ConnectionConfig::default().max_queued_bytes(QUEUE_CAP));
    let server = TestServer::start(layer);

    // The stalled peer subscribes, reads the response, then never reads again. A small receive
    // buffer makes its queue fill sooner.
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(server.url(), stream)
        .await
        .unwrap();
    stalled
        .send(Message::Text(
            r#"{"request":{"method":"subscribe","arguments":{"topics":["flood"]},"call_id":"s"},"response":null}"#.into(),
        ))
        .await
        .unwrap();
    let answer = within("subscribe answer", stalled.next())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.to_text().unwrap().contains("true"));

    let mut received = Vec::new();
    let mut readers = Vec::new();
    for _ in 0..2 {
        let client = common::client(&server.url()).await;
        let mut events = client.subscribe(["flood"]).await.unwrap();
        let count = Arc::new(AtomicU64::new(0));
        received.push(Arc::clone(&count));
        readers.push(tokio::spawn(async move {
            let _client = client;
            let mut expected = 0u64;
            while let Some(event) = events.next().await {
                let (seq, _pad): (u64, String) = event.decode().unwrap();
                assert_eq!(seq, expected, "events out of order or lost");
                expected += 1;
                count.store(expected, Ordering::SeqCst);
            }
        }));
    }
    assert_eq!(hub.subscriber_count("flood"), 3);

    let pad = "x".repeat(PAYLOAD);
    let mut published = 0u64;
    for _ in 0..MAX_ROUNDS {
        for _ in 0..BATCH {
            hub.publish(["flood"], &(published, &pad)).await.unwrap();
            published += 1;
        }
        let target = published;
        eventually("healthy subscribers caught up", || {
            received
                .iter()
                .all(|count| count.load(Ordering::SeqCst) == target)
        })
        .await;
        if hub.subscriber_count("flood") == 2 {
            break;
        }
    }
    assert_eq!(
        hub.subscriber_count("flood"),
        2,
        "stalled subscriber was never closed"
    );
    assert!(hub.stats().dropped >= 1);

    // Healthy subscribers still receive after the stalled one is gone.
    hub.publish(["flood"], &(published, "after")).await.unwrap();
    published += 1;
    eventually("healthy subscribers receive after the close", || {
        received
            .iter()
            .all(|count| count.load(Ordering::SeqCst) == published)
    })
    .await;
    for reader in readers {
        reader.abort();
    }
    drop(stalled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reader_that_stops_is_closed_by_send_timeout() {
    init_tracing();
    let hub = Hub::new();
    // A queue cap far above what is published, so only the blocked send can close the peer.
    let config = ConnectionConfig::default()
        .max_queued_bytes(256 * 1024 * 1024)
        .keepalive(
            Some(std::time::Duration::from_millis(300)),
            std::time::Duration::from_millis(300),
        );
    let server = TestServer::start(PubSubLayer::new(hub.clone()).config(config));

    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(server.addr).await.unwrap();
    let (mut stalled, _) = tokio_tungstenite::client_async(server.url(), stream)
        .await
        .unwrap();
    stalled
        .send(Message::Text(
            r#"{"request":{"method":"subscribe","arguments":{"topics":["big"]},"call_id":"s"},"response":null}"#.into(),
        ))
        .await
        .unwrap();
    let answer = within("subscribe answer", stalled.next())
        .await
        .unwrap()
        .unwrap();
    assert!(answer.to_text().unwrap().contains("true"));

    // Enough data to fill both kernel buffers, so the server's send blocks.
    let pad = "x".repeat(256 * 1024);
    for n in 0..64 {
        hub.publish(["big"], &(n, &pad)).await.unwrap();
    }
    eventually("stalled reader closed", || hub.subscriber_count("big") == 0).await;
    drop(stalled);
}
