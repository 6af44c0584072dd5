//! Settings of the Kafka backbone, and their parsing from a URL.

use std::time::Duration;

use tidings_core::BackboneError;

/// Settings of a [`crate::KafkaBackbone`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated, such as `127.0.0.1:9092,127.0.0.1:9093`.
    pub brokers: String,
    /// The Kafka topic that carries every envelope (default `tidings`).
    pub topic: String,
    /// Partitions of the Kafka topic when tidings creates it (default 3).
    pub partitions: i32,
    /// Replication factor of the Kafka topic when tidings creates it (default 1).
    pub replication: i32,
    /// Create the Kafka topic when it is missing (default true).
    pub create_topic: bool,
    /// Timeout of metadata requests, topic creation and each delivery report (default 5 s).
    pub operation_timeout: Duration,
    /// Extra librdkafka settings for the producer and the consumer, such as
    /// `("security.protocol", "ssl")`. They override the defaults tidings sets.
    pub settings: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Creates settings for `brokers` with default names and timings.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            topic: "tidings".to_owned(),
            partitions: 3,
            replication: 1,
            create_topic: true,
            operation_timeout: Duration::from_secs(5),
            settings: Vec::new(),
        }
    }

    /// Sets the Kafka topic.
    pub fn topic(mut self, topic: impl Into<String>) -> Self {
        self.topic = topic.into();
        self
    }

    /// Adds a librdkafka setting.
    pub fn setting(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Parses a URL such as `kafka://127.0.0.1:9092,127.0.0.1:9093/?topic=events&acks=all`.
    ///
    /// `topic`, `partitions`, `replication` and `create_topic` set the fields of the same
    /// name; every other query parameter is passed to librdkafka as a setting.
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        let rest = url.strip_prefix("kafka://").ok_or_else(|| {
            BackboneError::Config(format!("Kafka URL {url:?} must start with kafka://"))
        })?;
        let (brokers, query) = match rest.split_once('?') {
            Some((brokers, query)) => (brokers, query),
            None => (rest, ""),
        };
        let brokers = brokers.trim_end_matches('/');
        if brokers.is_empty() {
            return Err(BackboneError::Config(format!(
                "Kafka URL {url:?} names no broker; use for example kafka://127.0.0.1:9092"
            )));
        }
        let mut config = Self::new(brokers);
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let invalid = |what: &str| {
                BackboneError::Config(format!("invalid {key}={value:?} in Kafka URL: {what}"))
            };
            match key {
                "topic" if value.is_empty() => return Err(invalid("the topic is empty")),
                "topic" => config.topic = value.to_owned(),
                "partitions" => {
                    config.partitions = value.parse().map_err(|_| invalid("expected a number"))?
                }
                "replication" => {
                    config.replication = value.parse().map_err(|_| invalid("expected a number"))?
                }
                "create_topic" => {
                    config.create_topic = value
                        .parse()
                        .map_err(|_| invalid("expected true or false"))?
                }
                _ => config.settings.push((key.to_owned(), value.to_owned())),
            }
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_brokers_and_settings() {
        let config =
            KafkaConfig::from_url("kafka://127.0.0.1:9092,127.0.0.1:9093/?topic=events&acks=all")
                .unwrap();
        assert_eq!(config.brokers, "127.0.0.1:9092,127.0.0.1:9093");
        assert_eq!(config.topic, "events");
        assert_eq!(config.settings, vec![("acks".to_owned(), "all".to_owned())]);
    }

    #[test]
    fn plain_url_uses_defaults() {
        let config = KafkaConfig::from_url("kafka://127.0.0.1:9092").unwrap();
        assert_eq!(config.topic, "tidings");
        assert_eq!(config.partitions, 3);
        assert!(config.create_topic);
    }

    #[test]
    fn invalid_urls_are_rejected() {
        assert!(KafkaConfig::from_url("http://127.0.0.1:9092").is_err());
        assert!(KafkaConfig::from_url("kafka:///").is_err());
        assert!(KafkaConfig::from_url("kafka://h:1/?partitions=many").is_err());
        assert!(KafkaConfig::from_url("kafka://h:1/?topic=").is_err());
    }
}
