//! Bounds on the framework's own sessions (docs/adr/0018).
//!
//! Positions come from transaction ids and readers see only what every older transaction has
//! ended (docs/adr/0003), so one session left idle in a transaction (a process paused or cut
//! off between two statements) holds back every reader of the log, on every schema of the
//! cluster, for as long as it lives. PostgreSQL bounds that only when told to.

use std::time::Duration;

use sqlx::postgres::PgConnectOptions;

/// Time limits the framework sets on the sessions of the pool it opens
/// ([`Postgres::connect`](crate::Postgres::connect)), as startup options: no extra round trip.
///
/// A limit the connection string already sets (`?options=-c%20lock_timeout%3D2s`) is kept as
/// it is. A pool handed in with [`Postgres::with_pool`](crate::Postgres::with_pool) is the
/// caller's: set the same limits on it (`PgConnectOptions::options`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SessionLimits {
    idle_in_transaction: Duration,
    lock: Duration,
    statement: Duration,
}

impl Default for SessionLimits {
    /// A transaction idle for 5 s is ended by the server (its session closed, its writes
    /// rolled back); a lock waited on for 10 s, or a statement running for 60 s, fails (a
    /// transient backend error the caller retries).
    fn default() -> Self {
        SessionLimits {
            idle_in_transaction: Duration::from_secs(5),
            lock: Duration::from_secs(10),
            statement: Duration::from_secs(60),
        }
    }
}

impl SessionLimits {
    /// No limit at all (PostgreSQL's own defaults): a session idle in a transaction holds
    /// readers back until it ends.
    pub const fn none() -> Self {
        SessionLimits {
            idle_in_transaction: Duration::ZERO,
            lock: Duration::ZERO,
            statement: Duration::ZERO,
        }
    }

    /// How long a session may sit idle inside a transaction before the server ends it
    /// (`idle_in_transaction_session_timeout`; zero: for ever). Keep a
    /// [`PgAppendTx`](crate::PgAppendTx) busy, or shorter than this.
    #[must_use]
    pub const fn idle_in_transaction(mut self, limit: Duration) -> Self {
        self.idle_in_transaction = limit;
        self
    }

    /// How long a statement waits for a lock (`lock_timeout`; zero: for ever).
    #[must_use]
    pub const fn lock(mut self, limit: Duration) -> Self {
        self.lock = limit;
        self
    }

    /// How long one statement may run (`statement_timeout`; zero: for ever). Migrations and
    /// resets lift it for themselves.
    #[must_use]
    pub const fn statement(mut self, limit: Duration) -> Self {
        self.statement = limit;
        self
    }

    /// The limit on idle transactions.
    pub const fn idle_in_transaction_limit(&self) -> Duration {
        self.idle_in_transaction
    }

    /// The settings, as PostgreSQL names them, in milliseconds.
    fn settings(&self) -> [(&'static str, u128); 3] {
        [
            (
                "idle_in_transaction_session_timeout",
                self.idle_in_transaction.as_millis(),
            ),
            ("lock_timeout", self.lock.as_millis()),
            ("statement_timeout", self.statement.as_millis()),
        ]
    }

    /// `options` with these limits as startup options, except those it sets already.
    pub(crate) fn apply(&self, options: PgConnectOptions) -> PgConnectOptions {
        let given = set_by(options.get_options().unwrap_or_default());
        let missing: Vec<(&str, u128)> = self
            .settings()
            .into_iter()
            .filter(|(name, _)| !given.iter().any(|g| g == name))
            .collect();
        if missing.is_empty() {
            return options;
        }
        options.options(missing)
    }
}

/// The settings a startup `options` string sets: `-c name=value`, `-cname=value` and
/// `--name=value`, names compared as PostgreSQL does (case-insensitive, `-` as `_`).
fn set_by(options: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut tokens = options.split_whitespace();
    while let Some(token) = tokens.next() {
        let setting = if token == "-c" {
            tokens.next()
        } else if let Some(rest) = token.strip_prefix("--") {
            Some(rest)
        } else {
            token.strip_prefix("-c")
        };
        if let Some((name, _)) = setting.and_then(|s| s.split_once('=')) {
            names.push(name.to_ascii_lowercase().replace('-', "_"));
        }
    }
    names
}

/// Lifts the statement and lock limits for the rest of the transaction on `conn` (a migration
/// that waits for another's lock, a reset that deletes much).
pub(crate) async fn unbounded(conn: &mut sqlx::PgConnection) -> sqlx::Result<()> {
    sqlx::query(
        "SELECT set_config('statement_timeout', '0', true), set_config('lock_timeout', '0', true)",
    )
    .execute(conn)
    .await
    .map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::set_by;

    #[test]
    fn settings_a_connection_string_makes_are_found_in_every_spelling() {
        assert_eq!(
            set_by("-c deadlock_timeout=1s -cLock_Timeout=2s --statement-timeout=3s -c x"),
            ["deadlock_timeout", "lock_timeout", "statement_timeout"]
        );
        assert!(set_by("").is_empty());
    }
}
