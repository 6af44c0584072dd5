//! Client reconnects: restored subscriptions after a server restart, no retry on 403.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{init_tracing, within, TestServer};
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::json;
use tidings::{
    AuthRejection, CallError, Client, ClientState, ConnectError, Hub, PubSubLayer, ReconnectPolicy,
};

fn fast_reconnect() -> ReconnectPolicy {
    ReconnectPolicy::default()
        .min_delay(Duration::from_millis(20))
        .max_delay(Duration::from_millis(200))
}

fn rejecting_layer(attempts: &Arc<AtomicUsize>) -> PubSubLayer {
    let attempts = Arc::clone(attempts);
    PubSubLayer::new(Hub::new()).authorizer(move |_request: &http::request::Parts| {
        attempts.fetch_add(1, Ordering::SeqCst);
        async { Err::<(), _>(AuthRejection::Forbidden("no entry".into())) }
    })
}

async fn wait_for_state(client: &Client, what: &str, accept: impl Fn(&ClientState) -> bool) {
    let mut states = client.watch_state();
    within(what, states.wait_for(|state| accept(state)))
        .await
        .expect("client alive");
}

#[tokio::test]
async fn client_resubscribes_after_server_restart() {
    init_tracing();
    let server = TestServer::start(PubSubLayer::new(Hub::new()));
    let addr = server.addr;
    let url = server.url();
    let client = within(
        "connect",
        Client::builder(&url).reconnect(fast_reconnect()).connect(),
    )
    .await
    .unwrap();
    let mut events = client.subscribe(["r"]).await.unwrap();

    server.stop();
    wait_for_state(&client, "reconnecting", |state| {
        matches!(state, ClientState::Reconnecting { .. })
    })
    .await;
    let error = client
        .call::<String>("_ping_", json!({}))
        .await
        .unwrap_err();
    assert!(matches!(error, CallError::NotConnected), "{error:?}");
    let error = client.publish(["r"], &1).await.unwrap_err();
    assert!(matches!(error, CallError::NotConnected), "{error:?}");

    let hub = Hub::new();
    let _restarted = TestServer::start_on(addr, PubSubLayer::new(hub.clone()));
    within("reconnect", client.wait_connected()).await.unwrap();
    assert_eq!(hub.subscriber_count("r"), 1, "subscription not restored");

    hub.publish(["r"], &"after restart").await.unwrap();
    let event = within("event after restart", events.next()).await.unwrap();
    assert_eq!(event.decode::<String>().unwrap(), "after restart");
}

#[tokio::test]
async fn forbidden_connect_is_tried_once() {
    init_tracing();
    let attempts = Arc::new(AtomicUsize::new(0));
    let server = TestServer::start(rejecting_layer(&attempts));
    let error = within(
        "connect",
        Client::builder(server.url())
            .reconnect(fast_reconnect())
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(error, ConnectError::Rejected { status } if status == StatusCode::FORBIDDEN),
        "{error:?}"
    );
    assert!(!error.is_retryable());
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn forbidden_reconnect_stops_retrying() {
    init_tracing();
    let server = TestServer::start(PubSubLayer::new(Hub::new()));
    let addr = server.addr;
    let client = within(
        "connect",
        Client::builder(server.url())
            .reconnect(fast_reconnect())
            .connect(),
    )
    .await
    .unwrap();
    server.stop();

    let attempts = Arc::new(AtomicUsize::new(0));
    let _rejecting = TestServer::start_on(addr, rejecting_layer(&attempts));
    wait_for_state(&client, "closed after 403", |state| {
        matches!(state, ClientState::Closed { .. })
    })
    .await;
    assert_eq!(attempts.load(Ordering::SeqCst), 1);
    let ClientState::Closed { reason } = client.state() else {
        panic!("client not closed");
    };
    assert!(reason.contains("403"), "{reason}");
    assert!(matches!(
        client.call::<String>("_ping_", json!({})).await,
        Err(CallError::NotConnected)
    ));
}

#[tokio::test]
async fn unreachable_server_fails_connect() {
    init_tracing();
    let server = TestServer::start(PubSubLayer::new(Hub::new()));
    let url = server.url();
    server.stop();
    let error = within("connect", Client::builder(&url).connect())
        .await
        .unwrap_err();
    assert!(matches!(error, ConnectError::Io(_)), "{error:?}");
    assert!(error.is_retryable());
}

#[tokio::test]
async fn invalid_url_fails_connect() {
    let error = Client::builder("http://").connect().await.unwrap_err();
    assert!(
        matches!(error, ConnectError::InvalidRequest(_)),
        "{error:?}"
    );
}

#[tokio::test]
async fn silent_server_times_out_connect() {
    init_tracing();
    // Accepts TCP connections and never responds to the upgrade.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    let error = within(
        "connect",
        Client::builder(format!("ws://{addr}/pubsub"))
            .connect_timeout(Duration::from_millis(200))
            .connect(),
    )
    .await
    .unwrap_err();
    assert!(matches!(error, ConnectError::TimedOut(_)), "{error:?}");
    assert!(error.is_retryable());
    holder.abort();
}
