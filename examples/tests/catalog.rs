#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The catalog projection: converges whatever the interleaving; follows renames, edits and
//! deletes; reads old event versions; answers its queries; replays to the same state.

use std::sync::Arc;

use cqrs_core::memory::{MemoryEventStore, MemoryViewStore};
use cqrs_core::{CommandGateway, EventSet, ReadModel, TrackingProcessor, ViewQuery};
use cqrs_testing::{raw_envelope, ProjectionFixture};
use shop::catalog::{Catalog, CatalogComment, CatalogEntry, CatalogQueries};
use shop::comment::CommentCommand;
use shop::events::{
    CommentDeleted, CommentEdited, CommentPosted, ProductCreated, ProductEvent,
    ProductPriceChanged, ProductRenamed,
};
use shop::product::ProductCommand;

fn posted(id: &str, rating: u8) -> CommentPosted {
    CommentPosted {
        comment_id: id.into(),
        product_id: "p-1".into(),
        author: format!("author of {id}"),
        text: format!("text of {id}"),
        rating,
    }
}

fn comment(id: &str, rating: u8, position: u64) -> CatalogComment {
    CatalogComment {
        comment_id: id.into(),
        author: format!("author of {id}"),
        text: format!("text of {id}"),
        rating,
        position,
    }
}

#[test]
fn product_and_comments_join_into_one_entry() {
    ProjectionFixture::new(Catalog)
        .given(
            "product",
            "p-1",
            ProductCreated {
                product_id: "p-1".into(),
                name: "Mug".into(),
                price_cents: 900,
            },
        )
        .given("comment", "c-1", posted("c-1", 5))
        .given("comment", "c-2", posted("c-2", 2))
        .then_view(
            "p-1",
            Some(CatalogEntry {
                product_id: "p-1".into(),
                name: Some("Mug".into()),
                price_cents: Some(900),
                average_rating: Some(3.5),
                rating_count: 2,
                comments: vec![comment("c-1", 5, 2), comment("c-2", 2, 3)],
            }),
        );
}

#[test]
fn a_comment_before_its_product_still_converges() {
    let fixture = ProjectionFixture::new(Catalog)
        .given("comment", "c-1", posted("c-1", 4))
        .given(
            "product",
            "p-1",
            ProductRenamed {
                product_id: "p-1".into(),
                name: "Cup".into(),
            },
        );
    let partial = fixture.view("p-1").expect("a partial entry exists");
    assert_eq!(
        (
            partial.name.as_deref(),
            partial.price_cents,
            partial.rating_count
        ),
        (Some("Cup"), None, 1)
    );
    let done = fixture
        .given(
            "product",
            "p-1",
            ProductPriceChanged {
                product_id: "p-1".into(),
                price_cents: 300,
            },
        )
        .view("p-1")
        .expect("entry");
    assert_eq!(
        (done.name.as_deref(), done.price_cents, done.average_rating),
        (Some("Cup"), Some(300), Some(4.0))
    );
}

#[test]
fn renames_edits_and_deletes_are_followed() {
    let entry = ProjectionFixture::new(Catalog)
        .given(
            "product",
            "p-1",
            ProductCreated {
                product_id: "p-1".into(),
                name: "Mug".into(),
                price_cents: 900,
            },
        )
        .given("comment", "c-1", posted("c-1", 1))
        .given("comment", "c-2", posted("c-2", 5))
        .given("comment", "c-3", posted("c-3", 3))
        .given(
            "product",
            "p-1",
            ProductRenamed {
                product_id: "p-1".into(),
                name: "Giant mug".into(),
            },
        )
        .given(
            "comment",
            "c-1",
            CommentEdited {
                comment_id: "c-1".into(),
                product_id: "p-1".into(),
                text: "better now".into(),
                rating: 4,
            },
        )
        .given(
            "comment",
            "c-3",
            CommentDeleted {
                comment_id: "c-3".into(),
                product_id: "p-1".into(),
            },
        )
        .view("p-1")
        .expect("entry");
    assert_eq!(entry.name.as_deref(), Some("Giant mug"));
    assert_eq!(entry.rating_count, 2);
    assert_eq!(entry.average_rating, Some(4.5));
    assert_eq!(entry.comments.len(), 2);
    assert_eq!(entry.comments[0].text, "better now");
    assert_eq!(entry.comments[1].comment_id, "c-2");
}

#[test]
fn deleting_the_last_comment_clears_the_rating() {
    let entry = ProjectionFixture::new(Catalog)
        .given("comment", "c-1", posted("c-1", 5))
        .given(
            "comment",
            "c-1",
            CommentDeleted {
                comment_id: "c-1".into(),
                product_id: "p-1".into(),
            },
        )
        .view("p-1")
        .expect("entry");
    assert_eq!((entry.rating_count, entry.average_rating), (0, None));
}

