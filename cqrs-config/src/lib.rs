#![doc = include_str!("../README.md")]

mod backends;
mod bus;

use clap::{Args, FromArgMatches as _};
use cqrs_core::{Error, Result};

pub use self::backends::{Backends, Store, Views};
pub use self::bus::Bus;

/// The PostgreSQL schema of the event store unless one is given or the system is named.
pub const DEFAULT_SCHEMA: &str = "cqrs";
/// The prefix of topics, queues, streams and consumer groups unless one is given or the
/// system is named.
pub const DEFAULT_PREFIX: &str = "cqrs.";
/// The MongoDB database of the views unless one is given or the system is named.
pub const DEFAULT_MONGO_DATABASE: &str = "cqrs";
/// Partitions of each aggregate type on the bus unless a number is given.
pub const DEFAULT_PARTITIONS: u32 = 3;
/// How long a dead consumer keeps its work, in ms, unless a time is given.
pub const DEFAULT_BUS_LEASE_MS: u64 = 6_000;
/// How long a publish waits for a bus that does not answer, in ms, unless a time is given.
pub const DEFAULT_PUBLISH_TIMEOUT_MS: u64 = 3_000;

/// Where a service finds its servers. Every address comes from a flag or the environment;
/// without one, that part runs on the embedded in-memory backend.
///
/// No `Debug`: connection strings may carry passwords.
#[derive(Clone, Args)]
pub struct Connections {
    /// PostgreSQL for the event store, its snapshots, the relays' checkpoints and views.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// Which bus runs between the services. Without it: Kafka when brokers are given, else
    /// RabbitMQ when an AMQP URL is, else Redis when a Redis URL is, else the embedded one.
    /// SQS is chosen by name only (`--bus sqs`): its endpoint, region and credentials come
    /// from the standard AWS configuration (`AWS_ENDPOINT_URL`, `AWS_REGION`, `AWS_PROFILE`,
    /// ...).
    #[arg(long, env = "CQRS_BUS", value_enum)]
    pub bus: Option<BusKind>,
    /// Kafka brokers (`host:port,...`).
    #[arg(long, env = "KAFKA_BROKERS")]
    pub kafka_brokers: Option<String>,
    /// RabbitMQ (`amqp://user:password@host:port/vhost`).
    #[arg(long, env = "AMQP_URL", hide_env_values = true)]
    pub amqp_url: Option<String>,
    /// Redis Streams (`redis://[user:password@]host:port`).
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// MongoDB for the views.
    #[arg(long, env = "MONGODB_URI", hide_env_values = true)]
    pub mongodb_uri: Option<String>,
    /// The PostgreSQL schema of the event store (default: the system's name, else `cqrs`).
    #[arg(long, env = "CQRS_SCHEMA")]
    pub schema: Option<String>,
    /// The prefix of the bus's topics, queues or streams (`<prefix><aggregate type>`) and of
    /// consumer groups ([`Backends::group`]) (default: the system's name and a dot, else
    /// `cqrs.`).
    #[arg(long, env = "CQRS_TOPIC_PREFIX")]
    pub topic_prefix: Option<String>,
    /// The MongoDB database of the views (default: the system's name, else `cqrs`).
    #[arg(long, env = "CQRS_MONGO_DATABASE")]
    pub mongo_database: Option<String>,
    /// Partitions of each aggregate type on the bus (Kafka topics the bus creates, RabbitMQ
    /// and Redis partitions, the embedded bus); SQS FIFO queues keep order per key and have
    /// none.
    #[arg(long, env = "CQRS_PARTITIONS", default_value_t = DEFAULT_PARTITIONS,
          value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub partitions: u32,
    /// How long a consumer that died keeps its partitions or messages before another member
    /// of its group gets them, in ms: Kafka's session timeout (the broker allows 6 s to 30 min
    /// by default), Redis Streams' lease, SQS's visibility timeout. RabbitMQ moves them when
    /// the connection drops.
    #[arg(long, env = "CQRS_BUS_LEASE_MS", default_value_t = DEFAULT_BUS_LEASE_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub bus_lease_ms: u64,
    /// How long a publish to a bus that does not answer waits before it fails (and the relay
    /// retries), in ms: Kafka's message timeout, RabbitMQ's publisher confirm, a Redis
    /// command.
    #[arg(long, env = "CQRS_PUBLISH_TIMEOUT_MS", default_value_t = DEFAULT_PUBLISH_TIMEOUT_MS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub publish_timeout_ms: u64,
}

