//! The layer on an axum `Router`, beside ordinary routes and a route that publishes.

mod common;

use axum::extract::State;
use axum::routing::{get, post};
use axum::{Json, Router};
use common::{init_tracing, within};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings::{Hub, PubSubLayer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

async fn announce(State(hub): State<Hub>, Json(body): Json<Value>) -> &'static str {
    match hub.publish(["announcements"], &body).await {
        Ok(()) => "published",
        Err(_) => "failed",
    }
}

async fn http_request(addr: std::net::SocketAddr, request: &str) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

#[tokio::test]
async fn layer_serves_beside_routes() {
    init_tracing();
    let hub = Hub::new();
    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/announce", post(announce))
        .with_state(hub.clone())
        .layer(PubSubLayer::new(hub.clone()).path("/ws"));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });

    let health = within(
        "health",
        http_request(
            addr,
            "GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");
    assert!(health.ends_with("ok"), "{health}");

    let client = common::client(&format!("ws://{addr}/ws")).await;
    let mut announcements = client.subscribe(["announcements"]).await.unwrap();
    let body = r#"{"text":"deploy at 5"}"#;
    let request = format!(
        "POST /announce HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let response = within("announce", http_request(addr, &request)).await;
    assert!(response.ends_with("published"), "{response}");

    let event = within("announcement", announcements.next()).await.unwrap();
    assert_eq!(
        event.decode::<Value>().unwrap(),
        json!({"text": "deploy at 5"})
    );

    let plain = within(
        "plain GET on the endpoint",
        http_request(
            addr,
            "GET /ws HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
        ),
    )
    .await;
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
}
