#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! The event registry: stable names, upcasters, start-up checks, dynamic decoding.

use cqrs_core::{registry, Error, Event, EventSet};
use cqrs_testing::{envelope_of, raw_envelope};
use serde::{Deserialize, Serialize};
use serde_json::json;

/// Version 3 of an event whose shape changed twice.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipped {
    pub order_id: String,
    pub carrier: String,
    pub weight_grams: u64,
}
cqrs_core::event!(Shipped, "test.Shipped", version = 3);

// v1 had `order` and no carrier; v2 renamed `order` to `order_id` and added `carrier`;
// v3 replaced `weight_kg` (float) with `weight_grams`.
fn shipped_v1(mut p: serde_json::Value) -> Result<serde_json::Value, String> {
    let order = p.get("order").cloned().ok_or("v1 has no `order`")?;
    p["order_id"] = order;
    p["carrier"] = json!("unknown");
    p.as_object_mut().ok_or("not an object")?.remove("order");
    Ok(p)
}
fn shipped_v2(mut p: serde_json::Value) -> Result<serde_json::Value, String> {
    let kg = p
        .get("weight_kg")
        .and_then(|w| w.as_f64())
        .ok_or("v2 has no `weight_kg`")?;
    p["weight_grams"] = json!((kg * 1000.0).round() as u64);
    Ok(p)
}
cqrs_core::upcaster!("test.Shipped", from = 1, shipped_v1);
cqrs_core::upcaster!("test.Shipped", from = 2, shipped_v2);

/// An event with a version and no upcaster chain.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Orphaned {
    pub x: u32,
}
cqrs_core::event!(Orphaned, "test.Orphaned", version = 2);

#[test]
fn names_are_explicit_not_rust_type_names() {
    assert_eq!(Shipped::NAME, "test.Shipped");
    assert_eq!(Shipped::VERSION, 3);
    let reg = registry().get("test.Shipped").expect("registered");
    assert_eq!((reg.version, reg.type_name), (3, "Shipped"));
    assert!(registry().validate().is_ok(), "{:?}", registry().validate());
}

#[test]
fn an_event_stored_as_v1_is_read_as_v3_through_the_chain() {
    let v1 = raw_envelope(
        "order",
        "o-1",
        1,
        1,
        "test.Shipped",
        1,
        json!({"order": "o-1", "weight_kg": 1.25}).to_string(),
    );
    let event = <Shipped as EventSet>::decode(&v1)
        .expect("upcast")
        .expect("in set");
    assert_eq!(
        event,
        Shipped {
            order_id: "o-1".into(),
            carrier: "unknown".into(),
            weight_grams: 1250
        }
    );
    let v2 = raw_envelope(
        "order",
        "o-2",
        1,
        2,
        "test.Shipped",
        2,
        json!({"order_id": "o-2", "carrier": "dhl", "weight_kg": 0.5}).to_string(),
    );
    let event = <Shipped as EventSet>::decode(&v2)
        .expect("upcast")
        .expect("in set");
    assert_eq!(event.carrier, "dhl");
    assert_eq!(event.weight_grams, 500);
}

#[test]
fn an_upcaster_that_refuses_gives_a_typed_error_naming_the_event() {
    let bad = raw_envelope(
        "order",
        "o-3",
        4,
        9,
        "test.Shipped",
        1,
        json!({"no_order": true}).to_string(),
    );
    let err = <Shipped as EventSet>::decode(&bad).expect_err("refused");
    let Error::Decode { event, reason } = &err else {
        panic!("got {err}")
    };
    assert_eq!(
        (
            event.stream_id.as_str(),
            event.position,
            event.event_name.as_str()
        ),
        ("o-3", 9, "test.Shipped")
    );
    assert!(reason.contains("v1 has no `order`"), "{reason}");
}

#[test]
fn the_start_up_check_names_what_cannot_be_decoded() {
    assert!(registry().check_type("test.Shipped", 1).is_ok());
    assert!(registry().check_type("test.Shipped", 3).is_ok());
    let unknown = registry()
        .check_type("test.Vanished", 1)
        .expect_err("unknown");
    assert!(
        matches!(&unknown, Error::Registry { name, .. } if name == "test.Vanished"),
        "{unknown}"
    );
    let gap = registry()
        .check_type("test.Orphaned", 1)
        .expect_err("no upcaster");
    assert!(
        gap.to_string().contains("no upcaster from v1 to v2"),
        "{gap}"
    );
    let future = registry()
        .check_type("test.Shipped", 4)
        .expect_err("newer than known");
    assert!(future.to_string().contains("newer version"), "{future}");
}

#[tokio::test]
async fn the_start_up_check_reads_the_store() {
    let store = cqrs_core::memory::MemoryEventStore::new();
    store.insert_raw(vec![envelope_of(
        "order",
        "o",
        0,
        0,
        &Shipped {
            order_id: "o".into(),
            carrier: "c".into(),
            weight_grams: 1,
        },
    )]);
    registry().check_store(&store).await.expect("all known");
    store.insert_raw(vec![raw_envelope(
        "order",
        "o",
        0,
        0,
        "test.Renamed.Away",
        1,
        "{}",
    )]);
    let err = registry()
        .check_store(&store)
        .await
        .expect_err("unknown stored name");
    assert!(err.to_string().contains("test.Renamed.Away"), "{err}");
    // A service that shares the store checks only its own aggregate types.
    store.insert_raw(vec![raw_envelope(
        "invoice",
        "i",
        0,
        0,
        "billing.Newer",
        1,
        "{}",
    )]);
    registry()
        .check_store_for(&store, &["invoice"])
        .await
        .expect_err("its own unknown event");
    registry()
        .check_store_for(&store, &["parcel"])
        .await
        .expect("nothing of its own is unknown");
    store.insert_raw(vec![raw_envelope(
        "parcel",
        "p",
        0,
        0,
        "test.Shipped",
        3,
        "{}",
    )]);
    registry()
        .check_store_for(&store, &["parcel"])
        .await
        .expect("its own events are known");
}

#[test]
fn any_event_decodes_dynamically_through_typetag() {
    let stored = envelope_of(
        "order",
        "o-1",
        1,
        1,
        &Shipped {
            order_id: "o-1".into(),
            carrier: "ups".into(),
            weight_grams: 7,
        },
    );
    let event = registry().decode_dyn(&stored).expect("decode");
    assert_eq!(event.event_name(), "test.Shipped");
    assert_eq!(
        event
            .as_any()
            .downcast_ref::<Shipped>()
            .map(|s| s.weight_grams),
        Some(7)
    );
    let old = raw_envelope(
        "order",
        "o-1",
        1,
        1,
        "test.Shipped",
        1,
        json!({"order": "o-1", "weight_kg": 2.0}).to_string(),
    );
    let upcast = registry().decode_dyn(&old).expect("decode v1");
    assert_eq!(
        upcast
            .as_any()
            .downcast_ref::<Shipped>()
            .map(|s| s.weight_grams),
        Some(2000)
    );
    let unknown = raw_envelope("order", "o-1", 1, 5, "test.Nope", 1, "{}");
    assert!(matches!(
        registry().decode_dyn(&unknown),
        Err(Error::UnknownEvent { .. })
    ));
    let garbage = raw_envelope(
        "order",
        "o-1",
        1,
        6,
        "test.Shipped",
        3,
        "{\"order_id\": 1} trailing",
    );
    assert!(matches!(
        registry().decode_dyn(&garbage),
        Err(Error::Decode { .. })
    ));
}
