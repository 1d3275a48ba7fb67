//! Backoff and error policies: how a processor treats what fails.

use std::time::Duration;

/// Exponential backoff between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first delay.
    pub min: Duration,
    /// The largest delay.
    pub max: Duration,
}

impl Backoff {
    /// A backoff from `min` doubling up to `max`.
    pub const fn new(min: Duration, max: Duration) -> Self {
        Backoff { min, max }
    }

    /// The delay before retry number `attempt` (0-based), with up to 25% jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        let jitter = base.as_nanos() as u64 / 4;
        if jitter == 0 {
            return base;
        }
        let r = fastrand::u64(0..jitter);
        base.saturating_sub(Duration::from_nanos(r))
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based) with "equal jitter": half of the
    /// exponential delay, plus a random share of the other half. Writers that collided retry
    /// at spread-out moments instead of colliding again in lockstep.
    pub fn spread(&self, attempt: u32) -> Duration {
        let base = self
            .min
            .saturating_mul(2u32.saturating_pow(attempt.min(16)))
            .min(self.max);
        let half = base / 2;
        let span = (base - half).as_nanos() as u64;
        half + Duration::from_nanos(if span == 0 {
            0
        } else {
            fastrand::u64(0..=span)
        })
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(50), Duration::from_secs(5))
    }
}

/// What to do once an event has failed for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnFailure {
    /// Stop the processor with the error; the checkpoint stays before the failing batch.
    Stop,
    /// Keep the event and the reason as a dead letter, and go on with the others.
    DeadLetter,
}

/// How a projection treats an event it cannot handle: a failing handler is retried with
/// backoff, then stopped on or dead-lettered. An event that cannot be decoded (unknown name,
/// bad payload) is not retried: it goes straight to `then`. Nothing is ever dropped silently.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ErrorPolicy {
    /// How many times a failing handler is retried.
    pub retries: u32,
    /// The delay between handler retries.
    pub backoff: Backoff,
    /// What happens after the retries.
    pub then: OnFailure,
}

impl ErrorPolicy {
    /// Stop at the first failure.
    pub const fn stop() -> Self {
        ErrorPolicy {
            retries: 0,
            backoff: Backoff::new(Duration::from_millis(50), Duration::from_secs(5)),
            then: OnFailure::Stop,
        }
    }

    /// Dead-letter at the first failure.
    pub const fn dead_letter() -> Self {
        ErrorPolicy {
            then: OnFailure::DeadLetter,
            ..Self::stop()
        }
    }

    /// Retry a failing handler `retries` times with `backoff`, then stop.
    pub const fn retry(retries: u32, backoff: Backoff) -> Self {
        ErrorPolicy {
            retries,
            backoff,
            then: OnFailure::Stop,
        }
    }

    /// After the retries, dead-letter instead of stopping.
    #[must_use]
    pub const fn then_dead_letter(mut self) -> Self {
        self.then = OnFailure::DeadLetter;
        self
    }
}

impl Default for ErrorPolicy {
    fn default() -> Self {
        Self::stop()
    }
}
