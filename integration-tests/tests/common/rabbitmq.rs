//! RabbitMQ for the tests: the broker on 127.0.0.1:5672, unique exchanges per test, and
//! stopping and starting the broker's application for the restart test.

use std::process::Command;
use std::time::Duration;

use lapin::{Connection, ConnectionProperties};

/// URL of the RabbitMQ broker that `scripts/test.sh` starts (or finds running) on 127.0.0.1.
/// Override with `TIDINGS_TEST_AMQP_URL`.
pub fn shared_url() -> String {
    std::env::var("TIDINGS_TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// Returns an exchange name no other test uses.
pub fn unique_exchange() -> String {
    format!("tidings-test-{}-{}", std::process::id(), super::unique())
}

/// Deletes the exchanges a test declared (`name` and `name.all`).
pub async fn delete_exchanges(url: &str, name: &str) {
    let Ok(connection) = Connection::connect(url, ConnectionProperties::default()).await else {
        return;
    };
    if let Ok(channel) = connection.create_channel().await {
        for exchange in [format!("{name}.all"), name.to_owned()] {
            let _ = channel
                .exchange_delete(
                    exchange.as_str().into(),
                    lapin::options::ExchangeDeleteOptions::default(),
                )
                .await;
        }
    }
    let _ = connection.close(200, "test done".into()).await;
}

fn rabbitmqctl(action: &str) {
    let output = Command::new("rabbitmqctl")
        .arg(action)
        .output()
        .unwrap_or_else(|error| panic!("run rabbitmqctl {action}: {error}"));
    assert!(
        output.status.success(),
        "rabbitmqctl {action} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Stops the broker application; connections are closed, the node stays up.
pub fn stop_app() {
    rabbitmqctl("stop_app");
}

/// Starts the broker application again and waits until it accepts AMQP connections.
pub async fn start_app() {
    rabbitmqctl("start_app");
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while Connection::connect(&shared_url(), ConnectionProperties::default())
        .await
        .is_err()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "RabbitMQ did not come back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
