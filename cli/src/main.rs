//! The `tidings` command: run a server, subscribe, publish and call methods.

mod bench;
mod serve;

use std::io::Write;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use futures_util::StreamExt;
use serde_json::value::RawValue;
use tidings::{Client, ConnectionConfig};

#[derive(Parser)]
#[command(
    name = "tidings",
    version,
    about = "Realtime RPC and pub/sub over WebSockets"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a standalone tidings server.
    Serve(serve::ServeArgs),
    /// Subscribe to topics and print one JSON line per event: {"topic": ..., "data": ...}.
    Sub {
        /// Endpoint URL, such as ws://127.0.0.1:8000/pubsub.
        url: String,
        /// Topics to subscribe to (`__EventNotifier_ALL_TOPICS__` for every topic).
        #[arg(required = true)]
        topics: Vec<String>,
        /// Exit after this many events.
        #[arg(long)]
        count: Option<u64>,
    },
    /// Publish one event and exit once the server acknowledged it.
    Pub {
        /// Endpoint URL, such as ws://127.0.0.1:8000/pubsub.
        url: String,
        /// Topic to publish on.
        topic: String,
        /// Event data as JSON, such as '{"n": 1}' or '"text"'.
        json: String,
        /// Seconds to wait for the acknowledgement.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
    /// Measure a running server: throughput, latency and losses.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Call a method on the server and print its JSON result.
    Call {
        /// Endpoint URL, such as ws://127.0.0.1:8000/pubsub.
        url: String,
        /// Method name, such as _ping_.
        method: String,
        /// Keyword arguments as a JSON object.
        #[arg(default_value = "{}")]
        json_args: String,
        /// Seconds to wait for the result.
        #[arg(long, default_value_t = 10)]
        timeout: u64,
    },
}

/// Formats an error and its chain of causes on one line.
pub(crate) fn describe(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some errors repeat their cause in their own message.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

fn init_logging(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let default_log = match cli.command {
        Command::Serve(_) => "info",
        _ => "warn",
    };
    init_logging(default_log);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: failed to start the tokio runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> Result<(), String> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Bench(command) => bench::run(command).await,
        Command::Sub { url, topics, count } => subscribe(&url, topics, count).await,
        Command::Pub {
            url,
            topic,
            json,
            timeout,
        } => publish(&url, &topic, &json, timeout).await,
        Command::Call {
            url,
            method,
            json_args,
            timeout,
        } => call(&url, &method, &json_args, timeout).await,
    }
}

async fn connect(url: &str, timeout: Duration) -> Result<Client, String> {
    let config = ConnectionConfig::default().call_timeout(timeout);
    Client::builder(url)
        .config(config)
        .connect_timeout(timeout)
        .connect()
        .await
        .map_err(|error| format!("could not connect to {url}: {}", describe(&error)))
}

fn parse_json(text: &str, what: &str) -> Result<Box<RawValue>, String> {
    serde_json::from_str(text).map_err(|error| format!("invalid JSON in {what}: {error}"))
}

#[derive(serde::Serialize)]
struct EventLine<'a> {
    topic: &'a str,
    data: &'a RawValue,
}

async fn subscribe(url: &str, topics: Vec<String>, count: Option<u64>) -> Result<(), String> {
    let client = connect(url, Duration::from_secs(10)).await?;
    let mut events = client
        .subscribe(topics.clone())
        .await
        .map_err(|error| format!("subscribe to {topics:?} failed: {}", describe(&error)))?;
    tracing::info!(topics = ?topics, "subscribed");
    let mut stdout = std::io::stdout().lock();
    let mut received = 0u64;
    if count == Some(0) {
        return Ok(());
    }
    while let Some(event) = events.next().await {
        let data: &RawValue = serde_json::from_slice(event.data_json())
            .map_err(|error| format!("server sent invalid JSON data: {error}"))?;
        let line = serde_json::to_string(&EventLine {
            topic: event.topic(),
            data,
        })
        .map_err(|error| format!("could not format event: {error}"))?;
        if writeln!(stdout, "{line}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            // The reader went away, as in `tidings sub ... | head -1`.
            return Ok(());
        }
        received += 1;
        if count.is_some_and(|count| received >= count) {
            return Ok(());
        }
    }
    Err("subscription ended: the client stopped reconnecting".into())
}

async fn publish(url: &str, topic: &str, json: &str, timeout: u64) -> Result<(), String> {
    let data = parse_json(json, "event data")?;
    let client = connect(url, Duration::from_secs(timeout)).await?;
    client
        .publish([topic], &data)
        .await
        .map_err(|error| format!("publish to {topic:?} failed: {}", describe(&error)))?;
    client.close();
    Ok(())
}

async fn call(url: &str, method: &str, json_args: &str, timeout: u64) -> Result<(), String> {
    let args = parse_json(json_args, "arguments")?;
    if !args.get().trim_start().starts_with('{') {
        return Err(format!(
            "arguments must be a JSON object of keyword arguments, got {}",
            args.get()
        ));
    }
    let client = connect(url, Duration::from_secs(timeout)).await?;
    let result: Box<RawValue> = client
        .call(method, &args)
        .await
        .map_err(|error| format!("call to {method:?} failed: {}", describe(&error)))?;
    println!("{}", result.get());
    client.close();
    Ok(())
}
