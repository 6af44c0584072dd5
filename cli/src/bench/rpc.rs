//! `tidings bench rpc`: round trips of `_ping_` with many calls in flight.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use serde::Serialize;
use tidings::ConnectionConfig;

use super::{connect_all, print_report, LatencySummary};

/// Arguments of `tidings bench rpc`.
#[derive(clap::Args, Debug)]
pub(crate) struct RpcArgs {
    /// Endpoint URL, such as ws://127.0.0.1:8000/pubsub.
    url: String,
    /// Number of connections.
    #[arg(long, default_value_t = 1)]
    connections: usize,
    /// Calls in flight on each connection.
    #[arg(long, default_value_t = 64)]
    in_flight: usize,
    /// Seconds to run for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Method to call; it must accept an empty argument object.
    #[arg(long, default_value = "_ping_")]
    method: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct RpcReport {
    connections: usize,
    in_flight: usize,
    method: String,
    duration_s: f64,
    calls: u64,
    errors: u64,
    calls_per_s: f64,
    round_trip_us: LatencySummary,
}

pub(crate) async fn run(args: RpcArgs) -> Result<(), String> {
    if args.connections == 0 || args.in_flight == 0 || args.duration == 0 {
        return Err("--connections, --in-flight and --duration must be at least 1".into());
    }
    let config = ConnectionConfig::default().max_in_flight(args.in_flight.max(256));
    eprintln!("connecting {} clients", args.connections);
    let clients = connect_all(&args.url, args.connections, &config).await?;

    let histogram = Arc::new(Mutex::new(
        Histogram::<u64>::new(3).map_err(|error| error.to_string())?,
    ));
    let calls = Arc::new(AtomicU64::new(0));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let mut workers = Vec::new();
    for client in &clients {
        for _ in 0..args.in_flight {
            let client = client.clone();
            let method = args.method.clone();
            let histogram = Arc::clone(&histogram);
            let calls = Arc::clone(&calls);
            let errors = Arc::clone(&errors);
            workers.push(tokio::spawn(async move {
                let mut local = Histogram::<u64>::new(3)
                    .unwrap_or_else(|_| unreachable!("3 significant digits are valid"));
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    match client
                        .call::<serde_json::Value>(&method, serde_json::json!({}))
                        .await
                    {
                        Ok(_) => {
                            let _ = local.record((sent.elapsed().as_micros() as u64).max(1));
                            calls.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            errors.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                if let Ok(mut shared) = histogram.lock() {
                    let _ = shared.add(&local);
                }
            }));
        }
    }

    let mut last = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let done = calls.load(Ordering::Relaxed);
        eprint!(
            "\r{:>4.0}s calls {:>10} ({:>9}/s) errors {:>6}   ",
            start.elapsed().as_secs_f64(),
            done,
            done - last,
            errors.load(Ordering::Relaxed)
        );
        last = done;
    }
    for worker in workers {
        let _ = worker.await;
    }
    eprintln!();
    let elapsed = start.elapsed().as_secs_f64();
    let histogram = histogram
        .lock()
        .map_err(|_| "latency histogram poisoned")?
        .clone();
    let report = RpcReport {
        connections: args.connections,
        in_flight: args.in_flight,
        method: args.method,
        duration_s: elapsed,
        calls: calls.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
        calls_per_s: calls.load(Ordering::Relaxed) as f64 / elapsed,
        round_trip_us: LatencySummary::from(&histogram),
    };
    print_report(&report, args.json, |report| {
        format!(
            "rpc: {} connections, {} in flight each, method {}\n\
             {} calls ({} errors) in {:.1}s: {:.0} calls/s\n\
             round trip us: {}",
            report.connections,
            report.in_flight,
            report.method,
            report.calls,
            report.errors,
            report.duration_s,
            report.calls_per_s,
            report.round_trip_us
        )
    })
}
