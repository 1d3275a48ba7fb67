//! The read-model store conformance suite: what every [`ViewStore`] + [`ViewQuery`] +
//! [`DeadLetterStore`] must do, run by each backend against a fresh store per check:
//!
//! ```no_run
//! # async fn example() {
//! use cqrs_core::memory::MemoryViewStore;
//! cqrs_testing::view_conformance::run(|| async { MemoryViewStore::new() }).await;
//! # }
//! ```
//!
//! Each check panics with a message that names the broken rule.

use std::collections::BTreeMap;
use std::future::Future;

use chrono::Utc;
use serde_json::{json, Value};

use crate::raw_envelope;
use cqrs_core::error::Error;
use cqrs_core::view::{
    Atomicity, DeadLetter, DeadLetterStore, Filter, Order, Query, StoredDoc, UnitOfWork, ViewQuery,
    ViewStore,
};

fn doc(id: &str, view: Option<Value>, revision: u64) -> StoredDoc {
    StoredDoc {
        id: id.into(),
        view,
        applied: BTreeMap::from([(format!("s-{id}"), 3)]),
        position: 7,
        revision,
        // An event dead-lettered from the view: it must come back as written.
        parked: std::collections::BTreeSet::from([uuid::Uuid::from_u128(u128::from(
            id.len() as u64
        ))]),
    }
}

fn work(projection: &str, writes: Vec<StoredDoc>) -> UnitOfWork {
    UnitOfWork {
        projection: projection.into(),
        writes,
        dead_letters: Vec::new(),
        checkpoint: None,
        resolved: Vec::new(),
        claim: None,
    }
}

fn letter(projection: &str, stream: &str, position: u64, reason: &str) -> DeadLetter {
    DeadLetter {
        projection: projection.into(),
        envelope: raw_envelope("thing", stream, 1, position, "conformance.Bad", 1, "{}"),
        reason: reason.into(),
        at: Utc::now(),
        // Kept as it was written: a retry tells by it whether the event is parked in a view.
        view: Some(format!("view-of-{stream}")),
    }
}

/// Runs every check, each on a new store from `make`.
pub async fn run<S, F, Fut>(make: F)
where
    S: ViewStore + ViewQuery + DeadLetterStore + 'static,
    F: Fn() -> Fut,
    Fut: Future<Output = S>,
{
    documents_round_trip(&make().await).await;
    stale_writes_are_refused(&make().await).await;
    dead_letters_are_kept_listed_and_resolved(&make().await).await;
    dead_letters_are_paged_in_cursor_order(&make().await).await;
    reset_clears_one_projection(&make().await).await;
    queries_filter_sort_and_page(&make().await).await;
    super::segments::claims_fence_and_expire(&make().await).await;
}

/// Documents come back as written (revision + 1), tombstones included, missing ids left out;
/// the checkpoint only moves forward.
pub async fn documents_round_trip<S: ViewStore + ViewQuery>(store: &S) {
    let mut first = work(
        "p",
        vec![doc("a", Some(json!({"n": 1})), 0), doc("gone", None, 0)],
    );
    first.checkpoint = Some(10);
    store.commit(first).await.expect("commit");
    let mut loaded = store
        .load("p", &["a".into(), "gone".into(), "missing".into()])
        .await
        .expect("load");
    loaded.sort_by(|x, y| x.id.cmp(&y.id));
    let expected = |id: &str, view| StoredDoc {
        revision: 1,
        ..doc(id, view, 0)
    };
    assert_eq!(
        loaded,
        vec![expected("a", Some(json!({"n": 1}))), expected("gone", None)],
        "documents (and tombstones) come back as written, at revision 1; missing ids are left out"
    );
    assert_eq!(
        store.get("p", "gone").await.expect("get"),
        None,
        "a tombstone is no view"
    );
    assert_eq!(
        store.get("p", "a").await.expect("get"),
        Some(json!({"n": 1}))
    );
    let mut older = work("p", Vec::new());
    older.checkpoint = Some(4);
    store.commit(older).await.expect("commit");
    assert_eq!(
        store.checkpoint("p").await.expect("checkpoint"),
        Some(10),
        "a checkpoint never moves back"
    );
    assert_eq!(store.checkpoint("other").await.expect("checkpoint"), None);
}

/// A write based on an old revision is refused with a typed conflict and changes nothing.
pub async fn stale_writes_are_refused<S: ViewStore + ViewQuery>(store: &S) {
    store
        .commit(work("p", vec![doc("a", Some(json!({"n": 1})), 0)]))
        .await
        .expect("create");
    let err = store
        .commit(work("p", vec![doc("a", Some(json!({"n": 2})), 0)]))
        .await
        .expect_err("a write loaded at revision 0 after another write");
    assert!(
        matches!(err, Error::ViewConflict { .. }),
        "a stale write is a view conflict, got {err}"
    );
    assert_eq!(
        store.get("p", "a").await.expect("get"),
        Some(json!({"n": 1})),
        "a refused write changes nothing"
    );
    store
        .commit(work("p", vec![doc("a", Some(json!({"n": 2})), 1)]))
        .await
        .expect("a write at the current revision");
    assert_eq!(
        store.get("p", "a").await.expect("get"),
        Some(json!({"n": 2}))
    );
}

