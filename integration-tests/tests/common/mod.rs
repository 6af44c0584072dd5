//! Helpers shared by the integration tests: servers on 127.0.0.1 port 0, raw WebSocket peers.

#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use serde_json::Value;
use tidings::{Client, PubSubLayer};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use tower::Layer;

pub mod kafka;
pub mod python;
pub mod rabbitmq;
pub mod redis;

/// Returns a number unique within this test process.
pub fn unique() -> u64 {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Upper bound for any single wait in a test, so a broken build fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Waits for `future`, failing the test after [`WAIT`].
pub async fn within<F: Future>(what: &str, future: F) -> F::Output {
    match tokio::time::timeout(WAIT, future).await {
        Ok(output) => output,
        Err(_) => panic!("timed out after {WAIT:?} waiting for {what}"),
    }
}

/// Polls `condition` until it holds, failing the test after [`WAIT`].
pub async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    within(what, async {
        while !condition() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
}

/// Returns 404 for every request outside the endpoint path.
#[derive(Clone)]
pub struct NotFound;

impl tower::Service<Request<Incoming>> for NotFound {
    type Response = Response<String>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _request: Request<Incoming>) -> Self::Future {
        Box::pin(async {
            let mut response = Response::new("not found".to_owned());
            *response.status_mut() = StatusCode::NOT_FOUND;
            Ok(response)
        })
    }
}

/// A plain hyper server running the layer on its own runtime and thread, so stopping it
/// closes every connection it accepted, as a process exit would.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TestServer {
    /// Starts a server on 127.0.0.1 with a free port.
    pub fn start(layer: PubSubLayer) -> Self {
        Self::start_on("127.0.0.1:0".parse().expect("valid address"), layer)
    }

    /// Starts a server on `addr`, which may be the address of a stopped server.
    pub fn start_on(addr: SocketAddr, layer: PubSubLayer) -> Self {
        let (addr_tx, addr_rx) = std::sync::mpsc::channel();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .expect("server runtime");
            runtime.block_on(async move {
                let socket = TcpSocket::new_v4().expect("socket");
                socket.set_reuseaddr(true).expect("SO_REUSEADDR");
                socket.bind(addr).expect("bind test server");
                let listener = socket.listen(1024).expect("listen");
                addr_tx
                    .send(listener.local_addr().expect("local address"))
                    .expect("report address");
                let service = layer.layer(NotFound);
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => match accepted {
                            Ok(accepted) => accepted,
                            Err(_) => continue,
                        },
                        _ = &mut stop_rx => return,
                    };
                    let service = TowerToHyperService::new(service.clone());
                    tokio::spawn(async move {
                        let _ = http1::Builder::new()
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades()
                            .await;
                    });
                }
            });
            // Dropping the runtime cancels every connection task and closes its socket.
            drop(runtime);
        });
        let addr = addr_rx.recv().expect("server address");
        Self {
            addr,
            stop: Some(stop_tx),
            thread: Some(thread),
        }
    }

    pub fn url(&self) -> String {
        format!("ws://{}/pubsub", self.addr)
    }

    /// Stops the server and closes every connection.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

pub async fn client(url: &str) -> Client {
    within("client connect", Client::builder(url).connect())
        .await
        .expect("client connects")
}

/// A raw WebSocket peer that sends hand-built frames, as a browser would.
pub struct RawPeer {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl RawPeer {
    pub async fn connect(url: &str) -> Self {
        let (ws, _) = within("raw connect", tokio_tungstenite::connect_async(url))
            .await
            .expect("raw peer connects");
        Self { ws }
    }

    pub async fn send_text(&mut self, text: &str) {
        self.ws
            .send(Message::Text(text.into()))
            .await
            .expect("send text frame");
    }

    pub async fn send_binary(&mut self, data: Vec<u8>) {
        self.ws
            .send(Message::Binary(data.into()))
            .await
            .expect("send binary frame");
    }

    /// Returns the next text frame as JSON, skipping pings.
    pub async fn recv_json(&mut self) -> Value {
        loop {
            let message = within("a frame", self.ws.next())
                .await
                .expect("connection open")
                .expect("frame readable");
            match message {
                Message::Text(text) => {
                    return serde_json::from_str(&text).expect("server sends JSON")
                }
                Message::Ping(_) | Message::Pong(_) => continue,
                other => panic!("expected a text frame, got {other:?}"),
            }
        }
    }

    /// Sends a request and returns the response part of the frame with the same call id.
    pub async fn call(&mut self, method: &str, arguments: Value, call_id: &str) -> Value {
        let frame = serde_json::json!({
            "request": {"method": method, "arguments": arguments, "call_id": call_id},
            "response": null,
        });
        self.send_text(&frame.to_string()).await;
        self.response_for(call_id).await
    }

    /// Reads frames until the response to `call_id` arrives; returns its response part.
    pub async fn response_for(&mut self, call_id: &str) -> Value {
        loop {
            let frame = self.recv_json().await;
            if frame["response"]["call_id"] == call_id {
                return frame["response"].clone();
            }
        }
    }
}
