//! The per-connection runtime: a reader and a writer, joined in one future.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use serde_json::value::RawValue;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::Instrument;

use super::methods::{CallContext, Handler, HandlerResult, Step};
use super::outbound::{Outbound, Outgoing};
use super::{ConnContext, ConnectionConfig, Methods, Pending, RpcChannel, Shared};
use crate::error::{ErrorCode, RpcError};
use crate::log_limit::LogLimit;
use crate::protocol::{self, IncomingRequest, IncomingResponse};
use crate::transport::{CloseReason, FrameSink, FrameStream, Incoming, Transport, TransportError};

/// How long the writer tries to send a close frame before dropping the transport.
const CLOSE_FRAME_TIMEOUT: Duration = Duration::from_secs(1);
/// Limits "method failed" to one line a second, since a failing dependency (a broker that is
/// down) can fail every call.
static METHOD_FAILED_LOG: LogLimit = LogLimit::new(Duration::from_secs(1));
/// Most frames the writer takes from its queue before flushing once.
const MAX_BATCH: usize = 256;
/// Batch capacity, in frames, that the writer keeps at each keep-alive ping. What a burst
/// grew beyond it is freed then, so idle connections keep small buffers.
const IDLE_BATCH_CAPACITY: usize = 32;

/// A running connection: its channel handle and the task that ends when it closes.
#[derive(Debug)]
pub struct Connection {
    channel: RpcChannel,
    task: JoinHandle<CloseReason>,
}

impl Connection {
    /// Returns the channel handle, to call the peer.
    pub fn channel(&self) -> &RpcChannel {
        &self.channel
    }

    /// Waits until the connection has closed and returns why.
    pub async fn wait(self) -> CloseReason {
        match self.task.await {
            Ok(reason) => reason,
            Err(error) => CloseReason::new(1011, format!("connection task failed: {error}")),
        }
    }
}

/// Starts a task that runs the reader and the writer of a connection over `transport`.
///
/// `methods` are served to the peer in addition to the built-in `_ping_` and
/// `_get_channel_id_`. `span` becomes the parent of every event the connection logs; give it a
/// `conn_id` field. Must be called inside a tokio runtime.
pub fn spawn_connection(
    transport: Box<dyn Transport>,
    methods: Methods,
    context: ConnContext,
    config: ConnectionConfig,
    span: tracing::Span,
) -> Connection {
    let (channel, run) = connection_with_id(
        transport,
        methods,
        context,
        None,
        config,
        span,
        protocol::new_id(),
    );
    Connection {
        channel,
        task: tokio::spawn(run),
    }
}

/// Builds a connection's channel handle and the future that runs its reader and writer.
///
/// The reader and the writer share one future, so a connection costs one task (or none, when
/// the caller awaits the future in its own task) instead of two. The two no longer run on
/// two worker threads at once, which costs one busy connection some throughput. Frames pushed
/// before the future is first polled wait in the outbound queue.
#[allow(clippy::too_many_arguments)]
pub(crate) fn connection_with_id(
    transport: Box<dyn Transport>,
    methods: Methods,
    context: ConnContext,
    local: Option<super::LocalState>,
    config: ConnectionConfig,
    span: tracing::Span,
    id: String,
) -> (
    RpcChannel,
    impl Future<Output = CloseReason> + Send + 'static,
) {
    let outbound = Outbound::new(
        config.max_queued_bytes,
        config.overflow_policy,
        span.clone(),
    );
    let (closed, _) = watch::channel(None);
    let shared = Arc::new(Shared {
        id,
        call_ids: protocol::CallIds::new(),
        outbound,
        pending: Mutex::new(Pending::default()),
        methods,
        context,
        local,
        in_flight: Arc::new(Semaphore::new(config.max_in_flight)),
        config,
        closed,
        span: span.clone(),
        ordered: std::sync::OnceLock::new(),
        rejected_busy: AtomicU64::new(0),
    });
    let channel = RpcChannel {
        shared: Arc::clone(&shared),
    };
    let (sink, stream) = transport.split();

    let clock = Clock::new();
    let reader_channel = channel.clone();
    let run = async move {
        tracing::debug!("connection open");
        // Closes the connection's state even when this future is dropped before it ends.
        let mut finish = Finish {
            shared: Arc::clone(&reader_channel.shared),
            done: false,
        };
        let reader = async {
            let reason = read_loop(&reader_channel, stream, &clock).await;
            reader_channel.shared.outbound.begin_close(reason.clone());
            reason
        };
        let writer = write_loop(Arc::clone(&reader_channel.shared), sink, clock.clone());
        let (reason, ()) = tokio::join!(reader, writer);
        let reason = reader_channel
            .shared
            .outbound
            .close_reason()
            .unwrap_or(reason);
        finish.close(reason.clone());
        tracing::debug!(close_code = reason.code, close_reason = %reason.reason, "connection closed");
        reason
    }
    .instrument(span);
    (channel, run)
}