/// Dead letters are kept per projection, once per event (the latest reason), resolved with the
/// unit of work that names them, and removed on request.
pub async fn dead_letters_are_kept_listed_and_resolved<
    S: ViewStore + ViewQuery + DeadLetterStore,
>(
    store: &S,
) {
    let first = letter("p", "s-1", 3, "cannot decode");
    let second = letter("p", "s-2", 5, "handler refused");
    let elsewhere = letter("q", "s-3", 6, "unknown event");
    let mut w = work("p", Vec::new());
    w.dead_letters = vec![first.clone(), second.clone()];
    store.commit(w).await.expect("commit");
    let mut w = work("q", Vec::new());
    w.dead_letters = vec![elsewhere.clone()];
    store.commit(w).await.expect("commit");
    // The same event dead-lettered again keeps one entry, with the newer reason.
    let mut again = first.clone();
    again.reason = "cannot decode, again".into();
    let mut w = work("p", Vec::new());
    w.dead_letters = vec![again];
    store.commit(w).await.expect("commit");

    let mut listed = store.dead_letters("p").await.expect("list");
    listed.sort_by_key(|d| d.envelope.position);
    assert_eq!(listed.len(), 2, "one entry per event: {listed:?}");
    assert_eq!(
        listed[0].envelope.metadata.event_id,
        first.envelope.metadata.event_id
    );
    assert_eq!(listed[0].envelope.position, 3);
    assert_eq!(listed[0].envelope.stream_id, "s-1");
    assert_eq!(listed[0].reason, "cannot decode, again");
    assert_eq!(listed[1].reason, "handler refused");
    assert_eq!(
        (listed[0].view.as_deref(), listed[1].view.as_deref()),
        (Some("view-of-s-1"), Some("view-of-s-2")),
        "the view a dead letter is parked in is kept"
    );

    // Resolved together with the view its retry wrote.
    let mut w = work("p", vec![doc("fixed", Some(json!({"ok": true})), 0)]);
    w.resolved = vec![first.envelope.metadata.event_id];
    store.commit(w).await.expect("resolve");
    let listed = store.dead_letters("p").await.expect("list");
    assert_eq!(
        listed
            .iter()
            .map(|d| d.envelope.position)
            .collect::<Vec<_>>(),
        [5],
        "a resolved dead letter is gone"
    );
    assert_eq!(
        store.get("p", "fixed").await.expect("get"),
        Some(json!({"ok": true}))
    );
    // Resolving it again (a concurrent retry that lost the race): exactly what the store
    // declares.
    let mut w = work("p", vec![doc("twice", Some(json!({"ok": true})), 0)]);
    w.resolved = vec![first.envelope.metadata.event_id];
    let again = store.commit(w).await;
    match store.atomicity() {
        Atomicity::Atomic => {
            assert!(
                matches!(again, Err(Error::ViewConflict { .. })),
                "an atomic store refuses a unit of work resolving a dead letter that is gone: \
                 {again:?}"
            );
            assert_eq!(
                store.get("p", "twice").await.expect("get"),
                None,
                "a refused unit of work writes nothing"
            );
        }
        Atomicity::Stepwise => {
            assert!(
                again.is_ok(),
                "a stepwise store writes the views of a unit of work resolving a dead letter \
                 that is gone: {again:?}"
            );
            assert_eq!(
                store.get("p", "twice").await.expect("get"),
                Some(json!({"ok": true})),
                "a stepwise store applies a resolved dead letter again (at least once)"
            );
        }
        other => panic!("a store of an atomicity this suite does not know: {other:?}"),
    }
    let id = second.envelope.metadata.event_id;
    assert!(store.remove_dead_letter("p", id).await.expect("remove"));
    assert!(
        !store.remove_dead_letter("p", id).await.expect("remove"),
        "removing twice finds nothing"
    );
    assert!(store.dead_letters("p").await.expect("list").is_empty());
    assert_eq!(
        store.dead_letters("q").await.expect("list").len(),
        1,
        "dead letters are per projection"
    );
}

