#![doc = include_str!("../README.md")]

mod codec;
mod config;
mod queues;
mod subscription;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_sqs::types::SendMessageBatchRequestEntry;
use aws_sdk_sqs::Client;
use cqrs_core::processor::EventSource;
use cqrs_core::{Envelope, Error, EventBus, Result};

use crate::codec::Outgoing;
pub use crate::codec::{BODY, HEADERS, REASON};
pub use crate::config::{validate_name, SqsConfig, ISOLATED_ATTEMPTS, SQS_MAX_MESSAGE};
use crate::queues::Queues;
use crate::subscription::SqsSubscription;

/// Error codes with which SQS refuses the caller or the request, not the moment: retrying
/// does not mend them, so they are configuration errors.
const PERMANENT: [&str; 17] = [
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "IncompleteSignature",
    "AccessDenied",
    "AccessDeniedException",
    "UnrecognizedClientException",
    "MissingAuthenticationToken",
    "InvalidSecurity",
    "KmsAccessDenied",
    "InvalidParameterValue",
    "InvalidAttributeValue",
    "InvalidAttributeName",
    "InvalidMessageContents",
    "UnsupportedOperation",
    "AWS.SimpleQueueService.BatchRequestTooLong",
    "AWS.SimpleQueueService.TooManyEntriesInBatchRequest",
    "AWS.SimpleQueueService.UnsupportedOperation",
];

/// Whether an error code says a queue does not exist (deleted, or never made).
pub(crate) fn missing_queue(code: Option<&str>) -> bool {
    matches!(
        code,
        Some("AWS.SimpleQueueService.NonExistentQueue" | "QueueDoesNotExist")
    )
}

/// An SQS error as the framework's: a refused caller (credentials, permissions), a request SQS
/// refuses as such, or one that cannot be made (no region) are configuration errors; the
/// rest, a queue that went missing and a server that is down among them, are backend errors,
/// which callers retry.
pub(crate) fn backend<E, R>(what: &str, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let refused = e.code().is_some_and(|code| PERMANENT.contains(&code));
    if refused || matches!(e, SdkError::ConstructionFailure(_)) {
        return Error::Config(format!("SQS refused {what}: {}", DisplayErrorContext(&e)));
    }
    Error::backend("sqs", what.to_owned(), e)
}

/// Lanes a publish sends on at once per queue: one routing key always takes the same lane, so
/// its events keep their order.
const LANES: u64 = 8;
/// Entries of one `SendMessageBatch`.
pub(crate) const BATCH: usize = 10;

/// An event bus on Amazon SQS FIFO queues. Each consumer group has a queue per aggregate type;
/// a publisher sends every event to the queue of each group, with the event's routing key as
/// its message group (SQS hands one group's messages out in order, to one member at a time)
/// and its event id as its deduplication id (a relay's retry within five minutes is dropped).
/// Messages are deleted only after the projection's unit of work; a batch being applied
/// keeps them invisible to the other members.
#[derive(Clone)]
pub struct SqsBus {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) config: SqsConfig,
    pub(crate) client: Client,
    pub(crate) queues: Queues,
}

impl std::fmt::Debug for SqsBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBus")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

impl SqsBus {
    /// A bus on this client. Sends nothing until it is used: a server that is down shows up
    /// as errors of `publish` and of subscriptions, which callers retry.
    pub fn new(client: Client, config: SqsConfig) -> Self {
        SqsBus {
            inner: Arc::new(Inner {
                queues: Queues::new(client.clone(), config.clone()),
                config,
                client,
            }),
        }
    }

    /// A bus on the standard AWS configuration: the region, credentials and endpoint from the
    /// environment (`AWS_REGION`, `AWS_ACCESS_KEY_ID`, `AWS_ENDPOINT_URL`, ...), the shared
    /// config and credentials files (`AWS_PROFILE`), or the instance's role.
    pub async fn from_env(config: SqsConfig) -> Self {
        let shared = aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await;
        SqsBus::new(Client::new(&shared), config)
    }

    /// The configuration.
    pub fn config(&self) -> &SqsConfig {
        &self.inner.config
    }

    /// The SQS client.
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Asks SQS for this bus's queues: a quick way to see that the endpoint answers and takes
    /// the credentials.
    ///
    /// # Errors
    /// [`Error::Config`] for refused credentials, else a backend error.
    pub async fn check(&self) -> Result<()> {
        self.inner
            .client
            .list_queues()
            .set_queue_name_prefix(Some(self.config().queue_prefix()).filter(|p| !p.is_empty()))
            .max_results(1)
            .send()
            .await
            .map_err(|e| backend("listing queues", e))?;
        Ok(())
    }

    /// Deletes every queue whose name starts with this bus's prefix, dead-letter queues
    /// included, and returns how many it deleted. SQS refuses a queue of the same name for a
    /// minute after. Stop the groups' members first: a member whose queue is deleted under it
    /// makes it again (with the bus's settings, not whatever the deleted one had).
    ///
    /// # Errors
    /// A backend error.
    pub async fn delete_queues(&self) -> Result<usize> {
        self.inner.queues.delete_all().await
    }
}

