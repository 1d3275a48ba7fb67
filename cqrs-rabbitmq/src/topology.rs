//! Declaring what a bus needs on the broker: a direct exchange per aggregate type, and per
//! consumer group one quorum queue per partition with a single active consumer, bound by its
//! partition number. Every declaration is idempotent.

use cqrs_core::Result;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::{backend, RabbitConfig};

/// The arguments of a partition or dead-letter queue.
fn quorum(single_active: bool) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    if single_active {
        args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    }
    args
}

/// The exchange of an aggregate type.
pub(crate) async fn exchange(
    channel: &Channel,
    config: &RabbitConfig,
    aggregate_type: &str,
) -> Result<()> {
    let name = config.exchange(aggregate_type);
    channel
        .exchange_declare(
            name.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(|e| backend(format!("declaring exchange `{name}`"), e))
}

/// A group's partition queues of an aggregate type, bound to its exchange.
pub(crate) async fn group(
    channel: &Channel,
    config: &RabbitConfig,
    group: &str,
    aggregate_type: &str,
) -> Result<()> {
    exchange(channel, config, aggregate_type).await?;
    let exchange = config.exchange(aggregate_type);
    for partition in 0..config.partitions {
        let queue = config.queue(group, aggregate_type, partition);
        channel
            .queue_declare(queue.as_str().into(), durable(), quorum(true))
            .await
            .map_err(|e| backend(format!("declaring queue `{queue}`"), e))?;
        channel
            .queue_bind(
                queue.as_str().into(),
                exchange.as_str().into(),
                partition.to_string().into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| backend(format!("binding queue `{queue}`"), e))?;
    }
    Ok(())
}

/// A group's dead-letter queue.
pub(crate) async fn dead_letters(
    channel: &Channel,
    config: &RabbitConfig,
    group: &str,
) -> Result<()> {
    let queue = config.dead_letters(group);
    channel
        .queue_declare(queue.as_str().into(), durable(), quorum(false))
        .await
        .map(|_| ())
        .map_err(|e| backend(format!("declaring queue `{queue}`"), e))
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}
