#![doc = include_str!("../README.md")]

mod codec;
mod config;
mod lease;
mod scripts;
mod subscription;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use cqrs_core::processor::EventSource;
use cqrs_core::{Envelope, Error, EventBus, Result};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};

pub use crate::codec::PAYLOAD;
pub use crate::config::{validate_name, RedisConfig, Retention, ISOLATED_ATTEMPTS};
use crate::subscription::RedisSubscription;

/// A Redis error as the framework's: a refused login, a command the user may not run (also
/// when the server refused it inside a transaction, which reports `EXECABORT`) or a command
/// the server does not know (an older Redis) are configuration errors; the rest are backend
/// errors, which callers retry.
pub(crate) fn backend(what: impl Into<String>, e: RedisError) -> Error {
    use redis::ErrorKind;
    let what = what.into();
    let permanent = matches!(e.code(), Some("NOAUTH" | "WRONGPASS" | "NOPERM"))
        || matches!(e.kind(), ErrorKind::AuthenticationFailed)
        || e.code() == Some("ERR") && e.to_string().contains("unknown command")
        || e.code() == Some("EXECABORT")
            && e.clone()
                .into_server_errors()
                .is_some_and(|errors| errors.iter().any(|(_, s)| s.code() == "NOPERM"));
    if permanent {
        return Error::Config(format!("Redis refused {what}: {e}"));
    }
    Error::backend("redis", what, e)
}

/// Whether an error is the server's `BUSYGROUP` (the group exists already).
pub(crate) fn busy_group(e: &RedisError) -> bool {
    e.code() == Some("BUSYGROUP")
}

