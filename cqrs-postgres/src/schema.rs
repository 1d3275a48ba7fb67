//! The schema: its validated name, the SQL rendered for it, and migrations.

use cqrs_core::{Error, Result};
use sqlx::{AssertSqlSafe, PgPool};

use crate::error::db;

const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "events", include_str!("migrations/0001_events.sql")),
    (2, "views", include_str!("migrations/0002_views.sql")),
    (
        3,
        "json payloads",
        include_str!("migrations/0003_json_payloads.sql"),
    ),
    (
        4,
        "append batch",
        include_str!("migrations/0004_append_batch.sql"),
    ),
    (
        5,
        "stream owner",
        include_str!("migrations/0005_stream_owner.sql"),
    ),
    (
        6,
        "dead letter order",
        include_str!("migrations/0006_dead_letter_order.sql"),
    ),
    (
        7,
        "routing key",
        include_str!("migrations/0007_routing_key.sql"),
    ),
    (8, "segments", include_str!("migrations/0008_segments.sql")),
    (
        9,
        "position order",
        include_str!("migrations/0009_position_order.sql"),
    ),
    (10, "parked", include_str!("migrations/0010_parked.sql")),
];

/// Checks a schema name: lowercase ASCII letters, digits and `_`, starting with a letter or
/// `_`, at most 48 characters. Anything else (quotes, dots, spaces, uppercase) is refused, so a
/// configured name can never change the meaning of a statement.
///
/// # Errors
/// [`Error::Config`] naming the rule that was broken.
pub fn validate_schema_name(name: &str) -> Result<()> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    let valid_rest = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_start || !valid_rest || name.len() > 48 {
        return Err(Error::Config(format!(
            "invalid schema name {name:?}: use 1 to 48 characters of a-z, 0-9 and _, starting \
             with a letter or _"
        )));
    }
    Ok(())
}

/// A validated schema and the statements rendered for it once.
#[derive(Debug)]
pub(crate) struct Schema {
    pub(crate) name: String,
    pub(crate) channel: String,
    pub(crate) lock_key: i64,
}

fn fnv1a(s: &str) -> i64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h as i64
}

impl Schema {
    pub(crate) fn new(name: &str) -> Result<Self> {
        validate_schema_name(name)?;
        Ok(Schema {
            name: name.to_owned(),
            channel: format!("{name}_events"),
            lock_key: fnv1a(&format!("cqrs-postgres:{name}")),
        })
    }

    /// Renders a statement: `{schema}` and `{lock_key}` are replaced by values that were
    /// validated or computed here, never by user input.
    pub(crate) fn sql(&self, template: &str) -> AssertSqlSafe<String> {
        AssertSqlSafe(
            template
                .replace("{schema}", &self.name)
                .replace("{lock_key}", &self.lock_key.to_string()),
        )
    }
}

pub(crate) async fn migrate(pool: &PgPool, schema: &Schema) -> Result<()> {
    let mut tx = pool
        .begin()
        .await
        .map_err(|e| db("starting the migration", e))?;
    // A migration may wait for another instance's, and rewrite much: no limits.
    crate::session::unbounded(&mut tx)
        .await
        .map_err(|e| db("lifting the session limits for the migration", e))?;
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(schema.lock_key.wrapping_add(1))
        .execute(&mut *tx)
        .await
        .map_err(|e| db("locking for the migration", e))?;
    sqlx::raw_sql(schema.sql(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.migrations (
             version integer PRIMARY KEY,
             name text NOT NULL,
             applied_at timestamptz NOT NULL DEFAULT now()
         );",
    ))
    .execute(&mut *tx)
    .await
    .map_err(|e| db("creating the schema", e))?;
    let applied: Vec<i32> =
        sqlx::query_scalar(schema.sql("SELECT version FROM {schema}.migrations"))
            .fetch_all(&mut *tx)
            .await
            .map_err(|e| db("reading applied migrations", e))?;
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        sqlx::raw_sql(schema.sql(sql))
            .execute(&mut *tx)
            .await
            .map_err(|e| db(&format!("migration {version} ({name})"), e))?;
        sqlx::query(schema.sql("INSERT INTO {schema}.migrations (version, name) VALUES ($1, $2)"))
            .bind(version)
            .bind(name)
            .execute(&mut *tx)
            .await
            .map_err(|e| db("recording a migration", e))?;
        tracing::info!(schema = %schema.name, version, name, "migration applied");
    }
    tx.commit()
        .await
        .map_err(|e| db("committing the migration", e))
}

pub(crate) async fn drop(pool: &PgPool, schema: &Schema) -> Result<()> {
    sqlx::raw_sql(schema.sql("DROP SCHEMA IF EXISTS {schema} CASCADE"))
        .execute(pool)
        .await
        .map(|_| ())
        .map_err(|e| db("dropping the schema", e))
}
