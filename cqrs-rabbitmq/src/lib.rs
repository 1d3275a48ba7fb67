#![doc = include_str!("../README.md")]

mod codec;
mod config;
mod member;
mod subscription;
mod topology;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::EventSource;
use cqrs_core::{Envelope, Error, EventBus, Result};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties};

pub use crate::config::{validate_name, RabbitConfig, ISOLATED_ATTEMPTS};
use crate::subscription::RabbitSubscription;

/// A lapin error as the framework's: the broker's refusals that retrying cannot mend (access
/// refused, a declaration that contradicts an existing queue or exchange) are configuration
/// errors; the rest are backend errors, which callers retry.
pub(crate) fn backend(what: impl Into<String>, e: lapin::Error) -> Error {
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    let permanent = matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::PRECONDITIONFAILED)));
    if permanent {
        return Error::Config(format!("RabbitMQ refused {}: {e}", what.into()));
    }
    Error::backend("rabbitmq", what, e)
}

/// An event bus on RabbitMQ. An event goes to one of N partitions (by its routing key); a
/// consumer group has a quorum queue per partition of each aggregate type, consumed by one
/// member at a time, and its members spread the partitions between them. Publishes are
/// confirmed by the broker; a member acknowledges only after the projection's unit of work.
#[derive(Clone)]
pub struct RabbitBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RabbitConfig,
    /// The publishing connection and its confirming channel; replaced after a failure.
    link: tokio::sync::Mutex<Option<Link>>,
}

struct Link {
    _connection: Connection,
    channel: Channel,
    /// Aggregate types whose exchange and configured groups' queues this link declared.
    declared: HashSet<String>,
}

/// A message ready to publish.
pub(crate) struct Outgoing {
    pub(crate) exchange: String,
    pub(crate) routing_key: String,
    pub(crate) body: Vec<u8>,
    pub(crate) properties: BasicProperties,
    /// The aggregate type whose topology must exist first, if any.
    pub(crate) aggregate_type: Option<String>,
}

impl std::fmt::Debug for RabbitBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

/// Opens a connection, naming the broker (never the URL's credentials) when it fails.
pub(crate) async fn connect(config: &RabbitConfig, name: &str) -> Result<Connection> {
    let properties = ConnectionProperties::default().with_connection_name(name.into());
    let timeout = config.publish_timeout;
    let fail = |why: String| Error::Backend {
        backend: "rabbitmq",
        message: format!("connecting to {}: {why}", config.broker()),
        source: None,
    };
    match tokio::time::timeout(timeout, Connection::connect(config.url(), properties)).await {
        Ok(connected) => connected.map_err(|e| fail(e.to_string())),
        Err(_) => Err(fail(format!("no answer within {timeout:?}"))),
    }
}

