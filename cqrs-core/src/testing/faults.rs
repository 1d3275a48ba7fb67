//! Fault injection for tests of the processor and of view stores.

use async_trait::async_trait;
use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::view::{StoredDoc, UnitOfWork, ViewStore};

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
}
