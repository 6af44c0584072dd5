//! `tidings bench`: load generators that drive a running server over loopback WebSockets.

mod fanout;
mod idle;
mod rpc;

use std::fmt;

use hdrhistogram::Histogram;
use serde::Serialize;
use tidings::{Client, ConnectionConfig};

/// The `tidings bench` subcommands.
#[derive(clap::Subcommand, Debug)]
pub(crate) enum BenchCommand {
    /// Publish at a steady rate to many subscribers; report deliveries per second,
    /// publish-to-deliver latency, and lost or duplicated events.
    Fanout(fanout::FanoutArgs),
    /// Keep many calls in flight and report calls per second and round-trip latency.
    Rpc(rpc::RpcArgs),
    /// Hold many idle connections and report the server's memory per connection.
    Idle(idle::IdleArgs),
}

pub(crate) async fn run(command: BenchCommand) -> Result<(), String> {
    match command {
        BenchCommand::Fanout(args) => fanout::run(args).await,
        BenchCommand::Rpc(args) => rpc::run(args).await,
        BenchCommand::Idle(args) => idle::run(args).await,
    }
}

/// Percentiles of a latency histogram, in microseconds.
#[derive(Debug, Serialize)]
pub(crate) struct LatencySummary {
    count: u64,
    p50: u64,
    p90: u64,
    p99: u64,
    p999: u64,
    max: u64,
}

impl From<&Histogram<u64>> for LatencySummary {
    fn from(histogram: &Histogram<u64>) -> Self {
        Self {
            count: histogram.len(),
            p50: histogram.value_at_quantile(0.50),
            p90: histogram.value_at_quantile(0.90),
            p99: histogram.value_at_quantile(0.99),
            p999: histogram.value_at_quantile(0.999),
            max: histogram.max(),
        }
    }
}

impl fmt::Display for LatencySummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "p50 {} p90 {} p99 {} p99.9 {} max {} (n={})",
            self.p50, self.p90, self.p99, self.p999, self.max, self.count
        )
    }
}

/// Opens `count` client connections to `url`, a few at a time.
async fn connect_all(
    url: &str,
    count: usize,
    config: &ConnectionConfig,
) -> Result<Vec<Client>, String> {
    let mut clients = Vec::with_capacity(count);
    for _ in 0..count {
        let client = Client::builder(url)
            .config(config.clone())
            .event_capacity(65_536)
            .connect()
            .await
            .map_err(|error| format!("could not connect to {url}: {}", crate::describe(&error)))?;
        clients.push(client);
    }
    Ok(clients)
}

/// Prints a report as JSON or as text.
fn print_report<R: Serialize>(
    report: &R,
    json: bool,
    text: impl FnOnce(&R) -> String,
) -> Result<(), String> {
    if json {
        let line = serde_json::to_string(report).map_err(|error| error.to_string())?;
        println!("{line}");
    } else {
        println!("{}", text(report));
    }
    Ok(())
}
