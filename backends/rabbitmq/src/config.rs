//! Settings of the RabbitMQ backbone, and their parsing from a URL.

use std::time::Duration;

use tidings_core::BackboneError;

/// Maximum length of an exchange name that leaves room for the `.all` suffix in AMQP's 255-byte names.
const MAX_EXCHANGE_LEN: usize = 255 - 4;

/// Settings of a [`crate::RabbitMqBackbone`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RabbitMqConfig {
    /// The AMQP URL without tidings' own query parameters, such as
    /// `amqp://guest:guest@127.0.0.1:5672/%2f`.
    pub url: String,
    /// The direct exchange that routes by topic (default `tidings`). The fanout exchange where
    /// publications enter is named after it with an `.all` suffix.
    pub exchange: String,
    /// Timeout of connecting, declaring, binding and of each publisher confirm (default 5 s).
    pub operation_timeout: Duration,
    /// Shortest delay between reconnect attempts (default 100 ms).
    pub reconnect_min_delay: Duration,
    /// Maximum delay between reconnect attempts (default 5 s).
    pub reconnect_max_delay: Duration,
}

impl RabbitMqConfig {
    /// Creates settings for `url` with default names and timings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            exchange: "tidings".to_owned(),
            operation_timeout: Duration::from_secs(5),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
        }
    }

    /// Sets the exchange name.
    pub fn exchange(mut self, name: impl Into<String>) -> Self {
        self.exchange = name.into();
        self
    }

    /// Sets the reconnect delays.
    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self
    }

    /// Returns the name of the fanout exchange where publications enter.
    pub fn fanout_exchange(&self) -> String {
        format!("{}.all", self.exchange)
    }

    /// Parses a URL such as `amqp://guest:guest@127.0.0.1:5672/%2f?exchange=app`.
    ///
    /// `exchange` sets the exchange name; every other part goes to the AMQP client unchanged
    /// (for example `heartbeat=10`).
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        if base.starts_with("amqps://") && !cfg!(feature = "tls") {
            return Err(BackboneError::Config(format!(
                "RabbitMQ URL {url:?} asks for TLS (amqps://); build tidings-rabbitmq with its \"tls\" feature"
            )));
        }
        if !(base.starts_with("amqp://") || base.starts_with("amqps://")) {
            return Err(BackboneError::Config(format!(
                "RabbitMQ URL {url:?} must start with amqp:// or amqps://"
            )));
        }
        let mut config = Self::new(base);
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            match pair.split_once('=') {
                Some(("exchange", "")) => {
                    return Err(BackboneError::Config(format!(
                        "empty exchange in RabbitMQ URL {url:?}; use for example ?exchange=tidings"
                    )))
                }
                Some(("exchange", name)) if name.len() > MAX_EXCHANGE_LEN => {
                    return Err(BackboneError::Config(format!(
                        "exchange name in RabbitMQ URL {url:?} is {} bytes; AMQP allows at most {MAX_EXCHANGE_LEN} (the \".all\" suffix included)",
                        name.len() + 4
                    )))
                }
                Some(("exchange", name)) => config.exchange = name.to_owned(),
                _ => passed_on.push(pair),
            }
        }
        if !passed_on.is_empty() {
            config.url = format!("{base}?{}", passed_on.join("&"));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_url_uses_default_exchange() {
        let config = RabbitMqConfig::from_url("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(config.url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        assert_eq!(config.exchange, "tidings");
        assert_eq!(config.fanout_exchange(), "tidings.all");
    }

    #[test]
    fn exchange_parameter_is_taken_out() {
        let config =
            RabbitMqConfig::from_url("amqp://127.0.0.1/%2f?heartbeat=10&exchange=app").unwrap();
        assert_eq!(config.url, "amqp://127.0.0.1/%2f?heartbeat=10");
        assert_eq!(config.exchange, "app");
    }

    #[test]
    fn long_exchange_and_tls_without_feature_are_rejected() {
        let long = "x".repeat(252);
        assert!(
            RabbitMqConfig::from_url(&format!("amqp://127.0.0.1/%2f?exchange={long}")).is_err()
        );
        assert_eq!(
            RabbitMqConfig::from_url("amqps://127.0.0.1/%2f").is_err(),
            !cfg!(feature = "tls")
        );
    }

    #[test]
    fn wrong_scheme_is_rejected() {
        assert!(RabbitMqConfig::from_url("redis://127.0.0.1").is_err());
        assert!(RabbitMqConfig::from_url("amqp://127.0.0.1/?exchange=").is_err());
    }
}
