//! The byte-bounded outbound queue between producers and a connection's writer task.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use tokio::sync::{mpsc, Notify};

use super::config::OverflowPolicy;
use crate::hub::frame::NotifyJob;
use crate::transport::CloseReason;

/// One queued outgoing frame, either encoded or built by the writer when it is sent.
#[derive(Debug)]
pub(crate) enum Outgoing {
    Frame(Bytes),
    Notify(NotifyJob),
}

impl Outgoing {
    /// Returns the length of the frame on the wire.
    pub(crate) fn len(&self) -> usize {
        match self {
            Self::Frame(frame) => frame.len(),
            Self::Notify(job) => job.len(),
        }
    }

    /// Returns the encoded frame.
    pub(crate) fn into_frame(self) -> Bytes {
        match self {
            Self::Frame(frame) => frame,
            Self::Notify(job) => job.build(),
        }
    }
}

/// Reason a frame was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PushError {
    /// The queue passed its cap; under the close policy the connection is now closing.
    Full,
    /// The connection is closing or closed.
    Closed,
}

pub(crate) struct Outbound {
    tx: mpsc::UnboundedSender<Outgoing>,
    queued_bytes: AtomicUsize,
    max_queued_bytes: usize,
    policy: OverflowPolicy,
    dropped: AtomicU64,
    close_reason: Mutex<Option<CloseReason>>,
    shutdown: Notify,
    // Overflows happen on the publisher's task; logging under the subscriber's span names the
    // connection that overflowed.
    span: tracing::Span,
}

impl Outbound {
    pub(crate) fn new(
        max_queued_bytes: usize,
        policy: OverflowPolicy,
        span: tracing::Span,
    ) -> (Self, mpsc::UnboundedReceiver<Outgoing>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let outbound = Self {
            tx,
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            policy,
            dropped: AtomicU64::new(0),
            close_reason: Mutex::new(None),
            shutdown: Notify::new(),
            span,
        };
        (outbound, rx)
    }

    /// Queues a frame without waiting. Never blocks the caller, whatever the peer does.
    pub(crate) fn push(&self, frame: Bytes) -> Result<(), PushError> {
        self.push_outgoing(Outgoing::Frame(frame))
    }

    /// Queues a frame or a notify to build, without waiting.
    pub(crate) fn push_outgoing(&self, frame: Outgoing) -> Result<(), PushError> {
        let len = frame.len();
        let before = self.queued_bytes.fetch_add(len, Ordering::AcqRel);
        // A frame larger than the whole cap is still accepted into an empty queue, so one big
        // publication does not close an otherwise idle connection.
        if before > 0 && before + len > self.max_queued_bytes {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(self.overflow(before));
        }
        if self.tx.send(frame).is_err() {
            self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
            return Err(PushError::Closed);
        }
        Ok(())
    }

    fn overflow(&self, queued: usize) -> PushError {
        match self.policy {
            OverflowPolicy::Close => {
                let reason = CloseReason::new(
                    CloseReason::POLICY,
                    format!(
                        "slow consumer: outbound queue passed {} bytes",
                        self.max_queued_bytes
                    ),
                );
                if self.begin_close(reason) {
                    tracing::warn!(
                        parent: &self.span,
                        queued_bytes = queued,
                        max_queued_bytes = self.max_queued_bytes,
                        "outbound queue overflowed; closing the connection \
                         (raise ConnectionConfig::max_queued_bytes to allow more)"
                    );
                }
            }
            OverflowPolicy::DropAndCount => {
                let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
                // Logging every drop would flood the log under sustained overload.
                if dropped.is_power_of_two() {
                    tracing::warn!(
                        parent: &self.span,
                        dropped,
                        max_queued_bytes = self.max_queued_bytes,
                        "outbound queue full; dropping frames"
                    );
                }
            }
        }
        PushError::Full
    }

    /// Records the close reason and wakes the writer. Returns false if already closing.
    pub(crate) fn begin_close(&self, reason: CloseReason) -> bool {
        let mut slot = self
            .close_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if slot.is_some() {
            return false;
        }
        *slot = Some(reason);
        drop(slot);
        // Both the reader and the writer wait for this, so wake every waiter.
        self.shutdown.notify_waiters();
        true
    }

    pub(crate) fn close_reason(&self) -> Option<CloseReason> {
        self.close_reason
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Waits until [`Self::begin_close`] has been called.
    pub(crate) async fn closing(&self) -> CloseReason {
        loop {
            let notified = self.shutdown.notified();
            if let Some(reason) = self.close_reason() {
                return reason;
            }
            notified.await;
        }
    }

    pub(crate) fn sent(&self, bytes: usize) {
        self.queued_bytes.fetch_sub(bytes, Ordering::AcqRel);
    }

    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes.load(Ordering::Acquire)
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn push_past_cap_closes_under_default_policy() {
        let (outbound, _rx) = Outbound::new(10, OverflowPolicy::Close, tracing::Span::none());
        assert_eq!(outbound.push(Bytes::from_static(b"12345678")), Ok(()));
        assert_eq!(
            outbound.push(Bytes::from_static(b"12345")),
            Err(PushError::Full)
        );
        let reason = outbound.close_reason().expect("closing after overflow");
        assert_eq!(reason.code, CloseReason::POLICY);
        assert!(reason.reason.contains("10 bytes"));
    }

    #[test]
    fn drop_policy_counts_and_keeps_open() {
        let (outbound, _rx) =
            Outbound::new(10, OverflowPolicy::DropAndCount, tracing::Span::none());
        outbound.push(Bytes::from_static(b"12345678")).unwrap();
        assert_eq!(
            outbound.push(Bytes::from_static(b"12345")),
            Err(PushError::Full)
        );
        assert_eq!(outbound.dropped(), 1);
        assert!(outbound.close_reason().is_none());
        assert_eq!(outbound.queued_bytes(), 8);
    }

    #[test]
    fn oversized_frame_fits_an_empty_queue() {
        let (outbound, _rx) = Outbound::new(4, OverflowPolicy::Close, tracing::Span::none());
        assert_eq!(outbound.push(Bytes::from_static(b"123456")), Ok(()));
        outbound.sent(6);
        assert_eq!(outbound.queued_bytes(), 0);
    }
}
