#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Given/when/then for the shop's aggregates, every rejection included.

use cqrs_testing::AggregateFixture;
use shop::comment::{Comment, CommentCommand, CommentError};
use shop::events::{
    CommentDeleted, CommentEdited, CommentPosted, ProductCreated, ProductPriceChanged,
    ProductRenamed,
};
use shop::product::{Product, ProductCommand, ProductError};

fn created() -> ProductCreated {
    ProductCreated {
        product_id: "p-1".into(),
        name: "Mug".into(),
        price_cents: 900,
    }
}

fn create(name: &str, price_cents: i64) -> ProductCommand {
    ProductCommand::Create {
        product_id: "p-1".into(),
        name: name.into(),
        price_cents,
    }
}

#[test]
fn a_product_is_created_with_a_trimmed_name() {
    let state = AggregateFixture::<Product>::given_nothing()
        .when(create("  Mug ", 900))
        .then_expect_events([created()]);
    assert!(state.exists);
    assert_eq!(state.name, "Mug");
}

#[test]
fn a_free_product_is_allowed() {
    AggregateFixture::<Product>::given_nothing()
        .when(create("Sticker", 0))
        .then_expect_events([ProductCreated {
            product_id: "p-1".into(),
            name: "Sticker".into(),
            price_cents: 0,
        }]);
}

#[test]
fn product_rejections() {
    AggregateFixture::<Product>::given_nothing()
        .when(create("", 900))
        .then_expect_error(ProductError::EmptyName);
    AggregateFixture::<Product>::given_nothing()
        .when(create("   ", 900))
        .then_expect_error(ProductError::EmptyName);
    AggregateFixture::<Product>::given_nothing()
        .when(create("Mug", -1))
        .then_expect_error(ProductError::NegativePrice(-1));
    AggregateFixture::<Product>::given([created()])
        .when(create("Mug", 900))
        .then_expect_error(ProductError::AlreadyExists("p-1".into()));
    AggregateFixture::<Product>::given_nothing()
        .when(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: "Cup".into(),
        })
        .then_expect_error(ProductError::NotFound("p-1".into()));
    AggregateFixture::<Product>::given_nothing()
        .when(ProductCommand::ChangePrice {
            product_id: "p-1".into(),
            price_cents: 5,
        })
        .then_expect_error(ProductError::NotFound("p-1".into()));
    AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: " ".into(),
        })
        .then_expect_error(ProductError::EmptyName);
    AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::ChangePrice {
            product_id: "p-1".into(),
            price_cents: -50,
        })
        .then_expect_error(ProductError::NegativePrice(-50));
}

#[test]
fn a_product_is_renamed_and_repriced() {
    let state = AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: "Big mug".into(),
        })
        .then_expect_events([ProductRenamed {
            product_id: "p-1".into(),
            name: "Big mug".into(),
        }]);
    assert_eq!(state.name, "Big mug");
    let state = AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::ChangePrice {
            product_id: "p-1".into(),
            price_cents: 1200,
        })
        .then_expect_events([ProductPriceChanged {
            product_id: "p-1".into(),
            price_cents: 1200,
        }]);
    assert_eq!(state.price_cents, 1200);
}

#[test]
fn no_change_means_no_event() {
    AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::Rename {
            product_id: "p-1".into(),
            name: "Mug".into(),
        })
        .then_expect_events(Vec::<ProductRenamed>::new());
    AggregateFixture::<Product>::given([created()])
        .when(ProductCommand::ChangePrice {
            product_id: "p-1".into(),
            price_cents: 900,
        })
        .then_expect_events(Vec::<ProductPriceChanged>::new());
}

fn posted() -> CommentPosted {
    CommentPosted {
        comment_id: "c-1".into(),
        product_id: "p-1".into(),
        author: "ana".into(),
        text: "Nice".into(),
        rating: 4,
    }
}

fn post(author: &str, text: &str, rating: u8) -> CommentCommand {
    CommentCommand::Post {
        comment_id: "c-1".into(),
        product_id: "p-1".into(),
        author: author.into(),
        text: text.into(),
        rating,
    }
}

