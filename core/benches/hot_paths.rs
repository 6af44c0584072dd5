//! Micro-benchmarks of the hot paths: building a notify frame, decoding a request, and the
//! hub's fan-out to local connections.
//!
//! Run with: `cargo bench -p tidings-core --bench hot_paths`

#![allow(missing_docs)]

use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use serde::Serialize;
use tidings_core::hub::bench_support::{json_string, PreparedNotify};
use tidings_core::rpc::spawn_connection;
use tidings_core::{
    protocol, transport, CallContext, ConnContext, ConnectionConfig, Endpoint, Hub, Methods,
};

const DATA: &[u8] =
    br#"{"headline":"tidings benchmark","n":12345,"tags":["a","b","c"],"score":0.75}"#;

#[derive(Serialize)]
struct Subscription<'a> {
    id: &'a str,
    subscriber_id: &'a str,
    topic: &'a str,
    notifier_id: Option<&'a str>,
}

#[derive(Serialize)]
struct NotifyArguments<'a> {
    subscription: Subscription<'a>,
    data: &'a serde_json::Value,
}

#[derive(Serialize)]
struct Request<'a> {
    method: &'a str,
    arguments: NotifyArguments<'a>,
    call_id: &'a str,
}

#[derive(Serialize)]
struct Envelope<'a> {
    request: Request<'a>,
    response: (),
}

fn notify_frame(c: &mut Criterion) {
    let mut group = c.benchmark_group("notify_frame");
    let subscription = json_string("712a8d8113b342b8892ebb97c36c4fd2");
    let subscriber = json_string("8c18fc588be54dc0a5cd008843449b53");
    let call_id = b"3cb38897bfe649b6a002a73c1a04cb86";
    let prepared = PreparedNotify::new("news", Bytes::from_static(DATA));
    group.bench_function("assembled_from_parts", |b| {
        b.iter(|| black_box(prepared.frame(&subscription, &subscriber, call_id)))
    });
    let data: serde_json::Value = serde_json::from_slice(DATA).expect("valid JSON");
    group.bench_function("serialized_whole", |b| {
        b.iter(|| {
            let envelope = Envelope {
                request: Request {
                    method: "notify",
                    arguments: NotifyArguments {
                        subscription: Subscription {
                            id: "712a8d8113b342b8892ebb97c36c4fd2",
                            subscriber_id: "8c18fc588be54dc0a5cd008843449b53",
                            topic: "news",
                            notifier_id: None,
                        },
                        data: &data,
                    },
                    call_id: "3cb38897bfe649b6a002a73c1a04cb86",
                },
                response: (),
            };
            black_box(serde_json::to_vec(&envelope).expect("serializable"))
        })
    });
    group.finish();
}

fn decode(c: &mut Criterion) {
    let mut group = c.benchmark_group("decode");
    let publish = br#"{"request":{"method":"publish","arguments":{"topics":["news"],"data":{"headline":"hi","n":1},"sync":true,"notifier_id":null},"call_id":"f930e62660c544ebba0e48c3ef8014d6"},"response":null}"#;
    let ack = br#"{"request":null,"response":{"result":"None","result_type":"str","call_id":"3cb38897bfe649b6a002a73c1a04cb86"}}"#;
    group.bench_function("publish_request", |b| {
        b.iter(|| black_box(protocol::decode_frame(black_box(publish)).is_ok()))
    });
    group.bench_function("notify_ack", |b| {
        b.iter(|| black_box(protocol::decode_frame(black_box(ack)).is_ok()))
    });
    group.finish();
}

