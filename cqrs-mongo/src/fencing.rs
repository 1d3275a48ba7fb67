//! Fencing a dead holder's transaction. A segment's units of work commit in one session per
//! claim, whose id the claim's document records. An instance killed in the middle of a
//! transaction leaves it open on the server, holding the documents it wrote (the segment's
//! checkpoint, its views) until the server's transaction lifetime ends it (60 s by default):
//! the next holder's writes to them meet write conflicts meanwhile. So the instance that takes
//! an expired claim over ends the previous holder's session first (`killSessions`), which
//! aborts its transaction at once.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use mongodb::bson::{doc, Bson, Document};
use mongodb::{Client, ClientSession};
use uuid::Uuid;

/// The sessions of the claims this store holds, by claim token.
#[derive(Default)]
pub(crate) struct Sessions(Mutex<HashMap<Uuid, ClientSession>>);

impl Sessions {
    /// The claim's session, taken out while a unit of work uses it.
    pub(crate) fn take(&self, token: Uuid) -> Option<ClientSession> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&token)
    }

    /// Keeps the claim's session for its next unit of work.
    pub(crate) fn keep(&self, token: Uuid, session: ClientSession) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(token, session);
    }

    /// Forgets a claim given back or lost (its session ends when dropped).
    pub(crate) fn forget(&self, token: Uuid) {
        self.take(token);
    }
}

/// Ends the session a claim's previous holder recorded, if it did, aborting any transaction it
/// left open. A failure is logged, not returned: the transaction then ends at the server's own
/// limit, and the new holder's writes are retried until it does.
pub(crate) async fn end_previous(client: &Client, previous: Option<&Document>, projection: &str) {
    let Some(Bson::Document(lsid)) = previous.and_then(|d| d.get("lsid")) else {
        return;
    };
    let ended = client
        .database("admin")
        .run_command(doc! { "killSessions": [lsid.clone()] })
        .await;
    match ended {
        Ok(_) => tracing::info!(projection, "the previous holder's session ended"),
        Err(e) => {
            tracing::warn!(projection, error = %e, "ending the previous holder's session failed; its open transaction ends at the server's limit")
        }
    }
}
