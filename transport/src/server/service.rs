//! [`PubSubService`]: upgrades requests on the endpoint path, forwards the rest.

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tidings_core::ConnContext;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::WebSocketStream;
use tower::Service;
use tracing::Instrument;

use super::future::ResponseFuture;
use super::layer::Settings;
use crate::ws::{ws_config, WsTransport};

/// The service produced by [`super::PubSubLayer`].
pub struct PubSubService<S> {
    inner: S,
    settings: Arc<Settings>,
}

impl<S: Clone> Clone for PubSubService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            settings: Arc::clone(&self.settings),
        }
    }
}

impl<S> fmt::Debug for PubSubService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubService")
            .field("path", &self.settings.path)
            .finish_non_exhaustive()
    }
}

impl<S> PubSubService<S> {
    pub(crate) fn new(inner: S, settings: Arc<Settings>) -> Self {
        Self { inner, settings }
    }
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for PubSubService<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
    ReqBody: Send + 'static,
    ResBody: Default + Send + 'static,
{
    type Response = Response<ResBody>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, ResBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<ReqBody>) -> Self::Future {
        if request.uri().path() != self.settings.path {
            return ResponseFuture::inner(self.inner.call(request));
        }
        let settings = Arc::clone(&self.settings);
        ResponseFuture::upgrade(Box::pin(upgrade(request, settings)))
    }
}

fn status<B: Default>(status: StatusCode) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = status;
    response
}

fn header_has_token(request: &http::request::Parts, name: header::HeaderName, token: &str) -> bool {
    request
        .headers
        .get_all(name)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|part| part.trim().eq_ignore_ascii_case(token))
}

async fn upgrade<ReqBody, ResBody>(
    request: Request<ReqBody>,
    settings: Arc<Settings>,
) -> Response<ResBody>
where
    ReqBody: Send + 'static,
    ResBody: Default,
{
    let (mut parts, _body) = request.into_parts();
    let is_upgrade = parts.method == Method::GET
        && header_has_token(&parts, header::CONNECTION, "upgrade")
        && header_has_token(&parts, header::UPGRADE, "websocket");
    if !is_upgrade {
        let mut response = status(StatusCode::UPGRADE_REQUIRED);
        response
            .headers_mut()
            .insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        return response;
    }
    let version_ok = parts
        .headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|version| version == "13");
    let Some(key) = parts
        .headers
        .get(header::SEC_WEBSOCKET_KEY)
        .filter(|_| version_ok)
    else {
        tracing::debug!("rejecting upgrade without Sec-WebSocket-Key or version 13");
        return status(StatusCode::BAD_REQUEST);
    };
    let accept = derive_accept_key(key.as_bytes());

    let context = match &settings.authorizer {
        Some(authorizer) => match authorizer.authorize(&parts).await {
            Ok(context) => context,
            Err(rejection) => {
                tracing::debug!(status = rejection.status().as_u16(), reason = %rejection, "upgrade rejected by authorizer");
                return status(rejection.status());
            }
        },
        None => ConnContext::default(),
    };

    let Some(on_upgrade) = parts.extensions.remove::<hyper::upgrade::OnUpgrade>() else {
        tracing::error!(
            "request cannot be upgraded; serve the connection with hyper's upgrades enabled"
        );
        return status(StatusCode::INTERNAL_SERVER_ERROR);
    };

    let endpoint = settings.endpoint.clone();
    tokio::spawn(
        async move {
            let upgraded = match on_upgrade.await {
                Ok(upgraded) => upgraded,
                Err(error) => {
                    tracing::debug!(error = %error, "websocket upgrade failed");
                    return;
                }
            };
            let max_frame_size = endpoint.connection_config().max_frame_size;
            let ws = WebSocketStream::from_raw_socket(
                TokioIo::new(upgraded),
                Role::Server,
                Some(ws_config(max_frame_size)),
            )
            .await;
            endpoint
                .serve(Box::new(WsTransport::new(ws, max_frame_size)), context)
                .await;
        }
        .in_current_span(),
    );

    let mut response = status(StatusCode::SWITCHING_PROTOCOLS);
    let headers = response.headers_mut();
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}
