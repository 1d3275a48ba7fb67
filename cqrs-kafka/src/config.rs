//! Configuration, validated before it reaches the broker.

use std::time::Duration;

use cqrs_core::{Error, Result};
use rdkafka::ClientConfig;

/// Checks a topic name: 1 to 249 characters of ASCII letters, digits, `.`, `_` and `-`, and
/// not `.` or `..`.
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_topic_name(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 249
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid topic name {name:?}: use 1 to 249 characters of A-Z, a-z, 0-9, ., _ and -"
        )))
    }
}

/// Where the brokers are and how topics and groups behave.
///
/// Its `Debug` output shows no client properties (they may hold credentials).
#[derive(Clone)]
pub struct KafkaConfig {
    pub(crate) brokers: String,
    pub(crate) topic_prefix: String,
    pub(crate) group_prefix: String,
    pub(crate) partitions: i32,
    pub(crate) replication: i32,
    pub(crate) session_timeout: Duration,
    pub(crate) message_timeout: Duration,
    pub(crate) named_headers: bool,
    pub(crate) properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConfig")
            .field("topic_prefix", &self.topic_prefix)
            .field("partitions", &self.partitions)
            .field("properties", &self.properties.len())
            .finish_non_exhaustive()
    }
}

impl KafkaConfig {
    /// Brokers as `host:port[,host:port]`, topics named `<prefix><aggregate type>`.
    ///
    /// # Errors
    /// [`Error::Config`] for an empty broker list or a prefix that cannot start a topic name.
    pub fn new(brokers: impl Into<String>, topic_prefix: impl Into<String>) -> Result<Self> {
        let brokers = brokers.into();
        let topic_prefix = topic_prefix.into();
        if brokers.trim().is_empty() {
            return Err(Error::Config("no Kafka brokers given".into()));
        }
        if !topic_prefix.is_empty() {
            validate_topic_name(&topic_prefix)?;
        }
        Ok(KafkaConfig {
            brokers,
            topic_prefix,
            group_prefix: String::new(),
            partitions: 3,
            replication: 1,
            session_timeout: Duration::from_secs(10),
            message_timeout: Duration::from_secs(10),
            named_headers: false,
            properties: Vec::new(),
        })
    }

    /// A prefix for the consumer groups this bus joins (default none): group ids are
    /// broker-wide, so buses that share a broker but not their groups name them apart.
    #[must_use]
    pub fn group_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.group_prefix = prefix.into();
        self
    }

    /// Partitions of the topics this bus creates (default 3).
    #[must_use]
    pub fn partitions(mut self, partitions: i32) -> Self {
        self.partitions = partitions.max(1);
        self
    }

    /// Replication factor of the topics this bus creates (default 1).
    #[must_use]
    pub fn replication(mut self, replication: i32) -> Self {
        self.replication = replication.max(1);
        self
    }

    /// How long a silent group member keeps its partitions (default 10 s); joining a group
    /// takes about half of it.
    #[must_use]
    pub fn session_timeout(mut self, timeout: Duration) -> Self {
        self.session_timeout = timeout;
        self
    }

    /// How long a publish may wait for the broker before it fails (default 10 s).
    #[must_use]
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// Publish the envelope's metadata as the eleven named headers of the wire contract
    /// (`cqrs.event`, `cqrs.version`, ...) instead of one binary `cqrs.envelope` header
    /// (default: one). Consumers read both; the named ones are for tools that read the
    /// headers themselves, and for consumers of a release before the one header. They cost:
    /// each is parsed by librdkafka and travels with its name.
    #[must_use]
    pub fn named_headers(mut self, named: bool) -> Self {
        self.named_headers = named;
        self
    }

    /// Any other librdkafka property (security, tuning), for producer and consumers alike.
    #[must_use]
    pub fn property(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((key.into(), value.into()));
        self
    }

    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut config = ClientConfig::new();
        config.set("bootstrap.servers", &self.brokers);
        for (k, v) in &self.properties {
            config.set(k, v);
        }
        config
    }
}
