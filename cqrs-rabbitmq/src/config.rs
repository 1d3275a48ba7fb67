//! Configuration, validated before it reaches the broker, and the names it gives the
//! broker's objects.

use std::time::Duration;

use cqrs_core::{Error, Result};

/// The longest name RabbitMQ accepts for an exchange or a queue.
const MAX_NAME: usize = 255;

/// Deliveries of a message, alone in its batch, after it reached the delivery limit and before
/// it is a dead letter.
pub const ISOLATED_ATTEMPTS: u32 = 3;

/// The broker's own limit on a partition queue, a backstop far above the member's: a message
/// returned this often goes to the group's dead-letter queue (never dropped, as RabbitMQ 4's
/// default limit of 20 without a dead-letter exchange would).
pub(crate) const BROKER_DELIVERY_LIMIT: i64 = 1_000;

/// Checks a name given to this bus (prefix, group, aggregate type): ASCII letters, digits,
/// `.`, `_` and `-`, and not starting with `amq.` (RabbitMQ reserves it).
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = name.len() <= MAX_NAME
        && !name.starts_with("amq.")
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid RabbitMQ {what} {name:?}: use A-Z, a-z, 0-9, ., _ and -, at most {MAX_NAME} \
             characters, not starting with `amq.`"
        )))
    }
}

/// Where the broker is, how names are made and how consumer groups behave.
///
/// Its `Debug` output shows the broker's host, never the URL's credentials.
#[derive(Clone)]
pub struct RabbitConfig {
    url: String,
    pub(crate) prefix: String,
    pub(crate) partitions: u32,
    pub(crate) prefetch: u16,
    pub(crate) groups: Vec<String>,
    pub(crate) rebalance_every: Duration,
    pub(crate) delivery_limit: u32,
    pub(crate) publish_timeout: Duration,
}

impl std::fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("broker", &self.broker())
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("groups", &self.groups)
            .finish_non_exhaustive()
    }
}

impl RabbitConfig {
    /// A broker at an AMQP URL (`amqp://user:password@host:port/vhost`), its exchanges and
    /// queues named `<prefix>...`.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is not `amqp://` or `amqps://`, or a bad prefix.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Result<Self> {
        let url = url.into();
        let prefix = prefix.into();
        if !(url.starts_with("amqp://") || url.starts_with("amqps://")) {
            return Err(Error::Config(
                "a RabbitMQ URL starts with amqp:// or amqps://".into(),
            ));
        }
        validate_name("prefix", &prefix)?;
        Ok(RabbitConfig {
            url,
            prefix,
            partitions: 4,
            prefetch: 500,
            groups: Vec::new(),
            rebalance_every: Duration::from_secs(1),
            delivery_limit: 10,
            publish_timeout: Duration::from_secs(10),
        })
    }

    /// Partitions per aggregate type (default 4, at most 1 000): a stream's events go to one
    /// of them, by its id. Every publisher and member of a group must use the same number.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.clamp(1, 1_000);
        self
    }

    /// Messages a member may hold unacknowledged per partition queue (default 500).
    #[must_use]
    pub fn prefetch(mut self, prefetch: u16) -> Self {
        self.prefetch = prefetch.max(1);
        self
    }

    /// Consumer groups whose queues a publisher declares before it first publishes to an
    /// aggregate type, so that they keep what is published before their first member
    /// subscribes. Without it, a publish that reaches no queue fails (and the relay retries).
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

    /// How often a member compares its partitions with its fair share (default 1 s): a joining
    /// member gets its share within about two of these; a dead member's partitions are taken
    /// within one.
    #[must_use]
    pub fn rebalance_every(mut self, every: Duration) -> Self {
        self.rebalance_every = every.max(Duration::from_millis(50));
        self
    }

    /// Deliveries of one message without an acknowledgement (default 10, at most 900) after
    /// which it is handed over alone, in a batch of its own, so that the messages beside it
    /// are acknowledged without it; after [`ISOLATED_ATTEMPTS`] more, if it is the first
    /// message its partition delivers to a member (where a crash loop restarts), it is a dead
    /// letter instead of being applied again. A redelivery counts whatever returned the message
    /// (a crash, a lost connection, a partition handed over), so the limit is not set low.
    #[must_use]
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.clamp(1, 900);
        self
    }

    /// How long a publish may wait for the broker's confirms, and a connection for the broker
    /// to answer, before it fails (default 10 s).
    #[must_use]
    pub fn publish_timeout(mut self, timeout: Duration) -> Self {
        self.publish_timeout = timeout;
        self
    }

    /// The prefix of every exchange and queue name.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The broker's host and port, without credentials.
    pub(crate) fn broker(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or_default().to_owned()
    }

    /// The exchange of an aggregate type.
    pub(crate) fn exchange(&self, aggregate_type: &str) -> String {
        format!("{}{aggregate_type}", self.prefix)
    }

    /// A group's queue of one partition of an aggregate type.
    pub(crate) fn queue(&self, group: &str, aggregate_type: &str, partition: u32) -> String {
        format!("{}{group}:{aggregate_type}:{partition}", self.prefix)
    }

    /// The queue whose consumers are a group's live members. Names join their parts with `:`,
    /// which no configured name may hold, so two groups' names never meet.
    pub(crate) fn roster(&self, group: &str) -> String {
        format!("{}{group}:members", self.prefix)
    }

    /// The exclusive queue whose holder owns a partition (of every aggregate type) of a group.
    pub(crate) fn lock(&self, group: &str, partition: u32) -> String {
        format!("{}{group}:lock:{partition}", self.prefix)
    }

    /// A group's dead-letter queue.
    pub(crate) fn dead_letters(&self, group: &str) -> String {
        format!("{}{group}:dead-letters", self.prefix)
    }

    /// Checks a group and its aggregate types, and that every name made of them fits and
    /// is one RabbitMQ accepts.
    pub(crate) fn check(&self, group: &str, aggregate_types: &[&str]) -> Result<()> {
        if group.is_empty() || aggregate_types.is_empty() {
            return Err(Error::Config(
                "a subscription needs a group name and at least one aggregate type".into(),
            ));
        }
        validate_name("group", group)?;
        let last = self.partitions - 1;
        let mut names = vec![
            self.roster(group),
            self.lock(group, last),
            self.dead_letters(group),
        ];
        for t in aggregate_types {
            self.check_type(t)?;
            names.push(self.queue(group, t, last));
        }
        names.iter().try_for_each(|name| fits(name))
    }

    pub(crate) fn check_type(&self, aggregate_type: &str) -> Result<()> {
        if aggregate_type.is_empty() {
            return Err(Error::Config("an empty aggregate type".into()));
        }
        validate_name("aggregate type", aggregate_type)?;
        fits(&self.exchange(aggregate_type))?;
        // The queues the publisher declares for the configured groups.
        for group in &self.groups {
            fits(&self.queue(group, aggregate_type, self.partitions - 1))?;
        }
        Ok(())
    }
}

/// A whole name: short enough, and not in the broker's reserved `amq.` namespace.
fn fits(name: &str) -> Result<()> {
    if name.len() > MAX_NAME {
        return Err(Error::Config(format!(
            "the RabbitMQ name {name:?} is longer than {MAX_NAME} bytes"
        )));
    }
    if name.starts_with("amq.") {
        return Err(Error::Config(format!(
            "the RabbitMQ name {name:?} starts with `amq.`, which the broker reserves"
        )));
    }
    Ok(())
}