#[test]
fn a_comment_is_posted_edited_and_deleted() {
    AggregateFixture::<Comment>::given_nothing()
        .when(post("ana", " Nice ", 4))
        .then_expect_events([posted()]);
    let state = AggregateFixture::<Comment>::given([posted()])
        .when(CommentCommand::Edit {
            comment_id: "c-1".into(),
            text: "Nicer".into(),
            rating: 5,
        })
        .then_expect_events([CommentEdited {
            comment_id: "c-1".into(),
            product_id: "p-1".into(),
            text: "Nicer".into(),
            rating: 5,
        }]);
    assert_eq!(state.rating, 5);
    let state = AggregateFixture::<Comment>::given([posted()])
        .when(CommentCommand::Delete {
            comment_id: "c-1".into(),
        })
        .then_expect_events([CommentDeleted {
            comment_id: "c-1".into(),
            product_id: "p-1".into(),
        }]);
    assert!(state.deleted);
}

#[test]
fn ratings_from_one_to_five_are_accepted() {
    for rating in 1..=5 {
        AggregateFixture::<Comment>::given_nothing()
            .when(post("ana", "Nice", rating))
            .then_expect_events([CommentPosted { rating, ..posted() }]);
    }
}

#[test]
fn comment_rejections() {
    for rating in [0, 6, 255] {
        AggregateFixture::<Comment>::given_nothing()
            .when(post("ana", "Nice", rating))
            .then_expect_error(CommentError::RatingOutOfRange(rating));
        AggregateFixture::<Comment>::given([posted()])
            .when(CommentCommand::Edit {
                comment_id: "c-1".into(),
                text: "x".into(),
                rating,
            })
            .then_expect_error(CommentError::RatingOutOfRange(rating));
    }
    AggregateFixture::<Comment>::given_nothing()
        .when(post("ana", "", 3))
        .then_expect_error(CommentError::EmptyText);
    AggregateFixture::<Comment>::given_nothing()
        .when(post("ana", "  \n", 3))
        .then_expect_error(CommentError::EmptyText);
    AggregateFixture::<Comment>::given_nothing()
        .when(post(" ", "Nice", 3))
        .then_expect_error(CommentError::EmptyAuthor);
    AggregateFixture::<Comment>::given_nothing()
        .when(CommentCommand::Post {
            comment_id: "c-1".into(),
            product_id: "".into(),
            author: "a".into(),
            text: "t".into(),
            rating: 3,
        })
        .then_expect_error(CommentError::NoProduct);
    AggregateFixture::<Comment>::given([posted()])
        .when(post("ana", "Again", 3))
        .then_expect_error(CommentError::AlreadyExists("c-1".into()));
    AggregateFixture::<Comment>::given([posted()])
        .when(CommentCommand::Edit {
            comment_id: "c-1".into(),
            text: "".into(),
            rating: 3,
        })
        .then_expect_error(CommentError::EmptyText);
    AggregateFixture::<Comment>::given_nothing()
        .when(CommentCommand::Edit {
            comment_id: "c-1".into(),
            text: "x".into(),
            rating: 3,
        })
        .then_expect_error(CommentError::NotFound("c-1".into()));
    AggregateFixture::<Comment>::given_nothing()
        .when(CommentCommand::Delete {
            comment_id: "c-1".into(),
        })
        .then_expect_error(CommentError::NotFound("c-1".into()));
    let deleted = CommentDeleted {
        comment_id: "c-1".into(),
        product_id: "p-1".into(),
    };
    AggregateFixture::<Comment>::given([
        shop::events::CommentEvent::from(posted()),
        deleted.clone().into(),
    ])
    .when(CommentCommand::Delete {
        comment_id: "c-1".into(),
    })
    .then_expect_error(CommentError::Deleted("c-1".into()));
    AggregateFixture::<Comment>::given([
        shop::events::CommentEvent::from(posted()),
        deleted.into(),
    ])
    .when(CommentCommand::Edit {
        comment_id: "c-1".into(),
        text: "x".into(),
        rating: 3,
    })
    .then_expect_error(CommentError::Deleted("c-1".into()));
}

/// A comment's events route by its product: the catalog entry they change is the product's,
/// so one partition carries the product's and its comments' events.
#[tokio::test]
async fn a_comments_events_route_by_its_product() {
    let store = std::sync::Arc::new(cqrs_core::memory::MemoryEventStore::new());
    let gateway = cqrs_core::CommandGateway::builder(store).build();
    let posted = gateway.send(post("ana", "Nice", 4)).await.unwrap();
    let edited = gateway
        .send(CommentCommand::Edit {
            comment_id: "c-1".into(),
            text: "Nicer".into(),
            rating: 5,
        })
        .await
        .unwrap();
    for e in posted.iter().chain(&edited) {
        assert_eq!(e.stream_id, "c-1");
        assert_eq!(e.routing_key(), "p-1", "{}", e.event_name);
    }
}