/// Marks a connection closed: no more frames are queued, waiting callers get
/// `ConnectionClosed`, and [`RpcChannel::closed`] returns. Runs on drop if the connection's
/// future is dropped before it ends.
struct Finish {
    shared: Arc<Shared>,
    done: bool,
}

impl Finish {
    fn close(&mut self, reason: CloseReason) {
        self.done = true;
        let shared = &self.shared;
        shared.outbound.begin_close(reason.clone());
        shared.outbound.close_queue();
        {
            let mut pending = shared.lock_pending();
            pending.closed = true;
            // Dropping the senders wakes every waiting caller with ConnectionClosed.
            pending.calls.clear();
        }
        shared.closed.send_replace(Some(reason));
    }
}

impl Drop for Finish {
    fn drop(&mut self) {
        if !self.done {
            tracing::debug!("connection dropped before it closed");
            self.close(CloseReason::new(
                CloseReason::ABNORMAL,
                "connection dropped",
            ));
        }
    }
}

/// Milliseconds since the connection started, shared between reader and writer.
#[derive(Clone)]
struct Clock {
    start: Instant,
    last_heard: Arc<AtomicU64>,
}

impl Clock {
    fn new() -> Self {
        Self {
            start: Instant::now(),
            last_heard: Arc::new(AtomicU64::new(0)),
        }
    }

    fn heard(&self) {
        let now = self.start.elapsed().as_millis() as u64;
        self.last_heard.store(now, Ordering::Relaxed);
    }

    fn silence(&self) -> Duration {
        let now = self.start.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard.load(Ordering::Relaxed)))
    }
}

async fn read_loop(
    channel: &RpcChannel,
    mut stream: Box<dyn FrameStream>,
    clock: &Clock,
) -> CloseReason {
    let shared = &*channel.shared;
    let mut invalid_in_a_row = 0u32;
    loop {
        let next = tokio::select! {
            biased;
            reason = shared.outbound.closing() => return reason,
            next = stream.recv() => next,
        };
        clock.heard();
        let payload = match next {
            None => return CloseReason::new(CloseReason::NORMAL, "closed by peer"),
            Some(Ok(Incoming::Text(payload))) => payload,
            Some(Ok(Incoming::Pong)) => continue,
            Some(Ok(Incoming::Binary(_))) => {
                let error = RpcError::new(
                    ErrorCode::InvalidFrame,
                    "binary frames are not supported on a JSON connection",
                );
                if !reject_frame(channel, None, &error, &mut invalid_in_a_row) {
                    return invalid_payload_reason(shared);
                }
                continue;
            }
            Some(Err(TransportError::FrameTooLarge { max })) => {
                tracing::debug!(max_frame_size = max, "incoming frame too large");
                return CloseReason::new(
                    CloseReason::TOO_BIG,
                    format!("frame exceeds {max} bytes; raise max_frame_size"),
                );
            }
            Some(Err(TransportError::Closed(reason))) => {
                return reason.unwrap_or_else(|| CloseReason::new(1005, "closed by peer"));
            }
            Some(Err(TransportError::InvalidUtf8)) => {
                tracing::debug!("text frame with invalid UTF-8");
                return CloseReason::new(
                    CloseReason::INVALID_PAYLOAD,
                    "text frame is not valid UTF-8",
                );
            }
            Some(Err(TransportError::Protocol(violation))) => {
                tracing::debug!(
                    violation = violation.as_str(),
                    "WebSocket protocol violation"
                );
                return CloseReason::new(
                    CloseReason::PROTOCOL_ERROR,
                    format!("protocol error: {violation}"),
                );
            }
            Some(Err(error)) => {
                tracing::debug!(error = %error, "transport read failed");
                return CloseReason::new(CloseReason::ABNORMAL, "transport failed");
            }
        };

        match protocol::decode_frame(&payload) {
            Ok(frame) => {
                let empty = frame.request.is_none() && frame.response.is_none();
                // An empty frame proves nothing, so it does not reset the count of bad ones.
                if !empty {
                    invalid_in_a_row = 0;
                }
                // A frame may carry both parts; the request is handled first.
                if let Some(request) = frame.request {
                    dispatch_request(channel, request);
                }
                if let Some(response) = frame.response {
                    complete_call(shared, response);
                }
                if empty {
                    tracing::debug!("ignoring frame without request or response");
                }
            }
            Err(bad) => {
                if !reject_frame(
                    channel,
                    bad.call_id.as_deref(),
                    &bad.error,
                    &mut invalid_in_a_row,
                ) {
                    return invalid_payload_reason(shared);
                }
            }
        }
    }
}

