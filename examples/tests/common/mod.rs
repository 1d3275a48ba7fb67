//! Shared by the end-to-end tests: the shop's services as separate processes on the real
//! servers, an HTTP client, and the catalog rebuilt from the event store as the reference.
#![allow(dead_code, missing_docs, clippy::expect_used, clippy::unwrap_used)]

mod client;
mod env;
mod process;

pub use client::*;
pub use env::*;
pub use process::*;
