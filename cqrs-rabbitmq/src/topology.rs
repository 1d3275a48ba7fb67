//! Declaring what a bus needs on the broker: a direct exchange per aggregate type, and per
//! consumer group one quorum queue per partition with a single active consumer, bound by its
//! partition number. Every declaration is idempotent.

use cqrs_core::Result;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{Channel, ExchangeKind};

use crate::{backend, RabbitConfig};

/// The arguments of a quorum queue.
fn quorum() -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-queue-type".into(),
        AMQPValue::LongString(LongString::from("quorum")),
    );
    args
}

/// A partition queue's: one consumer at a time, and the broker's backstop limit dead-letters
/// into the group's dead-letter queue.
fn partition_queue(config: &RabbitConfig, group: &str) -> FieldTable {
    let mut args = quorum();
    args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
    args.insert(
        "x-delivery-limit".into(),
        AMQPValue::LongLongInt(crate::config::BROKER_DELIVERY_LIMIT),
    );
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(config.dead_letters(group))),
    );
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

/// A group's partition queues of an aggregate type, bound to its exchange, and the group's
/// dead-letter queue.
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
            .queue_declare(
                queue.as_str().into(),
                durable(),
                partition_queue(config, group),
            )
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
    // Last: RabbitMQ 3.10 may not recover the quorum queue created last before a SIGKILL
    // (its Raft registration not yet on disk, seen in the restart test); the dead-letter queue
    // is the one that can best wait to be declared again.
    dead_letters(channel, config, group).await?;
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
        .queue_declare(queue.as_str().into(), durable(), quorum())
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
