//! Events: the [`Event`] trait, sets of events ([`EventSet`]) and the macros that declare them.

use std::any::Any;
use std::fmt::Debug;

use bytes::Bytes;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::registry::registry;

/// A fact that happened: a plain serde struct with a stable name and a schema version.
///
/// Implement it with one line, [`event!`](macro@crate::event): the name is an explicit string,
/// never the Rust type name, so renaming the struct does not orphan stored events.
///
/// ```
/// use serde::{Deserialize, Serialize};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
/// pub struct ProductRenamed { pub name: String }
/// cqrs_core::event!(ProductRenamed, "doc.ProductRenamed", version = 2);
///
/// use cqrs_core::Event;
/// assert_eq!(ProductRenamed::NAME, "doc.ProductRenamed");
/// assert_eq!(ProductRenamed::VERSION, 2);
/// ```
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not an event",
    label = "declare it with `cqrs_core::event!({Self}, \"context.EventName\");`",
    note = "an event is a serde struct with a stable name: see the `event!` macro"
)]
pub trait Event: Serialize + DeserializeOwned + Debug + Send + Sync + 'static {
    /// The stable name the event is stored under.
    const NAME: &'static str;
    /// The schema version of the payload; bump it and register an upcaster when the shape changes.
    const VERSION: u32 = 1;

    /// The key that routes this event to a bus partition when it is not the stream id: the id
    /// of the view it changes. Declare it with `routing_key = field` in
    /// [`event!`](macro@crate::event). A stream keeps the key of its first event; an event
    /// that names another is refused with [`Error::RoutingKeyChanged`], one that names the
    /// stream id names none and inherits the stream's key, an empty key is refused with
    /// [`Error::Malformed`] (see [`crate::routing`]).
    fn routing_key(&self) -> Option<&str> {
        None
    }
}

/// Object-safe view of any registered event, (de)serialized through `typetag` by its stable name.
///
/// The registry decodes any stored envelope into a `Box<dyn DynEvent>` with
/// [`Registry::decode_dyn`](crate::registry::Registry::decode_dyn): for tools that handle every
/// event (inspection, dead-letter listings) without knowing the types.
#[typetag::serde]
pub trait DynEvent: Debug + Send + Sync + Any {
    /// The stable name of the event.
    fn event_name(&self) -> &'static str;
    /// The schema version of the event.
    fn event_version(&self) -> u32;
    /// The event as [`Any`], to downcast when the type is known.
    fn as_any(&self) -> &dyn Any;
}

/// A closed set of events: what an aggregate emits, or what a projection wants.
///
/// A single [`Event`] is a set of one; [`event_set!`](crate::event_set) declares an enum of several.
/// Decoding is by name: an envelope whose name is not in the set decodes to `None`.
#[diagnostic::on_unimplemented(
    message = "`{Self}` is not a set of events",
    label = "declare the enum with `cqrs_core::event_set! {{ pub enum {Self} {{ ... }} }}`",
    note = "a single event declared with `cqrs_core::event!` is a set too"
)]
pub trait EventSet: Debug + Send + Sync + Sized + 'static {
    /// The names of every event in the set.
    fn names() -> &'static [&'static str];
    /// The stable name of this event.
    fn event_name(&self) -> &'static str;
    /// The schema version of this event.
    fn event_version(&self) -> u32;
    /// The routing key this event names, if any (see [`Event::routing_key`]).
    fn routing_key(&self) -> Option<&str> {
        None
    }
    /// The event serialized as a JSON payload.
    ///
    /// # Errors
    /// [`Error::Serialize`] when serde refuses the value.
    fn to_payload(&self) -> Result<Bytes>;
    /// Decodes an envelope into the set; `Ok(None)` when its name is not in the set.
    ///
    /// # Errors
    /// [`Error::Decode`] when the payload does not fit the type, even after upcasting.
    fn decode(envelope: &Envelope) -> Result<Option<Self>>;
}

/// Serializes one event into a JSON payload.
///
/// # Errors
/// [`Error::Serialize`] when serde refuses the value.
pub fn encode_payload<E: Event>(event: &E) -> Result<Bytes> {
    serde_json::to_vec(event)
        .map(Bytes::from)
        .map_err(|source| Error::Serialize {
            what: format!("event `{}`", E::NAME),
            source,
        })
}

/// Decodes an envelope's payload as `E`, upcasting it first when it was stored at an older version.
///
/// # Errors
/// [`Error::Decode`] when the payload does not fit, [`Error::Registry`] when no upcaster chain
/// leads from the stored version to `E::VERSION`.
pub fn decode_payload<E: Event>(envelope: &Envelope) -> Result<E> {
    let decoded = if envelope.event_version == E::VERSION {
        serde_json::from_slice(&envelope.payload)
    } else {
        let value = registry().upcast(envelope, E::VERSION)?;
        serde_json::from_value(value)
    };
    decoded.map_err(|e| Error::Decode {
        event: envelope.event_ref(),
        reason: e.to_string(),
    })
}

