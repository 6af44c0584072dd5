//! The `Transport` trait that carries frames, and an in-process pair for tests.

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

/// A frame read from a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// A text frame (the JSON codec).
    Text(Bytes),
    /// A binary frame.
    Binary(Bytes),
    /// A keep-alive response, or any other sign of life that carries no frame.
    Pong,
}

/// A close code and reason, as in a WebSocket close frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseReason {
    /// The close code (RFC 6455 section 7.4).
    pub code: u16,
    /// A short human-readable reason.
    pub reason: String,
}

impl CloseReason {
    /// Normal closure (1000).
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (1001), for example on server shutdown.
    pub const GOING_AWAY: u16 = 1001;
    /// Invalid payload data (1007).
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// Policy violation (1008), used for a subscriber whose outbound queue overflowed.
    pub const POLICY: u16 = 1008;
    /// Message too big (1009).
    pub const TOO_BIG: u16 = 1009;
    /// Protocol error (1002).
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// Unexpected condition on this side (1011), also used for keep-alive timeouts.
    pub const INTERNAL_ERROR: u16 = 1011;
    /// Abnormal closure (1006): recorded locally when the connection broke, never sent.
    pub const ABNORMAL: u16 = 1006;

    /// Returns true for codes that RFC 6455 reserves for local use and forbids in a close
    /// frame (1005, 1006, 1015).
    pub fn is_reserved(code: u16) -> bool {
        matches!(code, 1005 | 1006 | 1015)
    }

    /// Creates a close reason.
    pub fn new(code: u16, reason: impl Into<String>) -> Self {
        Self {
            code,
            reason: reason.into(),
        }
    }
}

impl fmt::Display for CloseReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.code, self.reason)
    }
}

/// Failure of a transport.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TransportError {
    /// An incoming frame exceeded the maximum frame size.
    #[error("incoming frame exceeds the maximum of {max} bytes; raise max_frame_size")]
    FrameTooLarge {
        /// The configured maximum.
        max: usize,
    },
    /// The peer closed the connection.
    #[error("connection closed by peer: {0:?}")]
    Closed(Option<CloseReason>),
    /// The peer broke the transport protocol, for example with an invalid WebSocket frame.
    #[error("protocol violation by peer: {0}")]
    Protocol(String),
    /// A text frame was not valid UTF-8.
    #[error("text frame is not valid UTF-8")]
    InvalidUtf8,
    /// An I/O or protocol failure of the underlying connection.
    #[error("transport failed")]
    Io(#[source] Box<dyn std::error::Error + Send + Sync>),
}

/// The sending half of a transport.
#[async_trait]
pub trait FrameSink: Send + 'static {
    /// Writes every frame in `frames` and flushes once, leaving `frames` empty.
    async fn send_batch(&mut self, frames: &mut Vec<Bytes>) -> Result<(), TransportError>;

    /// Sends a keep-alive ping.
    async fn ping(&mut self) -> Result<(), TransportError>;

    /// Sends a close frame and shuts the connection down.
    async fn close(&mut self, reason: CloseReason) -> Result<(), TransportError>;
}

/// The receiving half of a transport.
#[async_trait]
pub trait FrameStream: Send + 'static {
    /// Returns the next frame, or `None` once the peer closed the connection cleanly.
    async fn recv(&mut self) -> Option<Result<Incoming, TransportError>>;
}

/// A bidirectional frame carrier, such as one WebSocket connection.
pub trait Transport: Send + 'static {
    /// Splits the transport so that one task reads while another writes.
    fn split(self: Box<Self>) -> (Box<dyn FrameSink>, Box<dyn FrameStream>);
}

/// Creates two connected in-process transports, for testing handlers without sockets.
///
/// Frames written to one side arrive on the other; closing one side ends the other's stream.
pub fn pair() -> (MemoryTransport, MemoryTransport) {
    let (left_tx, left_rx) = mpsc::unbounded_channel();
    let (right_tx, right_rx) = mpsc::unbounded_channel();
    (
        MemoryTransport {
            tx: left_tx,
            rx: right_rx,
        },
        MemoryTransport {
            tx: right_tx,
            rx: left_rx,
        },
    )
}

enum MemoryFrame {
    Frame(Bytes),
    Ping,
    Close(CloseReason),
}

/// One end of an in-process transport pair; see [`pair`].
pub struct MemoryTransport {
    tx: mpsc::UnboundedSender<MemoryFrame>,
    rx: mpsc::UnboundedReceiver<MemoryFrame>,
}

impl fmt::Debug for MemoryTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryTransport").finish_non_exhaustive()
    }
}

struct MemorySink(mpsc::UnboundedSender<MemoryFrame>);
struct MemoryStream(mpsc::UnboundedReceiver<MemoryFrame>);

fn closed() -> TransportError {
    TransportError::Closed(None)
}

#[async_trait]
impl FrameSink for MemorySink {
    async fn send_batch(&mut self, frames: &mut Vec<Bytes>) -> Result<(), TransportError> {
        for frame in frames.drain(..) {
            self.0
                .send(MemoryFrame::Frame(frame))
                .map_err(|_| closed())?;
        }
        Ok(())
    }

    async fn ping(&mut self) -> Result<(), TransportError> {
        self.0.send(MemoryFrame::Ping).map_err(|_| closed())
    }

    async fn close(&mut self, reason: CloseReason) -> Result<(), TransportError> {
        self.0
            .send(MemoryFrame::Close(reason))
            .map_err(|_| closed())
    }
}

#[async_trait]
impl FrameStream for MemoryStream {
    async fn recv(&mut self) -> Option<Result<Incoming, TransportError>> {
        match self.0.recv().await? {
            MemoryFrame::Frame(frame) => Some(Ok(Incoming::Text(frame))),
            // The in-process peer is always alive, so a ping counts as a pong.
            MemoryFrame::Ping => Some(Ok(Incoming::Pong)),
            MemoryFrame::Close(reason) => Some(Err(TransportError::Closed(Some(reason)))),
        }
    }
}

impl Transport for MemoryTransport {
    fn split(self: Box<Self>) -> (Box<dyn FrameSink>, Box<dyn FrameStream>) {
        (
            Box::new(MemorySink(self.tx)),
            Box::new(MemoryStream(self.rx)),
        )
    }
}
