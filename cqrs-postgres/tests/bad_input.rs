#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The PostgreSQL event store given bad input on a real server: schema names refused, passwords
//! never shown, a refused login or privilege a configuration error, a corrupted row a typed
//! error naming it.

mod common;

use std::time::{Duration, Instant};

use common::{event, fresh};
use cqrs_core::envelope::ExpectedVersion;
use cqrs_core::{Error, EventAppender, EventReader};
use cqrs_postgres::Postgres;

#[tokio::test]
async fn invalid_schema_names_are_refused() {
    for bad in [
        "",
        "Shop",
        "shop; DROP TABLE x",
        "a.b",
        "\"quoted\"",
        "1abc",
        "with space",
        &"x".repeat(49),
    ] {
        let err = Postgres::connect(&common::database_url(), bad)
            .await
            .expect_err(bad);
        assert!(
            matches!(err, Error::Config(ref m) if m.contains("invalid schema name")),
            "{bad:?}: {err}"
        );
    }
    cqrs_postgres::validate_schema_name("shop_v2").expect("a good name");
    println!("[fault] PostgreSQL names: 8 hostile schema names refused with a typed error");
}

#[tokio::test]
async fn a_password_never_shows_in_debug_output_or_errors() {
    let url =
        common::database_url().replacen("postgres://postgres@", "postgres://postgres:s3cret@", 1);
    if let Ok(pg) = Postgres::connect(&url, "t_debug").await {
        assert!(!format!("{pg:?}").contains("s3cret"));
    }
    let err = Postgres::connect(
        "postgres://postgres:s3cret@127.0.0.1:1/x?sslmode=bogus",
        "t_debug",
    )
    .await
    .expect_err("bad url");
    assert!(!err.to_string().contains("s3cret"), "{err}");
}

/// `DATABASE_URL` as another user, with a password.
fn as_user(user: &str, password: &str) -> String {
    let url = common::database_url();
    let (scheme, rest) = url.split_once("://").expect("a URL");
    let host = rest.rsplit_once('@').map_or(rest, |(_, host)| host);
    format!("{scheme}://{user}:{password}@{host}")
}

#[tokio::test]
async fn a_refused_login_or_privilege_is_a_config_error_not_retried() {
    let pg = fresh().await;
    let role = format!(
        "cqrs_np_{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    // No such role: the server refuses the login (before, a backend error, retried for ever).
    let err = Postgres::connect(&as_user(&role, "pw"), "t_refused")
        .await
        .expect_err("no such role");
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("SQLSTATE 28")),
        "{err:?}"
    );
    assert!(!err.is_transient());
    assert!(!err.to_string().contains(":pw@"), "{err}");
    // A role that may log in but not create a schema: the migration is refused.
    // The role name is ours: letters, digits and an underscore.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "CREATE ROLE {role} LOGIN PASSWORD 'pw'"
    )))
    .execute(pg.pool())
    .await
    .expect("create the role");
    let outcome = async {
        let weak = Postgres::connect(&as_user(&role, "pw"), "t_refused").await?;
        weak.migrate().await
    }
    .await;
    sqlx::query(sqlx::AssertSqlSafe(format!("DROP ROLE {role}")))
        .execute(pg.pool())
        .await
        .expect("drop the role");
    let err = outcome.expect_err("no privilege to create the schema");
    assert!(
        matches!(err, Error::Config(ref m) if m.contains("SQLSTATE 42501")),
        "{err:?}"
    );
    assert!(!err.is_transient());
}

#[tokio::test]
async fn a_corrupted_row_gives_a_typed_error_naming_it() {
    let pg = fresh().await;
    let store = pg.event_store();
    let appended = store
        .append("counter", "c", ExpectedVersion::NEW, vec![event(1, 1)])
        .await
        .expect("append");
    let position = appended[0].position;
    // Metadata that is not a map of strings, written behind the store's back.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "UPDATE {}.events SET meta = '[1, 2]'::jsonb",
        pg.schema()
    )))
    .execute(pg.pool())
    .await
    .expect("corrupt");
    let deadline = Instant::now() + Duration::from_secs(10);
    let err = loop {
        match store.read_all(0, 10).await {
            Err(e) => break e,
            Ok(none) if none.is_empty() && Instant::now() < deadline => {
                store
                    .wait_for_events(0, Duration::from_millis(50))
                    .await
                    .expect("wait");
            }
            Ok(other) => panic!("corrupted metadata was read: {other:?}"),
        }
    };
    assert!(
        matches!(&err, Error::Malformed { what, .. } if what.contains(&format!("position {position}"))),
        "{err}"
    );
    // The failed read left no connection in the middle of its COPY: the pool goes on serving
    // every kind of statement, more times than it has connections.
    for _ in 0..24 {
        assert!(matches!(
            store.read_all(0, 10).await,
            Err(Error::Malformed { .. })
        ));
        assert_eq!(store.head().await.expect("head"), position);
        assert!(matches!(
            store.read_stream("c", 0).await,
            Err(Error::Malformed { .. })
        ));
    }
    store
        .append("counter", "d", ExpectedVersion::NEW, vec![event(1, 1)])
        .await
        .expect("append after the failed reads");
    assert_eq!(store.read_stream("d", 0).await.expect("read").len(), 1);
    // Not migrated: a clear configuration error, not a retry loop.
    let bare = Postgres::connect(&common::database_url(), "t_never_migrated")
        .await
        .expect("connect");
    let err = bare
        .event_store()
        .read_all(0, 1)
        .await
        .expect_err("no tables");
    assert!(
        matches!(&err, Error::Config(m) if m.contains("migrate")),
        "{err}"
    );
    pg.drop_schema().await.expect("drop");
}
