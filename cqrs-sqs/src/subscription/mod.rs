//! A member of a consumer group: receivers that long-poll each queue in the background, a
//! heartbeat that keeps what the member holds invisible to the others, and batches that are
//! deleted only once the projection's unit of work committed.

mod receive;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_sqs::error::ProvideErrorMetadata as _;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use cqrs_core::processor::{Batch, EventSource};
use cqrs_core::view::DeadLetter;
use cqrs_core::{Error, Result};
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::codec::{self, Incoming};
use crate::config::ISOLATED_ATTEMPTS;
use crate::queues::Queue;
use crate::{backend, missing_queue, Inner};

use self::receive::receive;

/// What a member holds, by receipt handle: the queue URL of each message received and not
/// yet deleted or given back. The heartbeat keeps them invisible.
pub(crate) type Held = Arc<Mutex<HashMap<String, Arc<str>>>>;

/// One receive: the queue's index and its messages, or why it failed.
pub(crate) type Received = Result<Vec<(usize, Incoming)>>;

pub(crate) struct SqsSubscription {
    bus: Arc<Inner>,
    group: String,
    queues: Arc<Vec<Queue>>,
    idle: Duration,
    inbox: mpsc::Receiver<Received>,
    buffer: VecDeque<(usize, Incoming)>,
    /// Handed out since the last ack: the queue, the message and the event id it went by.
    delivered: Vec<(usize, Incoming, Uuid)>,
    held: Held,
    /// Stops the receivers.
    stop: CancellationToken,
    /// Stops the heartbeat, once what the member held was given back.
    beat: CancellationToken,
    heartbeat: Option<JoinHandle<()>>,
    receivers: Vec<JoinHandle<()>>,
}

impl SqsSubscription {
    pub(crate) fn new(bus: Arc<Inner>, group: &str, queues: Vec<Queue>, idle: Duration) -> Self {
        let queues = Arc::new(queues);
        let receives = bus.config.receives;
        let (tx, inbox) = mpsc::channel(receives * queues.len());
        let held: Held = Arc::default();
        let stop = CancellationToken::new();
        let beat = CancellationToken::new();
        let mut receivers = Vec::new();
        for q in 0..queues.len() {
            for _ in 0..receives {
                receivers.push(tokio::spawn(receive(
                    bus.clone(),
                    queues.clone(),
                    q,
                    tx.clone(),
                    held.clone(),
                    stop.clone(),
                )));
            }
        }
        let heartbeat = Some(tokio::spawn(heartbeat(
            bus.clone(),
            held.clone(),
            beat.clone(),
        )));
        SqsSubscription {
            bus,
            group: group.to_owned(),
            queues,
            idle,
            inbox,
            buffer: VecDeque::new(),
            delivered: Vec::new(),
            held,
            stop,
            beat,
            heartbeat,
            receivers,
        }
    }

    /// Moves what the receivers got into the buffer: waits up to the idle time for the first
    /// receive when the buffer is empty, then takes what is there without waiting.
    async fn fill(&mut self, max: usize) -> Result<()> {
        if self.buffer.is_empty() {
            match tokio::time::timeout(self.idle, self.inbox.recv()).await {
                Err(_) => return Ok(()),
                Ok(None) => return Err(Error::Shutdown),
                Ok(Some(got)) => self.buffer.extend(got?),
            }
        }
        while self.buffer.len() < max {
            match self.inbox.try_recv() {
                Ok(got) => self.buffer.extend(got?),
                Err(_) => break,
            }
        }
        Ok(())
    }
}

