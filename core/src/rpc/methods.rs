//! The method registry: typed handlers stored behind a type-erased signature.

use std::any::Any;
use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::RpcChannel;
use crate::error::RpcError;

/// A boxed future, as returned by type-erased handlers.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The value a connection's authorizer returned, visible to every handler on that connection.
///
/// Empty when the connection was accepted without an authorizer.
#[derive(Clone, Default)]
pub struct ConnContext(Option<Arc<dyn Any + Send + Sync>>);

impl ConnContext {
    /// Wraps a value as a connection context.
    pub fn new<T: Any + Send + Sync>(value: T) -> Self {
        Self(Some(Arc::new(value)))
    }

    /// Returns the context as `T`, or `None` when it is empty or of another type.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.0.as_deref()?.downcast_ref()
    }

    /// Returns true when no authorizer value is attached.
    pub fn is_empty(&self) -> bool {
        self.0.is_none()
    }
}

impl fmt::Debug for ConnContext {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConnContext")
            .field("is_empty", &self.is_empty())
            .finish()
    }
}

/// Information a handler gets about the call it is serving.
#[derive(Clone, Debug)]
pub struct CallContext {
    channel: RpcChannel,
}

impl CallContext {
    pub(crate) fn new(channel: RpcChannel) -> Self {
        Self { channel }
    }

    /// Returns the channel the call arrived on, to call the peer back.
    pub fn channel(&self) -> &RpcChannel {
        &self.channel
    }

    /// Returns the connection context, as set by the authorizer.
    pub fn conn(&self) -> &ConnContext {
        self.channel.context()
    }

    /// Returns the connection context as `T`; shorthand for `self.conn().get::<T>()`.
    pub fn get<T: Any>(&self) -> Option<&T> {
        self.conn().get()
    }

    /// Returns the connection's own state attached by the crate (the pub/sub session).
    pub(crate) fn local<T: Any + Send + Sync>(&self) -> Option<Arc<T>> {
        let local = Arc::clone(self.channel.local()?);
        local.downcast().ok()
    }
}

/// Arguments type for methods that take none: accepts any JSON object.
#[derive(Debug, Clone, Copy, Default, Deserialize, Serialize)]
pub struct NoArgs {}

pub(crate) type AsyncHandler =
    Arc<dyn Fn(&str, CallContext) -> BoxFuture<'static, HandlerResult> + Send + Sync>;
pub(crate) type InlineHandler = Arc<dyn Fn(&str, &CallContext) -> HandlerResult + Send + Sync>;
pub(crate) type HandlerResult = Result<Box<RawValue>, RpcError>;

/// Outcome of the ordered part of an ordered handler: the result, or a future that
/// finishes the call outside the order (such as waiting for a broker's confirmation).
pub(crate) enum Step {
    Done(HandlerResult),
    Then(BoxFuture<'static, HandlerResult>),
}

pub(crate) type OrderedHandler =
    Arc<dyn Fn(&str, CallContext) -> BoxFuture<'static, Step> + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Handler {
    /// Runs on its own task, concurrently with other requests.
    Async(AsyncHandler),
    /// Runs on the connection's ordered task, one at a time in arrival order.
    Ordered(OrderedHandler),
    /// Runs in the connection's reader, between reading frames.
    Inline(InlineHandler),
}

fn erase_async<A, R, F, Fut>(handler: F) -> AsyncHandler
where
    A: DeserializeOwned + Send + 'static,
    R: Serialize + 'static,
    F: Fn(A, CallContext) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
{
    let handler = Arc::new(handler);
    Arc::new(move |raw: &str, ctx: CallContext| {
        let decoded = decode_arguments::<A>(raw);
        let handler = Arc::clone(&handler);
        Box::pin(async move {
            let args = decoded?;
            let result = handler(args, ctx).await?;
            encode_result(&result)
        })
    })
}

/// The methods one side of a channel serves to its peer.
///
/// ```
/// use serde::Deserialize;
/// use tidings_core::rpc::Methods;
///
/// #[derive(Deserialize)]
/// struct AddArgs { a: i64, b: i64 }
///
/// let methods = Methods::new().method("add", |args: AddArgs, _ctx| async move {
///     Ok(args.a + args.b)
/// });
/// assert!(methods.contains("add"));
/// ```
#[derive(Clone, Default)]
pub struct Methods {
    // Shared, so every connection of an endpoint uses one table instead of a copy.
    handlers: Arc<HashMap<String, Handler>>,
}

impl fmt::Debug for Methods {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut names: Vec<_> = self.handlers.keys().collect();
        names.sort();
        f.debug_struct("Methods").field("names", &names).finish()
    }
}

/// Decodes keyword arguments, treating a missing `arguments` key as `{}`.
pub(crate) fn decode_arguments<A: DeserializeOwned>(raw: &str) -> Result<A, RpcError> {
    if raw == "null" {
        return Err(RpcError::invalid_arguments(
            "arguments must be a JSON object, got null",
        ));
    }
    if !raw.starts_with('{') {
        return Err(RpcError::invalid_arguments(
            "arguments must be a JSON object of keyword arguments",
        ));
    }
    serde_json::from_str(raw).map_err(|error| RpcError::invalid_arguments(error.to_string()))
}