/// A bus between services.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BusKind {
    /// Kafka, at `--kafka-brokers`.
    Kafka,
    /// RabbitMQ, at `--amqp-url`.
    Rabbitmq,
    /// Redis Streams, at `--redis-url`.
    Redis,
    /// Amazon SQS FIFO queues, where the AWS configuration says.
    Sqs,
    /// The in-memory bus (the services of one process only).
    Embedded,
}

impl Connections {
    /// The configuration the environment gives (every flag's variable, or its default).
    ///
    /// # Errors
    /// [`Error::Config`] when a variable holds a value its setting does not take (an unknown
    /// `CQRS_BUS`, a `CQRS_PARTITIONS` of 0, ...).
    pub fn from_env() -> Result<Self> {
        Self::from_args(std::iter::empty::<String>())
    }

    /// The configuration these flags give (`["--bus", "redis", ...]`, no program name), the
    /// environment and the defaults filling in the rest.
    ///
    /// # Errors
    /// [`Error::Config`] when a flag is unknown or holds a value its setting does not take.
    pub fn from_args<I, T>(args: I) -> Result<Self>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command =
            Connections::augment_args(clap::Command::new("cqrs-config").no_binary_name(true));
        // clap's first line names the flag and the value; its usage block is not for a log.
        let bad = |e: clap::Error| {
            let text = e.render().to_string();
            let first = text.lines().next().unwrap_or_default();
            Error::Config(first.trim_start_matches("error: ").to_owned())
        };
        let matches = command.try_get_matches_from(args).map_err(bad)?;
        Connections::from_arg_matches(&matches).map_err(bad)
    }

    /// Names the system these connections serve: the schema, the prefix and the MongoDB
    /// database not given default to `name`, `name.` and `name` instead of the framework's
    /// `cqrs`. A service names its system so that its own data keeps its own names whether
    /// or not the deployment sets them.
    #[must_use]
    pub fn named(mut self, name: &str) -> Self {
        self.schema.get_or_insert_with(|| name.to_owned());
        self.topic_prefix.get_or_insert_with(|| format!("{name}."));
        self.mongo_database.get_or_insert_with(|| name.to_owned());
        self
    }

    /// The PostgreSQL schema: the one given, else [`DEFAULT_SCHEMA`].
    pub fn schema(&self) -> &str {
        self.schema.as_deref().unwrap_or(DEFAULT_SCHEMA)
    }

    /// The prefix of topics, queues, streams and groups: the one given, else
    /// [`DEFAULT_PREFIX`].
    pub fn topic_prefix(&self) -> &str {
        self.topic_prefix.as_deref().unwrap_or(DEFAULT_PREFIX)
    }

    /// The MongoDB database: the one given, else [`DEFAULT_MONGO_DATABASE`].
    pub fn mongo_database(&self) -> &str {
        self.mongo_database
            .as_deref()
            .unwrap_or(DEFAULT_MONGO_DATABASE)
    }

    /// The bus these connections choose.
    pub fn bus_kind(&self) -> BusKind {
        self.bus.unwrap_or(if self.kafka_brokers.is_some() {
            BusKind::Kafka
        } else if self.amqp_url.is_some() {
            BusKind::Rabbitmq
        } else if self.redis_url.is_some() {
            BusKind::Redis
        } else {
            BusKind::Embedded
        })
    }
}

impl Default for Connections {
    /// No server: every part embedded, every other setting at its default.
    fn default() -> Self {
        Connections {
            database_url: None,
            bus: None,
            kafka_brokers: None,
            amqp_url: None,
            redis_url: None,
            mongodb_uri: None,
            schema: None,
            topic_prefix: None,
            mongo_database: None,
            partitions: DEFAULT_PARTITIONS,
            bus_lease_ms: DEFAULT_BUS_LEASE_MS,
            publish_timeout_ms: DEFAULT_PUBLISH_TIMEOUT_MS,
        }
    }
}

/// A configuration naming a backend this build has no feature for.
#[cfg(not(all(
    feature = "postgres",
    feature = "mongo",
    feature = "kafka",
    feature = "rabbitmq",
    feature = "redis",
    feature = "sqs"
)))]
fn not_built(what: &str, feature: &str) -> Error {
    Error::Config(format!(
        "{what} is configured, but this build has none: enable the `{feature}` feature of \
         cqrs-config"
    ))
}
