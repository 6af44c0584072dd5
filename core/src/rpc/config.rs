//! Per-connection limits and timers.

use std::time::Duration;

/// Action taken when a connection's outbound queue passes its byte cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum OverflowPolicy {
    /// Close the connection with code 1008 and a reason naming the cap (the default).
    #[default]
    Close,
    /// Drop the frame that does not fit, count it and log a warning.
    DropAndCount,
}

/// Limits and timers of one connection. Every field has a safe default.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Maximum size of one incoming frame in bytes (default 1 MiB). Larger frames close the
    /// connection with code 1009.
    pub max_frame_size: usize,
    /// Maximum number of incoming requests handled at once (default 256). Requests beyond it
    /// get a `too_many_requests` error.
    pub max_in_flight: usize,
    /// Byte cap of the outbound queue (default 4 MiB). It is larger than the frame limit, so
    /// a few large publications in a burst do not close a subscriber that keeps reading.
    pub max_queued_bytes: usize,
    /// Action taken when the outbound queue passes its cap.
    pub overflow_policy: OverflowPolicy,
    /// Default timeout of outgoing calls (default 30 s).
    pub call_timeout: Duration,
    /// Interval between keep-alive pings, or `None` to send none (default 20 s).
    pub keepalive_interval: Option<Duration>,
    /// How long the peer may stay silent after a ping before the connection is closed with
    /// code 1011 (default 20 s).
    pub keepalive_timeout: Duration,
    /// Number of consecutive unreadable frames after which the connection is closed with
    /// code 1007 (default 16).
    pub max_invalid_frames: u32,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            max_frame_size: 1024 * 1024,
            max_in_flight: 256,
            max_queued_bytes: 4 * 1024 * 1024,
            overflow_policy: OverflowPolicy::Close,
            call_timeout: Duration::from_secs(30),
            keepalive_interval: Some(Duration::from_secs(20)),
            keepalive_timeout: Duration::from_secs(20),
            max_invalid_frames: 16,
        }
    }
}

impl ConnectionConfig {
    /// Sets [`Self::max_frame_size`].
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes;
        self
    }

    /// Sets [`Self::max_in_flight`].
    pub fn max_in_flight(mut self, requests: usize) -> Self {
        self.max_in_flight = requests;
        self
    }

    /// Sets [`Self::max_queued_bytes`].
    pub fn max_queued_bytes(mut self, bytes: usize) -> Self {
        self.max_queued_bytes = bytes;
        self
    }

    /// Sets [`Self::overflow_policy`].
    pub fn overflow_policy(mut self, policy: OverflowPolicy) -> Self {
        self.overflow_policy = policy;
        self
    }

    /// Sets [`Self::call_timeout`].
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// Sets [`Self::keepalive_interval`] and [`Self::keepalive_timeout`].
    pub fn keepalive(mut self, interval: Option<Duration>, timeout: Duration) -> Self {
        self.keepalive_interval = interval;
        self.keepalive_timeout = timeout;
        self
    }

    /// Sets [`Self::max_invalid_frames`].
    pub fn max_invalid_frames(mut self, frames: u32) -> Self {
        self.max_invalid_frames = frames;
        self
    }
}