/// Connects `subscribers` in-process connections to `hub`, each subscribed to "bench" and
/// counting the notify frames it handles in `handled`.
async fn connect_subscribers(
    hub: &Hub,
    subscribers: usize,
    handled: &Arc<AtomicUsize>,
) -> Vec<tidings_core::rpc::Connection> {
    let config = ConnectionConfig::default().max_queued_bytes(usize::MAX / 2);
    let endpoint = Endpoint::new(hub.clone()).config(config.clone());
    let mut clients = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (server_side, client_side) = transport::pair();
        let endpoint = endpoint.clone();
        tokio::spawn(async move {
            endpoint
                .serve(Box::new(server_side), ConnContext::default())
                .await
        });
        let handled = Arc::clone(handled);
        let methods = Methods::new().inline_method(
            "notify",
            move |_: serde_json::Value, _ctx: &CallContext| {
                handled.fetch_add(1, Ordering::Relaxed);
                Ok("None")
            },
        );
        let client = spawn_connection(
            Box::new(client_side),
            methods,
            ConnContext::default(),
            config.clone(),
            tracing::Span::none(),
        );
        let _: bool = client
            .channel()
            .call("subscribe", serde_json::json!({"topics": ["bench"]}))
            .await
            .expect("subscribe");
        clients.push(client);
    }
    clients
}

async fn publish_once(hub: &Hub) {
    hub.publish_encoded(vec!["bench".to_owned()], Bytes::from_static(DATA), None)
        .await
        .expect("publish");
}

/// Runs `bench` in group `name` for 10, 1,000 and 10,000 subscribers, each time on a fresh
/// hub whose subscribers count the notifies they handle in the counter passed to `bench`.
fn fanout_group(
    c: &mut Criterion,
    name: &str,
    runtime: &tokio::runtime::Runtime,
    mut bench: impl FnMut(&mut criterion::Bencher<'_>, &Hub, &Arc<AtomicUsize>, usize),
) {
    let mut group = c.benchmark_group(name);
    group.measurement_time(Duration::from_secs(5));
    for subscribers in [10usize, 1_000, 10_000] {
        let hub = Hub::new();
        let handled = Arc::new(AtomicUsize::new(0));
        let clients = runtime.block_on(connect_subscribers(&hub, subscribers, &handled));
        group.throughput(Throughput::Elements(subscribers as u64));
        group.bench_with_input(
            BenchmarkId::from_parameter(subscribers),
            &subscribers,
            |b, &subscribers| bench(b, &hub, &handled, subscribers),
        );
        drop(clients);
    }
    group.finish();
}

/// Waits until the subscribers have handled `expected` notifies in all.
async fn drained(handled: &AtomicUsize, expected: usize) {
    while handled.load(Ordering::Relaxed) < expected {
        tokio::task::yield_now().await;
    }
}

/// Measures the publisher's cost per local subscriber: the time `publish` takes to queue a
/// notify for every subscribed connection and wake its writer. The writers, which build the
/// frames, and the client sides run after the timed call on the same single-thread runtime.
fn fanout_enqueue(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    fanout_group(
        c,
        "fanout_enqueue",
        &runtime,
        |b, hub, handled, subscribers| {
            b.iter_custom(|iterations| {
                runtime.block_on(async {
                    let mut publishing = Duration::ZERO;
                    for _ in 0..iterations {
                        let expected = handled.load(Ordering::Relaxed) + subscribers;
                        let started = Instant::now();
                        publish_once(hub).await;
                        publishing += started.elapsed();
                        drained(handled, expected).await;
                    }
                    publishing
                })
            })
        },
    );
}

/// Measures a whole publication on a two-thread runtime until every subscriber has handled
/// it: the publisher, the writers and the in-process client sides share the two threads.
fn fanout_pipeline(c: &mut Criterion) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    fanout_group(
        c,
        "fanout_pipeline",
        &runtime,
        |b, hub, handled, subscribers| {
            b.to_async(&runtime).iter(|| {
                let hub = hub.clone();
                let handled = Arc::clone(handled);
                async move {
                    let expected = handled.load(Ordering::Relaxed) + subscribers;
                    publish_once(&hub).await;
                    drained(&handled, expected).await;
                }
            })
        },
    );
}

criterion_group!(
    benches,
    notify_frame,
    decode,
    fanout_enqueue,
    fanout_pipeline
);
criterion_main!(benches);