/// An entry to append: its stream and its fields.
pub(crate) type Entry = (String, Vec<(&'static str, Vec<u8>)>);

/// An event bus on Redis Streams. An event goes to the stream of one of N partitions of its
/// aggregate type (by its routing key); a consumer group reads each partition through one
/// member at a time, which holds the partition's lease and renews it while it works. Entries
/// are acknowledged only after the projection's unit of work, and only while the lease is the
/// member's (a fence checked on the server).
#[derive(Clone)]
pub struct RedisBus {
    inner: Arc<Inner>,
}

struct Inner {
    config: RedisConfig,
    client: Client,
    /// The publishing connection; replaced after a failure.
    link: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    /// Streams on which the configured groups exist.
    prepared: parking_lot::Mutex<HashSet<String>>,
}

impl std::fmt::Debug for RedisBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl RedisBus {
    /// A bus with this configuration. Connects lazily: a server that is down shows up as
    /// errors of `publish` and of subscriptions, which callers retry.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL the client cannot read.
    pub fn new(config: RedisConfig) -> Result<Self> {
        let client = Client::open(config.url()).map_err(|e| {
            Error::Config(format!(
                "the Redis URL for {} is not valid: {}",
                config.server(),
                e.category()
            ))
        })?;
        Ok(RedisBus {
            inner: Arc::new(Inner {
                config,
                client,
                link: tokio::sync::Mutex::new(None),
                prepared: parking_lot::Mutex::new(HashSet::new()),
            }),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &RedisConfig {
        &self.inner.config
    }

    /// A new connection whose commands may take `block` more than the configured timeout (a
    /// blocking read).
    pub(crate) async fn connect(&self, block: Duration) -> Result<MultiplexedConnection> {
        let timeout = self.inner.config.timeout;
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(timeout))
            .set_response_timeout(Some(timeout + block));
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| backend(format!("connecting to {}", self.inner.config.server()), e))
    }

    async fn link(&self) -> Result<MultiplexedConnection> {
        let mut slot = self.inner.link.lock().await;
        if let Some(connection) = slot.as_ref() {
            return Ok(connection.clone());
        }
        let connection = self.connect(Duration::ZERO).await?;
        *slot = Some(connection.clone());
        Ok(connection)
    }

    async fn forget_link(&self) {
        *self.inner.link.lock().await = None;
        // The server may have lost the groups too: create them again on the next publish.
        self.inner.prepared.lock().clear();
    }

    /// Connects now, to find out whether the server answers.
    ///
    /// # Errors
    /// A backend error naming the server.
    pub async fn check(&self) -> Result<()> {
        let mut connection = self.link().await?;
        let outcome = redis::cmd("PING")
            .query_async::<String>(&mut connection)
            .await
            .map(|_| ())
            .map_err(|e| backend(format!("pinging {}", self.inner.config.server()), e));
        if outcome.is_err() {
            self.forget_link().await;
        }
        outcome
    }

    /// Creates a group on streams (from their first entry), unless it exists.
    pub(crate) async fn create_group(
        connection: &mut MultiplexedConnection,
        group: &str,
        streams: &[String],
    ) -> Result<()> {
        for stream in streams {
            let created = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(stream)
                .arg(group)
                .arg("0")
                .arg("MKSTREAM")
                .query_async::<()>(connection)
                .await;
            match created {
                Err(e) if !busy_group(&e) => {
                    return Err(backend(
                        format!("creating group `{group}` on `{stream}`"),
                        e,
                    ))
                }
                _ => {}
            }
        }
        Ok(())
    }

    /// Deletes a consumer group's partitions of these aggregate types (its place in every
    /// stream, its leases, roster and dead letters): for a group that is retired. The
    /// streams stay for the other groups.
    ///
    /// # Errors
    /// A backend error.
    pub async fn delete_group(&self, group: &str, aggregate_types: &[&str]) -> Result<()> {
        let config = &self.inner.config;
        config.check(group, aggregate_types)?;
        let mut connection = self.link().await?;
        for t in aggregate_types {
            for p in 0..config.partitions {
                let stream = config.stream(t, p);
                scripts::DESTROY
                    .key(&stream)
                    .arg(group)
                    .invoke_async::<i64>(&mut connection)
                    .await
                    .map_err(|e| backend(format!("deleting group `{group}` of `{stream}`"), e))?;
            }
        }
        let mut pipe = redis::pipe();
        for p in 0..config.partitions {
            pipe.del(config.lease_key(group, p)).ignore();
        }
        pipe.del(config.roster(group)).ignore();
        pipe.del(config.dead_letters(group)).ignore();
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| backend(format!("deleting group `{group}`"), e))
    }

    /// Deletes the streams of these aggregate types, with every group's place in them.
    ///
    /// # Errors
    /// A backend error.
    pub async fn delete_streams(&self, aggregate_types: &[&str]) -> Result<()> {
        let config = &self.inner.config;
        let mut connection = self.link().await?;
        let mut pipe = redis::pipe();
        for t in aggregate_types {
            config.check_type(t)?;
            for p in 0..config.partitions {
                pipe.del(config.stream(t, p)).ignore();
            }
        }
        pipe.query_async::<()>(&mut connection)
            .await
            .map_err(|e| backend("deleting streams", e))
    }

    /// Trims the streams of these aggregate types to what some group still needs (see
    /// [`Retention::Acknowledged`]), whatever the configured retention. Returns the number of
    /// entries removed.
    ///
    /// # Errors
    /// A backend error.
    pub async fn trim(&self, aggregate_types: &[&str]) -> Result<u64> {
        let config = &self.inner.config;
        let mut connection = self.link().await?;
        let mut removed = 0;
        for t in aggregate_types {
            config.check_type(t)?;
            for p in 0..config.partitions {
                removed += trim_stream(&mut connection, &config.stream(t, p)).await?;
            }
        }
        Ok(removed)
    }

    /// Appends entries (stream, fields) in one pipeline, after creating the configured groups
    /// on streams this bus has not written to yet.
    pub(crate) async fn append(&self, entries: &[Entry]) -> Result<()> {
        let outcome = self.append_on(entries).await;
        if outcome.is_err() {
            self.forget_link().await;
        }
        outcome
    }

    async fn append_on(&self, entries: &[Entry]) -> Result<()> {
        let config = &self.inner.config;
        let mut connection = self.link().await?;
        if !config.groups.is_empty() {
            let fresh: Vec<String> = {
                let prepared = self.inner.prepared.lock();
                let mut fresh: Vec<String> = entries
                    .iter()
                    .map(|(s, _)| s.clone())
                    .filter(|s| !prepared.contains(s))
                    .collect();
                fresh.sort();
                fresh.dedup();
                fresh
            };
            for group in &config.groups {
                Self::create_group(&mut connection, group, &fresh).await?;
            }
            self.inner.prepared.lock().extend(fresh);
        }
        let mut pipe = redis::pipe();
        for (stream, fields) in entries {
            pipe.cmd("XADD").arg(stream).arg("*");
            for (name, value) in fields {
                pipe.arg(*name).arg(value.as_slice());
            }
            pipe.ignore();
        }
        let timeout = config.timeout;
        match tokio::time::timeout(timeout, pipe.query_async::<()>(&mut connection)).await {
            Ok(done) => done.map_err(|e| backend("publishing", e)),
            Err(_) => Err(Error::Backend {
                backend: "redis",
                message: format!("publishing: no answer within {timeout:?}"),
                source: None,
            }),
        }
    }
}

/// Trims one stream (see [`scripts::TRIM`]).
pub(crate) async fn trim_stream(
    connection: &mut MultiplexedConnection,
    stream: &str,
) -> Result<u64> {
    scripts::TRIM
        .key(stream)
        .invoke_async::<u64>(connection)
        .await
        .map_err(|e| backend(format!("trimming `{stream}`"), e))
}

#[async_trait]
impl EventBus for RedisBus {
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        let config = &self.inner.config;
        let entries = events
            .iter()
            .map(|e| {
                config.check_type(&e.aggregate_type)?;
                let partition = cqrs_core::wire::partition_of(e.routing_key(), config.partitions);
                Ok((
                    config.stream(&e.aggregate_type, partition),
                    codec::fields(e, &[]),
                ))
            })
            .collect::<Result<Vec<_>>>()?;
        self.append(&entries).await
    }

    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        self.inner.config.check(group, aggregate_types)?;
        Ok(Box::new(
            RedisSubscription::open(self.clone(), group, aggregate_types, idle).await?,
        ))
    }
}

/// `.with(bus)` on [`cqrs_core::App::builder`]: the bus between services.
impl cqrs_core::app::Backend for RedisBus {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring.event_bus(self);
    }
}
