//! Bad input from a peer: each gets a typed error response, the connection stays usable and
//! other connections are untouched.

mod common;

use common::{init_tracing, within, RawPeer, TestServer};
use futures_util::StreamExt;
use serde_json::{json, Value};
use tidings::{CallContext, ConnectionConfig, Hub, Methods, PubSubLayer, RpcError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

#[derive(serde::Deserialize)]
struct AddArgs {
    a: i64,
    b: i64,
}

const MAX_FRAME: usize = 64 * 1024;

fn server() -> (Hub, TestServer) {
    init_tracing();
    let hub = Hub::new();
    let methods = Methods::new().method("add", |args: AddArgs, _ctx: CallContext| async move {
        Ok::<_, RpcError>(args.a + args.b)
    });
    let layer = PubSubLayer::new(hub.clone())
        .methods(methods)
        .config(ConnectionConfig::default().max_frame_size(MAX_FRAME));
    (hub, TestServer::start(layer))
}

/// Checks that the peer still gets correct responses after the bad frame.
async fn assert_usable(peer: &mut RawPeer) {
    let answer = peer.call("add", json!({"a": 1, "b": 2}), "check").await;
    assert_eq!(answer["result"], 3);
    assert_eq!(answer["result_type"], "int");
}

fn assert_error(response: &Value, code: &str) {
    assert_eq!(response["result"], Value::Null, "{response}");
    assert_eq!(response["result_type"], "error", "{response}");
    assert_eq!(response["error"]["code"], code, "{response}");
    assert!(
        response["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{response}"
    );
}

async fn bystander(server: &TestServer) -> (RawPeer, tidings::Client) {
    let mut watcher = RawPeer::connect(&server.url()).await;
    let subscribed = watcher
        .call("subscribe", json!({"topics": ["calm"]}), "w1")
        .await;
    assert_eq!(subscribed["result"], true);
    let publisher = common::client(&server.url()).await;
    (watcher, publisher)
}

async fn assert_bystander_receives(watcher: &mut RawPeer, publisher: &tidings::Client, n: i64) {
    publisher.publish(["calm"], &n).await.unwrap();
    let notify = watcher.recv_json().await;
    assert_eq!(notify["request"]["method"], "notify");
    assert_eq!(notify["request"]["arguments"]["data"], n);
}

#[tokio::test]
async fn not_json_is_rejected() {
    let (_hub, server) = server();
    let (mut watcher, publisher) = bystander(&server).await;
    let mut peer = RawPeer::connect(&server.url()).await;
    peer.send_text("this is not json").await;
    let answer = peer.recv_json().await;
    assert_error(&answer["response"], "invalid_frame");
    assert_eq!(answer["response"]["call_id"], Value::Null);
    assert_usable(&mut peer).await;
    assert_bystander_receives(&mut watcher, &publisher, 1).await;
}

#[tokio::test]
async fn json_that_is_not_an_envelope_is_rejected() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    for frame in ["[1,2,3]", "42", r#""text""#, r#"{"request": 5}"#] {
        peer.send_text(frame).await;
        let answer = peer.recv_json().await;
        assert_error(&answer["response"], "invalid_frame");
    }
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn empty_object_is_ignored() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    peer.send_text("{}").await;
    // The next frame the peer receives is the response to its next call, not an error.
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn unknown_method_is_rejected() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let answer = peer.call("no_such_method", json!({}), "u1").await;
    assert_error(&answer, "method_not_found");
    assert_eq!(answer["call_id"], "u1");
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn wrong_argument_types_are_rejected() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let answer = peer.call("add", json!({"a": "one", "b": 2}), "w1").await;
    assert_error(&answer, "invalid_arguments");
    let answer = peer.call("add", json!({"a": 1}), "w2").await;
    assert_error(&answer, "invalid_arguments");
    peer.send_text(
        r#"{"request":{"method":"add","arguments":[1,2],"call_id":"w3"},"response":null}"#,
    )
    .await;
    let answer = peer.response_for("w3").await;
    assert_error(&answer, "invalid_arguments");
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn null_arguments_are_rejected() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let answer = peer.call("add", Value::Null, "n1").await;
    assert_error(&answer, "invalid_arguments");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("null"));
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn binary_frame_is_rejected() {
    let (_hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    peer.send_binary(b"\x00\x01binary".to_vec()).await;
    let answer = peer.recv_json().await;
    assert_error(&answer["response"], "invalid_frame");
    assert!(answer["response"]["error"]["message"]
        .as_str()
        .unwrap()
        .contains("binary"));
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn string_topics_are_rejected() {
    let (hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let answer = peer
        .call("subscribe", json!({"topics": "news"}), "s1")
        .await;
    assert_error(&answer, "invalid_arguments");
    assert_eq!(hub.topic_count(), 0, "a string subscribed its characters");
    let answer = peer
        .call("publish", json!({"topics": "news", "data": 1}), "s2")
        .await;
    assert_error(&answer, "invalid_arguments");
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn oversized_topic_is_rejected() {
    let (hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let long = "x".repeat(hub.config().max_topic_len + 1);
    let answer = peer
        .call("subscribe", json!({"topics": [long]}), "l1")
        .await;
    assert_error(&answer, "invalid_arguments");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_topic_len"));
    assert_usable(&mut peer).await;
}

#[tokio::test]
async fn oversized_frame_closes_only_that_connection() {
    let (_hub, server) = server();
    let (mut watcher, publisher) = bystander(&server).await;
    let mut peer = RawPeer::connect(&server.url()).await;
    let huge = format!(
        r#"{{"request":{{"method":"add","arguments":{{"pad":"{}"}},"call_id":"big"}},"response":null}}"#,
        "x".repeat(MAX_FRAME * 2)
    );
    peer.send_text(&huge).await;
    let close = loop {
        match within("close frame", peer.ws.next()).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let close = close.expect("close frame carries a code");
    assert_eq!(close.code, CloseCode::Size);
    assert!(close.reason.contains("max_frame_size"), "{}", close.reason);

    assert_bystander_receives(&mut watcher, &publisher, 2).await;
    let mut fresh = RawPeer::connect(&server.url()).await;
    assert_usable(&mut fresh).await;
}

#[tokio::test]
async fn repeated_garbage_closes_with_invalid_payload() {
    let (_hub, server) = server();
    let (mut watcher, publisher) = bystander(&server).await;
    let mut peer = RawPeer::connect(&server.url()).await;
    let limit = ConnectionConfig::default().max_invalid_frames;
    for _ in 0..limit {
        peer.send_text("garbage").await;
    }
    let close = loop {
        match within("close frame", peer.ws.next()).await {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(Message::Text(text))) => {
                let answer: Value = serde_json::from_str(&text).unwrap();
                assert_error(&answer["response"], "invalid_frame");
            }
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.expect("close code").code, CloseCode::Invalid);
    assert_bystander_receives(&mut watcher, &publisher, 3).await;
}

#[tokio::test]
async fn too_many_topics_are_rejected() {
    let (hub, server) = server();
    let mut peer = RawPeer::connect(&server.url()).await;
    let topics: Vec<String> = (0..=hub.config().max_topics_per_publish)
        .map(|n| format!("t{n}"))
        .collect();
    let answer = peer
        .call("publish", json!({"topics": topics, "data": 1}), "t1")
        .await;
    assert_error(&answer, "too_large");
    assert!(answer["error"]["message"]
        .as_str()
        .unwrap()
        .contains("max_topics_per_publish"));
    assert_usable(&mut peer).await;
}

/// Opens a WebSocket by hand, so the test can send frames no WebSocket library would.
async fn raw_socket(server: &TestServer) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    let request = format!(
        "GET /pubsub HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        within("upgrade answer", stream.read_exact(&mut byte))
            .await
            .unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// Reads server frames until a close frame and returns its code.
async fn close_code(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    loop {
        let mut header = [0u8; 2];
        within("frame header", stream.read_exact(&mut header))
            .await
            .unwrap();
        let mut len = u64::from(header[1] & 0x7f);
        if len == 126 {
            let mut extended = [0u8; 2];
            stream.read_exact(&mut extended).await.unwrap();
            len = u64::from(u16::from_be_bytes(extended));
        } else if len == 127 {
            let mut extended = [0u8; 8];
            stream.read_exact(&mut extended).await.unwrap();
            len = u64::from_be_bytes(extended);
        }
        let mut payload = vec![0u8; len as usize];
        stream.read_exact(&mut payload).await.unwrap();
        if header[0] & 0x0f == 0x8 {
            return u16::from_be_bytes([payload[0], payload[1]]);
        }
    }
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() {
    use tokio::io::AsyncWriteExt;
    let (_hub, server) = server();
    let mut stream = raw_socket(&server).await;
    let payload = [0xffu8, 0xfe, 0xfd];
    let mask = [1u8, 2, 3, 4];
    let mut frame = vec![0x81, 0x80 | payload.len() as u8];
    frame.extend_from_slice(&mask);
    frame.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, byte)| byte ^ mask[i % 4]),
    );
    stream.write_all(&frame).await.unwrap();
    assert_eq!(close_code(&mut stream).await, 1007);
}

#[tokio::test]
async fn unmasked_frame_closes_with_1002() {
    use tokio::io::AsyncWriteExt;
    let (_hub, server) = server();
    let mut stream = raw_socket(&server).await;
    // Clients must mask every frame (RFC 6455 section 5.1).
    stream.write_all(&[0x81, 0x02, b'{', b'}']).await.unwrap();
    assert_eq!(close_code(&mut stream).await, 1002);
}
