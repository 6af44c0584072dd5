//! [`PubSubLayer`]: configuration of the endpoint and the tower `Layer` impl.

use std::fmt;
use std::sync::Arc;

use tidings_core::{ConnectionConfig, Endpoint, Hub, Methods, RpcChannel, TopicAuthorizer};
use tower::Layer;

use super::auth::Authorizer;
use super::service::PubSubService;

#[derive(Clone)]
pub(crate) struct Settings {
    pub(crate) endpoint: Endpoint,
    pub(crate) path: String,
    pub(crate) authorizer: Option<Arc<dyn Authorizer>>,
}

/// A tower layer that serves the tidings endpoint on one path and passes every other request
/// to the inner service.
///
/// Works on an axum `Router` (`.layer(...)`) and on a plain hyper server (wrap the service,
/// and serve connections with upgrades enabled).
#[derive(Clone)]
pub struct PubSubLayer {
    settings: Arc<Settings>,
}

impl fmt::Debug for PubSubLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PubSubLayer")
            .field("path", &self.settings.path)
            .field("endpoint", &self.settings.endpoint)
            .field("authorizer", &self.settings.authorizer.is_some())
            .finish()
    }
}

impl PubSubLayer {
    /// Creates a layer serving `hub` on `/pubsub`, with default limits and no authorizer.
    pub fn new(hub: Hub) -> Self {
        Self::from_endpoint(Endpoint::new(hub))
    }

    /// Creates a layer from a fully configured [`Endpoint`].
    pub fn from_endpoint(endpoint: Endpoint) -> Self {
        Self {
            settings: Arc::new(Settings {
                endpoint,
                path: "/pubsub".to_owned(),
                authorizer: None,
            }),
        }
    }

    fn update(mut self, change: impl FnOnce(&mut Settings)) -> Self {
        let settings = Arc::make_mut(&mut self.settings);
        change(settings);
        self
    }

    /// Sets the path the endpoint is served on (default `/pubsub`).
    pub fn path(self, path: impl Into<String>) -> Self {
        let path = path.into();
        self.update(|settings| settings.path = path)
    }

    /// Sets the application's own methods, served beside the pub/sub ones.
    pub fn methods(self, methods: Methods) -> Self {
        self.update(|settings| settings.endpoint = settings.endpoint.clone().methods(methods))
    }

    /// Sets the per-connection limits and timers.
    pub fn config(self, config: ConnectionConfig) -> Self {
        self.update(|settings| settings.endpoint = settings.endpoint.clone().config(config))
    }

    /// Sets the authorizer run on every upgrade request; see [`Authorizer`].
    pub fn authorizer(self, authorizer: impl Authorizer) -> Self {
        let authorizer: Arc<dyn Authorizer> = Arc::new(authorizer);
        self.update(|settings| settings.authorizer = Some(authorizer))
    }

    /// Sets the authorizer called on every `subscribe` and `publish`, per topic.
    pub fn topic_authorizer(self, authorizer: impl TopicAuthorizer) -> Self {
        self.update(|settings| {
            settings.endpoint = settings.endpoint.clone().topic_authorizer(authorizer)
        })
    }

    /// Sets a callback run on its own task for every new connection; see
    /// [`Endpoint::on_connect`].
    pub fn on_connect<F, Fut>(self, callback: F) -> Self
    where
        F: Fn(RpcChannel) -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        self.update(|settings| settings.endpoint = settings.endpoint.clone().on_connect(callback))
    }

    /// Returns the endpoint that serves the connections.
    pub fn endpoint(&self) -> &Endpoint {
        &self.settings.endpoint
    }
}

impl<S> Layer<S> for PubSubLayer {
    type Service = PubSubService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        PubSubService::new(inner, Arc::clone(&self.settings))
    }
}