#[async_trait]
impl EventSource for SqsSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Batch> {
        self.fill(max.max(1)).await?;
        let limit = u64::from(self.bus.config.delivery_limit);
        let last_chance = limit + u64::from(ISOLATED_ATTEMPTS);
        let mut batch = Batch::from_bus(Vec::new());
        while batch.events.len() + batch.rejected.len() < max.max(1) {
            let Some((_, front)) = self.buffer.front() else {
                break;
            };
            let suspect = front.receives > limit;
            if suspect && !(batch.events.is_empty() && batch.rejected.is_empty()) {
                // Suspected of crashing its batches: it goes alone, in the next batch.
                break;
            }
            let Some((q, message)) = self.buffer.pop_front() else {
                break;
            };
            let queue = &self.queues[q].name;
            let event_id = if message.first && message.receives > last_chance {
                let reason = format!(
                    "received {} times without an acknowledgement, the last {ISOLATED_ATTEMPTS} \
                     of them alone in their batch",
                    message.receives
                );
                let rejected = message.rejected(queue, reason);
                let id = rejected.envelope.metadata.event_id;
                batch.rejected.push(rejected);
                id
            } else {
                match message.decode() {
                    Ok(envelope) => {
                        let id = envelope.metadata.event_id;
                        batch.events.push(envelope);
                        id
                    }
                    Err(reason) => {
                        tracing::warn!(%queue, %reason, "a message that is not an envelope");
                        let rejected = message.rejected(queue, reason);
                        let id = rejected.envelope.metadata.event_id;
                        batch.rejected.push(rejected);
                        id
                    }
                }
            };
            self.delivered.push((q, message, event_id));
            if suspect {
                break;
            }
        }
        Ok(batch)
    }

    /// Deletes everything handed out since the last ack. A message whose receipt is no longer
    /// valid (its visibility ran out and another member received it) is left to that member;
    /// the projection skips what it applied.
    async fn ack(&mut self, _batch: &Batch) -> Result<()> {
        let mut by_queue: HashMap<usize, Vec<String>> = HashMap::new();
        for (q, message, _) in &self.delivered {
            by_queue
                .entry(*q)
                .or_default()
                .push(message.receipt.clone());
        }
        let deletes = by_queue
            .iter()
            .map(|(q, receipts)| delete(&self.bus, &self.queues[*q].url, receipts));
        futures::future::try_join_all(deletes).await?;
        let mut held = self.held.lock();
        for (_, message, _) in self.delivered.drain(..) {
            held.remove(&message.receipt);
        }
        Ok(())
    }

    /// Sends dead letters to the dead-letter queue of the queue they came from, with their
    /// reasons.
    async fn dead_letter(&mut self, letters: &[DeadLetter]) -> Result<()> {
        let limit = self.bus.config.max_message;
        let mut by_queue: HashMap<usize, Vec<(&cqrs_core::Envelope, codec::Outgoing)>> =
            HashMap::new();
        for letter in letters {
            let id = letter.envelope.metadata.event_id;
            let q = match self.delivered.iter().find(|(_, _, e)| *e == id) {
                Some((q, _, _)) => *q,
                None => {
                    // Not one of this member's: the queue of its aggregate type, else the first.
                    tracing::warn!(group = %self.group, %id, "a dead letter this member did not hand out");
                    let t = self
                        .bus
                        .config
                        .queue(&letter.envelope.aggregate_type, &self.group);
                    self.queues
                        .iter()
                        .position(|queue| queue.name == t)
                        .unwrap_or(0)
                }
            };
            let mut out = codec::encode(&letter.envelope, Some(&letter.reason), usize::MAX)?;
            if out.size > limit {
                // The reason made it too large: the payload and headers are kept, the reason
                // shortened to what fits (or the letter is refused, typed, if nothing does).
                let spare = limit.saturating_sub(out.size.saturating_sub(letter.reason.len()));
                let reason: String = letter.reason.chars().take(spare / 4).collect();
                out = codec::encode(&letter.envelope, Some(&reason), limit)?;
            }
            by_queue.entry(q).or_default().push((&letter.envelope, out));
        }
        for (q, outs) in by_queue {
            let url = &self.queues[q].dead_letters;
            let items: Vec<_> = outs.iter().map(|(e, out)| (*e, out)).collect();
            self.bus.send(url, &items).await?;
        }
        tracing::info!(group = %self.group, letters = letters.len(), "sent to the dead-letter queue");
        Ok(())
    }
}

impl Drop for SqsSubscription {
    /// Leaves the group: the receivers stop, and once their last long polls have ended (what
    /// those bring is held too), everything the member held is made visible again at once (in
    /// the background) for the other members, instead of after its visibility timeout. Giving
    /// back only then keeps the member's own last polls from receiving it again (each receive
    /// counts towards the delivery limit).
    fn drop(&mut self) {
        self.stop.cancel();
        self.inbox.close();
        let receivers = std::mem::take(&mut self.receivers);
        let heartbeat = self.heartbeat.take();
        let (bus, held, beat) = (self.bus.clone(), self.held.clone(), self.beat.clone());
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            beat.cancel();
            return;
        };
        runtime.spawn(async move {
            // A receive ends within its long poll; one that hangs is cut off after that.
            let patience = bus.config.long_poll + Duration::from_secs(5);
            for receiver in receivers {
                let abort = receiver.abort_handle();
                match tokio::time::timeout(patience, receiver).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) if e.is_cancelled() => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "a receiver ended abnormally"),
                    Err(_) => {
                        tracing::warn!("a receive outlived its long poll; cut off");
                        abort.abort();
                    }
                }
            }
            // No extension may land after the give-back.
            beat.cancel();
            if let Some(heartbeat) = heartbeat {
                if let Err(e) = heartbeat.await {
                    tracing::warn!(error = %e, "the heartbeat ended abnormally");
                }
            }
            let given_back: Vec<(String, Arc<str>)> = held.lock().drain().collect();
            give_back(&bus, given_back).await;
        });
    }
}

