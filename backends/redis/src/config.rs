//! Settings of the Redis backbone, and their parsing from a URL.

use std::time::Duration;

use tidings_core::BackboneError;

/// Layout of publications on Redis channels.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ChannelLayout {
    /// One channel per topic, `<prefix><topic>`. Instances subscribe only to the topics they
    /// have local subscribers for; ALL_TOPICS subscribers use a pattern subscription on the
    /// prefix.
    PerTopic {
        /// The channel name prefix (default `tidings:`).
        prefix: String,
    },
    /// Every publication on one channel, as the Python `EventBroadcaster` of
    /// fastapi-websocket-pubsub does (its default channel is `EventNotifier`). Each instance
    /// receives everything and filters by its interest, so Python and tidings instances can
    /// share one Redis.
    Single {
        /// The channel name.
        channel: String,
    },
}

/// Settings of a [`crate::RedisBackbone`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RedisConfig {
    /// The Redis URL without tidings' own query parameters, such as `redis://127.0.0.1:6379`.
    pub url: String,
    /// The channel layout.
    pub layout: ChannelLayout,
    /// Timeout of each PUBLISH, SUBSCRIBE and UNSUBSCRIBE (default 2 s). Commands fail at once
    /// while the connection is down instead of queuing.
    pub command_timeout: Duration,
    /// Shortest delay between reconnect attempts (default 100 ms).
    pub reconnect_min_delay: Duration,
    /// Maximum delay between reconnect attempts (default 5 s).
    pub reconnect_max_delay: Duration,
    /// Messages buffered between the Redis reader and the hub (default 8192). When the hub
    /// falls further behind, messages are dropped, counted and logged.
    pub message_buffer: usize,
}

impl RedisConfig {
    /// Creates settings for `url` with the per-topic layout and default timings.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            layout: ChannelLayout::PerTopic {
                prefix: "tidings:".to_owned(),
            },
            command_timeout: Duration::from_secs(2),
            reconnect_min_delay: Duration::from_millis(100),
            reconnect_max_delay: Duration::from_secs(5),
            message_buffer: 8_192,
        }
    }

    /// Sets the channel layout.
    pub fn layout(mut self, layout: ChannelLayout) -> Self {
        self.layout = layout;
        self
    }

    /// Sets the command timeout.
    pub fn command_timeout(mut self, timeout: Duration) -> Self {
        self.command_timeout = timeout;
        self
    }

    /// Sets the reconnect delays.
    pub fn reconnect_delays(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_min_delay = min;
        self.reconnect_max_delay = max;
        self
    }

    /// Parses a URL such as `redis://127.0.0.1:6379/?prefix=app:` or
    /// `redis://127.0.0.1:6379/?channel=EventNotifier`.
    ///
    /// `prefix` sets the per-topic prefix; `channel` selects the single-channel layout that
    /// Python instances use. Every other part of the URL goes to the Redis client unchanged.
    pub fn from_url(url: &str) -> Result<Self, BackboneError> {
        let (base, query) = match url.split_once('?') {
            Some((base, query)) => (base, query),
            None => (url, ""),
        };
        if base.starts_with("rediss://") {
            // NOTE: fred is built without its TLS features, so rediss:// would connect in
            // plain text; it is rejected until a TLS feature exists.
            return Err(BackboneError::Config(format!(
                "Redis URL {url:?} asks for TLS (rediss://), which this build does not support"
            )));
        }
        if !base.starts_with("redis://") {
            return Err(BackboneError::Config(format!(
                "Redis URL {url:?} must start with redis://"
            )));
        }
        let mut config = Self::new(base);
        let mut passed_on = Vec::new();
        for pair in query.split('&').filter(|pair| !pair.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "prefix" if value.is_empty() => {
                    return Err(BackboneError::Config(format!(
                        "empty prefix in Redis URL {url:?}: ALL_TOPICS would match every channel; use for example ?prefix=app:"
                    )))
                }
                "prefix" => {
                    config.layout = ChannelLayout::PerTopic {
                        prefix: value.to_owned(),
                    }
                }
                "channel" if value.is_empty() => {
                    return Err(BackboneError::Config(format!(
                        "empty channel in Redis URL {url:?}; use for example ?channel=EventNotifier"
                    )))
                }
                "channel" => {
                    config.layout = ChannelLayout::Single {
                        channel: value.to_owned(),
                    }
                }
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
    fn plain_url_uses_default_prefix() {
        let config = RedisConfig::from_url("redis://127.0.0.1:6379").unwrap();
        assert_eq!(config.url, "redis://127.0.0.1:6379");
        assert_eq!(
            config.layout,
            ChannelLayout::PerTopic {
                prefix: "tidings:".into()
            }
        );
    }

    #[test]
    fn channel_parameter_selects_single_layout() {
        let config =
            RedisConfig::from_url("redis://127.0.0.1:6379/?channel=EventNotifier").unwrap();
        assert_eq!(config.url, "redis://127.0.0.1:6379/");
        assert_eq!(
            config.layout,
            ChannelLayout::Single {
                channel: "EventNotifier".into()
            }
        );
    }

    #[test]
    fn prefix_parameter_and_client_parameters() {
        let config =
            RedisConfig::from_url("redis://127.0.0.1:6379/0?prefix=app:&protocol=resp3").unwrap();
        assert_eq!(config.url, "redis://127.0.0.1:6379/0?protocol=resp3");
        assert_eq!(
            config.layout,
            ChannelLayout::PerTopic {
                prefix: "app:".into()
            }
        );
    }

    #[test]
    fn wrong_scheme_is_rejected() {
        let error = RedisConfig::from_url("http://127.0.0.1:6379").unwrap_err();
        assert!(error.to_string().contains("redis://"));
    }

    #[test]
    fn tls_and_empty_prefix_are_rejected() {
        assert!(RedisConfig::from_url("rediss://127.0.0.1:6379").is_err());
        assert!(RedisConfig::from_url("redis://127.0.0.1:6379/?prefix=").is_err());
    }

    #[test]
    fn empty_channel_is_rejected() {
        assert!(RedisConfig::from_url("redis://127.0.0.1/?channel=").is_err());
    }
}
