#![allow(missing_docs, clippy::expect_used, clippy::unwrap_used)]
//! Property tests of decoding: whatever bytes a store, a bus or an attacker hands over, the
//! envelope, the payload and the upcaster chain give a value or a typed error, never a panic.

use cqrs_core::{registry, Envelope, Error, EventSet};
use cqrs_testing::raw_envelope;
use proptest::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

/// Version 3 of an event whose shape changed twice (as in the registry tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Shipped {
    pub order_id: String,
    pub carrier: String,
    pub weight_grams: u64,
}
cqrs_core::event!(Shipped, "fuzz.Shipped", version = 3);

fn shipped_v1(mut p: Value) -> Result<Value, String> {
    let order = p.get("order").cloned().ok_or("v1 has no `order`")?;
    let object = p.as_object_mut().ok_or("not an object")?;
    object.remove("order");
    object.insert("order_id".into(), order);
    object.insert("carrier".into(), json!("unknown"));
    Ok(p)
}
fn shipped_v2(mut p: Value) -> Result<Value, String> {
    let kg = p
        .get("weight_kg")
        .and_then(Value::as_f64)
        .ok_or("v2 has no `weight_kg`")?;
    let object = p.as_object_mut().ok_or("not an object")?;
    object.insert("weight_grams".into(), json!((kg * 1000.0).round() as u64));
    Ok(p)
}
cqrs_core::upcaster!("fuzz.Shipped", from = 1, shipped_v1);
cqrs_core::upcaster!("fuzz.Shipped", from = 2, shipped_v2);

/// An event whose (careless) upcaster panics on some inputs: indexing a non-object.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Careless {
    pub n: i64,
}
cqrs_core::event!(Careless, "fuzz.Careless", version = 2);
fn careless_v1(mut p: Value) -> Result<Value, String> {
    p["n"] = json!(1); // panics when `p` is neither an object nor null
    Ok(p)
}
cqrs_core::upcaster!("fuzz.Careless", from = 1, careless_v1);

cqrs_core::event_set! {
    #[derive(Debug, Clone, PartialEq)]
    pub enum FuzzEvent {
        Shipped(Shipped),
        Careless(Careless),
    }
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("order".to_owned()),
        Just("order_id".to_owned()),
        Just("carrier".to_owned()),
        Just("weight_kg".to_owned()),
        Just("weight_grams".to_owned()),
        Just("n".to_owned()),
        "[a-z_]{1,8}",
    ]
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>()
            .prop_filter("JSON numbers are finite", |f| f.is_finite())
            .prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
            prop::collection::vec((key(), inner), 0..6)
                .prop_map(|fields| Value::Object(fields.into_iter().collect())),
        ]
    })
}

fn name() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("fuzz.Shipped".to_owned()),
        Just("fuzz.Careless".to_owned()),
        ".{0,20}",
    ]
}

/// A decode error must name the event it is about.
fn names_the_event(error: &Error, envelope: &Envelope) -> bool {
    match error.event() {
        Some(event) => {
            event.stream_id == envelope.stream_id
                && event.position == envelope.position
                && event.event_name == envelope.event_name
        }
        // Registry errors (a missing step, a newer version) name the event type instead.
        None => matches!(error, Error::Registry { name, .. } if *name == envelope.event_name),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn any_payload_bytes_decode_or_give_a_typed_error(
        name in name(),
        version in 0u32..5,
        payload in prop::collection::vec(any::<u8>(), 0..256),
    ) {
        let envelope = raw_envelope("order", "o-1", 3, 42, &name, version, payload.clone());
        if let Err(e) = FuzzEvent::decode(&envelope) {
            prop_assert!(names_the_event(&e, &envelope), "{e}");
        }
        if let Err(e) = registry().decode_dyn(&envelope) {
            prop_assert!(names_the_event(&e, &envelope), "{e}");
        }
    }

    #[test]
    fn any_json_payload_goes_through_the_upcasters_without_a_panic(
        name in name(),
        version in 0u32..5,
        payload in json_value(),
    ) {
        let bytes = serde_json::to_vec(&payload).unwrap();
        let envelope = raw_envelope("order", "o-1", 3, 42, &name, version, bytes.clone());
        match FuzzEvent::decode(&envelope) {
            Ok(_) => {}
            Err(e) => prop_assert!(names_the_event(&e, &envelope), "{e}"),
        }
        let _ = registry().upcast(&envelope, 3);
    }

    #[test]
    fn a_v1_payload_with_the_right_fields_always_upcasts(
        order in ".{0,16}",
        kg in 0.0f64..1.0e6,
        extra in json_value(),
    ) {
        let payload = json!({"order": order, "weight_kg": kg, "extra": extra});
        let bytes = serde_json::to_vec(&payload).unwrap();
        let envelope = raw_envelope("order", "o-1", 1, 1, "fuzz.Shipped", 1, bytes.clone());
        let decoded = FuzzEvent::decode(&envelope).unwrap();
        prop_assert_eq!(decoded, Some(FuzzEvent::Shipped(Shipped {
            order_id: order,
            carrier: "unknown".into(),
            weight_grams: (kg * 1000.0).round() as u64,
        })));
    }

    #[test]
    fn any_bytes_as_an_envelope_give_a_serde_error_not_a_panic(
        bytes in prop::collection::vec(any::<u8>(), 0..512),
    ) {
        let _ = serde_json::from_slice::<Envelope>(&bytes);
    }

    #[test]
    fn any_json_as_an_envelope_gives_a_serde_error_not_a_panic(value in json_value()) {
        let _ = serde_json::from_value::<Envelope>(value);
    }
}

#[test]
fn a_panicking_upcaster_is_a_decode_error_naming_the_event() {
    let envelope = raw_envelope("order", "o-7", 2, 9, "fuzz.Careless", 1, &b"[1, 2]"[..]);
    let err = FuzzEvent::decode(&envelope).expect_err("the upcaster panics");
    match &err {
        Error::Decode { event, reason } => {
            assert_eq!((event.stream_id.as_str(), event.position), ("o-7", 9));
            assert!(reason.contains("panicked"), "{reason}");
        }
        other => panic!("expected a decode error, got {other}"),
    }
    // The same upcaster on a payload it handles works.
    let fine = raw_envelope("order", "o-7", 2, 9, "fuzz.Careless", 1, &b"{}"[..]);
    assert_eq!(
        FuzzEvent::decode(&fine).expect("decodes"),
        Some(FuzzEvent::Careless(Careless { n: 1 }))
    );
}
