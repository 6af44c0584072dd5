//! The symmetric RPC channel: either side registers methods and calls the other.

mod config;
mod connection;
mod methods;
mod outbound;

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;
use tokio::sync::{oneshot, watch, Semaphore};

pub use config::{ConnectionConfig, OverflowPolicy};
pub(crate) use connection::connection_with_id;
pub use connection::{spawn_connection, Connection};
pub use methods::{BoxFuture, CallContext, ConnContext, Methods, NoArgs};

use crate::error::{CallError, RpcError};
use crate::hub::frame::NotifyJob;
use crate::protocol::{self, CallIds};
use crate::transport::CloseReason;
use outbound::{Outbound, Outgoing, PushError};

/// Connection state for the crate's own handlers, found through [`CallContext`].
pub(crate) type LocalState = Arc<dyn std::any::Any + Send + Sync>;

type PendingReply = oneshot::Sender<Result<Box<RawValue>, RpcError>>;

#[derive(Default)]
struct Pending {
    calls: HashMap<[u8; 32], PendingReply>,
    closed: bool,
}

pub(crate) struct Shared {
    id: String,
    call_ids: CallIds,
    outbound: Outbound,
    pending: Mutex<Pending>,
    methods: Methods,
    context: ConnContext,
    /// State the crate attaches to a connection for its own methods.
    local: Option<LocalState>,
    in_flight: Arc<Semaphore>,
    config: ConnectionConfig,
    closed: watch::Sender<Option<CloseReason>>,
    span: tracing::Span,
    ordered: std::sync::OnceLock<connection::OrderedQueue>,
    rejected_busy: std::sync::atomic::AtomicU64,
}

/// A handle to one RPC connection. Cheap to clone; every clone talks to the same peer.
///
/// The channel stays usable until the connection closes; calls made after that return
/// [`CallError::ConnectionClosed`].
#[derive(Clone)]
pub struct RpcChannel {
    shared: Arc<Shared>,
}

impl fmt::Debug for RpcChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RpcChannel")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// Removes a call's pending entry however the call ends: completed, timed out or dropped.
struct PendingGuard<'a> {
    shared: &'a Shared,
    key: [u8; 32],
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        self.shared.lock_pending().calls.remove(&self.key);
    }
}

impl Shared {
    fn ordered_queue(&self) -> &connection::OrderedQueue {
        self.ordered
            .get_or_init(|| connection::OrderedQueue::start(&self.span))
    }

    fn lock_pending(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl RpcChannel {
    /// Returns this side's channel id: what `_get_channel_id_` returns to the peer, and the
    /// subscriber id of this connection's subscriptions.
    pub fn id(&self) -> &str {
        &self.shared.id
    }

    /// Returns the connection context set by the authorizer.
    pub fn context(&self) -> &ConnContext {
        &self.shared.context
    }

    /// Returns the tracing span of this connection.
    pub fn span(&self) -> &tracing::Span {
        &self.shared.span
    }

    /// Calls `method` on the peer with keyword arguments `args` and the default timeout.
    ///
    /// `args` must serialize to a JSON object. Dropping the returned future cancels the call:
    /// its pending entry is removed and a late response is ignored.
    pub async fn call<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
    ) -> Result<R, CallError> {
        self.call_with_timeout(method, args, self.shared.config.call_timeout)
            .await
    }

    /// Calls `method` like [`Self::call`], with its own timeout.
    pub async fn call_with_timeout<R: DeserializeOwned>(
        &self,
        method: &str,
        args: impl Serialize,
        timeout: Duration,
    ) -> Result<R, CallError> {
        let arguments =
            protocol::encode_arguments(&args).map_err(|source| CallError::InvalidArguments {
                method: method.to_owned(),
                source,
            })?;
        let raw = self.call_raw(method, &arguments, timeout).await?;
        serde_json::from_str(raw.get()).map_err(|source| CallError::InvalidResult {
            method: method.to_owned(),
            source,
        })
    }

    /// Calls `method` with pre-encoded arguments and returns the encoded result.
    pub async fn call_raw(
        &self,
        method: &str,
        arguments: &RawValue,
        timeout: Duration,
    ) -> Result<Box<RawValue>, CallError> {
        let shared = &*self.shared;
        let call_id = shared.call_ids.next();
        let key = *call_id.as_bytes();
        let (tx, rx) = oneshot::channel();
        {
            let mut pending = shared.lock_pending();
            if pending.closed {
                return Err(CallError::ConnectionClosed {
                    method: method.to_owned(),
                });
            }
            pending.calls.insert(key, tx);
        }
        let _guard = PendingGuard { shared, key };

        let frame = protocol::encode_request(method, arguments, call_id.as_str());
        tracing::trace!(parent: &shared.span, method, call_id = call_id.as_str(), "calling");
        match shared.outbound.push(frame) {
            Ok(()) => {}
            Err(PushError::Full) => return Err(CallError::QueueFull),
            Err(PushError::Closed) => {
                return Err(CallError::ConnectionClosed {
                    method: method.to_owned(),
                })
            }
        }

        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(Ok(result))) => Ok(result),
            Ok(Ok(Err(error))) => Err(CallError::Remote(error)),
            Ok(Err(_)) => Err(CallError::ConnectionClosed {
                method: method.to_owned(),
            }),
            Err(_) => Err(CallError::Timeout {
                method: method.to_owned(),
                timeout,
            }),
        }
    }

    /// Returns the number of outgoing calls waiting for a response.
    pub fn pending_calls(&self) -> usize {
        self.shared.lock_pending().calls.len()
    }

    /// Returns the number of bytes queued for sending.
    pub fn queued_bytes(&self) -> usize {
        self.shared.outbound.queued_bytes()
    }

    /// Returns how many frames were dropped under [`OverflowPolicy::DropAndCount`].
    pub fn dropped_frames(&self) -> u64 {
        self.shared.outbound.dropped()
    }

    /// Returns true once the connection has closed or begun closing.
    pub fn is_closed(&self) -> bool {
        self.shared.outbound.close_reason().is_some() || self.shared.closed.borrow().is_some()
    }

    /// Starts closing the connection with `reason`. Frames still queued are discarded.
    pub fn close(&self, reason: CloseReason) {
        self.shared.outbound.begin_close(reason);
    }

    /// Waits until the connection has closed and returns why.
    pub async fn closed(&self) -> CloseReason {
        let mut watcher = self.shared.closed.subscribe();
        let reason = match watcher.wait_for(Option::is_some).await {
            Ok(reason) => reason.clone(),
            Err(_) => None,
        };
        reason.unwrap_or_else(|| CloseReason::new(CloseReason::NORMAL, ""))
    }

    /// Queues a pre-encoded frame, for callers that build frames themselves (the hub).
    pub(crate) fn push_frame(&self, frame: Bytes) -> Result<(), PushError> {
        self.shared.outbound.push(frame)
    }

    pub(crate) fn local(&self) -> Option<&LocalState> {
        self.shared.local.as_ref()
    }

    /// Queues a notify that the writer builds into a frame when it sends it.
    pub(crate) fn push_notify(&self, job: NotifyJob) -> Result<(), PushError> {
        self.shared.outbound.push_outgoing(Outgoing::Notify(job))
    }
}
