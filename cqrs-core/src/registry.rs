//! The event registry: stable names to types, upcasters between schema versions, start-up checks.
//!
//! Every [`event!`](macro@crate::event) registers itself here through `inventory`; every
//! [`upcaster!`](crate::upcaster) registers one step `vN -> vN+1` of a payload. The registry is
//! built once, on first use, from what the linker kept.

use std::collections::HashMap;
use std::sync::OnceLock;

use serde::de::{DeserializeSeed, IntoDeserializer, MapAccess};
use serde::Deserialize;
use serde_json::Value;

use crate::envelope::Envelope;
use crate::error::{Error, Result};
use crate::event::DynEvent;
use crate::store::EventReader;

/// One event type, as registered by [`event!`](macro@crate::event).
#[derive(Debug)]
pub struct EventRegistration {
    /// The stable name.
    pub name: &'static str,
    /// The current schema version.
    pub version: u32,
    /// The Rust type that carries it (for messages only).
    pub type_name: &'static str,
    /// The module that declared it (for messages only).
    pub module: &'static str,
}

inventory::collect!(EventRegistration);

/// A function turning a payload of one schema version into the next.
pub type UpcastFn = fn(Value) -> std::result::Result<Value, String>;

/// One upcasting step, as registered by [`upcaster!`](crate::upcaster): the payload of
/// `name` at `from_version` becomes the payload at `from_version + 1`.
#[derive(Debug)]
pub struct Upcaster {
    /// The event name.
    pub name: &'static str,
    /// The version this step reads.
    pub from_version: u32,
    /// The transformation.
    pub upcast: UpcastFn,
}

inventory::collect!(Upcaster);

/// Registers an upcaster: a function from the JSON payload of `name` at version `from` to
/// the payload at version `from + 1`. Chains are followed: v1 -> v2 -> v3.
///
/// ```
/// # use serde::{Deserialize, Serialize};
/// #[derive(Debug, Clone, Serialize, Deserialize)]
/// pub struct Renamed { pub name: String, pub reason: String }
/// cqrs_core::event!(Renamed, "doc.up.Renamed", version = 2);
///
/// fn v1_to_v2(mut payload: serde_json::Value) -> Result<serde_json::Value, String> {
///     payload["reason"] = "unknown".into();
///     Ok(payload)
/// }
/// cqrs_core::upcaster!("doc.up.Renamed", from = 1, v1_to_v2);
/// ```
#[macro_export]
macro_rules! upcaster {
    ($name:expr, from = $from:literal, $upcast:expr) => {
        $crate::__private::inventory::submit! {
            $crate::registry::Upcaster { name: $name, from_version: $from, upcast: $upcast }
        }
    };
}

/// A stored event type: the aggregate type it belongs to, its name and its schema version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct StoredType {
    /// The aggregate type whose streams hold it.
    pub aggregate_type: String,
    /// The stored event name.
    pub name: String,
    /// The stored schema version.
    pub version: u32,
}

/// The global set of known events and upcasters. Get it with [`registry()`].
#[derive(Debug)]
pub struct Registry {
    events: HashMap<&'static str, &'static EventRegistration>,
    upcasters: HashMap<(&'static str, u32), UpcastFn>,
    problems: Vec<String>,
}

static REGISTRY: OnceLock<Registry> = OnceLock::new();

/// The registry of every event and upcaster linked into this program.
pub fn registry() -> &'static Registry {
    REGISTRY.get_or_init(Registry::collect)
}