fn invalid_payload_reason(shared: &Shared) -> CloseReason {
    CloseReason::new(
        CloseReason::INVALID_PAYLOAD,
        format!(
            "{} invalid frames in a row; raise ConnectionConfig::max_invalid_frames",
            shared.config.max_invalid_frames
        ),
    )
}

/// Sends an error response for an unreadable frame. Returns false once the connection sent
/// too many in a row.
fn reject_frame(
    channel: &RpcChannel,
    call_id: Option<&str>,
    error: &RpcError,
    invalid_in_a_row: &mut u32,
) -> bool {
    *invalid_in_a_row += 1;
    tracing::debug!(call_id, error = %error, "rejecting invalid frame");
    let _ = channel.push_frame(protocol::encode_error(call_id, error));
    *invalid_in_a_row < channel.shared.config.max_invalid_frames
}

fn dispatch_request(channel: &RpcChannel, request: IncomingRequest) {
    let shared = &*channel.shared;
    let IncomingRequest {
        method,
        arguments,
        call_id,
    } = request;
    let raw_arguments = arguments.as_deref().map_or("{}", RawValue::get);
    tracing::trace!(
        method = method.as_str(),
        call_id = call_id.as_deref(),
        "request received"
    );

    match method.as_str() {
        protocol::PING_METHOD => {
            respond(channel, call_id.as_deref(), Ok(raw_json("\"pong\"")));
            return;
        }
        protocol::GET_CHANNEL_ID_METHOD => {
            let id = serde_json::value::to_raw_value(&shared.id)
                .map_err(|error| RpcError::internal(error.to_string()));
            respond(channel, call_id.as_deref(), id);
            return;
        }
        _ => {}
    }

    let Some(handler) = shared.methods.get(&method) else {
        tracing::debug!(
            method = method.as_str(),
            call_id = call_id.as_deref(),
            "method not found"
        );
        respond(
            channel,
            call_id.as_deref(),
            Err(RpcError::method_not_found(&method)),
        );
        return;
    };
    let context = CallContext::new(channel.clone());
    let ordered = matches!(handler, Handler::Ordered(_));
    match handler {
        Handler::Inline(handler) => {
            let result = catch_panic(|| handler(raw_arguments, &context));
            respond(channel, call_id.as_deref(), result);
        }
        Handler::Async(_) | Handler::Ordered(_) => {
            let Ok(permit) = Arc::clone(&shared.in_flight).try_acquire_owned() else {
                reject_busy(channel, &method, call_id.as_deref());
                return;
            };
            let work = match handler {
                Handler::Ordered(handler) => {
                    catch_panic(|| Ok(Work::Ordered(handler(raw_arguments, context))))
                }
                Handler::Async(handler) => {
                    catch_panic(|| Ok(Work::Async(handler(raw_arguments, context))))
                }
                Handler::Inline(_) => unreachable!("inline handlers are matched above"),
            };
            let job = Job {
                work,
                channel: channel.clone(),
                method,
                call_id,
                permit,
            };
            if ordered {
                shared.ordered_queue().send(job);
            } else {
                tokio::spawn(job.finish().in_current_span());
            }
        }
    }
}

fn reject_busy(channel: &RpcChannel, method: &str, call_id: Option<&str>) {
    let shared = &*channel.shared;
    let limit = shared.config.max_in_flight;
    let rejected = shared.rejected_busy.fetch_add(1, Ordering::Relaxed) + 1;
    // A flooding peer would otherwise produce one warning per request.
    if rejected.is_power_of_two() {
        tracing::warn!(
            method,
            call_id,
            limit,
            rejected,
            "too many requests in flight"
        );
    }
    let error = RpcError::new(
        ErrorCode::TooManyRequests,
        format!("more than {limit} requests in flight on this connection; raise ConnectionConfig::max_in_flight"),
    );
    respond(channel, call_id, Err(error));
}

