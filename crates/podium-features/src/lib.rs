//! Feature serving: which features exist, where their values live, and how a request's values are
//! fetched (hydrated) inside the deadline and laid out as the frame models read.
//!
//! Request-level features (the viewer's stored features and the context of the request) are
//! fetched once per request; candidate features come from the caller, one row per candidate. This
//! crate does not know about models or auctions.

pub mod definitions;
pub mod hydrate;
pub mod offline;
pub mod space;
pub mod store;
pub mod stream;
pub mod tiles;

pub use definitions::{Definitions, Entity, FeatureDef};
pub use hydrate::{Hydrated, Hydrator};
pub use offline::{
    backfill, consistency, read_events, read_served, write_events, ConsistencyReport,
    EventLogWriter, OfflineError, QueryPoint, RollPolicy, ServedLogWriter, ServedRow,
};
pub use space::{FeatureSpace, FeatureSpec, Source};
pub use store::{now_ms, MemoryStore, OnlineStore, StoreError, StoredValue};
pub use stream::{Aggregator, NatsConfig, StreamStats};
