#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Property tests of the shop's event contracts: any stored payload decodes or gives a typed
//! error naming the event; the `ProductCreated` v1 upcaster never panics.

use cqrs_core::{Error, EventSet};
use cqrs_testing::raw_envelope;
use proptest::prelude::*;
use serde_json::{json, Value};
use shop::catalog::CatalogEvent;
use shop::events::{ProductCreated, ProductEvent};

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    let key = prop_oneof![
        Just("product_id".to_owned()),
        Just("name".to_owned()),
        Just("price".to_owned()),
        Just("price_cents".to_owned()),
        Just("rating".to_owned()),
        "[a-z_]{1,8}",
    ];
    leaf.prop_recursive(3, 32, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(Value::from),
            prop::collection::vec((key.clone(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn shop_name() -> impl Strategy<Value = &'static str> {
    prop::sample::select(vec![
        "shop.ProductCreated",
        "shop.ProductRenamed",
        "shop.ProductPriceChanged",
        "shop.CommentPosted",
        "shop.CommentEdited",
        "shop.CommentDeleted",
        "shop.Unheard",
    ])
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_payload_decodes_or_names_the_event(
        name in shop_name(),
        version in 0u32..4,
        payload in json_value(),
    ) {
        let bytes = serde_json::to_vec(&payload).unwrap();
        let envelope = raw_envelope("product", "p-1", 2, 77, name, version, bytes);
        for result in [
            CatalogEvent::decode(&envelope).map(|_| ()),
            ProductEvent::decode(&envelope).map(|_| ()),
        ] {
            if let Err(e) = result {
                let named = match e.event() {
                    Some(event) => event.position == 77 && event.event_name == name,
                    None => matches!(&e, Error::Registry { name: n, .. } if n == name),
                };
                prop_assert!(named, "{e}");
            }
        }
    }

    #[test]
    fn a_v1_product_with_a_price_in_units_upcasts_to_cents(
        price in 0.0f64..1.0e9,
        name in ".{1,20}",
    ) {
        let bytes = serde_json::to_vec(&json!({"product_id": "p-1", "name": name, "price": price})).unwrap();
        let envelope = raw_envelope("product", "p-1", 1, 1, "shop.ProductCreated", 1, bytes);
        prop_assert_eq!(
            ProductEvent::decode(&envelope).unwrap(),
            Some(ProductEvent::Created(ProductCreated {
                product_id: "p-1".into(),
                name,
                price_cents: (price * 100.0).round() as i64,
            }))
        );
    }
}
