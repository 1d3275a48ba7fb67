//! Mapping sqlx errors onto the framework's error.

use cqrs_core::Error;

/// The SQLSTATE the append functions raise for an append to a stream another aggregate type
/// owns (migration 0005).
pub(crate) const FOREIGN_STREAM: &str = "CQ001";
/// SQLSTATE of an append whose routing key its stream does not have (migration 0007).
pub(crate) const REROUTED_STREAM: &str = "CQ002";
/// SQLSTATE of an append in a transaction that took its id before another transaction, with a
/// larger id, wrote the stream: its positions would come before that one's (migration 0009).
pub(crate) const LATER_WRITER: &str = "CQ003";

/// Maps a database error: a missing table or function means the schema was not migrated (a
/// configuration problem, not retried); a data exception is a malformed value; everything else
/// is a backend failure the caller may retry.
pub(crate) fn db(what: &str, e: sqlx::Error) -> Error {
    if let sqlx::Error::Database(db) = &e {
        match db.code().as_deref() {
            Some("42P01" | "3F000" | "42883") => {
                return Error::Config(format!(
                    "{what}: {} (is the schema migrated? call `Postgres::migrate`)",
                    db.message()
                ));
            }
            Some("55000") => return Error::Config(format!("{what}: {}", db.message())),
            Some(code) if code.starts_with("22") => {
                return Error::Malformed {
                    what: what.to_owned(),
                    reason: db.message().to_owned(),
                };
            }
            _ => {}
        }
    }
    Error::backend("postgres", what, e)
}

/// At start-up (connecting, migrating): a refused login (class 28: no such role, a wrong
/// password, no entry in `pg_hba.conf`), a missing privilege (42501) or database (3D000) is a
/// configuration error, so a service with wrong credentials fails at once. Later the same
/// codes stay backend errors, retried: a password being rotated or a standby promoted with
/// its own `pg_hba.conf` refuses for a while, and a processor must not end for it.
pub(crate) fn at_start(e: Error) -> Error {
    let refused = match &e {
        Error::Backend {
            source: Some(source),
            ..
        } => source
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| match e {
                sqlx::Error::Database(db) => db.code().map(|c| c.into_owned()),
                _ => None,
            })
            .filter(|code| code.starts_with("28") || code == "42501" || code == "3D000")
            .map(|code| (code, e.to_string())),
        _ => None,
    };
    match refused {
        Some((code, message)) => Error::Config(format!(
            "PostgreSQL refused it: {message} (SQLSTATE {code})"
        )),
        None => e,
    }
}

/// Runs `work` on a task of its own and waits for it. The task runs to its end even when the
/// caller stops waiting, so a cancelled caller (an aborted processor) cannot cut a statement
/// or a transaction short: sqlx's `begin` and a `COPY` are not cancel-safe, and a connection
/// cut short inside either goes back to the pool in a state nothing ends.
pub(crate) async fn to_the_end<T: Send + 'static>(
    what: &str,
    work: impl std::future::Future<Output = cqrs_core::Result<T>> + Send + 'static,
) -> cqrs_core::Result<T> {
    tokio::spawn(work).await.map_err(|e| Error::Backend {
        backend: "postgres",
        message: format!("{what}: the task ended abnormally"),
        source: Some(Box::new(e)),
    })?
}
