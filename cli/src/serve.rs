//! `tidings serve`: a standalone server on hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tidings::{ConnectionConfig, Hub, PubSubLayer};
use tokio::net::TcpListener;
use tower::Layer;

/// Arguments of `tidings serve`.
#[derive(clap::Args)]
pub(crate) struct ServeArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8000")]
    listen: SocketAddr,
    /// Path of the WebSocket endpoint.
    #[arg(long, default_value = "/pubsub")]
    path: String,
    /// Backbone URL shared with other instances.
    #[arg(long, default_value = "memory://")]
    backbone: String,
    /// Maximum size of one incoming frame, in bytes.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_frame_size: usize,
    /// Byte cap of each connection's outbound queue; a subscriber past it is closed.
    #[arg(long, default_value_t = 1024 * 1024)]
    max_queued_bytes: usize,
}

/// Answers `GET /health` and 404 for everything else outside the endpoint path.
#[derive(Clone)]
struct Fallback {
    hub: Hub,
}

impl tower::Service<Request<Incoming>> for Fallback {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Incoming>) -> Self::Future {
        let (status, body) = if request.uri().path() == "/health" {
            let state = format!("{:?}", self.hub.backbone_state());
            (
                StatusCode::OK,
                format!("{{\"status\":\"ok\",\"backbone\":\"{state}\"}}\n"),
            )
        } else {
            (StatusCode::NOT_FOUND, "not found\n".to_owned())
        };
        Box::pin(async move {
            let mut response = Response::new(body);
            *response.status_mut() = status;
            Ok(response)
        })
    }
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), String> {
    if !args.path.starts_with('/') {
        return Err(format!("--path must start with '/', got {:?}", args.path));
    }
    let backbone =
        tidings::backbone_from_url(&args.backbone).map_err(|error| crate::describe(&error))?;
    let hub = Hub::builder()
        .backbone_arc(backbone)
        .build()
        .await
        .map_err(|error| {
            format!(
                "could not attach to backbone {}: {}",
                args.backbone,
                crate::describe(&error)
            )
        })?;
    let config = ConnectionConfig::default()
        .max_frame_size(args.max_frame_size)
        .max_queued_bytes(args.max_queued_bytes);
    let service = PubSubLayer::new(hub.clone())
        .path(args.path.clone())
        .config(config)
        .layer(Fallback { hub: hub.clone() });

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("could not listen on {}: {error}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("could not read the listening address: {error}"))?;
    tracing::info!(
        url = format!("ws://{local}{}", args.path),
        backbone = args.backbone.as_str(),
        "tidings listening"
    );

    let shutdown = tokio::signal::ctrl_c();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = &mut shutdown => {
                tracing::info!("shutting down");
                hub.shutdown().await;
                return Ok(());
            }
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause; back off briefly.
                tracing::warn!(error = %error, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(peer = %peer, error = %error, "http connection failed");
            }
        });
    }
}