#[test]
fn a_product_created_event_stored_as_v1_is_read_as_v2() {
    let v1 = raw_envelope(
        "product",
        "p-9",
        1,
        1,
        "shop.ProductCreated",
        1,
        r#"{"product_id":"p-9","name":"Old","price":12.5}"#,
    );
    let ProductEvent::Created(created) =
        ProductEvent::decode(&v1).expect("upcast").expect("in set")
    else {
        panic!("not a creation");
    };
    assert_eq!(created.price_cents, 1250);
    let entry = ProjectionFixture::new(Catalog)
        .given_envelopes(vec![v1])
        .view("p-9")
        .expect("entry");
    assert_eq!(entry.price_cents, Some(1250));
}

#[test]
fn an_older_document_without_the_newer_fields_still_loads() {
    let fixture = ProjectionFixture::new(Catalog);
    fixture.store().put_document(
        "catalog",
        cqrs_core::view::StoredDoc {
            id: "p-old".into(),
            view: Some(serde_json::json!({"product_id": "p-old", "name": "Legacy"})),
            applied: Default::default(),
            position: 0,
            revision: 1,
            parked: Default::default(),
        },
    );
    let entry = fixture
        .given(
            "comment",
            "c-1",
            CommentPosted {
                product_id: "p-old".into(),
                ..posted("c-1", 3)
            },
        )
        .view("p-old")
        .expect("entry");
    assert_eq!(
        (entry.name.as_deref(), entry.rating_count),
        (Some("Legacy"), 1)
    );
}

#[tokio::test]
async fn the_catalog_answers_queries_and_replays_to_the_same_state() {
    let store = Arc::new(MemoryEventStore::new());
    let gateway = CommandGateway::builder(store.clone()).build();
    for (id, name) in [("p-1", "Zebra"), ("p-2", "Apple"), ("p-3", "Mango")] {
        gateway
            .send(ProductCommand::Create {
                product_id: id.into(),
                name: name.into(),
                price_cents: 100,
            })
            .await
            .expect("create");
    }
    for (i, rating) in [5u8, 3, 4].into_iter().enumerate() {
        gateway
            .send(CommentCommand::Post {
                comment_id: format!("c-{i}"),
                product_id: "p-2".into(),
                author: "a".into(),
                text: "t".into(),
                rating,
            })
            .await
            .expect("post");
    }
    let views = Arc::new(MemoryViewStore::new());
    let processor = TrackingProcessor::new(Catalog, views.clone());
    processor.catch_up(store.clone()).await.expect("catch up");
    let queries = CatalogQueries::new(ReadModel::new(views.clone() as Arc<dyn ViewQuery>));
    let apple = queries.entry("p-2").await.expect("entry").expect("exists");
    assert_eq!((apple.average_rating, apple.rating_count), (Some(4.0), 3));
    assert_eq!(queries.entry("nope").await.expect("entry"), None);
    let names =
        |page: Vec<CatalogEntry>| page.into_iter().filter_map(|e| e.name).collect::<Vec<_>>();
    assert_eq!(
        names(queries.list(0, 2).await.expect("page 0")),
        ["Apple", "Mango"]
    );
    assert_eq!(names(queries.list(1, 2).await.expect("page 1")), ["Zebra"]);
    assert!(queries.list(5, 2).await.expect("past the end").is_empty());

    let before = queries.list(0, 10).await.expect("all");
    processor.reset().await.expect("reset");
    assert!(queries.list(0, 10).await.expect("wiped").is_empty());
    processor.catch_up(store).await.expect("replay");
    assert_eq!(queries.list(0, 10).await.expect("all"), before);
}

#[tokio::test]
async fn comments_are_listed_by_their_position_in_the_store_whatever_the_delivery_order() {
    use cqrs_core::processor::Batch;
    use cqrs_testing::envelope_of;
    use shop::events::CommentEvent;

    // A bus delivers each comment's stream in order, but different comments in any order.
    let delivered: Vec<_> = [(3, "c-3"), (1, "c-1"), (2, "c-2")]
        .into_iter()
        .map(|(position, id)| {
            envelope_of(
                "comment",
                id,
                1,
                position,
                &CommentEvent::Posted(posted(id, 4)),
            )
        })
        .collect();
    let views = Arc::new(MemoryViewStore::new());
    TrackingProcessor::new(Catalog, views.clone())
        .process(&Batch::from_bus(delivered))
        .await
        .expect("process");
    let entry = CatalogQueries::new(ReadModel::new(views as Arc<dyn ViewQuery>))
        .entry("p-1")
        .await
        .expect("entry")
        .expect("p-1");
    let ids: Vec<_> = entry
        .comments
        .iter()
        .map(|c| c.comment_id.as_str())
        .collect();
    assert_eq!(ids, ["c-1", "c-2", "c-3"]);
}
