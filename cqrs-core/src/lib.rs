#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod aggregate;
pub mod app;
pub mod bus;
pub mod envelope;
pub mod error;
pub mod event;
pub mod gateway;
pub mod memory;
pub mod metrics;
pub mod processor;
pub mod projection;
pub mod registry;
pub mod relay;
pub mod routing;
pub mod segment;
pub mod store;
pub mod view;
pub mod wire;

pub use crate::aggregate::{Aggregate, Command};
pub use crate::app::App;
pub use crate::bus::{BusFeed, EventBus};
pub use crate::envelope::{Envelope, ExpectedVersion, Metadata, NewEvent};
pub use crate::error::{BoxError, CommandError, Error, EventRef, Result};
pub use crate::event::{DynEvent, Event, EventSet};
pub use crate::gateway::{CommandGateway, CommandMetadata, Middleware};
pub use crate::processor::{
    Backoff, CatchUpProgress, ErrorPolicy, Feed, RetryReport, StoreFeed, TrackingProcessor,
};
pub use crate::projection::{Fold, Projection, ReadModel};
pub use crate::registry::registry;
pub use crate::relay::{Breaker, Relay};
pub use crate::store::{CheckpointStore, EventAppender, EventReader, EventStore, SnapshotStore};
pub use crate::view::{
    DeadLetterCursor, DeadLetterStore, Filter, Order, Query, ViewQuery, ViewStore,
};

#[doc(hidden)]
pub mod __private {
    pub use bytes::Bytes;
    pub use inventory;
    pub use typetag;
}
