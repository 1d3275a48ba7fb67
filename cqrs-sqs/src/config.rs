//! Configuration, validated before it reaches SQS, and the names it gives queues.

use std::time::Duration;

use cqrs_core::{Error, Result};

/// The longest queue name SQS accepts, `.fifo` included.
const MAX_QUEUE_NAME: usize = 80;

/// What joins an aggregate type and a group in a queue's name. No configured name may hold
/// it, so two pairs never meet in one name.
pub(crate) const JOIN: &str = "--";

/// Deliveries of a message, alone in its batch, after it reached the delivery limit and before
/// it is a dead letter.
pub const ISOLATED_ATTEMPTS: u32 = 3;

/// The largest message SQS takes: body and message attributes (names, types and values).
pub const SQS_MAX_MESSAGE: usize = 262_144;

/// Checks a name given to this bus as a group or aggregate type: ASCII letters, digits, `.`,
/// `_` and `-`, never `--`, and not starting or ending with `-` (where it would meet the `--`
/// that joins names). SQS takes no `.` in a queue name: it becomes `_` there, so
/// `shop.catalog` and `shop_catalog` name the same queues.
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    check_name(what, name, true)
}

/// As [`validate_name`]; a prefix may end with `-` (`shop-`), since no `--` follows it.
fn check_name(what: &str, name: &str, edges: bool) -> Result<()> {
    let ok = name.len() <= MAX_QUEUE_NAME
        && !name.contains(JOIN)
        && !name.starts_with('-')
        && (!edges || !name.ends_with('-'))
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid SQS {what} {name:?}: use A-Z, a-z, 0-9, ., _ and -, never `{JOIN}`, no `-` \
             at either end (a prefix may end with one), at most {MAX_QUEUE_NAME} characters"
        )))
    }
}

/// How queues are named and how consumer groups behave. The endpoint, region and credentials
/// are not here: they come from the standard AWS configuration (see
/// [`SqsBus::from_env`](crate::SqsBus::from_env)), so no secret is ever part of this value.
#[derive(Debug, Clone)]
pub struct SqsConfig {
    pub(crate) prefix: String,
    pub(crate) groups: Vec<String>,
    pub(crate) visibility: Duration,
    pub(crate) delivery_limit: u32,
    pub(crate) receives: usize,
    pub(crate) max_message: usize,
    pub(crate) retention: Duration,
    pub(crate) discover_every: Duration,
    pub(crate) long_poll: Duration,
}

impl SqsConfig {
    /// Queues named `<prefix><aggregate type>--<group>.fifo` (`.` in a name becomes `_`).
    ///
    /// # Errors
    /// [`Error::Config`] for a bad or empty prefix (the prefix is what
    /// [`SqsBus::delete_queues`](crate::SqsBus::delete_queues) deletes by).
    pub fn new(prefix: impl Into<String>) -> Result<Self> {
        let prefix = prefix.into();
        if prefix.is_empty() {
            return Err(Error::Config(
                "an SQS bus needs a prefix for its queue names".into(),
            ));
        }
        check_name("prefix", &prefix, false)?;
        Ok(SqsConfig {
            prefix,
            groups: Vec::new(),
            visibility: Duration::from_secs(30),
            delivery_limit: 10,
            receives: 4,
            max_message: SQS_MAX_MESSAGE,
            retention: Duration::from_secs(14 * 86_400),
            discover_every: Duration::from_secs(10),
            long_poll: Duration::from_secs(10),
        })
    }

    /// Consumer groups a publisher sends every event of a type to, creating their queues
    /// before it first sends, so they keep what is published before their first member
    /// subscribes. Groups a publisher was not told of are found by listing the queues (see
    /// [`discover_every`](Self::discover_every)); a group whose queue does not exist yet
    /// receives only what is published after it was made.
    ///
    /// # Errors
    /// [`Error::Config`] for a bad group name.
    pub fn groups(mut self, groups: impl IntoIterator<Item = impl Into<String>>) -> Result<Self> {
        for group in groups {
            let group = group.into();
            validate_name("group", &group)?;
            self.groups.push(group);
        }
        Ok(self)
    }

    /// How long a received message stays invisible to the other members (default 30 s, from
    /// 2 s to 12 h). A member extends it every third of it while the batch is applied; a dead
    /// member's messages come back after it.
    #[must_use]
    pub fn visibility(mut self, visibility: Duration) -> Self {
        self.visibility = visibility.clamp(Duration::from_secs(2), Duration::from_secs(43_200));
        self
    }

