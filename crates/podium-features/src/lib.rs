//! Feature serving: which features exist, where their values live, and how a request's values are
//! fetched (hydrated) inside the deadline and laid out as the frame models read.
//!
//! A request's stored entities (its viewer and content, and its candidates' line items and
//! advertisers) are fetched in one batched read; context features are derived from the request;
//! candidates' supplied attributes come from the caller, one row per candidate. This crate does
//! not know about models or auctions.

pub mod cache;
pub mod definitions;
pub mod hydrate;
pub mod offline;
pub mod publish;
pub mod redis_store;
pub mod signals;
pub mod space;
pub mod store;
pub mod stream;
pub mod tiles;

pub use cache::{CacheConfig, CachedStore};
pub use definitions::{Definitions, Entity, EventType, FeatureDef};
pub use hydrate::{CandidateKeys, Hydrated, HydrationStats, Hydrator, ServedEntity, SpaceError};
pub use offline::{
    backfill, consistency, read_events, read_served, write_events, ConsistencyReport,
    EventLogWriter, OfflineError, QueryPoint, RollPolicy, ServedLogWriter, ServedRow,
};
pub use publish::Publisher;
pub use redis_store::{RedisOptions, RedisStore};
pub use signals::{Signals, SourceDef};
pub use space::{FeatureSpace, FeatureSpec, Source};
pub use store::{now_ms, MemoryStore, OnlineStore, SnapshotError, StoreError, StoredValue};
pub use stream::{Aggregator, NatsConfig, StreamStats};
