//! A member's receivers: each long-polls one queue, hands what it receives to the member, and
//! makes its queue again when it finds it deleted.

use std::sync::Arc;
use std::time::Duration;

use aws_sdk_sqs::error::ProvideErrorMetadata as _;
use aws_sdk_sqs::types::{MessageSystemAttributeName, QueueAttributeName};
use cqrs_core::processor::Backoff;
use cqrs_core::Result;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::{Held, Received};
use crate::codec::Incoming;
use crate::queues::Queue;
use crate::{backend, missing_queue, Inner};

/// Makes a queue deleted under its member again (with its dead-letter queue), so the group
/// receives what is published from then on; what was published while no queue of the group
/// existed reached none (a publisher whose configuration names the group makes the queue
/// itself). A refusal SQS means for good (no permission to make queues) is returned, for the
/// member to stop on; one it means for now (it refuses a name for 60 s after its queue was
/// deleted) is logged, and the next failed receive tries again.
async fn remake(bus: &Inner, queue: &Queue) -> Result<Option<Arc<str>>> {
    bus.queues.forget_group(&queue.aggregate_type, &queue.group);
    match bus
        .queues
        .group_queue(&queue.aggregate_type, &queue.group)
        .await
    {
        Ok(made) => {
            tracing::warn!(queue = %made.name, "the group's queue was deleted; made again");
            Ok(Some(Arc::from(made.url)))
        }
        Err(e) if e.is_transient() => {
            tracing::warn!(queue = %queue.name, error = %e, "the group's queue was deleted and cannot be made again yet");
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// Long-polls one queue until the member leaves, handing each receive to the member (which
/// holds at most a few receives a queue before the receivers wait).
pub(crate) async fn receive(
    bus: Arc<Inner>,
    queues: Arc<Vec<Queue>>,
    q: usize,
    tx: mpsc::Sender<Received>,
    held: Held,
    stop: CancellationToken,
) {
    let mut url: Arc<str> = Arc::from(queues[q].url.as_str());
    let seconds = i32::try_from(bus.config.visibility.as_secs()).unwrap_or(i32::MAX);
    let wait = i32::try_from(bus.config.long_poll.as_secs()).unwrap_or(20);
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5));
    let mut failures = 0u32;
    while !stop.is_cancelled() {
        #[allow(deprecated)] // `attribute_names` for servers that do not read the newer field
        let got = bus
            .client
            .receive_message()
            .queue_url(&*url)
            .max_number_of_messages(10)
            .wait_time_seconds(wait)
            .visibility_timeout(seconds)
            .message_system_attribute_names(MessageSystemAttributeName::All)
            .attribute_names(QueueAttributeName::All)
            .message_attribute_names("All")
            .send()
            .await;
        let received = match got {
            Ok(out) => {
                failures = 0;
                let mut messages: Vec<(usize, Incoming)> = out
                    .messages()
                    .iter()
                    .filter_map(Incoming::of)
                    .map(|m| (q, m))
                    .collect();
                if let Some((_, m)) = messages.first_mut() {
                    m.first = true;
                }
                if messages.is_empty() {
                    continue;
                }
                let mut h = held.lock();
                for (_, m) in &messages {
                    h.insert(m.receipt.clone(), url.clone());
                }
                Ok(messages)
            }
            // A member that is leaving does not bring back a queue deleted behind it.
            Err(e) if missing_queue(e.code()) && !stop.is_cancelled() => {
                match remake(&bus, &queues[q]).await {
                    Ok(made) => {
                        url = made.unwrap_or(url);
                        Err(backend("receiving messages", e))
                    }
                    Err(refused) => Err(refused),
                }
            }
            Err(e) => Err(backend("receiving messages", e)),
        };
        let failed = received.is_err();
        if tx.send(received).await.is_err() {
            // The member left while this receive was under way: what it brought is held, and
            // given back with the rest once every receiver has ended.
            return;
        }
        if failed {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff.delay(failures)) => {}
            }
            failures = failures.saturating_add(1);
        }
    }
}
