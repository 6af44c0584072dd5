//! Run with: `cargo run --release -p tidings-cli --example raw_floor -- 127.0.0.1:18800`
//!
//! The floor for fan-out benchmarks: a minimal tokio-tungstenite server that speaks just
//! enough of the protocol for `tidings bench fanout` (`_ping_`, `subscribe`, `publish`) and,
//! for each publication, sends one pre-built `notify` frame to every subscribed socket. It has
//! no hub, no limits, no acknowledgements and no error handling beyond dropping a socket.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

type Subscribers = Arc<Mutex<HashMap<u64, mpsc::UnboundedSender<Utf8Bytes>>>>;

fn response(call_id: &Value, result: Value) -> Utf8Bytes {
    let frame = json!({"request": null, "response": {"result": result, "result_type": "bool", "call_id": call_id}});
    Utf8Bytes::from(frame.to_string())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18800".to_owned());
    let listener = TcpListener::bind(&address).await?;
    println!("raw floor listening on ws://{address}/pubsub");
    let subscribers: Subscribers = Arc::new(Mutex::new(HashMap::new()));
    let next_id = Arc::new(AtomicU64::new(0));
    loop {
        let (stream, _) = listener.accept().await?;
        let _ = stream.set_nodelay(true);
        let subscribers = Arc::clone(&subscribers);
        let id = next_id.fetch_add(1, Ordering::Relaxed);
        tokio::spawn(async move {
            let Ok(ws) = tokio_tungstenite::accept_async(stream).await else {
                return;
            };
            let (mut sink, mut source) = ws.split();
            let (tx, mut rx) = mpsc::unbounded_channel::<Utf8Bytes>();
            let writer = tokio::spawn(async move {
                while let Some(frame) = rx.recv().await {
                    if sink.feed(Message::Text(frame)).await.is_err() {
                        return;
                    }
                    while let Ok(frame) = rx.try_recv() {
                        if sink.feed(Message::Text(frame)).await.is_err() {
                            return;
                        }
                    }
                    if sink.flush().await.is_err() {
                        return;
                    }
                }
            });
            while let Some(Ok(Message::Text(text))) = source.next().await {
                let Ok(frame) = serde_json::from_str::<Value>(&text) else {
                    continue;
                };
                let request = &frame["request"];
                let call_id = &request["call_id"];
                match request["method"].as_str() {
                    Some("_ping_") => {
                        let _ = tx.send(response(call_id, json!("pong")));
                    }
                    Some("subscribe") => {
                        if let Ok(mut map) = subscribers.lock() {
                            map.insert(id, tx.clone());
                        }
                        let _ = tx.send(response(call_id, json!(true)));
                    }
                    Some("publish") => {
                        let topic = request["arguments"]["topics"][0]
                            .as_str()
                            .unwrap_or_default();
                        let notify = json!({"request": {"method": "notify", "arguments": {
                            "subscription": {"id": "0", "subscriber_id": "0", "topic": topic, "notifier_id": null},
                            "data": request["arguments"]["data"]}, "call_id": "0"}, "response": null});
                        // Built once, sent to every subscriber: the cheapest fan-out there is.
                        let notify = Utf8Bytes::from(notify.to_string());
                        if let Ok(map) = subscribers.lock() {
                            for (subscriber, sender) in map.iter() {
                                if *subscriber != id {
                                    let _ = sender.send(notify.clone());
                                }
                            }
                        }
                        let _ = tx.send(response(call_id, json!(true)));
                    }
                    _ => {}
                }
            }
            if let Ok(mut map) = subscribers.lock() {
                map.remove(&id);
            }
            writer.abort();
        });
    }
}
