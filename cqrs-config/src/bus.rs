//! The bus a configuration chooses.

use std::sync::Arc;
use std::time::Duration;

use cqrs_core::app::{Backend, Wiring};
use cqrs_core::memory::{Embedded, MemoryEventBus};
use cqrs_core::{Error, Result};

use crate::{BusKind, Connections};

/// The bus between services the configuration chooses, as a [`Backend`].
#[derive(Clone)]
pub struct Bus(Kind);

#[derive(Clone)]
enum Kind {
    Embedded(Arc<MemoryEventBus>),
    #[cfg(feature = "kafka")]
    Kafka(cqrs_kafka::KafkaBus),
    #[cfg(feature = "rabbitmq")]
    Rabbit(cqrs_rabbitmq::RabbitBus),
    #[cfg(feature = "redis")]
    Redis(cqrs_redis::RedisBus),
    #[cfg(feature = "sqs")]
    Sqs(cqrs_sqs::SqsBus),
}

impl Bus {
    /// Which bus it is.
    pub fn kind(&self) -> BusKind {
        match self.0 {
            Kind::Embedded(_) => BusKind::Embedded,
            #[cfg(feature = "kafka")]
            Kind::Kafka(_) => BusKind::Kafka,
            #[cfg(feature = "rabbitmq")]
            Kind::Rabbit(_) => BusKind::Rabbitmq,
            #[cfg(feature = "redis")]
            Kind::Redis(_) => BusKind::Redis,
            #[cfg(feature = "sqs")]
            Kind::Sqs(_) => BusKind::Sqs,
        }
    }
}

impl Backend for Bus {
    fn install(self, wiring: &mut Wiring) {
        match self.0 {
            Kind::Embedded(bus) => bus.install(wiring),
            #[cfg(feature = "kafka")]
            Kind::Kafka(bus) => bus.install(wiring),
            #[cfg(feature = "rabbitmq")]
            Kind::Rabbit(bus) => bus.install(wiring),
            #[cfg(feature = "redis")]
            Kind::Redis(bus) => bus.install(wiring),
            #[cfg(feature = "sqs")]
            Kind::Sqs(bus) => bus.install(wiring),
        }
    }
}

/// The settings every bus shares.
#[allow(dead_code)] // a build with only some buses reads only some of them
struct Settings<'a> {
    prefix: &'a str,
    partitions: u32,
    groups: &'a [String],
    lease: Duration,
    timeout: Duration,
}

/// Creates the bus `connections` choose.
pub(crate) async fn connect(
    connections: &Connections,
    groups: &[String],
    embedded: &Embedded,
) -> Result<Bus> {
    let c = connections;
    let settings = Settings {
        prefix: c.topic_prefix(),
        partitions: c.partitions,
        groups,
        lease: Duration::from_millis(c.bus_lease_ms),
        timeout: Duration::from_millis(c.publish_timeout_ms),
    };
    let address = |value: &Option<String>, variable: &str| {
        let flag = variable.to_lowercase().replace('_', "-");
        let kind = c.bus_kind();
        let missing = || Error::Config(format!("the {kind:?} bus needs --{flag} or {variable}"));
        value.clone().ok_or_else(missing)
    };
    match c.bus_kind() {
        BusKind::Embedded => Ok(Bus(Kind::Embedded(embedded.bus.clone()))),
        BusKind::Kafka => kafka(address(&c.kafka_brokers, "KAFKA_BROKERS")?, settings),
        BusKind::Rabbitmq => rabbitmq(address(&c.amqp_url, "AMQP_URL")?, settings),
        BusKind::Redis => redis(address(&c.redis_url, "REDIS_URL")?, settings),
        BusKind::Sqs => sqs(settings).await,
    }
}

#[cfg(feature = "kafka")]
fn kafka(brokers: String, s: Settings<'_>) -> Result<Bus> {
    use cqrs_kafka::{KafkaBus, KafkaConfig};
    let partitions = i32::try_from(s.partitions)
        .map_err(|_| Error::Config(format!("{} Kafka partitions are too many", s.partitions)))?;
    let config = KafkaConfig::new(brokers, s.prefix)?
        .partitions(partitions)
        .session_timeout(s.lease)
        .message_timeout(s.timeout);
    Ok(Bus(Kind::Kafka(KafkaBus::new(config)?)))
}

#[cfg(not(feature = "kafka"))]
fn kafka(_brokers: String, _settings: Settings<'_>) -> Result<Bus> {
    Err(crate::not_built("a Kafka bus", "kafka"))
}

#[cfg(feature = "rabbitmq")]
fn rabbitmq(url: String, s: Settings<'_>) -> Result<Bus> {
    use cqrs_rabbitmq::{RabbitBus, RabbitConfig};
    let config = RabbitConfig::new(url, s.prefix)?
        .partitions(s.partitions)
        .groups(s.groups)?
        .publish_timeout(s.timeout);
    Ok(Bus(Kind::Rabbit(RabbitBus::new(config))))
}

#[cfg(not(feature = "rabbitmq"))]
fn rabbitmq(_url: String, _settings: Settings<'_>) -> Result<Bus> {
    Err(crate::not_built("a RabbitMQ bus", "rabbitmq"))
}

#[cfg(feature = "redis")]
fn redis(url: String, s: Settings<'_>) -> Result<Bus> {
    use cqrs_redis::{RedisBus, RedisConfig};
    let config = RedisConfig::new(url, s.prefix)?
        .partitions(s.partitions)
        .groups(s.groups)?
        .lease(s.lease)
        .timeout(s.timeout);
    Ok(Bus(Kind::Redis(RedisBus::new(config)?)))
}

#[cfg(not(feature = "redis"))]
fn redis(_url: String, _settings: Settings<'_>) -> Result<Bus> {
    Err(crate::not_built("a Redis Streams bus", "redis"))
}

#[cfg(feature = "sqs")]
async fn sqs(s: Settings<'_>) -> Result<Bus> {
    use cqrs_sqs::{SqsBus, SqsConfig};
    let config = SqsConfig::new(s.prefix)?
        .groups(s.groups)?
        .visibility(s.lease);
    Ok(Bus(Kind::Sqs(SqsBus::from_env(config).await)))
}

#[cfg(not(feature = "sqs"))]
async fn sqs(_settings: Settings<'_>) -> Result<Bus> {
    Err(crate::not_built("an SQS bus", "sqs"))
}
