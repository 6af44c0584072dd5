//! The upgrade authorizer and the per-topic authorizer.

mod common;

use common::{init_tracing, within, TestServer};
use futures_util::StreamExt;
use http::StatusCode;
use serde_json::json;
use tidings::{
    AuthRejection, CallContext, Client, ConnContext, ConnectError, ErrorCode, Hub, Methods, NoArgs,
    PubSubLayer, RpcError, TopicAction,
};

#[derive(Debug, Clone)]
struct User(String);

fn layer() -> PubSubLayer {
    let methods = Methods::new().method("whoami", |_: NoArgs, ctx: CallContext| async move {
        let user = ctx
            .get::<User>()
            .ok_or_else(|| RpcError::forbidden("no user"))?;
        Ok(user.0.clone())
    });
    PubSubLayer::new(Hub::new())
        .methods(methods)
        .authorizer(|request: &http::request::Parts| {
            let token = request
                .headers
                .get("authorization")
                .and_then(|value| value.to_str().ok())
                .map(str::to_owned);
            async move {
                match token
                    .as_deref()
                    .and_then(|token| token.strip_prefix("Bearer "))
                {
                    None => Err(AuthRejection::Unauthorized("missing bearer token".into())),
                    Some("banned") => Err(AuthRejection::Forbidden("banned".into())),
                    Some(name) => Ok(User(name.to_owned())),
                }
            }
        })
        .topic_authorizer(
            |conn: ConnContext, action: TopicAction, topic: String| async move {
                let Some(user) = conn.get::<User>() else {
                    return false;
                };
                match action {
                    TopicAction::Subscribe => {
                        topic.starts_with("public.") || topic == format!("user.{}", user.0)
                    }
                    _ => topic.starts_with("public."),
                }
            },
        )
}

async fn connect_as(server: &TestServer, user: &str) -> Result<Client, ConnectError> {
    within(
        "connect",
        Client::builder(server.url())
            .header("Authorization", format!("Bearer {user}"))
            .connect(),
    )
    .await
}

#[tokio::test]
async fn missing_credentials_get_401() {
    init_tracing();
    let server = TestServer::start(layer());
    let error = within("connect", Client::builder(server.url()).connect())
        .await
        .unwrap_err();
    assert!(
        matches!(error, ConnectError::Rejected { status } if status == StatusCode::UNAUTHORIZED),
        "{error:?}"
    );
}

#[tokio::test]
async fn banned_user_gets_403() {
    init_tracing();
    let server = TestServer::start(layer());
    let error = connect_as(&server, "banned").await.unwrap_err();
    assert!(
        matches!(error, ConnectError::Rejected { status } if status == StatusCode::FORBIDDEN),
        "{error:?}"
    );
}

#[tokio::test]
async fn context_reaches_handlers() {
    init_tracing();
    let server = TestServer::start(layer());
    let client = connect_as(&server, "alice").await.unwrap();
    let name: String = client.call("whoami", json!({})).await.unwrap();
    assert_eq!(name, "alice");
}

#[tokio::test]
async fn topic_authorizer_checks_each_topic() {
    init_tracing();
    let server = TestServer::start(layer());
    let alice = connect_as(&server, "alice").await.unwrap();
    let bob = connect_as(&server, "bob").await.unwrap();

    let error = alice.subscribe(["user.bob"]).await.unwrap_err();
    assert_eq!(error.remote_code(), Some(&ErrorCode::Forbidden));
    let error = alice
        .subscribe(["public.news", "user.bob"])
        .await
        .unwrap_err();
    assert_eq!(error.remote_code(), Some(&ErrorCode::Forbidden));
    let error = bob.publish(["user.alice"], &"spoof").await.unwrap_err();
    assert_eq!(error.remote_code(), Some(&ErrorCode::Forbidden));

    let mut own = alice
        .subscribe(["user.alice", "public.news"])
        .await
        .unwrap();
    bob.publish(["public.news"], &"hello").await.unwrap();
    let event = within("public event", own.next()).await.unwrap();
    assert_eq!(event.topic(), "public.news");
    // The rejected requests left the connection usable.
    let name: String = bob.call("whoami", json!({})).await.unwrap();
    assert_eq!(name, "bob");
}
