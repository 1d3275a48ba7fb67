//! Wakes tailing readers on LISTEN/NOTIFY instead of polling.

use std::sync::Arc;

use cqrs_core::Result;
use sqlx::postgres::PgListener;
use sqlx::PgPool;
use tokio::sync::{watch, OnceCell};
use tokio::task::JoinHandle;

use crate::error::db;

/// One listener per store, shared by every reader of it. Each notification (and each
/// reconnection, after which notifications may have been missed) bumps a counter that waiting
/// readers watch.
pub(crate) struct Notifier {
    bumps: watch::Sender<u64>,
    task: OnceCell<JoinHandle<()>>,
}

impl Notifier {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Notifier {
            bumps: watch::Sender::new(0),
            task: OnceCell::new(),
        })
    }

    /// A receiver that sees every bump after this call.
    pub(crate) fn subscribe(&self) -> watch::Receiver<u64> {
        self.bumps.subscribe()
    }

    /// Starts listening (once). Returns when LISTEN is in place, so a reader that subscribed
    /// before calling this cannot miss a notification sent after.
    pub(crate) async fn ensure_listening(&self, pool: &PgPool, channel: &str) -> Result<()> {
        self.task
            .get_or_try_init(|| async {
                let mut listener = PgListener::connect_with(pool)
                    .await
                    .map_err(|e| db("connecting the event listener", e))?;
                listener
                    .listen(channel)
                    .await
                    .map_err(|e| db("LISTEN for new events", e))?;
                let bumps = self.bumps.clone();
                Ok(tokio::spawn(async move {
                    loop {
                        match listener.try_recv().await {
                            // A notification, or a reconnection (`None`): wake the readers.
                            Ok(_) => {
                                bumps.send_modify(|n| *n = n.wrapping_add(1));
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "event listener failed; retrying");
                                bumps.send_modify(|n| *n = n.wrapping_add(1));
                                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                            }
                        }
                    }
                }))
            })
            .await
            .map(|_| ())
    }
}

impl Drop for Notifier {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}
