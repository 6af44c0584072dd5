//! The byte-bounded outbound queue between producers and a connection's writer.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::task::{Poll, Waker};

use bytes::Bytes;
use tokio::sync::Notify;

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

/// Frames waiting for the writer, whether the writer has stopped taking them, and the waker
/// of a writer waiting for frames.
#[derive(Default)]
struct Queue {
    frames: Vec<Outgoing>,
    writer_gone: bool,
    writer: Option<Waker>,
}

// A mutex-guarded Vec, not a tokio mpsc channel, because the channel allocates about 1.5 KiB
// per connection when created (its shared state and first block of 32 slots). An empty Vec
// allocates nothing, which matters for idle connections.
pub(crate) struct Outbound {
    queue: Mutex<Queue>,
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
    ) -> Self {
        Self {
            queue: Mutex::new(Queue::default()),
            queued_bytes: AtomicUsize::new(0),
            max_queued_bytes,
            policy,
            dropped: AtomicU64::new(0),
            close_reason: Mutex::new(None),
            shutdown: Notify::new(),
            span,
        }
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
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
        let writer = {
            let mut queue = self.queue();
            if queue.writer_gone {
                drop(queue);
                self.queued_bytes.fetch_sub(len, Ordering::AcqRel);
                return Err(PushError::Closed);
            }
            queue.frames.push(frame);
            queue.writer.take()
        };
        // Only a writer waiting for frames is woken; pushes while it is busy cost no wake.
        if let Some(writer) = writer {
            writer.wake();
        }
        Ok(())
    }

    /// Waits until frames are queued, then moves up to `max` of them into `batch`, in order.
    ///
    /// Cancel safe: frames leave the queue only in the poll that returns them.
    pub(crate) async fn take_batch(&self, batch: &mut Vec<Outgoing>, max: usize) {
        std::future::poll_fn(|cx| {
            let mut queue = self.queue();
            if queue.frames.is_empty() {
                if !queue
                    .writer
                    .as_ref()
                    .is_some_and(|writer| writer.will_wake(cx.waker()))
                {
                    queue.writer = Some(cx.waker().clone());
                }
                return Poll::Pending;
            }
            if batch.is_empty() && queue.frames.len() <= max {
                // Swapping hands the writer the whole queue without copying, and leaves the
                // batch's spare capacity to the queue.
                std::mem::swap(&mut queue.frames, batch);
            } else {
                let count = queue.frames.len().min(max);
                batch.extend(queue.frames.drain(..count));
            }
            Poll::Ready(())
        })
        .await
    }

    /// Frees the queue's capacity beyond `frames` slots.
    pub(crate) fn shrink_queue(&self, frames: usize) {
        self.queue().frames.shrink_to(frames);
    }

    /// Marks the writer as gone: later pushes fail with [`PushError::Closed`], and frames
    /// still queued are dropped.
    pub(crate) fn close_queue(&self) {
        let (frames, writer) = {
            let mut queue = self.queue();
            queue.writer_gone = true;
            (std::mem::take(&mut queue.frames), queue.writer.take())
        };
        let dropped: usize = frames.iter().map(Outgoing::len).sum();
        self.queued_bytes.fetch_sub(dropped, Ordering::AcqRel);
        drop((frames, writer));
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
    use std::sync::Arc;

    use super::*;

    #[test]
    fn push_past_cap_closes_under_default_policy() {
        let outbound = Outbound::new(10, OverflowPolicy::Close, tracing::Span::none());
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
        let outbound = Outbound::new(10, OverflowPolicy::DropAndCount, tracing::Span::none());
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
        let outbound = Outbound::new(4, OverflowPolicy::Close, tracing::Span::none());
        assert_eq!(outbound.push(Bytes::from_static(b"123456")), Ok(()));
        outbound.sent(6);
        assert_eq!(outbound.queued_bytes(), 0);
    }

    fn frames(batch: Vec<Outgoing>) -> Vec<Bytes> {
        batch.into_iter().map(Outgoing::into_frame).collect()
    }

    #[tokio::test]
    async fn batches_keep_order_and_limit() {
        let outbound = Outbound::new(1024, OverflowPolicy::Close, tracing::Span::none());
        for frame in [&b"a"[..], b"b", b"c"] {
            outbound.push(Bytes::from_static(frame)).unwrap();
        }
        let mut batch = Vec::new();
        outbound.take_batch(&mut batch, 2).await;
        assert_eq!(frames(std::mem::take(&mut batch)), [&b"a"[..], b"b"]);
        outbound.take_batch(&mut batch, 2).await;
        assert_eq!(frames(batch), [&b"c"[..]]);
    }

    #[tokio::test]
    async fn push_wakes_waiting_writer() {
        let outbound = Arc::new(Outbound::new(
            1024,
            OverflowPolicy::Close,
            tracing::Span::none(),
        ));
        let writer = {
            let outbound = Arc::clone(&outbound);
            tokio::spawn(async move {
                let mut batch = Vec::new();
                outbound.take_batch(&mut batch, 8).await;
                frames(batch)
            })
        };
        tokio::task::yield_now().await;
        outbound.push(Bytes::from_static(b"late")).unwrap();
        assert_eq!(writer.await.unwrap(), [&b"late"[..]]);
    }

    #[test]
    fn push_after_writer_gone_is_closed() {
        let outbound = Outbound::new(1024, OverflowPolicy::Close, tracing::Span::none());
        outbound.push(Bytes::from_static(b"queued")).unwrap();
        outbound.close_queue();
        assert_eq!(
            outbound.push(Bytes::from_static(b"after")),
            Err(PushError::Closed)
        );
        assert_eq!(outbound.queued_bytes(), 0);
    }
}
