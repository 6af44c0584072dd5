//! `tidings bench idle`: hold many idle connections and report the server's memory per
//! connection.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::Serialize;
use tokio::net::TcpSocket;

use super::print_report;

/// Connections opened from one source address before the next one is used, below the
/// 28,232 ephemeral ports of Linux's default range (32768-60999).
const CONNECTIONS_PER_SOURCE: usize = 20_000;

/// Arguments of `tidings bench idle`.
#[derive(clap::Args, Debug)]
pub(crate) struct IdleArgs {
    /// Endpoint URL on 127.0.0.1, such as ws://127.0.0.1:8000/pubsub.
    url: String,
    /// Number of connections to hold.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// Process id of the server, to read its resident memory (RSS) from /proc.
    #[arg(long)]
    pid: Option<u32>,
    /// Seconds to hold the connections once all are open.
    #[arg(long, default_value_t = 5)]
    hold: u64,
    /// Print the result as one JSON object.
    #[arg(long)]
    json: bool,
}

#[derive(Serialize)]
struct IdleReport {
    connections: usize,
    open_s: f64,
    server_rss_before_kib: Option<u64>,
    server_rss_after_kib: Option<u64>,
    rss_per_connection_bytes: Option<f64>,
}

/// Reads the resident set size of `pid` in KiB.
fn rss_kib(pid: u32) -> Result<u64, String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .map_err(|error| format!("could not read /proc/{pid}/status: {error}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| format!("no VmRSS in /proc/{pid}/status"))
}

fn target(url: &str) -> Result<SocketAddr, String> {
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("URL {url:?} must start with ws://"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    authority.parse().map_err(|_| {
        format!("URL {url:?} must name an IP address and port, such as ws://127.0.0.1:8000/pubsub")
    })
}

pub(crate) async fn run(args: IdleArgs) -> Result<(), String> {
    let server = target(&args.url)?;
    if !server.ip().is_loopback() {
        return Err(format!(
            "bench idle only targets loopback addresses, not {}",
            server.ip()
        ));
    }
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(limit) if (limit as usize) < args.connections + 64 => eprintln!(
            "warning: this process may open only {limit} files; raise the hard limit (ulimit -Hn) for {} connections",
            args.connections
        ),
        Ok(_) => {}
        Err(error) => eprintln!("warning: could not raise the open file limit: {error}"),
    }
    let before = args.pid.map(rss_kib).transpose()?;

    let start = Instant::now();
    let mut holders = Vec::with_capacity(args.connections);
    for index in 0..args.connections {
        let source = IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            0,
            1 + (index / CONNECTIONS_PER_SOURCE) as u8,
        ));
        let socket = TcpSocket::new_v4().map_err(|error| format!("socket failed: {error}"))?;
        socket
            .bind(SocketAddr::new(source, 0))
            .map_err(|error| format!("binding {source} failed: {error}"))?;
        let stream = socket
            .connect(server)
            .await
            .map_err(|error| format!("connection {index} to {server} failed: {error}"))?;
        let (ws, _) = tokio_tungstenite::client_async(args.url.as_str(), stream)
            .await
            .map_err(|error| format!("upgrade of connection {index} failed: {error}"))?;
        // Reading keeps responding to the server's keep-alive pings; nothing else arrives.
        holders.push(tokio::spawn(async move {
            let (_sink, mut stream) = ws.split();
            while stream.next().await.is_some() {}
        }));
        if (index + 1) % 1000 == 0 {
            eprint!("\r{} connections open", index + 1);
        }
    }
    let open_s = start.elapsed().as_secs_f64();
    eprintln!(
        "\r{} connections open in {open_s:.1}s; holding {} s",
        args.connections, args.hold
    );
    tokio::time::sleep(Duration::from_secs(args.hold)).await;
    let after = args.pid.map(rss_kib).transpose()?;
    for holder in holders {
        holder.abort();
    }

    let per_connection = match (before, after) {
        (Some(before), Some(after)) => {
            Some((after.saturating_sub(before) * 1024) as f64 / args.connections.max(1) as f64)
        }
        _ => None,
    };
    let report = IdleReport {
        connections: args.connections,
        open_s,
        server_rss_before_kib: before,
        server_rss_after_kib: after,
        rss_per_connection_bytes: per_connection,
    };
    print_report(&report, args.json, |report| {
        match report.rss_per_connection_bytes {
            Some(per_connection) => format!(
                "idle: {} connections; server RSS {} KiB -> {} KiB: {:.0} bytes per connection",
                report.connections,
                report.server_rss_before_kib.unwrap_or_default(),
                report.server_rss_after_kib.unwrap_or_default(),
                per_connection
            ),
            None => format!(
                "idle: {} connections held (pass --pid to measure the server's memory)",
                report.connections
            ),
        }
    })
}