/// Dead letters come page by page in (position, event id) order: every one exactly once,
/// letters that share a position (messages a bus could not read carry none) included, and a
/// page after the last is empty.
pub async fn dead_letters_are_paged_in_cursor_order<S: ViewStore + DeadLetterStore>(store: &S) {
    let mut letters: Vec<DeadLetter> = (0..7u64)
        .map(|i| {
            letter(
                "p",
                &format!("s-{i}"),
                [4, 0, 9, 0, 4, 2, 0][i as usize],
                "bad",
            )
        })
        .collect();
    let mut w = work("p", Vec::new());
    w.dead_letters = letters.clone();
    store.commit(w).await.expect("commit");
    let mut w = work("q", Vec::new());
    w.dead_letters = vec![letter("q", "s-q", 1, "elsewhere")];
    store.commit(w).await.expect("commit");
    letters.sort_by_key(DeadLetter::cursor);

    let mut paged: Vec<DeadLetter> = Vec::new();
    let mut pages = 0;
    loop {
        let after = paged.last().map(DeadLetter::cursor);
        let page = store.dead_letters_page("p", after, 3).await.expect("page");
        assert!(page.len() <= 3, "a page holds at most its limit");
        if page.is_empty() {
            break;
        }
        pages += 1;
        paged.extend(page);
        assert!(pages <= 3, "paging does not end: {paged:?}");
    }
    let cursors = |l: &[DeadLetter]| l.iter().map(DeadLetter::cursor).collect::<Vec<_>>();
    assert_eq!(
        cursors(&paged),
        cursors(&letters),
        "each once, in cursor order"
    );
    assert_eq!(pages, 3);
    assert_eq!(store.dead_letters("p").await.expect("all").len(), 7);
    assert!(
        store
            .dead_letters_page("p", None, 0)
            .await
            .expect("page")
            .is_empty(),
        "a limit of 0 gives none"
    );
    let cursor = letters[2].cursor();
    let parsed: cqrs_core::view::DeadLetterCursor = cursor.to_string().parse().expect("parse");
    assert_eq!(parsed, cursor, "a cursor reads back as written");
}

/// A reset deletes one projection's views, checkpoint and dead letters, and nothing else.
pub async fn reset_clears_one_projection<S: ViewStore + ViewQuery + DeadLetterStore>(store: &S) {
    for projection in ["p", "q"] {
        let mut w = work(projection, vec![doc("a", Some(json!({"n": 1})), 0)]);
        w.checkpoint = Some(5);
        w.dead_letters = vec![letter(projection, "s-1", 2, "bad")];
        store.commit(w).await.expect("commit");
    }
    store.reset("p").await.expect("reset");
    assert!(store
        .load("p", &["a".into()])
        .await
        .expect("load")
        .is_empty());
    assert_eq!(store.checkpoint("p").await.expect("checkpoint"), None);
    assert!(store.dead_letters("p").await.expect("list").is_empty());
    assert_eq!(store.load("q", &["a".into()]).await.expect("load").len(), 1);
    assert_eq!(store.checkpoint("q").await.expect("checkpoint"), Some(5));
    assert_eq!(store.dead_letters("q").await.expect("list").len(), 1);
    // A reset projection starts afresh: its documents are new again.
    store
        .commit(work("p", vec![doc("a", Some(json!({"n": 9})), 0)]))
        .await
        .expect("write after a reset");
}

/// Filters by dotted path, sorts (ties by id), pages and counts; tombstones are never found;
/// a malformed path is a typed error.
pub async fn queries_filter_sort_and_page<S: ViewStore + ViewQuery>(store: &S) {
    let docs = [
        ("a", "Zed", 5),
        ("b", "Amy", 7),
        ("c", "Kim", 3),
        ("d", "Bob", 7),
    ];
    let mut writes: Vec<StoredDoc> = docs
        .iter()
        .map(|(id, name, n)| {
            doc(
                id,
                Some(json!({"name": name, "n": n, "nested": {"n": n}})),
                0,
            )
        })
        .collect();
    writes.push(doc("e", None, 0));
    store.commit(work("p", writes)).await.expect("commit");
    let ids = |found: Vec<(String, Value)>| found.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
    assert_eq!(
        ids(store.find("p", &Query::all()).await.expect("all")),
        ["a", "b", "c", "d"],
        "every view, by id, tombstones hidden"
    );
    assert_eq!(
        ids(store
            .find("p", &Query::all().sort("name", Order::Asc))
            .await
            .expect("sorted")),
        ["b", "d", "c", "a"]
    );
    let page = Query::all().sort("n", Order::Desc).skip(1).limit(2);
    assert_eq!(
        ids(store.find("p", &page).await.expect("page")),
        ["d", "a"],
        "ties broken by id"
    );
    let filtered = Query::all().filter(Filter::And(vec![
        Filter::Gte("nested.n".into(), json!(5)),
        Filter::Lt("name".into(), json!("Z")),
    ]));
    assert_eq!(
        ids(store.find("p", &filtered).await.expect("filter")),
        ["b", "d"]
    );
    assert_eq!(
        store
            .count("p", &Filter::Eq("n".into(), json!(7)))
            .await
            .expect("count"),
        2
    );
    assert_eq!(store.count("p", &Filter::All).await.expect("count"), 4);
    assert!(
        store
            .find(
                "p",
                &Query::all().filter(Filter::Eq("a..b".into(), json!(1)))
            )
            .await
            .is_err(),
        "a malformed path is a typed error"
    );
}