fn encode_result<R: Serialize>(result: &R) -> HandlerResult {
    serde_json::value::to_raw_value(result)
        .map_err(|error| RpcError::internal(format!("result could not be encoded: {error}")))
}

impl Methods {
    /// Creates an empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers an async method. Its arguments are decoded from the request's keyword
    /// arguments; a decoding failure returns `invalid_arguments` to the caller.
    ///
    /// Handlers run concurrently with the connection's reader, so a handler may call the peer
    /// back through [`CallContext::channel`] and wait for the response.
    pub fn method<A, R, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        Arc::make_mut(&mut self.handlers).insert(name.into(), Handler::Async(erase_async(handler)));
        self
    }

    /// Registers an async method whose calls on one connection run one at a time, in the
    /// order they arrived, so their effects keep the order the peer sent them in.
    ///
    /// The pub/sub methods use this, so a publish, subscribe or unsubscribe is applied before
    /// the next one from the same connection. Such a handler may call the peer back; only
    /// other ordered calls of the same connection wait for it.
    pub fn ordered_method<A, R, F, Fut>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        let handler = erase_async(handler);
        let ordered: OrderedHandler = Arc::new(move |raw: &str, ctx: CallContext| {
            let future = handler(raw, ctx);
            Box::pin(async move { Step::Done(future.await) })
        });
        Arc::make_mut(&mut self.handlers).insert(name.into(), Handler::Ordered(ordered));
        self
    }

    /// Registers an ordered method in two parts: `handler` runs in arrival order like
    /// [`Methods::ordered_method`] and returns a future that completes the call without
    /// holding up the next ordered call.
    pub(crate) fn pipelined_method<A, R, F, Fut, Rest>(
        mut self,
        name: impl Into<String>,
        handler: F,
    ) -> Self
    where
        A: DeserializeOwned + Send + 'static,
        R: Serialize + 'static,
        F: Fn(A, CallContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Rest, RpcError>> + Send + 'static,
        Rest: Future<Output = Result<R, RpcError>> + Send + 'static,
    {
        let handler = Arc::new(handler);
        let ordered: OrderedHandler = Arc::new(move |raw: &str, ctx: CallContext| {
            let decoded = decode_arguments::<A>(raw);
            let handler = Arc::clone(&handler);
            Box::pin(async move {
                let args = match decoded {
                    Ok(args) => args,
                    Err(error) => return Step::Done(Err(error)),
                };
                match handler(args, ctx).await {
                    Ok(rest) => Step::Then(Box::pin(async move { encode_result(&rest.await?) })),
                    Err(error) => Step::Done(Err(error)),
                }
            })
        });
        Arc::make_mut(&mut self.handlers).insert(name.into(), Handler::Ordered(ordered));
        self
    }

    /// Registers a method that runs in the connection's reader, in arrival order.
    ///
    /// Use it only for quick, non-blocking work (such as forwarding an event into a channel):
    /// the connection neither reads nor writes while it runs, and it is not counted against
    /// the connection's in-flight limit.
    pub fn inline_method<A, R, F>(mut self, name: impl Into<String>, handler: F) -> Self
    where
        A: DeserializeOwned + 'static,
        R: Serialize + 'static,
        F: Fn(A, &CallContext) -> Result<R, RpcError> + Send + Sync + 'static,
    {
        let erased: InlineHandler = Arc::new(move |raw: &str, ctx: &CallContext| {
            let args = decode_arguments::<A>(raw)?;
            encode_result(&handler(args, ctx)?)
        });
        Arc::make_mut(&mut self.handlers).insert(name.into(), Handler::Inline(erased));
        self
    }

    /// Adds every method of `other`, replacing methods of the same name.
    pub fn merge(mut self, other: Methods) -> Self {
        let handlers = Arc::make_mut(&mut self.handlers);
        for (name, handler) in other.handlers.iter() {
            handlers.insert(name.clone(), handler.clone());
        }
        self
    }

    /// Returns true when a method of that name is registered.
    pub fn contains(&self, name: &str) -> bool {
        self.handlers.contains_key(name)
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Handler> {
        self.handlers.get(name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Pair {
        #[allow(dead_code)]
        a: i64,
    }

    #[test]
    fn null_arguments_are_invalid() {
        let error = decode_arguments::<Pair>("null").unwrap_err();
        assert_eq!(error.code, crate::ErrorCode::InvalidArguments);
        assert!(error.message.contains("null"));
    }

    #[test]
    fn wrong_argument_type_is_invalid() {
        let error = decode_arguments::<Pair>(r#"{"a":"x"}"#).unwrap_err();
        assert_eq!(error.code, crate::ErrorCode::InvalidArguments);
        assert!(error.message.contains("invalid type"), "{}", error.message);
    }

    #[test]
    fn array_arguments_are_invalid() {
        let error = decode_arguments::<NoArgs>("[1]").unwrap_err();
        assert_eq!(error.code, crate::ErrorCode::InvalidArguments);
    }

    #[test]
    fn no_args_accepts_any_object() {
        assert!(decode_arguments::<NoArgs>(r#"{"x":1}"#).is_ok());
    }

    #[test]
    fn context_downcasts_to_its_type() {
        let context = ConnContext::new(String::from("alice"));
        assert_eq!(context.get::<String>().map(String::as_str), Some("alice"));
        assert!(context.get::<u32>().is_none());
        assert!(ConnContext::default().is_empty());
    }
}