impl RabbitBus {
    /// A bus with this configuration. Connects lazily: a broker that is down shows up as
    /// errors of `publish` and of subscriptions, which callers retry.
    pub fn new(config: RabbitConfig) -> Self {
        RabbitBus {
            inner: Arc::new(Inner {
                config,
                link: tokio::sync::Mutex::new(None),
            }),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &RabbitConfig {
        &self.inner.config
    }

    /// Connects now, to find out whether the broker answers.
    ///
    /// # Errors
    /// A backend error naming the broker.
    pub async fn check(&self) -> Result<()> {
        let mut link = self.inner.link.lock().await;
        self.link(&mut link).await.map(|_| ())
    }

    /// Deletes a consumer group's queues (its partitions of these aggregate types, its dead
    /// letters and its roster), with whatever they hold: for a group that is retired.
    ///
    /// # Errors
    /// A backend error.
    pub async fn delete_group(&self, group: &str, aggregate_types: &[&str]) -> Result<()> {
        let config = &self.inner.config;
        config.check(group, aggregate_types)?;
        let mut queues: Vec<String> = aggregate_types
            .iter()
            .flat_map(|t| (0..config.partitions).map(move |p| config.queue(group, t, p)))
            .collect();
        queues.push(config.dead_letters(group));
        queues.push(config.roster(group));
        let mut slot = self.inner.link.lock().await;
        let link = self.link(&mut slot).await?;
        for queue in queues {
            link.channel
                .queue_delete(queue.as_str().into(), Default::default())
                .await
                .map_err(|e| backend(format!("deleting queue `{queue}`"), e))?;
        }
        Ok(())
    }

    async fn link<'a>(&self, slot: &'a mut Option<Link>) -> Result<&'a mut Link> {
        if slot
            .as_ref()
            .is_some_and(|l| !l.channel.status().connected())
        {
            *slot = None;
        }
        if slot.is_none() {
            let connection = connect(&self.inner.config, "cqrs-rabbitmq publisher").await?;
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| backend("opening a channel", e))?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| backend("enabling publisher confirms", e))?;
            *slot = Some(Link {
                _connection: connection,
                channel,
                declared: HashSet::new(),
            });
        }
        slot.as_mut().ok_or_else(|| Error::Backend {
            backend: "rabbitmq",
            message: "no publishing connection".into(),
            source: None,
        })
    }

    /// Publishes messages and waits for the broker's confirms. Every message is mandatory: one
    /// that reaches no queue is an error, never dropped in silence. After a failure the
    /// connection is replaced; the caller publishes again (subscribers are idempotent).
    pub(crate) async fn send_all(&self, messages: Vec<Outgoing>) -> Result<()> {
        let mut slot = self.inner.link.lock().await;
        let timeout = self.inner.config.publish_timeout;
        let outcome = match tokio::time::timeout(timeout, self.send_on(&mut slot, &messages)).await
        {
            Ok(outcome) => outcome,
            Err(_) => Err(Error::Backend {
                backend: "rabbitmq",
                message: format!("publishing: no confirm within {timeout:?}"),
                source: None,
            }),
        };
        if outcome.is_err() {
            *slot = None;
        }
        outcome
    }

    async fn send_on(&self, slot: &mut Option<Link>, messages: &[Outgoing]) -> Result<()> {
        let config = &self.inner.config;
        let link = self.link(slot).await?;
        for message in messages {
            let Some(t) = &message.aggregate_type else {
                continue;
            };
            if !link.declared.contains(t) {
                config.check_type(t)?;
                topology::exchange(&link.channel, config, t).await?;
                for group in &config.groups {
                    topology::group(&link.channel, config, group, t).await?;
                }
                link.declared.insert(t.clone());
            }
        }
        let mut confirms = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = link
                .channel
                .basic_publish(
                    message.exchange.as_str().into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties.clone(),
                )
                .await
                .map_err(|e| backend(format!("publishing to `{}`", message.exchange), e))?;
            confirms.push(confirm);
        }
        for (confirm, message) in futures::future::join_all(confirms)
            .await
            .into_iter()
            .zip(messages)
        {
            let confirmation =
                confirm.map_err(|e| backend(format!("publishing to `{}`", message.exchange), e))?;
            let fail = |why: String| Error::Backend {
                backend: "rabbitmq",
                message: why,
                source: None,
            };
            match confirmation {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_)) => {
                    return Err(fail(format!(
                        "a message to `{}` (partition {}) reached no queue: no consumer group has \
                         subscribed to it yet; name the groups in RabbitConfig::groups to keep \
                         what is published before they first subscribe",
                        message.exchange, message.routing_key
                    )))
                }
                Confirmation::NotRequested => {
                    return Err(fail("the channel does not confirm publishes".into()))
                }
                Confirmation::Nack(_) => {
                    return Err(fail(format!(
                        "the broker refused a message to `{}`",
                        message.exchange
                    )))
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventBus for RabbitBus {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let config = &self.inner.config;
        let messages = events
            .iter()
            .map(|e| {
                config.check_type(&e.aggregate_type)?;
                let partition = cqrs_core::wire::partition_of(e.routing_key(), config.partitions);
                Ok(Outgoing {
                    exchange: config.exchange(&e.aggregate_type),
                    routing_key: partition.to_string(),
                    body: e.payload.to_vec(),
                    properties: codec::properties(e, &[]),
                    aggregate_type: Some(e.aggregate_type.clone()),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        self.send_all(messages).await
    }

    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        self.inner.config.check(group, aggregate_types)?;
        Ok(Box::new(
            RabbitSubscription::open(self.clone(), group, aggregate_types, idle).await?,
        ))
    }
}

/// `.with(bus)` on [`cqrs_core::App::builder`]: the bus between services.
impl cqrs_core::app::Backend for RabbitBus {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring.event_bus(self);
    }
}