/// Declares a struct as an [`Event`] with its stable name and, when not 1, its version; and,
/// when its stream is not the key of the views it changes, the field that names its routing
/// key (see [`Event::routing_key`]).
///
/// It also registers the event with the global [`Registry`](crate::registry::Registry)
/// (through `inventory`) and with `typetag`, so every stored name can be checked at start-up
/// and decoded as a [`DynEvent`].
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct PriceChanged { pub cents: i64 }
/// cqrs_core::event!(PriceChanged, "doc.PriceChanged");
///
/// /// A review changes its product's view: it routes by the product id.
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Reviewed { pub product_id: String, pub stars: u8 }
/// cqrs_core::event!(Reviewed, "doc.Reviewed", version = 2, routing_key = product_id);
///
/// use cqrs_core::Event;
/// let review = Reviewed { product_id: "p-1".into(), stars: 5 };
/// assert_eq!(review.routing_key(), Some("p-1"));
/// ```
#[macro_export]
macro_rules! event {
    ($ty:ident, $name:literal) => {
        $crate::event!(@impl $ty, $name, 1, );
    };
    ($ty:ident, $name:literal, version = $version:literal) => {
        $crate::event!(@impl $ty, $name, $version, );
    };
    ($ty:ident, $name:literal, routing_key = $key:ident) => {
        $crate::event!(@impl $ty, $name, 1, $key);
    };
    ($ty:ident, $name:literal, version = $version:literal, routing_key = $key:ident) => {
        $crate::event!(@impl $ty, $name, $version, $key);
    };
    (@impl $ty:ident, $name:literal, $version:literal, $($key:ident)?) => {
        impl $crate::Event for $ty {
            const NAME: &'static str = $name;
            const VERSION: u32 = $version;
            $(
                fn routing_key(&self) -> ::core::option::Option<&str> {
                    ::core::option::Option::Some(::core::convert::AsRef::<str>::as_ref(&self.$key))
                }
            )?
        }

        impl $crate::EventSet for $ty {
            fn names() -> &'static [&'static str] {
                &[$name]
            }
            fn event_name(&self) -> &'static str {
                $name
            }
            fn event_version(&self) -> u32 {
                $version
            }
            fn routing_key(&self) -> ::core::option::Option<&str> {
                <$ty as $crate::Event>::routing_key(self)
            }
            fn to_payload(&self) -> $crate::Result<$crate::__private::Bytes> {
                $crate::event::encode_payload(self)
            }
            fn decode(envelope: &$crate::Envelope) -> $crate::Result<::core::option::Option<Self>> {
                if envelope.event_name == $name {
                    $crate::event::decode_payload::<$ty>(envelope).map(::core::option::Option::Some)
                } else {
                    ::core::result::Result::Ok(::core::option::Option::None)
                }
            }
        }

        const _: () = {
            use $crate::__private::typetag;

            #[typetag::serde(name = $name)]
            impl $crate::DynEvent for $ty {
                fn event_name(&self) -> &'static str {
                    $name
                }
                fn event_version(&self) -> u32 {
                    $version
                }
                fn as_any(&self) -> &dyn ::core::any::Any {
                    self
                }
            }

            $crate::__private::inventory::submit! {
                $crate::registry::EventRegistration {
                    name: $name,
                    version: $version,
                    type_name: ::core::stringify!($ty),
                    module: ::core::module_path!(),
                }
            }
        };
    };
}

/// Declares an enum whose variants each wrap one [`Event`], and makes it an [`EventSet`].
///
/// Aggregates emit such an enum; projections name the events they want with one.
/// Each wrapped type gets a `From` conversion into the enum.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Opened { pub owner: String }
/// # cqrs_core::event!(Opened, "doc.set.Opened");
/// # #[derive(Debug, Clone, Serialize, Deserialize)] pub struct Closed {}
/// # cqrs_core::event!(Closed, "doc.set.Closed");
/// cqrs_core::event_set! {
///     /// What an account does.
///     #[derive(Debug, Clone)]
///     pub enum AccountEvent {
///         Opened(Opened),
///         Closed(Closed),
///     }
/// }
/// use cqrs_core::EventSet;
/// assert_eq!(AccountEvent::names(), ["doc.set.Opened", "doc.set.Closed"]);
/// ```
#[macro_export]
macro_rules! event_set {
    (
        $(#[$meta:meta])*
        $vis:vis enum $set:ident {
            $( $(#[$vmeta:meta])* $variant:ident($ty:ty) ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis enum $set {
            $( $(#[$vmeta])* #[allow(missing_docs)] $variant($ty) ),+
        }

        $(
            impl ::core::convert::From<$ty> for $set {
                fn from(event: $ty) -> Self {
                    $set::$variant(event)
                }
            }
        )+

        impl $crate::EventSet for $set {
            fn names() -> &'static [&'static str] {
                &[$(<$ty as $crate::Event>::NAME),+]
            }
            fn event_name(&self) -> &'static str {
                match self {
                    $($set::$variant(_) => <$ty as $crate::Event>::NAME),+
                }
            }
            fn event_version(&self) -> u32 {
                match self {
                    $($set::$variant(_) => <$ty as $crate::Event>::VERSION),+
                }
            }
            fn routing_key(&self) -> ::core::option::Option<&str> {
                match self {
                    $($set::$variant(event) => <$ty as $crate::Event>::routing_key(event)),+
                }
            }
            fn to_payload(&self) -> $crate::Result<$crate::__private::Bytes> {
                match self {
                    $($set::$variant(event) => $crate::event::encode_payload(event)),+
                }
            }
            fn decode(envelope: &$crate::Envelope) -> $crate::Result<::core::option::Option<Self>> {
                $(
                    if envelope.event_name == <$ty as $crate::Event>::NAME {
                        return $crate::event::decode_payload::<$ty>(envelope)
                            .map(|event| ::core::option::Option::Some($set::$variant(event)));
                    }
                )+
                ::core::result::Result::Ok(::core::option::Option::None)
            }
        }
    };
}
