//! A running processor, seen from outside: its position, what it has applied, how it ended.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use parking_lot::Mutex;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::Batch;
use crate::envelope::Envelope;
use crate::error::{Error, Result};

/// What a bus-fed processor has committed, per stream: the last version of each stream it
/// has seen in a committed batch. A bus has an order per partition only, so a position says
/// nothing of the events below it; stream versions do. Bounded: past `capacity` streams, an
/// arbitrary one is forgotten (a wait for it then times out rather than answer wrongly).
pub(super) struct Progress {
    streams: Mutex<HashMap<String, u64>>,
    capacity: usize,
    committed: watch::Sender<u64>,
}

impl std::fmt::Debug for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Progress")
            .field("streams", &self.streams.lock().len())
            .field("capacity", &self.capacity)
            .finish()
    }
}

impl Progress {
    pub(super) fn new(capacity: usize) -> Self {
        Progress {
            streams: Mutex::new(HashMap::new()),
            capacity: capacity.max(1),
            committed: watch::Sender::new(0),
        }
    }

    /// Records a committed batch: every event in it was handled (applied, skipped as seen or
    /// not wanted, or dead-lettered).
    pub(super) fn record(&self, batch: &Batch) {
        if batch.events.is_empty() {
            return;
        }
        {
            let mut streams = self.streams.lock();
            for e in &batch.events {
                if let Some(v) = streams.get_mut(e.stream_id.as_str()) {
                    *v = (*v).max(e.version);
                    continue;
                }
                if streams.len() >= self.capacity {
                    if let Some(victim) = streams.keys().next().cloned() {
                        streams.remove(&victim);
                    }
                }
                streams.insert(e.stream_id.clone(), e.version);
            }
        }
        self.committed.send_modify(|n| *n = n.wrapping_add(1));
    }

    fn has_all(&self, events: &[Envelope]) -> bool {
        let streams = self.streams.lock();
        events.iter().all(|e| {
            streams
                .get(e.stream_id.as_str())
                .is_some_and(|v| *v >= e.version)
        })
    }
}

/// Tells, from elsewhere (a health endpoint), whether and why a spawned processor ended.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct EndWatch(watch::Receiver<Option<String>>);

impl EndWatch {
    /// `None` while the processor runs; then `"stopped"` after a stop, the error that stopped
    /// it, or a note that its task ended abnormally (a panic, an abort).
    pub fn why(&self) -> Option<String> {
        let why = self.0.borrow().clone();
        match why {
            Some(why) => Some(why),
            None if self.0.has_changed().is_err() => Some("its task ended abnormally".to_owned()),
            None => None,
        }
    }
}

/// A running processor: wait for it to reach a position, or stop it.
#[derive(Debug)]
pub struct ProcessorHandle {
    pub(super) name: String,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<Result<()>>,
    pub(super) position: watch::Receiver<u64>,
    pub(super) lag: watch::Receiver<Lag>,
    pub(super) ended: watch::Receiver<Option<String>>,
    /// Whether the feed has one global order (the store's log).
    pub(super) ordered: bool,
    pub(super) progress: Arc<Progress>,
    /// The segments held, for a processor run in segments.
    pub(super) held: watch::Receiver<Vec<u32>>,
    /// Whether it runs in segments.
    pub(super) segmented: bool,
}

/// How far behind a processor is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Lag {
    /// No batch yet.
    Unknown,
    /// The feed had nothing more.
    CaughtUp,
    /// The timestamp of the last event applied.
    Behind(DateTime<Utc>),
}

impl Lag {
    pub(crate) fn seconds(&self) -> Option<f64> {
        match self {
            Lag::Unknown => None,
            Lag::CaughtUp => Some(0.0),
            Lag::Behind(at) => {
                let behind = Utc::now().signed_duration_since(*at);
                Some((behind.num_milliseconds().max(0) as f64) / 1000.0)
            }
        }
    }
}

/// A processor's lag, readable from anywhere ([`ProcessorHandle::watch_lag`]).
#[derive(Debug, Clone)]
pub struct LagWatch(watch::Receiver<Lag>);

impl LagWatch {
    /// As [`ProcessorHandle::lag_seconds`].
    pub fn seconds(&self) -> Option<f64> {
        self.0.borrow().seconds()
    }
}

impl ProcessorHandle {
    /// The processor's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The segments this instance holds, by index, for a processor run in segments
    /// ([`TrackingProcessor::segments`](super::TrackingProcessor::segments)); empty otherwise.
    pub fn held_segments(&self) -> Vec<u32> {
        self.held.borrow().clone()
    }

