//! `tidings bench fanout`: publish at a steady rate, measure publish-to-deliver latency.

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};
use tidings::{Client, ConnectionConfig};
use tokio::sync::Semaphore;

use super::{connect_all, print_report, LatencySummary};

/// Arguments of `tidings bench fanout`.
#[derive(clap::Args, Debug)]
pub(crate) struct FanoutArgs {
    /// Endpoint the subscribers connect to, such as ws://127.0.0.1:8000/pubsub.
    url: String,
    /// Endpoint the publishers connect to (default: the subscribers' URL). Point it at another
    /// instance to measure delivery across the backbone.
    #[arg(long)]
    publish_url: Option<String>,
    /// Number of subscribing connections.
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Number of publishing connections.
    #[arg(long, default_value_t = 1)]
    publishers: usize,
    /// Publications per second, over all publishers.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Size of each publication's padding, in bytes.
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Topic to publish on.
    #[arg(long, default_value = "bench")]
    topic: String,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct Payload<'a> {
    publisher: u32,
    seq: u64,
    sent_us: u64,
    pad: &'a str,
}

#[derive(Deserialize)]
struct Received {
    publisher: u32,
    seq: u64,
    sent_us: u64,
}

/// Counters and histogram shared by the subscriber tasks.
struct Tally {
    latency: Mutex<Histogram<u64>>,
    delivered: AtomicU64,
    duplicates: AtomicU64,
    invalid: AtomicU64,
}

#[derive(Serialize)]
struct FanoutReport {
    subscribers: usize,
    publishers: usize,
    target_rate: u64,
    duration_s: f64,
    payload_bytes: usize,
    published: u64,
    publish_errors: u64,
    expected_deliveries: u64,
    delivered: u64,
    lost: u64,
    duplicates: u64,
    deliveries_per_s: f64,
    latency_us: LatencySummary,
}

pub(crate) async fn run(args: FanoutArgs) -> Result<(), String> {
    if args.subscribers == 0 || args.publishers == 0 || args.rate == 0 || args.duration == 0 {
        return Err("--subscribers, --publishers, --rate and --duration must be at least 1".into());
    }
    let publish_url = args.publish_url.clone().unwrap_or_else(|| args.url.clone());
    let config = ConnectionConfig::default().max_queued_bytes(64 * 1024 * 1024);
    eprintln!(
        "connecting {} subscribers and {} publishers",
        args.subscribers, args.publishers
    );
    let subscribers = connect_all(&args.url, args.subscribers, &config).await?;
    let publishers = connect_all(&publish_url, args.publishers, &config).await?;

    let start = Instant::now();
    let tally = Arc::new(Tally {
        latency: Mutex::new(Histogram::new(3).map_err(|error| error.to_string())?),
        delivered: AtomicU64::new(0),
        duplicates: AtomicU64::new(0),
        invalid: AtomicU64::new(0),
    });
    let mut readers = Vec::new();
    for client in &subscribers {
        let events = client
            .subscribe([args.topic.clone()])
            .await
            .map_err(|error| format!("subscribe failed: {error}"))?;
        readers.push(tokio::spawn(read_events(
            events,
            start,
            Arc::clone(&tally),
            args.publishers,
        )));
    }

    let published = Arc::new(AtomicU64::new(0));
    let publish_errors = Arc::new(AtomicU64::new(0));
    let per_publisher = (args.rate as f64 / args.publishers as f64).max(0.001);
    let deadline = start + Duration::from_secs(args.duration);
    let pad = "x".repeat(args.payload);
    let mut senders = Vec::new();
    for (index, client) in publishers.iter().enumerate() {
        senders.push(tokio::spawn(publish_steadily(
            client.clone(),
            index as u32,
            per_publisher,
            deadline,
            start,
            args.topic.clone(),
            pad.clone(),
            Arc::clone(&published),
            Arc::clone(&publish_errors),
        )));
    }

    let mut last_delivered = 0;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let delivered = tally.delivered.load(Ordering::Relaxed);
        let p99 = tally
            .latency
            .lock()
            .map(|h| h.value_at_quantile(0.99))
            .unwrap_or(0);
        eprint!(
            "\r{:>4.0}s published {:>9} delivered {:>10} ({:>9}/s) p99 {:>7} us   ",
            start.elapsed().as_secs_f64(),
            published.load(Ordering::Relaxed),
            delivered,
            delivered - last_delivered,
            p99
        );
        last_delivered = delivered;
    }
    for sender in senders {
        let _ = sender.await;
    }
    let elapsed = start.elapsed();
    let expected = published.load(Ordering::Relaxed) * args.subscribers as u64;
    // Deliveries still in flight when publishing ends get two seconds to arrive.
    let drain_deadline = Instant::now() + Duration::from_secs(2);
    while tally.delivered.load(Ordering::Relaxed) < expected && Instant::now() < drain_deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!();
    for reader in &readers {
        reader.abort();
    }

    let delivered = tally.delivered.load(Ordering::Relaxed);
    let histogram = tally
        .latency
        .lock()
        .map_err(|_| "latency histogram poisoned")?
        .clone();
    let report = FanoutReport {
        subscribers: args.subscribers,
        publishers: args.publishers,
        target_rate: args.rate,
        duration_s: elapsed.as_secs_f64(),
        payload_bytes: args.payload,
        published: published.load(Ordering::Relaxed),
        publish_errors: publish_errors.load(Ordering::Relaxed),
        expected_deliveries: expected,
        delivered,
        lost: expected.saturating_sub(delivered),
        duplicates: tally.duplicates.load(Ordering::Relaxed),
        deliveries_per_s: delivered as f64 / elapsed.as_secs_f64(),
        latency_us: LatencySummary::from(&histogram),
    };
    let invalid = tally.invalid.load(Ordering::Relaxed);
    if invalid > 0 {
        eprintln!("warning: {invalid} events had an unexpected payload");
    }
    print_report(&report, args.json, |report| {
        format!(
            "fanout: {} subscribers, {} publishers, {} publications/s target, {} B payload\n\
             published {} ({} errors) in {:.1}s; delivered {} of {} ({:.0}/s); lost {}; duplicates {}\n\
             latency us: {}",
            report.subscribers,
            report.publishers,
            report.target_rate,
            report.payload_bytes,
            report.published,
            report.publish_errors,
            report.duration_s,
            report.delivered,
            report.expected_deliveries,
            report.deliveries_per_s,
            report.lost,
            report.duplicates,
            report.latency_us
        )
    })
}

