//! Configuration, validated before it reaches the server, and the keys it gives the server's
//! objects.

use std::time::Duration;

use cqrs_core::{Error, Result};

/// Deliveries of an entry, alone in its batch, after it reached the delivery limit and before
/// it is a dead letter.
pub const ISOLATED_ATTEMPTS: u32 = 3;

/// The longest name (prefix, group, aggregate type) this bus accepts.
const MAX_NAME: usize = 200;

/// What is kept of a stream once consumer groups have read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retention {
    /// Members trim the streams they hold (`XTRIM MINID`, exact) to the oldest entry some group
    /// still needs: its oldest unacknowledged entry, else its last delivered one. Nothing a
    /// group has not acknowledged is ever trimmed; the event store stays the source of
    /// replays. The default.
    Acknowledged,
    /// Nothing is trimmed (by this bus; an operator's `XTRIM` still may).
    Forever,
}

/// Checks a name given to this bus (prefix, group, aggregate type): ASCII letters, digits,
/// `.`, `_` and `-` (no `:`, which joins the parts of a key, and no `{`/`}`).
///
/// # Errors
/// [`Error::Config`] naming the rule.
pub fn validate_name(what: &str, name: &str) -> Result<()> {
    let ok = name.len() <= MAX_NAME
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "invalid Redis {what} {name:?}: use A-Z, a-z, 0-9, ., _ and -, at most {MAX_NAME} \
             characters"
        )))
    }
}

/// Where the server is, how keys are named and how consumer groups behave.
///
/// Its `Debug` output shows the server's host, never the URL's credentials.
#[derive(Clone)]
pub struct RedisConfig {
    url: String,
    pub(crate) prefix: String,
    pub(crate) partitions: u32,
    pub(crate) groups: Vec<String>,
    pub(crate) lease: Duration,
    pub(crate) rebalance_every: Duration,
    pub(crate) delivery_limit: u32,
    pub(crate) timeout: Duration,
    pub(crate) retention: Retention,
    pub(crate) trim_every: Duration,
}

impl std::fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisConfig")
            .field("server", &self.server())
            .field("prefix", &self.prefix)
            .field("partitions", &self.partitions)
            .field("groups", &self.groups)
            .field("lease", &self.lease)
            .field("retention", &self.retention)
            .finish_non_exhaustive()
    }
}

/// Whether a URL's query asks for RESP3 (`protocol=resp3` or `protocol=3`).
fn speaks_resp3(url: &str) -> bool {
    url.split_once('?').is_some_and(|(_, query)| {
        query.split('&').any(|pair| {
            matches!(pair.split_once('='), Some((k, v)) if k.eq_ignore_ascii_case("protocol")
                && (v.eq_ignore_ascii_case("resp3") || v == "3"))
        })
    })
}

