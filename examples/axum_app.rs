//! Run with: `cargo run -p tidings-examples --example axum_app`
//!
//! An axum app with the tidings endpoint at `/pubsub` beside ordinary routes. `POST /news`
//! publishes its JSON body on the topic `news` from the server side. Try it from two shells:
//!
//! ```text
//! cargo run -p tidings-cli -- sub ws://127.0.0.1:8000/pubsub news
//! curl -X POST -H 'content-type: application/json' -d '{"headline":"hi"}' http://127.0.0.1:8000/news
//! ```

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::Value;
use tidings::{Hub, MemoryBackbone, PubSubLayer};

async fn publish_news(State(hub): State<Hub>, Json(body): Json<Value>) -> (StatusCode, String) {
    match hub.publish(["news"], &body).await {
        Ok(()) => (StatusCode::ACCEPTED, "published\n".into()),
        Err(error) => (
            StatusCode::BAD_GATEWAY,
            format!("publish failed: {error}\n"),
        ),
    }
}

async fn stats(State(hub): State<Hub>) -> String {
    format!("{:?}\n", hub.stats())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();

    let hub = Hub::builder()
        .backbone(MemoryBackbone::new())
        .build()
        .await?;
    let app = Router::new()
        .route("/health", get(|| async { "ok\n" }))
        .route("/stats", get(stats))
        .route("/news", post(publish_news))
        .with_state(hub.clone())
        .layer(PubSubLayer::new(hub).path("/pubsub"));

    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    println!("listening on http://127.0.0.1:8000 (WebSocket endpoint ws://127.0.0.1:8000/pubsub)");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