impl Registry {
    fn collect() -> Self {
        let mut events = HashMap::new();
        let mut problems = Vec::new();
        for reg in inventory::iter::<EventRegistration> {
            if let Some(prev) = events.insert(reg.name, reg) {
                problems.push(format!(
                    "event name `{}` is declared twice: by {}::{} and {}::{}",
                    reg.name, prev.module, prev.type_name, reg.module, reg.type_name
                ));
            }
        }
        let mut upcasters = HashMap::new();
        for up in inventory::iter::<Upcaster> {
            if upcasters
                .insert((up.name, up.from_version), up.upcast)
                .is_some()
            {
                problems.push(format!(
                    "two upcasters for event `{}` from v{}",
                    up.name, up.from_version
                ));
            }
            match events.get(up.name) {
                None => problems.push(format!(
                    "upcaster for `{}` v{}: no event is registered under that name",
                    up.name, up.from_version
                )),
                Some(reg) if up.from_version >= reg.version => problems.push(format!(
                    "upcaster for `{}` from v{} but the current version is v{}",
                    up.name, up.from_version, reg.version
                )),
                Some(_) => {}
            }
        }
        Registry {
            events,
            upcasters,
            problems,
        }
    }

    /// Checks the registry itself: no name declared twice, no upcaster without its event.
    ///
    /// # Errors
    /// [`Error::Config`] listing every problem found.
    pub fn validate(&self) -> Result<()> {
        if self.problems.is_empty() {
            Ok(())
        } else {
            Err(Error::Config(self.problems.join("; ")))
        }
    }

    /// Whether an event of this name is registered.
    pub fn is_known(&self, name: &str) -> bool {
        self.events.contains_key(name)
    }

