//! The `tidings` binary end to end: serve, sub, pub and call as separate processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tidings");

/// A `tidings serve` process on a free port, killed on drop.
struct Server {
    child: Child,
    url: String,
}

impl Server {
    fn start() -> Self {
        serve_with(&[])
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().expect("run tidings")
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).trim().to_owned()
}

#[test]
fn call_ping_prints_pong() {
    let server = Server::start();
    let output = run(&["call", &server.url, "_ping_"]);
    assert!(output.status.success(), "{}", stderr(&output));
    assert_eq!(stdout(&output), "\"pong\"");
}

/// Starts `tidings sub URL news --count N` and returns once it logged its subscription.
fn start_sub(url: &str, count: u32) -> Child {
    let mut subscriber = Command::new(BIN)
        .args(["sub", url, "news", "--count", &count.to_string()])
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidings sub");
    let stderr_pipe = subscriber.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr_pipe).lines();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert!(Instant::now() < deadline, "tidings sub never subscribed");
        let line = lines.next().expect("sub log line").expect("readable log");
        if line.contains("subscribed") {
            break;
        }
    }
    // Keep draining the log so the subscriber never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    subscriber
}

#[test]
fn sub_prints_what_pub_sends() {
    let server = Server::start();
    let subscriber = start_sub(&server.url, 2);

    let first = run(&["pub", &server.url, "news", r#"{"headline":"hi"}"#]);
    assert!(first.status.success(), "{}", stderr(&first));
    let second = run(&["pub", &server.url, "news", "2"]);
    assert!(second.status.success(), "{}", stderr(&second));

    let output = subscriber
        .wait_with_output()
        .expect("sub exits after --count events");
    assert!(output.status.success());
    let printed = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = printed.lines().collect();
    assert_eq!(
        lines,
        [
            r#"{"topic":"news","data":{"headline":"hi"}}"#,
            r#"{"topic":"news","data":2}"#
        ]
    );
}

#[test]
fn call_unknown_method_fails() {
    let server = Server::start();
    let output = run(&["call", &server.url, "nope"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("method_not_found"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unreachable_server_is_one_clear_line() {
    let output = run(&["call", "ws://127.0.0.1:9/pubsub", "_ping_"]);
    assert!(!output.status.success());
    let message = stderr(&output);
    assert_eq!(message.lines().count(), 1, "{message}");
    assert!(
        message.starts_with("error: could not connect to ws://127.0.0.1:9/pubsub"),
        "{message}"
    );
}

#[test]
fn invalid_json_is_rejected_before_connecting() {
    let output = run(&["pub", "ws://127.0.0.1:9/pubsub", "news", "{bad"]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).starts_with("error: invalid JSON in event data"),
        "{}",
        stderr(&output)
    );
    let output = run(&["call", "ws://127.0.0.1:9/pubsub", "m", "[1]"]);
    assert!(
        stderr(&output).contains("must be a JSON object"),
        "{}",
        stderr(&output)
    );
}

#[test]
fn unknown_backbone_fails_serve() {
    let output = run(&[
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--backbone",
        "nats://127.0.0.1:4222",
    ]);
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("unknown backbone scheme"),
        "{}",
        stderr(&output)
    );
}

/// A `tidings serve` process with extra arguments, for the backbone tests.
fn serve_with(args: &[&str]) -> Server {
    let mut child = Command::new(BIN)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tidings serve");
    let stderr = child.stderr.take().expect("stderr piped");
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines
            .next()
            .expect("serve printed its address")
            .expect("readable log");
        if let Some(start) = line.find("ws://") {
            let rest = &line[start..];
            let end = rest.find('"').unwrap_or(rest.len());
            break rest[..end].to_owned();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    Server { child, url }
}

#[test]
fn two_servers_share_redis() {
    let redis = std::env::var("TIDINGS_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned());
    assert_servers_share(&format!(
        "{redis}/?prefix=tidings-cli-test-{}:",
        std::process::id()
    ));
}

#[test]
fn two_servers_share_rabbitmq() {
    let amqp = std::env::var("TIDINGS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned());
    // A fixed name, so repeated runs reuse one pair of durable exchanges on the broker.
    assert_servers_share(&format!("{amqp}?exchange=tidings-cli-test"));
}

#[test]
fn two_servers_share_kafka() {
    let brokers =
        std::env::var("TIDINGS_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".to_owned());
    assert_servers_share(&format!("kafka://{brokers}/?topic=tidings-cli-test"));
}

/// Starts two servers on `backbone` and checks that a subscriber on one prints what is
/// published on the other.
fn assert_servers_share(backbone: &str) {
    let first = serve_with(&["--backbone", backbone]);
    let second = serve_with(&["--backbone", backbone]);

    let subscriber = start_sub(&second.url, 1);

    let published = run(&["pub", &first.url, "news", r#"{"via":"redis"}"#]);
    assert!(published.status.success(), "{}", stderr(&published));
    let output = subscriber
        .wait_with_output()
        .expect("sub exits after one event");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        r#"{"topic":"news","data":{"via":"redis"}}"#
    );
}
