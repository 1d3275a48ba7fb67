//! Fault injection for tests of the processor and of view stores.

use async_trait::async_trait;
use parking_lot::Mutex;

use cqrs_core::error::{Error, Result};
use cqrs_core::view::{
    Atomicity, CommitStep, StepwiseCommit, StoredDoc, UnitOfWork, ViewStore, COMMIT_ORDER,
};

/// A view store that dies between the view writes and the checkpoint: the first `crashes`
/// units of work that write views have their views written (without the checkpoint), then fail
/// with a non-transient error that stops the processor, as a crash there would leave a sink
/// without one transaction.
#[derive(Debug)]
pub struct CrashBeforeCheckpoint<S> {
    inner: S,
    crashes: Mutex<u32>,
}

impl<S: ViewStore> CrashBeforeCheckpoint<S> {
    /// Wraps `inner`, crashing `crashes` times.
    pub fn new(inner: S, crashes: u32) -> Self {
        CrashBeforeCheckpoint {
            inner,
            crashes: Mutex::new(crashes),
        }
    }

    /// The crashes still to come.
    pub fn crashes_left(&self) -> u32 {
        *self.crashes.lock()
    }
}

#[async_trait]
impl<S: ViewStore> ViewStore for CrashBeforeCheckpoint<S> {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        self.inner.load(projection, ids).await
    }

    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        let crash = {
            let mut left = self.crashes.lock();
            let crash = *left > 0 && !work.writes.is_empty();
            *left -= u32::from(crash);
            crash
        };
        if !crash {
            return self.inner.commit(work).await;
        }
        let views_only = UnitOfWork {
            checkpoint: None,
            ..work
        };
        self.inner.commit(views_only).await?;
        Err(Error::Config(
            "injected crash between the view writes and the checkpoint".into(),
        ))
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        self.inner.checkpoint(projection).await
    }

    async fn reset(&self, projection: &str) -> Result<()> {
        self.inner.reset(projection).await
    }

    fn atomicity(&self) -> Atomicity {
        self.inner.atomicity()
    }

    fn claims(&self) -> Option<&dyn cqrs_core::segment::SegmentClaims> {
        self.inner.claims()
    }
}

/// A store without transactions that dies right after one step of its units of work: the
/// first `crashes` units of work that write something in that step stop there (the steps
/// before it written, in [`COMMIT_ORDER`], the rest not) and fail with a non-transient error,
/// as a crash at that point would.
#[derive(Debug)]
pub struct CrashAfterStep<S> {
    inner: S,
    step: CommitStep,
    crashes: Mutex<u32>,
}

impl<S: StepwiseCommit + ViewStore> CrashAfterStep<S> {
    /// Wraps `inner`, crashing after `step` `crashes` times.
    pub fn new(inner: S, step: CommitStep, crashes: u32) -> Self {
        CrashAfterStep {
            inner,
            step,
            crashes: Mutex::new(crashes),
        }
    }

    /// The crashes still to come.
    pub fn crashes_left(&self) -> u32 {
        *self.crashes.lock()
    }
}

fn writes_in(step: CommitStep, work: &UnitOfWork) -> bool {
    match step {
        CommitStep::DeadLetters => !work.dead_letters.is_empty(),
        CommitStep::Views => !work.writes.is_empty(),
        CommitStep::Resolved => !work.resolved.is_empty(),
        CommitStep::Checkpoint => work.checkpoint.is_some(),
        // A step this wrapper does not know yet: it never crashes there.
        _ => false,
    }
}

#[async_trait]
impl<S: StepwiseCommit + ViewStore> ViewStore for CrashAfterStep<S> {
    async fn load(&self, projection: &str, ids: &[String]) -> Result<Vec<StoredDoc>> {
        self.inner.load(projection, ids).await
    }

    async fn commit(&self, work: UnitOfWork) -> Result<()> {
        let crash = *self.crashes.lock() > 0 && writes_in(self.step, &work);
        for step in COMMIT_ORDER {
            self.inner.commit_step(step, &work).await?;
            if crash && step == self.step {
                // Counted only once the crash happens (an earlier step may have failed).
                let mut left = self.crashes.lock();
                *left = left.saturating_sub(1);
                return Err(Error::Config(format!(
                    "injected crash after the {step:?} step of a unit of work"
                )));
            }
        }
        Ok(())
    }

    async fn checkpoint(&self, projection: &str) -> Result<Option<u64>> {
        self.inner.checkpoint(projection).await
    }

    async fn reset(&self, projection: &str) -> Result<()> {
        self.inner.reset(projection).await
    }

    fn atomicity(&self) -> Atomicity {
        Atomicity::Stepwise
    }

    fn claims(&self) -> Option<&dyn cqrs_core::segment::SegmentClaims> {
        self.inner.claims()
    }
}