enum Work {
    Async(super::BoxFuture<'static, HandlerResult>),
    Ordered(super::BoxFuture<'static, Step>),
}

/// One accepted request whose handler runs asynchronously.
pub(crate) struct Job {
    work: Result<Work, RpcError>,
    channel: RpcChannel,
    method: String,
    call_id: Option<String>,
    permit: tokio::sync::OwnedSemaphorePermit,
}

impl Job {
    /// Runs the ordered part of an ordered job; the rest of the call continues on its own
    /// task, so the next ordered job can start.
    async fn run_ordered(mut self) {
        let Ok(Work::Ordered(future)) = self.work else {
            self.finish().await;
            return;
        };
        let step = CatchUnwind(future, || {
            Step::Done(Err(RpcError::internal("method panicked")))
        })
        .await;
        match step {
            Step::Done(result) => {
                self.work = Ok(Work::Async(Box::pin(std::future::ready(result))));
                self.finish().await;
            }
            Step::Then(rest) => {
                self.work = Ok(Work::Async(rest));
                tokio::spawn(self.finish().in_current_span());
            }
        }
    }

    /// Runs the job to its end and sends the response.
    async fn finish(self) {
        let result = match self.work {
            Ok(Work::Async(future)) => {
                CatchUnwind(future, || Err(RpcError::internal("method panicked"))).await
            }
            Ok(Work::Ordered(future)) => {
                match CatchUnwind(future, || {
                    Step::Done(Err(RpcError::internal("method panicked")))
                })
                .await
                {
                    Step::Done(result) => result,
                    Step::Then(rest) => {
                        CatchUnwind(rest, || Err(RpcError::internal("method panicked"))).await
                    }
                }
            }
            Err(error) => Err(error),
        };
        drop(self.permit);
        if let Err(error) = &result {
            if error.code == ErrorCode::InternalError {
                if let Some(suppressed) = METHOD_FAILED_LOG.check() {
                    tracing::warn!(method = self.method.as_str(), call_id = self.call_id.as_deref(), error = %error, suppressed, "method failed");
                }
            }
        }
        respond(&self.channel, self.call_id.as_deref(), result);
    }
}

/// The queue of a connection's ordered requests, drained by one task started on first use.
pub(crate) struct OrderedQueue {
    tx: mpsc::UnboundedSender<Job>,
}

impl OrderedQueue {
    pub(crate) fn start(span: &tracing::Span) -> Self {
        let (tx, mut rx) = mpsc::unbounded_channel::<Job>();
        tokio::spawn(
            async move {
                while let Some(job) = rx.recv().await {
                    job.run_ordered().await;
                }
            }
            .instrument(span.clone()),
        );
        Self { tx }
    }

    fn send(&self, job: Job) {
        // The task ends only when this sender is dropped, so sending cannot fail here.
        let _ = self.tx.send(job);
    }
}

fn raw_json(json: &'static str) -> Box<RawValue> {
    RawValue::from_string(json.to_owned()).unwrap_or_else(|_| RawValue::NULL.to_owned())
}

fn respond(channel: &RpcChannel, call_id: Option<&str>, result: HandlerResult) {
    let frame: Bytes = match &result {
        Ok(value) => protocol::encode_result(call_id, value),
        Err(error) => protocol::encode_error(call_id, error),
    };
    // A full or closing queue already logged why; the caller sees the connection close.
    let _ = channel.push_frame(frame);
}

fn complete_call(shared: &Shared, response: IncomingResponse) {
    let Some(call_id) = response.call_id else {
        tracing::debug!("ignoring response without call id");
        return;
    };
    let waiter = <[u8; 32]>::try_from(call_id.as_bytes())
        .ok()
        .and_then(|key| shared.lock_pending().calls.remove(&key));
    let Some(waiter) = waiter else {
        // Acknowledgements of notify frames land here, so this is routine.
        tracing::trace!(
            call_id = call_id.as_str(),
            "ignoring response with unknown call id"
        );
        return;
    };
    let outcome = match response.error {
        Some(error) => Err(error),
        None if response.result_type.as_deref() == Some(protocol::ERROR_RESULT_TYPE) => Err(
            RpcError::internal("peer responded with an error without details"),
        ),
        None => Ok(response.result.unwrap_or_else(|| RawValue::NULL.to_owned())),
    };
    // The caller may have timed out or been cancelled a moment ago; nothing to do then.
    let _ = waiter.send(outcome);
}

fn catch_panic<T>(run: impl FnOnce() -> Result<T, RpcError>) -> Result<T, RpcError> {
    std::panic::catch_unwind(AssertUnwindSafe(run)).unwrap_or_else(|_| {
        tracing::error!("method panicked");
        Err(RpcError::internal("method panicked"))
    })
}

/// Turns a panic inside a handler future into the value `on_panic` returns.
struct CatchUnwind<T>(super::BoxFuture<'static, T>, fn() -> T);

impl<T> Future for CatchUnwind<T> {
    type Output = T;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<T> {
        let future = &mut self.0;
        match std::panic::catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(poll) => poll,
            Err(_) => {
                tracing::error!("method panicked");
                Poll::Ready((self.1)())
            }
        }
    }
}

async fn write_loop(shared: Arc<Shared>, mut sink: Box<dyn FrameSink>, clock: Clock) {
    // Grown on first use: allocating MAX_BATCH slots up front would cost several KiB for
    // every idle connection.
    let mut batch: Vec<Outgoing> = Vec::new();
    let mut frames: Vec<Bytes> = Vec::new();
    let keepalive = shared.config.keepalive_interval;
    let mut ticker =
        keepalive.map(|period| tokio::time::interval_at(Instant::now() + period, period));

    let reason = loop {
        let step = tokio::select! {
            biased;
            reason = shared.outbound.closing() => WriterStep::Close(reason),
            () = shared.outbound.take_batch(&mut batch, MAX_BATCH) => WriterStep::Send,
            _ = tick(&mut ticker) => WriterStep::Ping,
        };
        match step {
            WriterStep::Close(reason) => break reason,
            WriterStep::Send => {
                let bytes: usize = batch.iter().map(Outgoing::len).sum();
                frames.extend(batch.drain(..).map(Outgoing::into_frame));
                // A peer that stopped reading blocks the send; keep-alive cannot see it, because
                // pings queue behind the blocked frames, so the send itself has a time limit.
                let send_limit =
                    keepalive.map(|interval| interval + shared.config.keepalive_timeout);
                let sent = tokio::select! {
                    biased;
                    reason = shared.outbound.closing() => Err(reason),
                    _ = sleep_or_never(send_limit) => {
                        tracing::debug!(queued_bytes = shared.outbound.queued_bytes(), "send timed out; peer stopped reading");
                        Err(CloseReason::new(CloseReason::INTERNAL_ERROR, "send timed out: peer stopped reading"))
                    }
                    sent = sink.send_batch(&mut frames) => Ok(sent),
                };
                frames.clear();
                shared.outbound.sent(bytes);
                match sent {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "transport write failed");
                        break CloseReason::new(CloseReason::ABNORMAL, "transport failed");
                    }
                    Err(reason) => break reason,
                }
            }
            WriterStep::Ping => {
                // Shrinking after every batch would reallocate under steady load.
                batch.shrink_to(IDLE_BATCH_CAPACITY);
                frames.shrink_to(IDLE_BATCH_CAPACITY);
                shared.outbound.shrink_queue(IDLE_BATCH_CAPACITY);
                let limit = keepalive.unwrap_or_default() + shared.config.keepalive_timeout;
                if clock.silence() > limit {
                    tracing::debug!(
                        silence_ms = clock.silence().as_millis() as u64,
                        "keep-alive timed out"
                    );
                    break CloseReason::new(CloseReason::INTERNAL_ERROR, "keep-alive timed out");
                }
                // A peer that stopped reading can block the ping itself, so it gets the same
                // limits as a send: the close signal and the keep-alive timeout.
                let pinged = tokio::select! {
                    biased;
                    reason = shared.outbound.closing() => Err(reason),
                    () = tokio::time::sleep(shared.config.keepalive_timeout) => {
                        tracing::debug!("keep-alive ping timed out; peer stopped reading");
                        Err(CloseReason::new(CloseReason::INTERNAL_ERROR, "keep-alive ping timed out: peer stopped reading"))
                    }
                    pinged = sink.ping() => Ok(pinged),
                };
                match pinged {
                    Ok(Ok(())) => {}
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "keep-alive ping failed");
                        break CloseReason::new(CloseReason::ABNORMAL, "transport failed");
                    }
                    Err(reason) => break reason,
                }
            }
        }
    };
    shared.outbound.close_queue();
    shared.outbound.begin_close(reason.clone());
    let reason = shared.outbound.close_reason().unwrap_or(reason);
    let _ = tokio::time::timeout(CLOSE_FRAME_TIMEOUT, sink.close(reason)).await;
}

enum WriterStep {
    Close(CloseReason),
    Send,
    Ping,
}

async fn sleep_or_never(limit: Option<Duration>) {
    match limit {
        Some(limit) => tokio::time::sleep(limit).await,
        None => std::future::pending().await,
    }
}

async fn tick(ticker: &mut Option<tokio::time::Interval>) {
    match ticker {
        Some(ticker) => {
            ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}
