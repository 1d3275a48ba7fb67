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
    pokes: watch::Sender<u64>,
    poker: std::sync::OnceLock<JoinHandle<()>>,
}

impl Notifier {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Notifier {
            bumps: watch::Sender::new(0),
            task: OnceCell::new(),
            pokes: watch::Sender::new(0),
            poker: std::sync::OnceLock::new(),
        })
    }

    /// Tells every listener (in any process) that the log moved: after a commit, or a rollback
    /// that may have held readers up. Sent after the fact, outside the appending transaction,
    /// and coalesced: a burst of appends costs one NOTIFY.
    pub(crate) fn poke(&self, pool: &PgPool, channel: &str) {
        self.poker.get_or_init(|| {
            let mut pokes = self.pokes.subscribe();
            let (pool, channel) = (pool.clone(), channel.to_owned());
            tokio::spawn(async move {
                while pokes.changed().await.is_ok() {
                    pokes.mark_unchanged();
                    let sent = sqlx::query("SELECT pg_notify($1, '')")
                        .bind(&channel)
                        .execute(&pool)
                        .await;
                    if let Err(e) = sent {
                        // Readers still wake on their idle timeout: late, never lost.
                        tracing::warn!(error = %e, "notifying readers failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    }
                }
            })
        });
        self.pokes.send_modify(|n| *n = n.wrapping_add(1));
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
        if let Some(task) = self.poker.get() {
            task.abort();
        }
    }
}