    /// Receives of one message without an acknowledgement (default 10, at most 900) after
    /// which it is handed over alone, in a batch of its own; after [`ISOLATED_ATTEMPTS`] more
    /// it is a dead letter instead of being applied again. The queue's redrive policy moves a
    /// message to the group's dead-letter queue after twice as many receives plus 13 (at most
    /// SQS's 1 000), a backstop for members that die before they can reject it.
    #[must_use]
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.clamp(1, 900);
        self
    }

    /// Receives in flight at once per queue while a batch fills (default 4, from 1 to 16),
    /// each of up to 10 messages.
    #[must_use]
    pub fn receives_in_flight(mut self, receives: usize) -> Self {
        self.receives = receives.clamp(1, 16);
        self
    }

    /// The largest message a publisher sends (default and at most [`SQS_MAX_MESSAGE`]): a
    /// larger event is refused with [`Error::TooLarge`](cqrs_core::Error::TooLarge) before
    /// anything of its batch is sent.
    #[must_use]
    pub fn max_message(mut self, bytes: usize) -> Self {
        self.max_message = bytes.clamp(1_024, SQS_MAX_MESSAGE);
        self
    }

    /// How long SQS keeps a message nobody deleted (default and at most 14 days, at least a
    /// minute). The event store stays the source of truth for replays.
    #[must_use]
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention.clamp(Duration::from_secs(60), Duration::from_secs(14 * 86_400));
        self
    }

    /// How often a publisher lists the queues of the types it sends, to find groups it was
    /// not told of (default 10 s, from 100 ms to an hour).
    #[must_use]
    pub fn discover_every(mut self, every: Duration) -> Self {
        self.discover_every = every.clamp(Duration::from_millis(100), Duration::from_secs(3_600));
        self
    }

    /// How long a receive waits for messages on an empty queue (default 10 s, whole seconds
    /// from 1 to SQS's 20). Longer polls cost fewer receives; a member that leaves gives back
    /// what it held once its last polls have ended, so at most this long after it left.
    #[must_use]
    pub fn long_poll(mut self, wait: Duration) -> Self {
        self.long_poll = wait.clamp(Duration::from_secs(1), Duration::from_secs(20));
        self
    }

    /// The prefix of every queue name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The start of every queue's name: the prefix, `.` as `_`.
    pub(crate) fn queue_prefix(&self) -> String {
        self.prefix.replace('.', "_")
    }

    /// The start of the names of an aggregate type's queues.
    pub(crate) fn type_prefix(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}{JOIN}", self.prefix).replace('.', "_")
    }

    /// The queue of one group on one aggregate type.
    pub fn queue(&self, aggregate_type: &str, group: &str) -> String {
        format!(
            "{}{}.fifo",
            self.type_prefix(aggregate_type),
            group.replace('.', "_")
        )
    }

    /// The dead-letter queue of one group on one aggregate type.
    pub fn dead_letter_queue(&self, aggregate_type: &str, group: &str) -> String {
        format!(
            "{}{}{JOIN}dlq.fifo",
            self.type_prefix(aggregate_type),
            group.replace('.', "_")
        )
    }

    /// Receives after which SQS itself moves a message to the dead-letter queue.
    pub(crate) fn redrive_after(&self) -> u32 {
        (self.delivery_limit * 2 + ISOLATED_ATTEMPTS + 10).min(1_000)
    }

    /// Checks a group and its aggregate types.
    pub(crate) fn check(&self, group: &str, aggregate_types: &[&str]) -> Result<()> {
        if group.is_empty() || aggregate_types.is_empty() {
            return Err(Error::Config(
                "a subscription needs a group name and at least one aggregate type".into(),
            ));
        }
        validate_name("group", group)?;
        for t in aggregate_types {
            self.check_type(t)?;
            let name = self.dead_letter_queue(t, group);
            if name.len() > MAX_QUEUE_NAME {
                return Err(Error::Config(format!(
                    "the queue name {name:?} is longer than SQS's {MAX_QUEUE_NAME} characters: \
                     shorten the prefix, the group or the aggregate type"
                )));
            }
        }
        Ok(())
    }

    pub(crate) fn check_type(&self, aggregate_type: &str) -> Result<()> {
        if aggregate_type.is_empty() {
            return Err(Error::Config("an empty aggregate type".into()));
        }
        validate_name("aggregate type", aggregate_type)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn names_that_would_meet_are_refused() {
        assert!(SqsConfig::new("a--b").is_err());
        assert!(SqsConfig::new("a:b").is_err());
        assert!(SqsConfig::new("").is_err());
        assert!(SqsConfig::new("shop-").is_ok());
        assert!(SqsConfig::new("p")
            .unwrap()
            .check("g", &["order-"])
            .is_err());
        assert!(SqsConfig::new("p")
            .unwrap()
            .check("-g", &["order"])
            .is_err());
        assert_eq!(
            SqsConfig::new("p")
                .unwrap()
                .delivery_limit(900)
                .redrive_after(),
            1_000
        );
        let c = SqsConfig::new("shop.").unwrap();
        assert!(c.check("g--1", &["t"]).is_err());
        assert!(c.check("g", &["t/x"]).is_err());
        assert!(c.check("g", &[]).is_err());
        assert!(c.check(&"g".repeat(70), &["order"]).is_err());
        assert!(c.check("catalog", &["order"]).is_ok());
        assert_eq!(
            c.queue("order", "shop.catalog"),
            "shop_order--shop_catalog.fifo"
        );
        assert_eq!(
            c.dead_letter_queue("order", "catalog"),
            "shop_order--catalog--dlq.fifo"
        );
    }

    #[test]
    fn periods_and_sizes_are_clamped() {
        let c = SqsConfig::new("p")
            .unwrap()
            .visibility(Duration::from_millis(1))
            .max_message(10_000_000)
            .receives_in_flight(0);
        assert_eq!(c.visibility, Duration::from_secs(2));
        assert_eq!(c.max_message, SQS_MAX_MESSAGE);
        assert_eq!(c.receives, 1);
    }
}