#[allow(clippy::too_many_arguments)]
async fn publish_steadily(
    client: Client,
    index: u32,
    rate: f64,
    deadline: Instant,
    start: Instant,
    topic: String,
    pad: String,
    published: Arc<AtomicU64>,
    errors: Arc<AtomicU64>,
) {
    let period = Duration::from_secs_f64(1.0 / rate);
    let mut ticker = tokio::time::interval(period);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    // Publications are acknowledged by the server; this many may wait for their response at once.
    let in_flight = Arc::new(Semaphore::new(1024));
    let mut seq = 0u64;
    while Instant::now() < deadline {
        ticker.tick().await;
        let Ok(permit) = Arc::clone(&in_flight).acquire_owned().await else {
            return;
        };
        let payload = Payload {
            publisher: index,
            seq,
            sent_us: start.elapsed().as_micros() as u64,
            pad: &pad,
        };
        let Ok(payload) = serde_json::value::to_raw_value(&payload) else {
            return;
        };
        seq += 1;
        let client = client.clone();
        let topic = topic.clone();
        let published = Arc::clone(&published);
        let errors = Arc::clone(&errors);
        tokio::spawn(async move {
            match client.publish([topic], &payload).await {
                Ok(()) => published.fetch_add(1, Ordering::Relaxed),
                Err(_) => errors.fetch_add(1, Ordering::Relaxed),
            };
            drop(permit);
        });
    }
    // Wait for the last acknowledgements.
    let _ = in_flight.acquire_many(1024).await;
}

async fn read_events(
    mut events: tidings::ClientSubscription,
    start: Instant,
    tally: Arc<Tally>,
    publishers: usize,
) {
    let mut seen: Vec<HashSet<u64>> = vec![HashSet::new(); publishers];
    let mut local =
        Histogram::<u64>::new(3).unwrap_or_else(|_| unreachable!("3 significant digits are valid"));
    let mut pending = 0u64;
    loop {
        // Results go to the shared histogram in batches, and whenever the stream is idle.
        let event = match events.try_recv() {
            Some(event) => event,
            None => {
                flush(&tally, &mut local, &mut pending);
                match events.next().await {
                    Some(event) => event,
                    None => return,
                }
            }
        };
        let now = start.elapsed().as_micros() as u64;
        let Ok(received) = event.decode::<Received>() else {
            tally.invalid.fetch_add(1, Ordering::Relaxed);
            continue;
        };
        let fresh = seen
            .get_mut(received.publisher as usize)
            .is_some_and(|seen| seen.insert(received.seq));
        if !fresh {
            tally.duplicates.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let _ = local.record(now.saturating_sub(received.sent_us).max(1));
        pending += 1;
        if pending >= 256 {
            flush(&tally, &mut local, &mut pending);
        }
    }
}

fn flush(tally: &Tally, local: &mut Histogram<u64>, pending: &mut u64) {
    if *pending == 0 {
        return;
    }
    if let Ok(mut shared) = tally.latency.lock() {
        let _ = shared.add(&*local);
    }
    tally.delivered.fetch_add(*pending, Ordering::Relaxed);
    local.reset();
    *pending = 0;
}