impl Inner {
    /// Sends messages to one queue: each routing key on one lane, in order; lanes at once.
    /// Requests of a lane go one after another, each holding at most one message per routing
    /// key, so a key's messages enter the queue in order even when SQS takes a request in
    /// part.
    pub(crate) async fn send(&self, url: &str, items: &[(&Envelope, &Outgoing)]) -> Result<()> {
        let mut lanes: BTreeMap<u64, Vec<(&Envelope, &Outgoing)>> = BTreeMap::new();
        for item in items {
            let key = item.0.routing_key();
            let lane = u64::from(cqrs_core::wire::partition_of(key, LANES as u32));
            lanes.entry(lane).or_default().push(*item);
        }
        let sends = lanes.into_values().map(|lane| async move {
            let mut rest = lane.as_slice();
            while !rest.is_empty() {
                // At most one message of a message group per request: SQS may take a request
                // in part, and a later message of a group must never go in without an earlier
                // one (the retry would put the earlier after it). A failed request ends the
                // lane, so nothing after it is sent before the retry.
                let mut size = 0;
                let mut groups = std::collections::HashSet::new();
                let mut n = 0;
                while n < rest.len().min(BATCH)
                    && size + rest[n].1.size <= SQS_MAX_MESSAGE
                    && groups.insert(rest[n].0.routing_key())
                {
                    size += rest[n].1.size;
                    n += 1;
                }
                let n = n.max(1);
                self.send_batch(url, &rest[..n]).await?;
                rest = &rest[n..];
            }
            Ok::<(), Error>(())
        });
        futures::future::try_join_all(sends).await?;
        Ok(())
    }

    pub(crate) async fn send_batch(
        &self,
        url: &str,
        items: &[(&Envelope, &Outgoing)],
    ) -> Result<()> {
        let mut request = self.client.send_message_batch().queue_url(url);
        for (i, (e, out)) in items.iter().enumerate() {
            let entry = SendMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .message_body(&out.body)
                .set_message_attributes(Some(codec::attribute_values(out)?))
                .message_group_id(message_group(e.routing_key()))
                .message_deduplication_id(e.metadata.event_id.simple().to_string())
                .build()
                .map_err(|e| Error::backend("sqs", "building a message", e))?;
            request = request.entries(entry);
        }
        let sent = match request.send().await {
            Ok(sent) => sent,
            Err(e) => {
                if missing_queue(e.code()) {
                    // Deleted under the bus: made again (or found gone) on the retry.
                    self.queues.forget();
                }
                return Err(backend("sending messages", e));
            }
        };
        if let Some(failed) = sent.failed().first() {
            let what = format!(
                "SQS refused {} of {} messages ({}: {})",
                sent.failed().len(),
                items.len(),
                failed.code(),
                failed.message().unwrap_or_default()
            );
            return Err(if PERMANENT.contains(&failed.code()) {
                Error::Config(what)
            } else {
                Error::Backend {
                    backend: "sqs",
                    message: what,
                    source: None,
                }
            });
        }
        Ok(())
    }
}

/// The message group of a routing key: the key itself where SQS takes it (at most 128
/// printable ASCII characters), else a stable hash of it.
pub(crate) fn message_group(key: &str) -> String {
    let printable = key.bytes().all(|b| b.is_ascii_graphic());
    if !key.is_empty() && key.len() <= 128 && printable {
        key.to_owned()
    } else {
        format!(
            "k-{}",
            cqrs_core::wire::stable_id(key.bytes(), key.len() as u64).simple()
        )
    }
}

#[async_trait]
impl EventBus for SqsBus {
    /// Sends each event to the queue of every group on its aggregate type. Every event is
    /// checked against the size limit before anything is sent.
    async fn publish(&self, events: &[Envelope]) -> Result<()> {
        let limit = self.inner.config.max_message;
        let encoded: Vec<Outgoing> = events
            .iter()
            .map(|e| codec::encode(e, None, limit))
            .collect::<Result<_>>()?;
        let mut by_type: BTreeMap<&str, Vec<(&Envelope, &Outgoing)>> = BTreeMap::new();
        for (e, out) in events.iter().zip(&encoded) {
            by_type.entry(&e.aggregate_type).or_default().push((e, out));
        }
        // Each type's name once, and all of them before anything is sent.
        for aggregate_type in by_type.keys() {
            self.inner.config.check_type(aggregate_type)?;
        }
        for (aggregate_type, items) in by_type {
            let urls = self.inner.queues.groups_of(aggregate_type).await?;
            let sends = urls.iter().map(|url| self.inner.send(url, &items));
            futures::future::try_join_all(sends).await?;
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        group: &str,
        aggregate_types: &[&str],
        idle: Duration,
    ) -> Result<Box<dyn EventSource>> {
        self.inner.config.check(group, aggregate_types)?;
        let mut queues = Vec::with_capacity(aggregate_types.len());
        for t in aggregate_types {
            let queue = self.inner.queues.group_queue(t, group).await?;
            queues.push(queue);
        }
        Ok(Box::new(SqsSubscription::new(
            self.inner.clone(),
            group,
            queues,
            idle,
        )))
    }

    /// `false`: SQS hands a message group to one member at a time, not always the same one.
    fn pins_keys(&self) -> bool {
        false
    }
}

/// `.with(bus)` on [`cqrs_core::App::builder`]: the bus between services.
impl cqrs_core::app::Backend for SqsBus {
    fn install(self, wiring: &mut cqrs_core::app::Wiring) {
        wiring.event_bus(self);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_groups_are_keys_sqs_takes() {
        assert_eq!(message_group("order-1"), "order-1");
        let long = "x".repeat(200);
        let hashed = message_group(&long);
        assert!(hashed.starts_with("k-") && hashed.len() <= 128, "{hashed}");
        assert_eq!(hashed, message_group(&long), "stable");
        assert_ne!(message_group("a b"), "a b");
        assert_ne!(message_group(""), "");
    }
}
