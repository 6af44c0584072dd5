//! `tidings serve`: a standalone server on hyper.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};

use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::sync::Arc;
use std::time::Duration;

use tidings::transport::CloseReason;
use tidings::{BackboneState, ConnectionConfig, Endpoint, Hub, PubSubLayer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
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
    #[arg(long, default_value_t = 4 * 1024 * 1024)]
    max_queued_bytes: usize,
    /// Maximum number of open TCP connections; further clients wait until one closes.
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
}

/// How long a client may take to send its HTTP request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// How long shutdown waits for connections to take their close frame.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Serves `GET /health` and 404 for everything else outside the endpoint path.
#[derive(Clone)]
struct Fallback {
    hub: Hub,
    endpoint: Endpoint,
}

/// Returns the `/health` body: backbone state, open connections and topics, as JSON.
fn health(hub: &Hub, endpoint: &Endpoint) -> String {
    let (state, reason) = match hub.backbone_state() {
        BackboneState::Local => ("local", None),
        BackboneState::Connecting => ("connecting", None),
        BackboneState::Connected => ("connected", None),
        BackboneState::Disconnected { reason } => ("disconnected", Some(reason)),
        _ => ("unknown", None),
    };
    let stats = hub.stats();
    let body = serde_json::json!({
        "status": "ok",
        "backbone": {"state": state, "reason": reason},
        "connections": endpoint.connection_count(),
        "topics": hub.topic_count(),
        "published": stats.published,
        "delivered": stats.delivered,
        "dropped": stats.dropped,
    });
    format!("{body}\n")
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
            (StatusCode::OK, health(&self.hub, &self.endpoint))
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

/// Waits for Ctrl-C (SIGINT) or SIGTERM, the signal service managers and `kill` send.
async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(error = %error, "could not listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}

/// Accepts one connection once a connection slot is free.
async fn accept(
    listener: &TcpListener,
    slots: &Arc<Semaphore>,
) -> std::io::Result<(TcpStream, SocketAddr, OwnedSemaphorePermit)> {
    let slot = Arc::clone(slots)
        .acquire_owned()
        .await
        .map_err(|_| std::io::Error::other("connection limit closed"))?;
    let (stream, peer) = listener.accept().await?;
    Ok((stream, peer, slot))
}

pub(crate) async fn run(args: ServeArgs) -> Result<(), String> {
    // Each connection is a file descriptor; the soft limit is often far below the hard one.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < args.max_connections => tracing::warn!(
            open_files = limit,
            max_connections = args.max_connections,
            "open file limit is below --max-connections; raise it with ulimit -n"
        ),
        Ok(_) => {}
        Err(error) => tracing::warn!(error = %error, "could not raise the open file limit"),
    }
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
                tidings::backbone::redact_url(&args.backbone),
                crate::describe(&error)
            )
        })?;
    let config = ConnectionConfig::default()
        .max_frame_size(args.max_frame_size)
        .max_queued_bytes(args.max_queued_bytes);
    let layer = PubSubLayer::new(hub.clone())
        .path(args.path.clone())
        .config(config);
    let endpoint = layer.endpoint().clone();
    let service = layer.layer(Fallback {
        hub: hub.clone(),
        endpoint: endpoint.clone(),
    });
    let connection_slots = Arc::new(Semaphore::new(args.max_connections.max(1)));
    let mut accept_failures = 0u64;

    let listener = TcpListener::bind(args.listen)
        .await
        .map_err(|error| format!("could not listen on {}: {error}", args.listen))?;
    let local = listener
        .local_addr()
        .map_err(|error| format!("could not read the listening address: {error}"))?;
    tracing::info!(
        url = format!("ws://{local}{}", args.path),
        backbone = tidings::backbone::redact_url(&args.backbone),
        "tidings listening"
    );

    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let accepted = tokio::select! {
            accepted = accept(&listener, &connection_slots) => accepted,
            _ = &mut shutdown => {
                tracing::info!(connections = endpoint.connection_count(), "shutting down");
                endpoint.close_all(CloseReason::new(CloseReason::GOING_AWAY, "server shutting down"));
                let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
                    while endpoint.connection_count() > 0 {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                });
                let _ = drained.await;
                hub.shutdown().await;
                return Ok(());
            }
        };
        let (stream, peer, slot) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Running out of file descriptors is the usual cause: back off briefly, and
                // log the first failure and then every power of two, not every attempt.
                accept_failures += 1;
                if accept_failures.is_power_of_two() {
                    tracing::warn!(error = %error, failures = accept_failures, "accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                tracing::debug!(peer = %peer, error = %error, "http connection failed");
            }
            drop(slot);
        });
    }
}
