//! The WebSocket [`Transport`], on tokio-tungstenite.

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use tidings_core::transport::{
    CloseReason, FrameSink, FrameStream, Incoming, Transport, TransportError,
};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

/// Size of each connection's read buffer, and the most tungstenite 0.30 reads in one call.
/// tungstenite allocates it when the connection opens and keeps it, so it adds to the memory of
/// every idle connection: 1 KiB instead of 4 KiB saves about 3 KB per connection. A larger
/// frame still fits, because tungstenite grows the buffer to the frame's length.
// NOTE: a frame larger than this takes several read calls; their cost was not measured.
const READ_BUFFER_SIZE: usize = 1024;

/// Builds the tungstenite settings for a maximum incoming frame size.
pub(crate) fn ws_config(max_frame_size: usize) -> WebSocketConfig {
    WebSocketConfig::default()
        .max_message_size(Some(max_frame_size))
        .max_frame_size(Some(max_frame_size))
        .read_buffer_size(READ_BUFFER_SIZE)
}

/// A WebSocket connection carrying JSON text frames.
pub struct WsTransport<S> {
    ws: WebSocketStream<S>,
    max_frame_size: usize,
}

impl<S> std::fmt::Debug for WsTransport<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WsTransport")
            .field("max_frame_size", &self.max_frame_size)
            .finish_non_exhaustive()
    }
}

impl<S> WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    /// Wraps an open WebSocket. `max_frame_size` must match the limit the stream was
    /// configured with; it only appears in error messages.
    pub fn new(ws: WebSocketStream<S>, max_frame_size: usize) -> Self {
        Self { ws, max_frame_size }
    }
}

struct WsSink<S>(SplitSink<WebSocketStream<S>, Message>);

struct WsStream<S> {
    stream: SplitStream<WebSocketStream<S>>,
    max_frame_size: usize,
}

fn io_error(error: WsError) -> TransportError {
    match error {
        WsError::ConnectionClosed | WsError::AlreadyClosed => TransportError::Closed(None),
        WsError::Utf8(_) => TransportError::InvalidUtf8,
        WsError::Protocol(violation) => TransportError::Protocol(violation.to_string()),
        other => TransportError::Io(Box::new(other)),
    }
}

#[async_trait]
impl<S> FrameSink for WsSink<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn send_batch(&mut self, frames: &mut Vec<Bytes>) -> Result<(), TransportError> {
        for frame in frames.drain(..) {
            let text =
                Utf8Bytes::try_from(frame).map_err(|error| TransportError::Io(Box::new(error)))?;
            self.0.feed(Message::Text(text)).await.map_err(io_error)?;
        }
        self.0.flush().await.map_err(io_error)
    }

    async fn ping(&mut self) -> Result<(), TransportError> {
        self.0
            .send(Message::Ping(Bytes::new()))
            .await
            .map_err(io_error)
    }

    async fn close(&mut self, reason: CloseReason) -> Result<(), TransportError> {
        // Reserved codes describe a broken connection and must not appear on the wire.
        let frame = (!CloseReason::is_reserved(reason.code)).then(|| CloseFrame {
            code: reason.code.into(),
            reason: reason.reason.into(),
        });
        // The peer may already be gone; the close frame is then simply not delivered.
        let sent = self.0.send(Message::Close(frame)).await;
        let _ = self.0.close().await;
        sent.map_err(io_error)
    }
}

#[async_trait]
impl<S> FrameStream for WsStream<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async fn recv(&mut self) -> Option<Result<Incoming, TransportError>> {
        let message = match self.stream.next().await? {
            Ok(message) => message,
            Err(WsError::Capacity(_)) => {
                return Some(Err(TransportError::FrameTooLarge {
                    max: self.max_frame_size,
                }))
            }
            Err(WsError::ConnectionClosed | WsError::AlreadyClosed) => return None,
            Err(error) => return Some(Err(io_error(error))),
        };
        Some(Ok(match message {
            Message::Text(text) => Incoming::Text(Bytes::from(text)),
            Message::Binary(data) => Incoming::Binary(data),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Incoming::Pong,
            Message::Close(frame) => {
                let reason =
                    frame.map(|frame| CloseReason::new(frame.code.into(), frame.reason.as_str()));
                return Some(Err(TransportError::Closed(reason)));
            }
        }))
    }
}

impl<S> Transport for WsTransport<S>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    fn split(self: Box<Self>) -> (Box<dyn FrameSink>, Box<dyn FrameStream>) {
        let (sink, stream) = self.ws.split();
        (
            Box::new(WsSink(sink)),
            Box::new(WsStream {
                stream,
                max_frame_size: self.max_frame_size,
            }),
        )
    }
}
