//! The queues of a bus: made on first use (with their dead-letter queues and redrive
//! policies), their URLs kept, and the groups of each aggregate type found for publishers.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_sqs::error::ProvideErrorMetadata;
use aws_sdk_sqs::types::QueueAttributeName;
use aws_sdk_sqs::Client;
use cqrs_core::Result;
use parking_lot::Mutex;

use crate::backend;
use crate::config::{SqsConfig, JOIN};

/// One group's queue on one aggregate type.
#[derive(Debug, Clone)]
pub(crate) struct Queue {
    pub(crate) aggregate_type: String,
    pub(crate) group: String,
    pub(crate) name: String,
    pub(crate) url: String,
    pub(crate) dead_letters: String,
}

/// The queue URLs a publisher sends a type's events to, and when they were listed.
type Fanout = HashMap<String, (Arc<Vec<String>>, Instant)>;

pub(crate) struct Queues {
    client: Client,
    config: SqsConfig,
    urls: Mutex<HashMap<String, String>>,
    fanout: Mutex<Fanout>,
}

/// A queue's name: the last part of its URL.
fn name_of(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

impl Queues {
    pub(crate) fn new(client: Client, config: SqsConfig) -> Self {
        Queues {
            client,
            config,
            urls: Mutex::new(HashMap::new()),
            fanout: Mutex::new(HashMap::new()),
        }
    }

    /// A group's queue on an aggregate type, made with its dead-letter queue if need be.
    pub(crate) async fn group_queue(&self, aggregate_type: &str, group: &str) -> Result<Queue> {
        let dead_name = self.config.dead_letter_queue(aggregate_type, group);
        let name = self.config.queue(aggregate_type, group);
        let known = {
            let urls = self.urls.lock();
            urls.get(&dead_name).cloned().zip(urls.get(&name).cloned())
        };
        let (dead_letters, url) = match known {
            Some(both) => both,
            None => {
                let dead_letters = self.create(&dead_name, None).await?;
                let arn = self.arn(&dead_letters).await?;
                (dead_letters.clone(), self.create(&name, Some(&arn)).await?)
            }
        };
        // A publisher in this process sends to it from now on.
        if let Some((urls, _)) = self.fanout.lock().get_mut(aggregate_type) {
            if !urls.contains(&url) {
                Arc::make_mut(urls).push(url.clone());
            }
        }
        Ok(Queue {
            aggregate_type: aggregate_type.to_owned(),
            group: group.to_owned(),
            name,
            url,
            dead_letters,
        })
    }

    /// Makes a FIFO queue (or finds it, made before with other settings) and returns its URL.
    async fn create(&self, name: &str, dead_letter_arn: Option<&str>) -> Result<String> {
        if let Some(url) = self.urls.lock().get(name) {
            return Ok(url.clone());
        }
        let c = &self.config;
        let mut request = self
            .client
            .create_queue()
            .queue_name(name)
            .attributes(QueueAttributeName::FifoQueue, "true")
            .attributes(QueueAttributeName::ContentBasedDeduplication, "false")
            .attributes(QueueAttributeName::DeduplicationScope, "messageGroup")
            .attributes(QueueAttributeName::FifoThroughputLimit, "perMessageGroupId")
            .attributes(
                QueueAttributeName::VisibilityTimeout,
                c.visibility.as_secs().to_string(),
            )
            .attributes(
                QueueAttributeName::MessageRetentionPeriod,
                c.retention.as_secs().to_string(),
            )
            .attributes(
                QueueAttributeName::MaximumMessageSize,
                c.max_message.to_string(),
            );
        if let Some(arn) = dead_letter_arn {
            let policy = format!(
                r#"{{"deadLetterTargetArn":"{arn}","maxReceiveCount":"{}"}}"#,
                c.redrive_after()
            );
            request = request.attributes(QueueAttributeName::RedrivePolicy, policy);
        }
        let url = match request.send().await {
            Ok(made) => made.queue_url().map(str::to_owned),
            Err(e) if matches!(e.code(), Some("QueueAlreadyExists" | "QueueNameExists")) => {
                tracing::warn!(
                    queue = name,
                    "the queue exists with other settings; it keeps them"
                );
                self.client
                    .get_queue_url()
                    .queue_name(name)
                    .send()
                    .await
                    .map_err(|e| backend("finding a queue", e))?
                    .queue_url()
                    .map(str::to_owned)
            }
            Err(e) => return Err(backend(&format!("creating queue {name}"), e)),
        };
        let url = url.ok_or_else(|| cqrs_core::Error::Backend {
            backend: "sqs",
            message: format!("SQS made queue {name} but sent no URL"),
            source: None,
        })?;
        self.urls.lock().insert(name.to_owned(), url.clone());
        Ok(url)
    }

    async fn arn(&self, url: &str) -> Result<String> {
        let got = self
            .client
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(|e| backend("reading a queue's ARN", e))?;
        got.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| cqrs_core::Error::Backend {
                backend: "sqs",
                message: format!("SQS sent no ARN for {url}"),
                source: None,
            })
    }

    /// The URLs of the queues with this prefix.
    async fn list(&self, prefix: &str) -> Result<Vec<String>> {
        let mut urls = Vec::new();
        let mut token = None;
        loop {
            let page = self
                .client
                .list_queues()
                .set_queue_name_prefix((!prefix.is_empty()).then(|| prefix.to_owned()))
                .max_results(1_000)
                .set_next_token(token)
                .send()
                .await
                .map_err(|e| backend("listing queues", e))?;
            urls.extend(page.queue_urls().iter().cloned());
            token = page.next_token().map(str::to_owned);
            if token.is_none() {
                return Ok(urls);
            }
        }
    }

    /// The queues a publisher sends an aggregate type's events to: the configured groups'
    /// (made if need be) and those listed, found again every `discover_every`.
    pub(crate) async fn groups_of(&self, aggregate_type: &str) -> Result<Arc<Vec<String>>> {
        if let Some((urls, at)) = self.fanout.lock().get(aggregate_type) {
            if at.elapsed() < self.config.discover_every {
                return Ok(urls.clone());
            }
        }
        let mut urls = BTreeSet::new();
        for group in &self.config.groups {
            urls.insert(self.group_queue(aggregate_type, group).await?.url);
        }
        let start = self.config.type_prefix(aggregate_type);
        for url in self.list(&start).await? {
            let group = name_of(&url)
                .strip_prefix(&start)
                .and_then(|rest| rest.strip_suffix(".fifo"));
            if group.is_some_and(|g| !g.is_empty() && !g.contains(JOIN)) {
                urls.insert(url);
            }
        }
        let urls = Arc::new(urls.into_iter().collect::<Vec<_>>());
        self.fanout
            .lock()
            .insert(aggregate_type.to_owned(), (urls.clone(), Instant::now()));
        Ok(urls)
    }

    /// Forgets the URLs of one group's queue on one type (and of its dead-letter queue), so
    /// that the next [`group_queue`](Self::group_queue) makes or finds them again; what
    /// publishers send to is left as it is.
    pub(crate) fn forget_group(&self, aggregate_type: &str, group: &str) {
        let mut urls = self.urls.lock();
        urls.remove(&self.config.queue(aggregate_type, group));
        urls.remove(&self.config.dead_letter_queue(aggregate_type, group));
    }

    /// Forgets every URL and fan-out it knew, so that the next use makes or finds them again.
    pub(crate) fn forget(&self) {
        self.urls.lock().clear();
        self.fanout.lock().clear();
    }

    /// Deletes every queue of the prefix: those named `<prefix><type>--<group>[--dlq].fifo`.
    pub(crate) async fn delete_all(&self) -> Result<usize> {
        let mut urls = self.list(&self.config.queue_prefix()).await?;
        urls.retain(|url| {
            let name = name_of(url);
            name.contains(JOIN) && name.ends_with(".fifo")
        });
        for url in &urls {
            self.client
                .delete_queue()
                .queue_url(url)
                .send()
                .await
                .map_err(|e| backend("deleting a queue", e))?;
        }
        self.forget();
        Ok(urls.len())
    }
}
