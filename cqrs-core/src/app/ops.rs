//! What an operator sees of a running app, from anywhere (an HTTP handler): its health, and
//! the retry of dead letters. Cheap to clone.

use std::sync::Arc;

use tokio::sync::watch;

use super::health::{Health, ProcessorHealth, RelayHealth, Status};
use super::parts::{RetryDeadLetters, Source};
use super::wiring::Wiring;
use crate::error::{Error, Result};
use crate::processor::{EndWatch, LagWatch, RetryReport};
use crate::relay::Breaker;

/// An app's health and dead-letter retries, shareable apart from the [`App`](super::App)
/// that owns the running tasks.
#[derive(Clone)]
pub struct Ops {
    pub(super) wiring: Wiring,
    pub(super) relays: Vec<RelayWatch>,
    pub(super) processors: Vec<ProcessorWatch>,
}

impl std::fmt::Debug for Ops {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ops")
            .field("relays", &self.relays.len())
            .field("processors", &self.processors.len())
            .finish_non_exhaustive()
    }
}

#[derive(Clone)]
pub(super) struct RelayWatch {
    pub(super) name: String,
    pub(super) breaker: watch::Receiver<Breaker>,
    pub(super) position: watch::Receiver<u64>,
}

#[derive(Clone)]
pub(super) struct ProcessorWatch {
    pub(super) name: String,
    pub(super) source: Source,
    pub(super) position: watch::Receiver<u64>,
    pub(super) lag: LagWatch,
    pub(super) ended: EndWatch,
    pub(super) retry: Arc<dyn RetryDeadLetters>,
    pub(super) segments: Option<watch::Receiver<Vec<u32>>>,
}

impl Ops {
    /// The health report: each relay's breaker and position, each processor's position, lag
    /// and why it ended, if it did. It answers while the event store is down (the lags are
    /// then unknown): the service is not degraded by an outage it rides out.
    pub async fn health(&self) -> Health {
        // Bounded: a store that is down must not hold the report up (a pool waits long).
        let second = std::time::Duration::from_secs(1);
        let (head, held_back) = tokio::join!(
            tokio::time::timeout(second, self.wiring.store.head()),
            tokio::time::timeout(second, self.wiring.store.held_back()),
        );
        let log_held_back = match held_back {
            Ok(Ok(held)) => held,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health: whether the log is held back is unknown");
                None
            }
            Err(_) => None,
        };
        // Held back for an unknown time (the role may not see the session): -1, not 0.
        crate::metrics::held_back(
            log_held_back
                .as_ref()
                .map_or(0.0, |h| h.seconds.unwrap_or(-1.0)),
        );
        let head = match head {
            Ok(Ok(head)) => Some(head),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "health: the head of the log is unknown");
                None
            }
            Err(_) => {
                tracing::warn!("health: the event store did not answer within 1 s");
                None
            }
        };
        let relays: Vec<RelayHealth> = self
            .relays
            .iter()
            .map(|r| RelayHealth {
                name: r.name.clone(),
                breaker: *r.breaker.borrow(),
                position: {
                    let position = *r.position.borrow();
                    crate::metrics::relay_state(&r.name, *r.breaker.borrow(), position);
                    position
                },
                // The relay owns the sender: gone means its task ended.
                stopped: r
                    .position
                    .has_changed()
                    .is_err()
                    .then(|| "its task ended".to_owned()),
            })
            .collect();
        let processors: Vec<ProcessorHealth> = self
            .processors
            .iter()
            .map(|p| {
                let position = *p.position.borrow();
                let on_store = p.source == Source::Store;
                let segments = p.segments.as_ref().map(|held| held.borrow().clone());
                // A spare instance (holding no segment) has nothing ahead of it.
                let spare = segments.as_ref().is_some_and(Vec::is_empty);
                let lag = head.filter(|_| on_store).map(|head| {
                    if spare {
                        0
                    } else {
                        head.saturating_sub(position)
                    }
                });
                let lag_seconds = p.lag.seconds();
                crate::metrics::processor_position(&p.name, position, lag, lag_seconds);
                ProcessorHealth {
                    name: p.name.clone(),
                    feed: if on_store { "store" } else { "bus" }.into(),
                    position,
                    lag,
                    lag_seconds,
                    segments,
                    stopped: p.ended.why(),
                }
            })
            .collect();
        // An open breaker is an outage the relay rides out (events wait in the store, commands
        // go on): reported, not degraded. A stopped relay or processor is.
        let degraded = processors.iter().any(|p| p.stopped.is_some())
            || relays.iter().any(|r| r.stopped.is_some());
        Health {
            status: if degraded {
                Status::Degraded
            } else {
                Status::Ok
            },
            relays,
            processors,
            log_held_back,
        }
    }

    /// Applies a projection's dead letters again (all of them, or the one of `event`), e.g.
    /// after a fix was deployed. See
    /// [`TrackingProcessor::retry_dead_letters`](crate::TrackingProcessor::retry_dead_letters).
    ///
    /// # Errors
    /// [`Error::Config`] for an unknown projection; a backend error.
    pub async fn retry_dead_letters(
        &self,
        projection: &str,
        event: Option<uuid::Uuid>,
    ) -> Result<RetryReport> {
        let running = self
            .processors
            .iter()
            .find(|p| p.name == projection)
            .ok_or_else(|| {
                Error::Config(format!("the app runs no projection named `{projection}`"))
            })?;
        running.retry.retry(&self.wiring, event).await
    }

    /// The dead letters of a projection, oldest first.
    ///
    /// # Errors
    /// A backend error.
    pub async fn dead_letters(&self, projection: &str) -> Result<Vec<crate::view::DeadLetter>> {
        self.wiring
            .views
            .dead_letters
            .dead_letters(projection)
            .await
    }

    /// At most `limit` dead letters of a projection after `after`, oldest first: one page of
    /// [`dead_letters`](Self::dead_letters).
    ///
    /// # Errors
    /// A backend error.
    pub async fn dead_letters_page(
        &self,
        projection: &str,
        after: Option<crate::view::DeadLetterCursor>,
        limit: usize,
    ) -> Result<Vec<crate::view::DeadLetter>> {
        self.wiring
            .views
            .dead_letters
            .dead_letters_page(projection, after, limit)
            .await
    }

    /// The names of the app's projections, in the order they were added.
    pub fn projections(&self) -> Vec<&str> {
        self.processors.iter().map(|p| p.name.as_str()).collect()
    }
}
