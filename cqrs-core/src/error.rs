//! The one error type of `cqrs-core`, shared by every backend.

use std::fmt;

/// A boxed error from a backend driver, kept as the source of an [`Error`].
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// A shorthand for `Result<T, cqrs_core::Error>`.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Where in the event store an event sits: enough to find the row again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventRef {
    /// The stream (aggregate instance) the event belongs to.
    pub stream_id: String,
    /// The event's version within its stream.
    pub version: u64,
    /// The event's position in the global log (0 when it has none, e.g. before append).
    pub position: u64,
    /// The stored event name.
    pub event_name: String,
    /// The stored schema version of the event.
    pub event_version: u32,
}

impl fmt::Display for EventRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "event `{}` v{} at stream `{}` version {} (global position {})",
            self.event_name, self.event_version, self.stream_id, self.version, self.position
        )
    }
}

/// Everything that can go wrong inside the framework and its backends.
///
/// Domain rejections are not here: they are the aggregate's own error type, returned
/// by the gateway as [`CommandError::Rejected`].
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Optimistic concurrency: the stream was not at the version the writer expected.
    #[error(
        "concurrency conflict on stream `{stream_id}`: expected version {expected}, found {actual}"
    )]
    Conflict {
        /// The stream that was written concurrently.
        stream_id: String,
        /// The version the writer expected the stream to have.
        expected: u64,
        /// The version the stream actually had.
        actual: u64,
    },
    /// A stream id another aggregate type already uses. Streams are keyed by id alone, so an
    /// id names one aggregate instance of one type (see `docs/adr/0007`).
    #[error("stream `{stream_id}` belongs to aggregate type `{actual}`, not `{expected}`")]
    WrongAggregateType {
        /// The stream.
        stream_id: String,
        /// The aggregate type that asked for it.
        expected: String,
        /// The aggregate type that wrote it.
        actual: String,
    },
    /// An event whose routing key differs from its stream's: a stream keeps one routing key
    /// for its whole life, so its events stay in one partition and in order (see
    /// `docs/adr/0011`).
    #[error(
        "stream `{stream_id}` is routed by `{expected}`; an event may not route it by `{actual}`"
    )]
    RoutingKeyChanged {
        /// The stream.
        stream_id: String,
        /// The stream's routing key (its id, when its events name none).
        expected: String,
        /// The routing key the refused event named.
        actual: String,
    },
    /// A unit of work of a segment whose claim another instance took: the view store holds
    /// another token (see [`crate::segment`]). Nothing of it was committed, or (a store
    /// without transactions) only view writes that the new holder's replay skips.
    #[error("projection `{projection}` lost segment {segment}: another instance holds it")]
    ClaimLost {
        /// The projection.
        projection: String,
        /// The segment.
        segment: crate::segment::Segment,
    },
    /// A view document changed since it was loaded (another processor wrote it).
    #[error("view `{id}` of projection `{projection}` changed concurrently: expected revision {expected}, found {actual}")]
    ViewConflict {
        /// The projection.
        projection: String,
        /// The view's id.
        id: String,
        /// The revision the writer loaded.
        expected: u64,
        /// The revision stored now.
        actual: u64,
    },
    /// A stored event name that no registered event type or upcaster knows.
    #[error("unknown {event}: no event type is registered under this name")]
    UnknownEvent {
        /// The event that could not be decoded.
        event: EventRef,
    },
    /// A stored event whose payload could not be decoded or upcast.
    #[error("cannot decode {event}: {reason}")]
    Decode {
        /// The event that could not be decoded.
        event: EventRef,
        /// What was wrong with it.
        reason: String,
    },
    /// Stored events of a schema version with no upcaster chain to the current one.
    #[error("event `{name}` v{version}: {reason}")]
    Registry {
        /// The event name.
        name: String,
        /// The stored version.
        version: u32,
        /// What the registry lacks.
        reason: String,
    },
    /// An event or view could not be serialized.
    #[error("cannot serialize {what}: {source}")]
    Serialize {
        /// What was being serialized.
        what: String,
        /// The serializer's error.
        #[source]
        source: serde_json::Error,
    },
    /// A stored document (view, snapshot, checkpoint) that cannot be read.
    #[error("malformed {what}: {reason}")]
    Malformed {
        /// Which document.
        what: String,
        /// What was wrong with it.
        reason: String,
    },
    /// A projection's handler failed on an event.
    #[error("projection `{projection}` failed on {event}: {reason}")]
    Handler {
        /// The projection's name.
        projection: String,
        /// The event it failed on.
        event: EventRef,
        /// The handler's message.
        reason: String,
    },
    /// An event larger than the bus carries in one message: refused before anything of its
    /// batch was sent, never truncated.
    #[error("{event} is {size} bytes as a message; the bus carries at most {limit}")]
    TooLarge {
        /// The event.
        event: EventRef,
        /// Its size as the bus counts it.
        size: usize,
        /// The bus's limit.
        limit: usize,
    },
    /// A configuration value (a name, a size, an address) that is not acceptable, or a
    /// backend that refuses, as a service starts, the credentials or permissions it was given
    /// (on every backend): retrying does not mend it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A backend (database, broker) failed or could not be reached. Usually transient.
    #[error("{backend} backend: {message}{}", source.as_ref().map(|s| format!(": {s}")).unwrap_or_default())]
    Backend {
        /// Which backend: "postgres", "mongo", "kafka", "rabbitmq", "redis", "sqs", "memory".
        backend: &'static str,
        /// What was being done.
        message: String,
        /// The driver's error.
        #[source]
        source: Option<BoxError>,
    },
    /// The component was shut down while the call was under way.
    #[error("shut down")]
    Shutdown,
}

impl Error {
    /// A backend error with the driver's error as its source.
    pub fn backend(
        backend: &'static str,
        message: impl Into<String>,
        source: impl Into<BoxError>,
    ) -> Self {
        Error::Backend {
            backend,
            message: message.into(),
            source: Some(source.into()),
        }
    }

    /// Whether retrying the same call later may succeed (a backend outage, a conflict).
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Backend { .. } | Error::Conflict { .. } | Error::ViewConflict { .. }
        )
    }

    /// The event this error is about, if it is about one event.
    pub fn event(&self) -> Option<&EventRef> {
        match self {
            Error::UnknownEvent { event }
            | Error::Decode { event, .. }
            | Error::Handler { event, .. }
            | Error::TooLarge { event, .. } => Some(event),
            _ => None,
        }
    }
}

/// The outcome of sending a command that did not commit.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E> {
    /// The aggregate refused the command: a domain rule, not a failure.
    #[error("command rejected: {0}")]
    Rejected(E),
    /// A middleware refused the command before it reached the aggregate.
    #[error("command refused by middleware: {0}")]
    Refused(String),
    /// The stream kept changing under the command; it gave up after its retries.
    #[error("gave up after {attempts} attempts: {source}")]
    Conflict {
        /// How many times the command was tried.
        attempts: u32,
        /// The last conflict.
        #[source]
        source: Error,
    },
    /// The framework or a backend failed.
    #[error(transparent)]
    Failed(#[from] Error),
}

impl<E> CommandError<E> {
    /// The domain rejection, if that is what this is.
    pub fn rejection(&self) -> Option<&E> {
        match self {
            CommandError::Rejected(e) => Some(e),
            _ => None,
        }
    }

    /// Whether this is a concurrency conflict left after the gateway's retries.
    pub fn is_conflict(&self) -> bool {
        matches!(self, CommandError::Conflict { .. })
    }
}