impl RedisConfig {
    /// A server at a Redis URL (`redis://[user:password@]host:port[/db]`, or `rediss://`), its
    /// keys named `<prefix>...`.
    ///
    /// # Errors
    /// [`Error::Config`] for a URL that is not `redis://` or `rediss://`, or a bad prefix.
    pub fn new(url: impl Into<String>, prefix: impl Into<String>) -> Result<Self> {
        let url = url.into();
        let prefix = prefix.into();
        if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
            return Err(Error::Config(
                "a Redis URL starts with redis:// or rediss://".into(),
            ));
        }
        if speaks_resp3(&url) {
            return Err(Error::Config(
                "this bus speaks RESP2 to Redis: leave `protocol=resp3` (or `3`) out of the URL"
                    .into(),
            ));
        }
        validate_name("prefix", &prefix)?;
        Ok(RedisConfig {
            url,
            prefix,
            partitions: 8,
            groups: Vec::new(),
            lease: Duration::from_secs(10),
            rebalance_every: Duration::from_secs(1),
            delivery_limit: 10,
            timeout: Duration::from_secs(10),
            retention: Retention::Acknowledged,
            trim_every: Duration::from_secs(30),
        })
    }

    /// Partitions per aggregate type (default 8, at most 1 000): an event goes to the stream
    /// of one of them, by its routing key. Every publisher and member of a group must use the
    /// same number.
    #[must_use]
    pub fn partitions(mut self, partitions: u32) -> Self {
        self.partitions = partitions.clamp(1, 1_000);
        self
    }

    /// Consumer groups a publisher creates on a stream before it first writes to it, so that
    /// [`Retention::Acknowledged`] keeps what they have not read before their first member
    /// subscribes. (A group created later starts at the oldest entry still kept.)
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

    /// How long a member holds a partition without renewing it (default 10 s, from 300 ms to a
    /// day). Members renew their leases every third of it while they work; a dead member's
    /// partitions are taken after it.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease.clamp(Duration::from_millis(300), Duration::from_secs(86_400));
        self
    }

    /// How often a member compares its partitions with its fair share (default 1 s, from
    /// 50 ms to an hour).
    #[must_use]
    pub fn rebalance_every(mut self, every: Duration) -> Self {
        self.rebalance_every = every.clamp(Duration::from_millis(50), Duration::from_secs(3_600));
        self
    }

    /// Deliveries of one entry without an acknowledgement (default 10, at most 900) after which
    /// it is handed over alone, in a batch of its own; after [`ISOLATED_ATTEMPTS`] more it is a
    /// dead letter instead of being applied again. Redis counts a delivery each time another
    /// member takes the entry over (`XCLAIM`); a member that reads its own pending entries
    /// again after a reconnect counts none.
    #[must_use]
    pub fn delivery_limit(mut self, limit: u32) -> Self {
        self.delivery_limit = limit.clamp(1, 900);
        self
    }

    /// How long a command may wait for the server, and a connection for it to answer, before
    /// it fails (default 10 s, from 100 ms to an hour).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout.clamp(Duration::from_millis(100), Duration::from_secs(3_600));
        self
    }

    /// What is kept of the streams (default [`Retention::Acknowledged`]), and how often a member
    /// trims the streams it holds (default every 30 s, from 100 ms to a day).
    #[must_use]
    pub fn retention(mut self, retention: Retention, every: Duration) -> Self {
        self.retention = retention;
        self.trim_every = every.clamp(Duration::from_millis(100), Duration::from_secs(86_400));
        self
    }

    /// The prefix of every key.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The partitions per aggregate type.
    pub fn partition_count(&self) -> u32 {
        self.partitions
    }

    pub(crate) fn url(&self) -> &str {
        &self.url
    }

    /// The server's host and port, without credentials.
    pub(crate) fn server(&self) -> String {
        let rest = self.url.split_once("://").map_or("", |(_, r)| r);
        let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
        rest.split(['/', '?']).next().unwrap_or_default().to_owned()
    }

    /// The stream of one partition of an aggregate type. Keys join their parts with `:`,
    /// which no configured name may hold, so two names never meet.
    pub fn stream(&self, aggregate_type: &str, partition: u32) -> String {
        format!("{}stream:{aggregate_type}:{partition}", self.prefix)
    }

    /// The key whose holder owns a partition (of every aggregate type) of a group.
    pub(crate) fn lease_key(&self, group: &str, partition: u32) -> String {
        format!("{}lease:{group}:{partition}", self.prefix)
    }

    /// The sorted set of a group's live members, scored by when they expire.
    pub(crate) fn roster(&self, group: &str) -> String {
        format!("{}members:{group}", self.prefix)
    }

    /// A group's dead-letter stream.
    pub fn dead_letters(&self, group: &str) -> String {
        format!("{}dead-letters:{group}", self.prefix)
    }

    /// Checks a group and its aggregate types.
    pub(crate) fn check(&self, group: &str, aggregate_types: &[&str]) -> Result<()> {
        if group.is_empty() || aggregate_types.is_empty() {
            return Err(Error::Config(
                "a subscription needs a group name and at least one aggregate type".into(),
            ));
        }
        validate_name("group", group)?;
        aggregate_types.iter().try_for_each(|t| self.check_type(t))
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
    fn debug_shows_the_server_never_the_password() {
        let c = RedisConfig::new("redis://app:s3cret@cache.example:6380/2", "shop.").unwrap();
        let shown = format!("{c:?}");
        assert!(shown.contains("cache.example:6380"), "{shown}");
        assert!(!shown.contains("s3cret"), "{shown}");
    }

    #[test]
    fn names_that_would_meet_are_refused() {
        assert!(RedisConfig::new("http://x", "p.").is_err());
        assert!(RedisConfig::new("redis://x/?protocol=resp3", "p.").is_err());
        assert!(RedisConfig::new("redis://x/?db=1&PROTOCOL=3", "p.").is_err());
        assert!(RedisConfig::new("redis://x/?protocol=resp2", "p.").is_ok());
        assert!(RedisConfig::new("redis://x", "a:b").is_err());
        let c = RedisConfig::new("redis://x", "p.").unwrap();
        assert!(c.check("g:1", &["t"]).is_err());
        assert!(c.check("g", &["{t}"]).is_err());
        assert!(c.check("g", &[]).is_err());
        assert!(c.check("g", &["order"]).is_ok());
        assert_eq!(c.stream("order", 3), "p.stream:order:3");
    }
}