    /// The registration of an event name.
    pub fn get(&self, name: &str) -> Option<&'static EventRegistration> {
        self.events.get(name).copied()
    }

    /// Every registered event, sorted by name.
    pub fn events(&self) -> Vec<&'static EventRegistration> {
        let mut all: Vec<_> = self.events.values().copied().collect();
        all.sort_by_key(|r| r.name);
        all
    }

    /// Checks that a stored `(name, version)` can be decoded: the name is registered and an
    /// upcaster chain leads from the stored version to the current one.
    ///
    /// # Errors
    /// [`Error::Registry`] saying what is missing.
    pub fn check_type(&self, name: &str, version: u32) -> Result<()> {
        let fail = |reason: String| Error::Registry {
            name: name.to_owned(),
            version,
            reason,
        };
        let Some(reg) = self.events.get(name) else {
            return Err(fail(
                "no event type is registered under this name (was it renamed, or is the crate that \
                 declares it not linked?)"
                    .into(),
            ));
        };
        if version > reg.version {
            return Err(fail(format!(
                "stored at a newer version than this program knows (v{})",
                reg.version
            )));
        }
        for v in version..reg.version {
            if !self.upcasters.contains_key(&(reg.name, v)) {
                return Err(fail(format!(
                    "no upcaster from v{v} to v{} (current version v{})",
                    v + 1,
                    reg.version
                )));
            }
        }
        Ok(())
    }

    /// The start-up check: every event type found in the store is known and decodable.
    ///
    /// # Errors
    /// [`Error::Registry`] for the first stored type that cannot be decoded (every such type is
    /// logged), [`Error::Config`] when the registry itself is inconsistent, or the store's error.
    pub async fn check_store(&self, store: &dyn EventReader) -> Result<()> {
        self.check_types(store, |_| true).await
    }

    /// As [`check_store`](Self::check_store), for the events of these aggregate types only:
    /// what a service that shares the store with others must be able to decode (another
    /// service's newer events are not its concern).
    ///
    /// # Errors
    /// As [`check_store`](Self::check_store).
    pub async fn check_store_for(
        &self,
        store: &dyn EventReader,
        aggregate_types: &[&str],
    ) -> Result<()> {
        self.check_types(store, |t| {
            aggregate_types.contains(&t.aggregate_type.as_str())
        })
        .await
    }

    async fn check_types(
        &self,
        store: &dyn EventReader,
        wanted: impl Fn(&StoredType) -> bool,
    ) -> Result<()> {
        self.validate()?;
        let types = store.stored_types().await?;
        let mut first = None;
        for t in types.iter().filter(|t| wanted(t)) {
            if let Err(e) = self.check_type(&t.name, t.version) {
                tracing::error!(error = %e, "stored event type cannot be decoded");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// Upcasts an envelope's payload from its stored version to `target`.
    ///
    /// # Errors
    /// [`Error::Registry`] when a step is missing or the stored version is newer,
    /// [`Error::Decode`] when the payload is not JSON or an upcaster refuses it (or panics).
    pub fn upcast(&self, envelope: &Envelope, target: u32) -> Result<Value> {
        let decode_err = |reason: String| Error::Decode {
            event: envelope.event_ref(),
            reason,
        };
        if envelope.event_version > target {
            return Err(Error::Registry {
                name: envelope.event_name.clone(),
                version: envelope.event_version,
                reason: format!("stored at a newer version than this program knows (v{target})"),
            });
        }
        let mut value: Value = serde_json::from_slice(&envelope.payload)
            .map_err(|e| decode_err(format!("payload is not JSON: {e}")))?;
        for v in envelope.event_version..target {
            let step = self
                .upcasters
                .get(&(envelope.event_name.as_str(), v))
                .ok_or_else(|| Error::Registry {
                    name: envelope.event_name.clone(),
                    version: envelope.event_version,
                    reason: format!("no upcaster from v{v} to v{}", v + 1),
                })?;
            // An upcaster is user code fed stored data: a panic in it becomes this event's
            // decode error instead of taking the processor down.
            value = std::panic::catch_unwind(move || step(value))
                .map_err(|panic| {
                    let what = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_else(|| "a panic".to_owned());
                    decode_err(format!("upcaster v{v} panicked: {what}"))
                })?
                .map_err(|e| decode_err(format!("upcaster v{v}: {e}")))?;
        }
        Ok(value)
    }

    /// Decodes any registered event into a `Box<dyn DynEvent>` (through `typetag`), upcasting first.
    ///
    /// # Errors
    /// [`Error::UnknownEvent`] for an unregistered name, [`Error::Decode`] for a bad payload.
    pub fn decode_dyn(&self, envelope: &Envelope) -> Result<Box<dyn DynEvent>> {
        let Some(reg) = self.events.get(envelope.event_name.as_str()) else {
            return Err(Error::UnknownEvent {
                event: envelope.event_ref(),
            });
        };
        let decode_err = |e: serde_json::Error| Error::Decode {
            event: envelope.event_ref(),
            reason: e.to_string(),
        };
        if envelope.event_version == reg.version {
            let mut de = serde_json::Deserializer::from_slice(&envelope.payload);
            let access = Tagged {
                name: Some(reg.name),
                payload: &mut de,
            };
            let event = Box::<dyn DynEvent>::deserialize(
                serde::de::value::MapAccessDeserializer::new(access),
            )
            .map_err(decode_err)?;
            de.end().map_err(decode_err)?;
            Ok(event)
        } else {
            let value = self.upcast(envelope, reg.version)?;
            let tagged = Value::Object([(reg.name.to_owned(), value)].into_iter().collect());
            Box::<dyn DynEvent>::deserialize(tagged).map_err(decode_err)
        }
    }
}

/// Presents `(name, payload)` as the one-entry map `{name: payload}` that typetag reads.
struct Tagged<'a, 'de> {
    name: Option<&'static str>,
    payload: &'a mut serde_json::Deserializer<serde_json::de::SliceRead<'de>>,
}

impl<'de> MapAccess<'de> for Tagged<'_, 'de> {
    type Error = serde_json::Error;

    fn next_key_seed<K: DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> std::result::Result<Option<K::Value>, Self::Error> {
        match self.name.take() {
            Some(name) => seed.deserialize(name.into_deserializer()).map(Some),
            None => Ok(None),
        }
    }

    fn next_value_seed<V: DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> std::result::Result<V::Value, Self::Error> {
        seed.deserialize(&mut *self.payload)
    }
}
