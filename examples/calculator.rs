//! Run with: `cargo run -p tidings-examples --example calculator`
//!
//! An RPC calculator. The server offers `add` and `divide`; the client offers `square`, and the
//! server's `sum_of_squares` calls it back over the same connection while the client's request
//! is still open. Both sides run in this one process, talking over a real WebSocket.

use axum::Router;
use serde::Deserialize;
use serde_json::json;
use tidings::{CallContext, Client, Hub, Methods, PubSubLayer, RpcError};

#[derive(Deserialize)]
struct Pair {
    a: f64,
    b: f64,
}

#[derive(Deserialize)]
struct Number {
    x: f64,
}

fn server_methods() -> Methods {
    Methods::new()
        .method("add", |args: Pair, _ctx: CallContext| async move {
            Ok::<_, RpcError>(args.a + args.b)
        })
        .method("divide", |args: Pair, _ctx: CallContext| async move {
            if args.b == 0.0 {
                return Err(RpcError::invalid_arguments("division by zero"));
            }
            Ok(args.a / args.b)
        })
        .method(
            "sum_of_squares",
            |args: Pair, ctx: CallContext| async move {
                // The server calls the client back, twice, before responding.
                let channel = ctx.channel();
                let call_failed = |error: tidings::CallError| RpcError::internal(error.to_string());
                let a: f64 = channel
                    .call("square", json!({"x": args.a}))
                    .await
                    .map_err(call_failed)?;
                let b: f64 = channel
                    .call("square", json!({"x": args.b}))
                    .await
                    .map_err(call_failed)?;
                Ok(a + b)
            },
        )
}

fn client_methods() -> Methods {
    Methods::new().method("square", |args: Number, _ctx: CallContext| async move {
        Ok::<_, RpcError>(args.x * args.x)
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let app = Router::new().layer(PubSubLayer::new(Hub::new()).methods(server_methods()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("ws://{}/pubsub", listener.local_addr()?);
    tokio::spawn(async move { axum::serve(listener, app).await });

    let client = Client::builder(&url)
        .methods(client_methods())
        .connect()
        .await?;

    let sum: f64 = client.call("add", json!({"a": 2, "b": 3})).await?;
    println!("add(2, 3) = {sum}");

    let squares: f64 = client
        .call("sum_of_squares", json!({"a": 3, "b": 4}))
        .await?;
    println!("sum_of_squares(3, 4) = {squares}  (the server called square() on the client)");

    match client.call::<f64>("divide", json!({"a": 1, "b": 0})).await {
        Ok(value) => println!("divide(1, 0) = {value}"),
        Err(error) => println!("divide(1, 0) failed: {error}"),
    }

    client.close();
    Ok(())
}