    /// The segments this instance holds, readable from anywhere (a health report); `None`
    /// for a processor that does not run in segments.
    pub fn watch_segments(&self) -> Option<watch::Receiver<Vec<u32>>> {
        self.segmented.then(|| self.held.clone())
    }

    /// The largest global position committed so far.
    pub fn position(&self) -> u64 {
        *self.position.borrow()
    }

    /// A receiver of the largest global position committed so far, to wait on from elsewhere.
    pub fn watch_position(&self) -> watch::Receiver<u64> {
        self.position.clone()
    }

    /// How far behind the processor is, in seconds: now minus the timestamp of the last event
    /// it applied (of the oldest in the batch it is working on), 0 once its feed had nothing
    /// more, `None` before its first poll.
    pub fn lag_seconds(&self) -> Option<f64> {
        self.lag.borrow().seconds()
    }

    /// A receiver of the processor's lag, to read from elsewhere (a health report).
    pub fn watch_lag(&self) -> LagWatch {
        LagWatch(self.lag.clone())
    }

    /// Waits until the processor has committed everything up to `position` of the store's
    /// global log, or `timeout` passes.
    ///
    /// # Errors
    /// [`Error::Shutdown`] when the processor ended first; [`Error::Backend`] on timeout;
    /// [`Error::Config`] for a processor fed by a bus, whose partitions have no one order, so
    /// a position says nothing of the events below it: wait with
    /// [`wait_for_events`](Self::wait_for_events) there.
    pub async fn wait_for(&mut self, position: u64, timeout: Duration) -> Result<()> {
        if !self.ordered {
            return Err(Error::Config(format!(
                "`{}` is fed by a bus, whose partitions have no one order: a position says \
                 nothing of the events below it; wait with `wait_for_events`",
                self.name
            )));
        }
        let outcome = {
            let wait = self.position.wait_for(|p| *p >= position);
            tokio::time::timeout(timeout, wait).await.map(|r| r.is_ok())
        };
        match outcome {
            Ok(true) => Ok(()),
            Ok(false) => Err(Error::Shutdown),
            Err(_) => Err(self.timed_out(format!("position {position}"), timeout)),
        }
    }

    /// Waits until the processor has committed batches holding each of these events (those a
    /// command returned, say), whatever its feed, or `timeout` passes. From the store's log
    /// that is the largest of their positions; from a bus, each event's stream version.
    ///
    /// # Errors
    /// As [`wait_for`](Self::wait_for), without the bus case.
    pub async fn wait_for_events(&mut self, events: &[Envelope], timeout: Duration) -> Result<()> {
        if self.ordered {
            let last = events.iter().map(|e| e.position).max().unwrap_or(0);
            return self.wait_for(last, timeout).await;
        }
        let mut committed = self.progress.committed.subscribe();
        let mut ended = self.ended.clone();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            committed.mark_unchanged();
            ended.mark_unchanged();
            if self.progress.has_all(events) {
                return Ok(());
            }
            if self.task.is_finished() || ended.borrow().is_some() {
                return Err(Error::Shutdown);
            }
            let woken = tokio::time::timeout_at(deadline, async {
                tokio::select! {
                    _ = committed.changed() => {}
                    // The processor ended (or its task died): no commit will come.
                    _ = ended.changed() => {}
                }
            })
            .await;
            if woken.is_err() {
                return Err(self.timed_out(format!("{} events", events.len()), timeout));
            }
        }
    }

    fn timed_out(&self, what: String, timeout: Duration) -> Error {
        Error::Backend {
            backend: "processor",
            message: format!(
                "`{}` did not reach {what} within {timeout:?} (at position {})",
                self.name,
                *self.position.borrow()
            ),
            source: None,
        }
    }

    /// Whether and why the processor ended, to check from elsewhere (a health endpoint).
    pub fn watch_ended(&self) -> EndWatch {
        EndWatch(self.ended.clone())
    }

    /// Whether the processor's task has ended (stopped, or failed).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the processor after the batch under way and returns how it ended.
    ///
    /// # Errors
    /// The error that had stopped it, or [`Error::Shutdown`] if its task panicked.
    pub async fn stop(self) -> Result<()> {
        self.stop.cancel();
        match self.task.await {
            Ok(outcome) => outcome,
            Err(e) => Err(Error::Backend {
                backend: "processor",
                message: format!("task of `{}` ended abnormally", self.name),
                source: Some(Box::new(e)),
            }),
        }
    }

    /// Kills the processor at once, wherever it is (as a crash would).
    pub fn abort(self) {
        self.task.abort();
    }
}