/// Deletes messages by receipt, ten a call.
async fn delete(bus: &Inner, url: &str, receipts: &[String]) -> Result<()> {
    for chunk in receipts.chunks(crate::BATCH) {
        let mut request = bus.client.delete_message_batch().queue_url(url);
        for (i, receipt) in chunk.iter().enumerate() {
            let entry = DeleteMessageBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(receipt)
                .build()
                .map_err(|e| Error::backend("sqs", "building a delete", e))?;
            request = request.entries(entry);
        }
        let done = match request.send().await {
            Ok(done) => done,
            Err(e) if missing_queue(e.code()) => {
                // The queue was deleted, and its messages with it: nothing is left to delete.
                tracing::warn!(%url, "not deleted: the queue was deleted with its messages");
                return Ok(());
            }
            Err(e) => return Err(backend("deleting messages", e)),
        };
        for failed in done.failed() {
            if failed.sender_fault() {
                // The receipt is no longer good (its visibility ran out and another member
                // received the message): retrying it never succeeds, and the message is that
                // member's to apply (the projection skips what it applied).
                tracing::warn!(%url, code = failed.code(), message = failed.message().unwrap_or_default(), "not deleted: another member has the message now");
            } else {
                return Err(Error::Backend {
                    backend: "sqs",
                    message: format!(
                        "SQS did not delete a message ({}: {})",
                        failed.code(),
                        failed.message().unwrap_or_default()
                    ),
                    source: None,
                });
            }
        }
    }
    Ok(())
}

/// Sets the visibility of held messages, ten a call, all calls at once; failures are logged
/// (the messages then come back when their visibility runs out, and the projection skips what
/// it applied).
async fn set_visibility(bus: &Inner, receipts: &[(String, Arc<str>)], seconds: i32) {
    let mut by_queue: HashMap<&str, Vec<&str>> = HashMap::new();
    for (receipt, url) in receipts {
        by_queue.entry(url).or_default().push(receipt);
    }
    let calls = by_queue.iter().flat_map(|(url, receipts)| {
        receipts.chunks(crate::BATCH).map(move |chunk| async move {
            let mut request = bus.client.change_message_visibility_batch().queue_url(*url);
            for (i, receipt) in chunk.iter().enumerate() {
                match ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(*receipt)
                    .visibility_timeout(seconds)
                    .build()
                {
                    Ok(entry) => request = request.entries(entry),
                    Err(e) => tracing::warn!(error = %e, "building a visibility change"),
                }
            }
            match request.send().await {
                Ok(done) if !done.failed().is_empty() => {
                    tracing::debug!(%url, failed = done.failed().len(), "visibility not changed (deleted or received elsewhere)");
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(%url, error = %backend("changing visibility", e), "visibility not changed; the messages come back when it runs out");
                }
            }
        })
    });
    futures::future::join_all(calls).await;
}

async fn give_back(bus: &Inner, receipts: Vec<(String, Arc<str>)>) {
    if !receipts.is_empty() {
        set_visibility(bus, &receipts, 0).await;
    }
}

/// Extends the visibility of everything held, every third of the visibility timeout (a
/// fixed rate: a slow round does not push the next one back), each round cut off at that.
async fn heartbeat(bus: Arc<Inner>, held: Held, stop: CancellationToken) {
    let visibility = bus.config.visibility;
    let seconds = i32::try_from(visibility.as_secs()).unwrap_or(i32::MAX);
    let mut ticks = tokio::time::interval(visibility / 3);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = ticks.tick() => {}
        }
        let receipts: Vec<(String, Arc<str>)> = held
            .lock()
            .iter()
            .map(|(r, u)| (r.clone(), u.clone()))
            .collect();
        if receipts.is_empty() {
            continue;
        }
        let round = set_visibility(&bus, &receipts, seconds);
        tokio::select! {
            _ = stop.cancelled() => return,
            outcome = tokio::time::timeout(visibility / 3, round) => {
                if outcome.is_err() {
                    tracing::warn!(held = receipts.len(), "extending visibility took longer than a third of it");
                }
            }
        }
    }
}
