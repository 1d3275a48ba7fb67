//! A PostgreSQL server of a test's own, to kill and pause: `CQRS_POSTGRES_SERVER`
//! (`scripts/services.sh` sets it to `scripts/own_postgres.sh`) run as an
//! [`OwnServer`](cqrs_testing::server::OwnServer).
#![allow(dead_code)]

use std::time::{Duration, Instant};

use cqrs_testing::server::{OwnServer, Pausable};

pub struct OwnPostgres(OwnServer);

impl OwnPostgres {
    /// Starts a server on a free port and a fresh directory, and waits until it answers.
    pub async fn start() -> OwnPostgres {
        let server = OwnPostgres(OwnServer::start("CQRS_POSTGRES_SERVER").await);
        server.ready().await;
        server
    }

    /// The server's address.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.0.port)
    }

    /// `kill -9` of the postmaster and every backend.
    pub fn kill(&mut self) {
        self.0.kill();
    }

    /// Starts it again on the same data (crash recovery first).
    pub async fn restart(&mut self) {
        self.0.restart().await;
        self.ready().await;
    }

    /// Freezes the postmaster and every backend, and checks it: a session opened before does
    /// not answer `SELECT 1` within half a second.
    pub async fn pause(&self) {
        let mut probe = <sqlx::PgConnection as sqlx::Connection>::connect(&self.url())
            .await
            .expect("a session to probe the pause with");
        self.0.pause();
        let answered = tokio::time::timeout(
            Duration::from_millis(500),
            sqlx::query("SELECT 1").execute(&mut probe),
        )
        .await;
        assert!(
            answered.is_err(),
            "a session answered while the server was paused: its backend was not stopped"
        );
    }

    pub fn resume(&self) {
        self.0.resume();
    }

    /// An open port is not a ready server: one in recovery refuses connections for a moment.
    async fn ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let connected = tokio::time::timeout(
                Duration::from_secs(2),
                <sqlx::PgConnection as sqlx::Connection>::connect(&self.url()),
            )
            .await;
            if matches!(connected, Ok(Ok(_))) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the test's own PostgreSQL on port {} is not ready: {connected:?}",
                self.0.port
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}
